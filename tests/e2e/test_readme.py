"""The README against the CLI: its ```bash commands and its ```python example, run on a tiny set.

Every command is parsed out of README.md (none is copied here) and rewritten by MAPPING and
BUDGET to a tiny synthetic dataset and a one-epoch, 64 px budget. Then

- the commands of the sections in RUN_SECTIONS run for real, in README order, in one scratch
  folder: the path a new user follows (data, baseline, prune, fine-tune, evaluate, export);
  each must exit 0 and leave its --out behind;
- every other command is checked at argparse level only: detprune's own parser accepts its
  flags (with --config, the recipe's fields too) and, for ``prune``, prune's option checks pass.
  Those need a GPU or TensorRT (engine, bench on CUDA), a Faster R-CNN state dict, or repeat the
  flow at budgets a unit test cannot afford (schedules, search); their code has its own tests;
- ``make X`` must be a Makefile target and ``source`` must name the Makefile's virtual env;
- the ```python example runs for real after the flow, in the same folder.

A README line this test does not understand fails it: extend MAPPING (and say so above) rather
than skipping the line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from detprune import cli

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RUN_SECTIONS = ("Set-up", "Start from your detector")

# README path -> what stands in for it here (filled in by the `workspace` fixture):
#   datasets/kitti.yaml  -> a dataset yaml over 12 synthetic scenes (416x128, seeded 80/20 split, KITTI's 3 classes)
#   data/my_frames       -> a folder of 8 synthetic KITTI-format scenes (a user's own training frames)
#   data/my_val          -> another folder of 4 synthetic scenes, other seed (their separate validation frames)
#   path/to/best.pt      -> a YOLOv8n trained 1 epoch at 64 px by `detprune train` on that set
#   path/to/yolov8n.pt   -> an untrained YOLOv8n with COCO's 80 classes (stands in for ultralytics' COCO weights)
#   configs/...          -> the repository's recipe (the commands run in a scratch folder)
MAPPED_PATHS = ("datasets/kitti.yaml", "path/to/best.pt", "path/to/yolov8n.pt", "data/my_frames", "data/my_val")
# flag -> value in this test: every epoch budget 1, images at 64 px
BUDGET = {
    "--epochs": "1",
    "--finetune-epochs": "1",
    "--supernet-epochs": "1",
    "--epochs-per-step": "1",
    "--imgsz": "64",
}
PY_BUDGET = ((r"\bepochs=\d+", "epochs=1"), (r"\bimgsz=\d+", "imgsz=64"), (r"\bimgsz=\(\d+, \d+\)", "imgsz=(64, 96)"))


# --- reading the README ---------------------------------------------------------------------


def _blocks(language: str) -> list[tuple[str, str]]:
    """(section heading, code) of every fenced block of ``language``, list-indented ones too."""
    text = README.read_text()
    fence = re.compile(rf"^([ \t]*)```{language}[ \t]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
    headings = [(m.start(), m.group(1).strip()) for m in re.finditer(r"^## (.+)$", text, re.M)]
    blocks = []
    for match in fence.finditer(text):
        section = next((h for pos, h in reversed(headings) if pos < match.start()), "")
        indent = match.group(1)
        code = "\n".join(
            line[len(indent) :] if line.startswith(indent) else line for line in match.group(2).splitlines()
        )
        blocks.append((section, code))
    return blocks


def _commands() -> list[tuple[str, list[str]]]:
    """(section, argv) of every shell command: continuation lines joined, comments dropped."""
    commands = []
    for section, code in _blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append((section, argv))
    return commands


COMMANDS = _commands()


def _detprune_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``detprune`` (or ``.venv/bin/detprune``); None for another program."""
    return argv[1:] if argv[0] in ("detprune", ".venv/bin/detprune") else None


def _mapped(argv: list[str], paths: dict[str, Path]) -> list[str]:
    out, budget = [], None
    for token in argv:
        if budget is not None:
            out.append(budget)
            budget = None
            continue
        if token in BUDGET:
            budget = BUDGET[token]
        elif token in paths:
            token = str(paths[token])
        elif token.startswith("configs/"):
            token = str(REPO / token)
        out.append(token)
    return out


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# --- the tiny stand-ins ---------------------------------------------------------------------


