"""The ``detprune`` console command.

Every subcommand lives in its own module under ``detprune.commands`` and exposes ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int``. They are registered here,
in one place. Heavy libraries are imported inside ``run`` so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Sequence

from detprune import __version__
from detprune.commands.shared import loading_policy
from detprune.errors import DetpruneError
from detprune.utils.atomic import describe_os_error, first_line, is_write_failure
from detprune.utils.checkpoints import load_policy

# Order is the order ``detprune --help`` lists them in.
COMMANDS: tuple[str, ...] = (
    "data",
    "train",
    "score",
    "prune",
    "search",
    "finetune",
    "eval",
    "export",
    "engine",
    "bench",
    "demo",
)


def _command_module(name: str):
    return importlib.import_module(f"detprune.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detprune",
        description="Prune object detectors for driving perception without losing small objects.",
    )
    parser.add_argument("--version", action="version", version=f"detprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = _command_module(name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run, _parser=cmd)
    return parser


def apply_config(args: argparse.Namespace, argv: Sequence[str]) -> argparse.Namespace:
    """Re-parse with a YAML recipe's fields as defaults, so that flags override the recipe."""
    config = getattr(args, "config", None)
    if not config:
        return args
    from detprune.config import load_recipe

    recipe = load_recipe(config, args.command)
    parser: argparse.ArgumentParser = args._parser
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise DetpruneError(f"{config}: unknown field(s) {', '.join(unknown)} for 'detprune {args.command}'")
    _check_recipe_numbers(config, recipe, parser)
    parser.set_defaults(**recipe)
    return build_parser_cached().parse_args(argv)


def _check_recipe_numbers(config, recipe: dict, parser: argparse.ArgumentParser) -> None:
    """A recipe's numbers as the flags' types want them: argparse converts string defaults only, so a
    ``[1, 2]`` or ``true`` for an int flag would otherwise travel on and fail deep inside the run."""
    from detprune.utils.numbers import real_number, whole_number

    kinds = {a.dest: a.type for a in parser._actions if a.type in (int, float)}
    for key, value in recipe.items():
        if kinds.get(key) is None or value is None or isinstance(value, str):
            continue
        check = whole_number if kinds[key] is int else real_number
        recipe[key] = check(value, f"{config}: field {key}")


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; with ``--config``, a recipe field may stand in for a required flag.

    argparse checks required flags before the recipe is read, so with ``--config`` they are
    checked after it instead.
    """
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        return apply_config(parser.parse_args(argv), argv)
    relaxed = [a for p in _all_parsers(parser) for a in p._actions if a.required and a.option_strings]
    for action in relaxed:
        action.required = False
    try:
        args = apply_config(parser.parse_args(argv), argv)
    finally:
        for action in relaxed:
            action.required = True
    command_parser = getattr(args, "_parser", parser)
    missing = [
        a.option_strings[0] for a in relaxed if a in command_parser._actions and getattr(args, a.dest, None) is None
    ]
    if missing:
        command_parser.error(f"the following arguments are required (as flags or recipe fields): {', '.join(missing)}")
    return args


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


# flags that name what a command writes; caches are read and rewritten by design, so they are neither side
OUTPUT_FLAGS = ("out", "json", "kitti_results", "plot")
CACHE_FLAGS = ("timing_cache", "calib_cache", "latency_cache")


def check_arguments(args: argparse.Namespace) -> None:
    """Every output flag against every other path the command was given (see :mod:`detprune.utils.overlap`),
    and the image size against its bound, before the command reads or allocates anything."""
    from detprune.utils.numbers import image_size
    from detprune.utils.overlap import check_outputs

    def flag(dest: str) -> str:
        return "--" + dest.replace("_", "-")

    outputs, inputs = [], []
    for dest, value in vars(args).items():
        if dest.startswith("_") or dest in CACHE_FLAGS or dest in ("command", "data_command"):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, os.PathLike)) and str(item):
                (outputs if dest in OUTPUT_FLAGS else inputs).append((flag(dest), item))
    check_outputs(outputs, inputs)
    for action in getattr(args, "_parser", argparse.ArgumentParser())._actions:  # no flag takes nan or inf
        value = getattr(args, action.dest, None)
        if action.type is float and isinstance(value, float) and not math.isfinite(value):
            raise DetpruneError(
                f"{action.option_strings[0] if action.option_strings else action.dest} must be a "
                f"finite number, got {value}"
            )
    imgsz = getattr(args, "imgsz", None)  # bounded before anything is allocated for it
    for side in imgsz if isinstance(imgsz, (list, tuple)) else [imgsz]:
        if isinstance(side, (int, float)):  # text forms are parsed, and bounded, where they are read (as_hw)
            image_size(side, "--imgsz")


def _set_threads(threads) -> None:
    """``--threads N``: torch's intra-op threads (scoring, training, evaluation) for this run."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise DetpruneError(f"--threads must be a whole number >= 1, got {threads!r}")
    import torch

    torch.set_num_threads(threads)


_PARSER: argparse.ArgumentParser | None = None


def build_parser_cached() -> argparse.ArgumentParser:
    global _PARSER
    if _PARSER is None:
        _PARSER = build_parser()
    return _PARSER


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach a hub at run time
    os.environ.setdefault("YOLO_VERBOSE", "False")
    argv = list(sys.argv[1:] if argv is None else argv)
    global _PARSER
    _PARSER = None
    parser = build_parser_cached()
    try:
        args = parse_command_line(parser, argv)
        check_arguments(args)
        _set_threads(getattr(args, "threads", None))
        with load_policy(**loading_policy(args)):
            return int(args._run(args) or 0)
    except DetpruneError as err:
        print(f"detprune: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        sys.stderr.close()
        return 0
    except OSError as err:  # last resort: a file system refusal the command did not word itself
        print(f"detprune: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not is_write_failure(err):
            raise  # a real failure: keep its traceback
        print(f"detprune: error: writing a file failed, the disk may be full ({first_line(err)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("detprune: interrupted; outputs already written are complete, none is partial", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
