"""``twolevel lecture``: the lecture workflow on the (simulated) ECLS-K:2011-like data.

For now: load the lecture data, describe it (N, J, school sizes, the centering of SES), print the
per-school OLS table as the lecture shows it (first 20 schools) and write the full table to
``OUT/per_school_ols.csv``. Later issues extend this command into the full lecture workflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from data.centering import Centering, center
from data.loaders import load_lecture
from models.ols import GroupOLS, group_ols
from workflows.commands.ols import write_csv_atomic

OLS_FORMULA = "g1rscore ~ famsesc"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``lecture`` subcommand."""
    p = sub.add_parser(
        "lecture",
        help="the lecture's workflow on the simulated ECLS-K:2011-like data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="outputs/lecture", help="output folder (default %(default)s)")
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
    """Compute everything first, then write the outputs (nothing half-written on error)."""
    df = load_lecture()
    cen = center(df, "ses", by="schid", name="famsesc", means_name="meanses")
    ols: GroupOLS = group_ols(OLS_FORMULA, df, "schid")
    print(describe(df, cen))
    print()
    print(ols.summary(rows=20))
    out = Path(args.out)
    path = write_csv_atomic(ols.to_frame(), out / "per_school_ols.csv")
    print(f"\nwrote {path} ({ols.n_groups} schools)")
    return 0