def _main(argv: list[str]) -> tuple[int, str]:
    """Run ``detprune argv`` in this process; (exit status, what it wrote to stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exit_:  # --help and argparse errors
            rc = exit_.code or 0
    return int(rc), err.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, synthetic_kitti) -> dict:
    """A scratch folder, the mapped stand-ins, then every RUN_SECTIONS command run in it in order."""
    from detprune.adapters import get_adapter

    work = tmp_path_factory.mktemp("readme")
    data = work / "tiny.yaml"
    data.write_text(f"format: synthetic\npath: {synthetic_kitti}\nclass_map: kitti3\nval_fraction: 0.2\nseed: 0\n")
    coco = work / "coco80.pt"
    adapter = get_adapter("yolov8n.yaml")
    adapter.save(adapter.load("yolov8n.yaml", class_names=[f"coco{i}" for i in range(80)]), coco)
    from detprune.data.synthetic import generate_scenes

    frames = generate_scenes(work / "my_frames", num_images=8, seed=3, width=416, height=128)
    val = generate_scenes(work / "my_val", num_images=4, seed=4, width=416, height=128)
    paths = {"datasets/kitti.yaml": data, "path/to/yolov8n.pt": coco, "data/my_frames": frames, "data/my_val": val}
    runs = []
    previous = os.getcwd()
    os.chdir(work)
    try:
        rc, err = _main(["train", "--model", "yolov8n.yaml", "--data", str(data), "--epochs", "1", "--imgsz", "64",
                         "--out", str(work / "own")])
        assert rc == 0, err
        paths["path/to/best.pt"] = work / "own" / "train" / "weights" / "best.pt"
        assert set(paths) == set(MAPPED_PATHS)
        for section, argv in COMMANDS:
            args = _detprune_argv(argv)
            if section in RUN_SECTIONS and args is not None:
                mapped = _mapped(args, paths)
                rc, err = _main(mapped)
                runs.append((argv, mapped, rc, err))
    finally:
        os.chdir(previous)
    return {"work": work, "paths": paths, "runs": runs}


# --- the tests ------------------------------------------------------------------------------


def test_the_readme_has_the_flow_and_its_top_commands():
    top = _blocks("bash")[0][1]
    assert [shlex.split(line, comments=True) for line in top.splitlines() if shlex.split(line, comments=True)] == [
        ["make", "demo"], ["make", "test"]]
    flow = [_detprune_argv(a)[:1] for s, a in COMMANDS if s == "Start from your detector" and _detprune_argv(a)]
    for step in (["data"], ["train"], ["prune"], ["finetune"], ["eval"], ["export"]):
        assert step in flow, f"'Start from your detector' has no 'detprune {step[0]}' command"
    assert "~10 min" not in README.read_text()


def test_the_flow_runs_on_a_tiny_set(workspace):
    """Set-up and 'Start from your detector': each command exits 0 and writes its --out."""
    assert workspace["runs"], "no command of RUN_SECTIONS found in README.md"
    for argv, mapped, rc, err in workspace["runs"]:
        shown = shlex.join(argv)
        assert rc == 0, f"README command failed ({rc}): {shown}\n  as run: {shlex.join(mapped)}\n{err[-2000:]}"
        out = _flag(mapped, "--out")
        if out is not None:
            assert (workspace["work"] / out).exists(), f"{shown}: wrote no {out}"


def test_coco_weights_on_other_classes_say_the_head_is_new(workspace):
    coco = [(a, err) for a, m, rc, err in workspace["runs"] if "path/to/yolov8n.pt" in a]
    assert coco, "the README shows no command starting from COCO weights (path/to/yolov8n.pt)"
    for argv, err in coco:
        assert "class head re-initialised for 3 classes" in err, shlex.join(argv)
    assert "class head re-initialised" in " ".join(
        README.read_text().split()
    ), "the README does not say the head starts new"


def test_the_python_example_runs_after_the_flow(workspace):
    [(section, code)] = _blocks("python")
    for key, path in workspace["paths"].items():
        code = code.replace(f'"{key}"', repr(str(path)))
    for pattern, value in PY_BUDGET:
        code = re.sub(pattern, value, code)
    # a fresh interpreter, as a user runs it; in this process the flow has imported the
    # detprune.export subpackage, whose module object now shadows the detprune.export function
    done = subprocess.run([sys.executable, "-c", code], cwd=workspace["work"], capture_output=True, text=True,
                          env={**os.environ, "YOLO_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, f"README python example failed:\n{done.stderr[-3000:]}"
    onnx = re.findall(r'export\(model, "([^"]+)"', _blocks("python")[0][1])
    assert onnx and (workspace["work"] / onnx[0]).is_file()


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


@pytest.mark.parametrize(
    "section,argv",
    [c for c in COMMANDS if _detprune_argv(c[1]) is None or c[0] not in RUN_SECTIONS],
    ids=lambda v: v if isinstance(v, str) else shlex.join(v)[:70],
)
def test_every_other_command_parses(section, argv, monkeypatch):
    """Argparse-level only (see the module docstring): the CLI accepts the flags as written."""
    args = _detprune_argv(argv)
    if args is None:
        if argv[0] == "make":
            assert set(argv[1:]) <= _makefile_targets(), f"{shlex.join(argv)}: not a Makefile target"
        elif argv[0] == "source":
            venv = re.search(r"^VENV\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
            assert argv[1:] == [f"{venv}/bin/activate"]
        else:
            pytest.fail(f"README command this test does not know: {shlex.join(argv)}")
        return
    monkeypatch.setattr(cli, "_PARSER", None)  # a recipe sets the cached parser's defaults
    mapped = _mapped(args, {})
    try:
        parsed = cli.parse_command_line(cli.build_parser_cached(), mapped)
    except SystemExit as exit_:
        pytest.fail(f"argparse refused ({exit_.code}): {shlex.join(argv)}")
    if parsed.command == "prune":
        from detprune.workflow.config import pick_target, validate

        pick_target(parsed)
        validate(parsed)


def _options_of(args: list[str]) -> set[str]:
    """The option strings of the (sub)command ``args`` names, e.g. ``data convert``."""
    parser = cli.build_parser()
    for token in args:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or token not in subs[0].choices:
            break
        parser = subs[0].choices[token]
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("section,argv", [c for c in COMMANDS if _detprune_argv(c[1]) is not None],
                         ids=lambda v: v if isinstance(v, str) else shlex.join(v)[:70])
def test_every_flag_is_spelled_as_the_cli_spells_it(section, argv):
    """argparse would take an abbreviation (--target-flop) silently: the README must not rely on it."""
    args = _detprune_argv(argv)
    options = _options_of(args)
    unknown = [t for t in (a.split("=")[0] for a in args) if t.startswith("-") and t not in options]
    assert not unknown, f"{shlex.join(argv)}: {unknown} not options of 'detprune {args[0]}'"


def test_paths_agree_with_datasets_readme_and_the_recipes():
    """The conversion the flow trains on is the one datasets/README.md documents; recipes start from trained models."""
    import yaml

    datasets_readme = (REPO / "datasets" / "README.md").read_text()
    documented = re.findall(r"`detprune (data convert [^`]+)`", datasets_readme)
    converts = [
        shlex.join(_detprune_argv(a)) for s, a in COMMANDS if (_detprune_argv(a) or [])[:2] == ["data", "convert"]
    ]
    assert converts and all(c in documented for c in converts), (converts, documented)
    outs = {_flag(a, "--out") for s, a in COMMANDS if _detprune_argv(a)}
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        if recipe.name == "demo.yaml":
            continue
        fields = yaml.safe_load(recipe.read_text())
        assert not str(fields["model"]).endswith(
            (".yaml", ".yml")
        ), f"{recipe.name}: starts from an untrained architecture"
        baseline = re.fullmatch(r"(runs/train/.+)/train/weights/best\.pt", str(fields["model"]))
        if baseline:
            assert baseline.group(1) in outs, f"{recipe.name}: no README command writes {fields['model']}"
        if str(fields.get("data", "")).startswith("datasets/"):
            assert (REPO / fields["data"]).is_file() and fields["data"] in datasets_readme, recipe.name
        for doc in re.findall(r"[\w./-]+\.md\b", recipe.read_text()):
            assert (REPO / doc).is_file(), f"{recipe.name} cites {doc}, which is not in the repository"
