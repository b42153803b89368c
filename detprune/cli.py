"""The ``detprune`` console command.

Every subcommand lives in its own module under ``detprune.commands`` and exposes ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int``. They are registered here,
in one place. Heavy libraries are imported inside ``run`` so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from detprune import __version__
from detprune.errors import DetpruneError

# Order is the order ``detprune --help`` lists them in.
COMMANDS: tuple[str, ...] = (
    "data",
    "score",
    "prune",
    "finetune",
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

    recipe = load_recipe(config)
    parser: argparse.ArgumentParser = args._parser
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise DetpruneError(f"{config}: unknown field(s) {', '.join(unknown)} for 'detprune {args.command}'")
    parser.set_defaults(**recipe)
    return build_parser_cached().parse_args(argv)


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
    args = parser.parse_args(argv)
    try:
        args = apply_config(args, argv)
        return int(args._run(args) or 0)
    except DetpruneError as err:
        print(f"detprune: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("detprune: interrupted; outputs already written are complete, none is partial", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
