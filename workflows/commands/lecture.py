"""``twolevel lecture``: the lecture workflow on the (simulated) ECLS-K:2011-like data.

    twolevel lecture [--out DIR] [--quick] [--seed N]

Prints the data description and the per-school OLS table as the lecture shows them (first 20
schools), then runs the whole workflow of Lecture 5 (``twolevel.workflows.lecture``): REML fits of
``g1rscore ~ 1 + famsesc + (1 + famsesc | schid)`` and of the random-intercept model, the same two
models by NUTS, LOO and LRT comparison, caterpillar, shrinkage and residual plots, and the
lecture's questions answered. The report (``index.html``, ``report.md``, ``tables/*.csv``,
``figures/*.png``, ``posterior_m1.nc``, ``posterior_m2.nc``) replaces ``--out`` only when every step
succeeded. ``--quick`` samples briefly (for a first look; not for reporting).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from twolevel.data.centering import Centering, center
from twolevel.data.loaders import load_lecture
from twolevel.models.tables.ols import GroupOLS, group_ols
from twolevel.workflows.commands.run import add_run_options, check_output_folder
from twolevel.workflows.lecture import LECTURE_SPEC, RunSettings, run_workflow

OLS_FORMULA = "g1rscore ~ famsesc"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``lecture`` subcommand."""
    p = sub.add_parser(
        "lecture",
        help="the lecture's workflow on the simulated ECLS-K:2011-like data (REML + Bayes + report)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(p, "outputs/lecture")
    p.set_defaults(func=run)


def describe(df: pd.DataFrame, cen: Centering) -> str:
    """N, J, school sizes and the centering of SES, as text."""
    sizes = df.groupby("schid").size()
    diff = float(np.max(np.abs(cen.centered.to_numpy() - df["famsesc"].to_numpy())))
    return "\n".join([
        f"Data: {df.attrs.get('source', 'the lecture data')}",
        f"  N = {len(df):,} students, J = {sizes.size} schools; students per school "
        f"min {sizes.min()}, mean {sizes.mean():.2f}, max {sizes.max()}",
        f"  centering: {cen.describe()}",
        f"  (recomputed famsesc matches the stored column to {diff:.1e})",
    ])


def run(args: argparse.Namespace) -> int:
    """Describe the data, then run the workflow; the report folder is only replaced when every
    step succeeded."""
    out = check_output_folder(args.out)
    df = load_lecture()
    cen = center(df, "ses", by="schid", name="famsesc", means_name="meanses")
    ols: GroupOLS = group_ols(OLS_FORMULA, df, "schid")
    print(describe(df, cen))
    print()
    print(ols.summary(rows=20))
    print(flush=True)
    run_workflow(LECTURE_SPEC, RunSettings(seed=args.seed, quick=args.quick), out)
    return 0
