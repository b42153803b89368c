"""Plumbing the benchmark scripts share; each script keeps its own protocol, loops and tables.

The scripts put ``benchmarks/`` on ``sys.path`` and import what they need from one module:

- ``paths``: where the shared data and weights live (``../shared`` beside the repository);
- ``cache``: the settings key of a cached folder and the ``result.json`` reused while its settings match;
- ``baseline``: the cached baseline's one folder layout (settings, info, checkpoint written last);
- ``cut``: a row's cut as the prune run makes it (a validated ``PruneConfig`` through ``workflow.cut``);
- ``log``: timestamped progress lines and the ``--stop-at`` deadline;
- ``criteria``: criterion and allocation tokens of a grid, the options each criterion is given;
- ``metrics``: the metric columns (points) read from ``adapter.evaluate``'s dict;
- ``rect``: ultralytics' rect canvas and the trainer settings that train at it;
- ``curves``: the per-epoch validation curve of a training run, read and plotted;
- ``holdout``: compare_criteria's square-input protocol on a fixed split, also read by compare_schedules
  and search_widths (its baseline, one pruned run, the measurement);
- ``kfold_args`` and ``kfold_baselines``: accuracy.py's arguments and per-fold baselines, also read by
  the tools that reuse its cache (catro_ridge, equal_latency, latency_table_fit).

Nothing here is imported on ``import harness``: a script pays only for the modules it uses.
"""
