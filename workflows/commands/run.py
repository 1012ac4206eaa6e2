"""``twolevel run``: the lecture workflow on any students-in-schools data set.

    twolevel run --data FILE --y Y --x X --group G [--level2 W ...] [--out DIR] [--quick] [--seed N]

Fits ``Y ~ 1 + cX + (1 + cX | G)`` and ``Y ~ 1 + cX + (1 | G)`` (cX = X centred on its group means,
recorded in the report; each level-2 predictor W adds ``W + W:cX``) by REML and NUTS, and writes the
same report as ``twolevel lecture``. ``--data`` is a CSV/Parquet file or a built-in name (``hsb``:
``--y mAch --x ses --group school``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from twolevel.data.errors import TwolevelError
from twolevel.data.loaders import BUILTIN_DATASETS
from twolevel.workflows.lecture import RunSettings, WorkflowSpec, run_workflow


def add_run_options(p: argparse.ArgumentParser, default_out: str | None) -> None:
    """``--out``, ``--quick``, ``--seed`` (shared by ``lecture`` and ``run``)."""
    p.add_argument("--out", default=default_out,
                   help="report folder, replaced atomically" + (" (default %(default)s)" if default_out else
                                                                " (default outputs/run-<data name>)"))
    p.add_argument("--quick", action="store_true",
                   help="few draws (2 chains x 150): for tests and a first look, not for reporting")
    p.add_argument("--seed", type=int, default=RunSettings.seed,
                   help="random seed of every sampling step (default %(default)s)")


def check_output_folder(out: str | os.PathLike) -> Path:
    """The report folder ``out`` if it can be written (created or replaced as a whole); raises a
    :class:`TwolevelError` naming the path otherwise. Creates nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise TwolevelError(f"cannot write '{path}': it is a file, not a folder; choose another "
                            "output folder with --out")
    parent = path.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise TwolevelError(f"cannot write '{path}': '{probe}' is a file, not a folder; choose "
                            "another output folder with --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise TwolevelError(f"cannot write '{path}': permission denied on '{probe}'; choose "
                            "another output folder with --out")
    return path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand."""
    p = sub.add_parser(
        "run",
        help="the lecture workflow (REML + Bayes + report) on your own data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True,
                   help=f"CSV/Parquet file or built-in name ({', '.join(BUILTIN_DATASETS)})")
    p.add_argument("--y", required=True, help="response column (level 1)")
    p.add_argument("--x", required=True, help="level-1 predictor, centred within groups")
    p.add_argument("--group", required=True, help="grouping column (schools)")
    p.add_argument("--level2", nargs="+", default=[], metavar="W",
                   help="level-2 predictors (constant within a group); each adds W and W:cX")
    p.add_argument("--x-centered", default=None, metavar="NAME",
                   help="name of the centred predictor (default c<X>)")
    add_run_options(p, None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the workflow; the report folder is only replaced when every step succeeded."""
    spec = WorkflowSpec(
        data=args.data, y=args.y, x=args.x, group=args.group, level2=tuple(args.level2),
        x_centered=args.x_centered,
        title=f"Two-level model of {args.y} on {args.x} within {args.group} ({Path(args.data).name})",
    )
    out = check_output_folder(args.out or f"outputs/run-{Path(args.data).stem}")
    run_workflow(spec, RunSettings(seed=args.seed, quick=args.quick), out)
    return 0
