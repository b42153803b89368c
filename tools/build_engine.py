#!/usr/bin/env python3
"""Build a TensorRT engine from an ONNX file on this machine's GPU, and optionally time it.

    python tools/build_engine.py --onnx model.onnx --precision fp16 --out model.engine --bench

The same as ``detprune engine`` (see ``--help``); this script only parses the flags and
calls the library. Exit status 2 with one line on stderr when something is missing or wrong.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from detprune.commands import engine
    from detprune.errors import DetpruneError

    parser = argparse.ArgumentParser(prog="build_engine.py", description=engine.HELP)
    engine.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.config:  # a recipe's fields become defaults that the flags override
            from detprune.config import load_recipe

            parser.set_defaults(**load_recipe(args.config))
            args = parser.parse_args(argv)
        return int(engine.run(args) or 0)
    except DetpruneError as err:
        print(f"build_engine.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
