"""The ``twolevel`` command line.

Each subcommand lives in its own module under ``workflows/commands/`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a function taking the parsed
arguments and returning the exit status. User errors (:class:`twolevel.data.errors.TwolevelError`)
are printed as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from twolevel.data.errors import TwolevelError

# Modules under workflows/commands/, in the order their subcommands are listed by --help.
COMMAND_MODULES: tuple[str, ...] = ("lecture", "run", "ols", "fit", "anova", "bayes", "predict",
                                    "power", "info")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand (``only``: just that one, so that
    running a command imports only its own module, not every command's dependencies)."""
    parser = argparse.ArgumentParser(
        prog="twolevel",
        description="Two-level (students-in-schools) models: REML with lme4 parity, and PyMC.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES if only is None else (only,):
        importlib.import_module(f"twolevel.workflows.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error)."""
    given = sys.argv[1:] if argv is None else list(argv)
    # the module of each subcommand has the subcommand's name (COMMAND_MODULES)
    parser = build_parser(given[0] if given and given[0] in COMMAND_MODULES else None)
    args = parser.parse_args(given)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TwolevelError as exc:
        print(f"twolevel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twolevel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
