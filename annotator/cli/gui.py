"""``annotator gui``: start the desktop application."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gui", help="start the desktop application")
    p.add_argument("project", nargs="?", help="project file to open")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from annotator.gui.app import run_app

    return run_app([args.project] if args.project else [])
