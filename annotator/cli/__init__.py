"""Command-line interface: ``annotator <command>`` (headless engine, GUI launcher)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from annotator import __version__

# subcommand modules, each exposing add_parser(subparsers); imported lazily by name so that a
# broken optional part (say, the model stack) never breaks the others
SUBCOMMANDS = ("annotator.cli.gui", "annotator.cli.propagate", "annotator.cli.eval",
               "annotator.cli.bench", "annotator.cli.export", "annotator.cli.convert",
               "annotator.cli.extract", "annotator.cli.detect",
               "annotator.cli.video", "annotator.cli.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="annotator",
        description="Keypoint labelling by zero-shot transfer (SD + DINOv2 features).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that subcommand is not part of this build
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
