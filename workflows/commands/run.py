"""``twolevel run``: the lecture workflow on any students-in-schools data set.

    twolevel run --data FILE --y Y --x X --group G [--level2 W ...] [--out DIR] [--quick] [--seed N]

Fits ``Y ~ 1 + cX + (1 + cX | G)`` and ``Y ~ 1 + cX + (1 | G)`` (cX = X centred on its group means,
recorded in the report; each level-2 predictor W adds ``W + W:cX``) by REML and NUTS, and writes the
same report as ``twolevel lecture``. ``--data`` is a CSV/Parquet file or a built-in name (``hsb``:
``--y mAch --x ses --group school``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data.loaders import BUILTIN_DATASETS
from workflows.lecture import RunSettings, WorkflowSpec, run_workflow


def add_run_options(p: argparse.ArgumentParser, default_out: str | None) -> None:
    """``--out``, ``--quick``, ``--seed`` (shared by ``lecture`` and ``run``)."""
    p.add_argument("--out", default=default_out,
                   help="report folder, replaced atomically" + (" (default %(default)s)" if default_out else
                                                                " (default outputs/run-<data name>)"))
    p.add_argument("--quick", action="store_true",
                   help="few draws (2 chains x 150): for tests and a first look, not for reporting")
    p.add_argument("--seed", type=int, default=RunSettings.seed,
                   help="random seed of every sampling step (default %(default)s)")


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
    out = args.out or f"outputs/run-{Path(args.data).stem}"
    run_workflow(spec, RunSettings(seed=args.seed, quick=args.quick), out)
    return 0
