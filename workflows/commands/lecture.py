"""``twolevel lecture``: the lecture workflow on the (simulated) ECLS-K:2011-like data.

    twolevel lecture [--out DIR] [--quick] [--seed N] [--family binomial]

Prints the data description and the per-school OLS table as the lecture shows them (first 20
schools), then runs the whole workflow of Lecture 5 (``twolevel.workflows.lecture``): REML fits of
``g1rscore ~ 1 + famsesc + (1 + famsesc | schid)`` and of the random-intercept model, the same two
models by NUTS, LOO and LRT comparison, caterpillar, shrinkage and residual plots, and the
lecture's questions answered. The report (``index.html``, ``report.md``, ``tables/*.csv``,
``figures/*.png``, ``posterior_m1.nc``, ``posterior_m2.nc``) replaces ``--out`` only when every step
succeeded. ``--quick`` samples briefly (for a first look; not for reporting).

``--family binomial`` runs the lecture's steps for the data's binary outcome ``g1below`` (1 = below
proficiency; simulated from a logistic two-level model with known values, data/README.md):
``g1below ~ 1 + famsesc + (1 + famsesc | schid)`` and ``(1 | schid)`` by glmer (Laplace, and AGQ
for the random intercept) and by NUTS; the report goes to ``outputs/lecture-binomial`` unless
``--out`` says otherwise.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from twolevel.data.centering import Centering, center
from twolevel.data.errors import TwolevelError
from twolevel.data.loaders import load_lecture
from twolevel.models.tables.ols import GroupOLS, group_ols
from twolevel.workflows.commands.run import add_run_options, check_output_folder
from twolevel.workflows.lecture import LECTURE_SPEC, RunSettings, run_workflow

OLS_FORMULA = "g1rscore ~ famsesc"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``lecture`` subcommand."""
    p = sub.add_parser(
        "lecture",
        help=("the lecture's workflow on the simulated ECLS-K:2011-like data "
              "(REML + Bayes + report)"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(p, None, out_help=" (default outputs/lecture, or outputs/lecture-binomial "
                                      "with --family binomial)")
    p.add_argument("--family", choices=("gaussian", "binomial", "poisson"), default="gaussian",
                   help="gaussian (default: the reading score g1rscore) or binomial (the binary "
                        "outcome g1below, 1 = below proficiency)")
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
    if args.family == "poisson":
        raise TwolevelError(
            "the lecture data have no count outcome for --family poisson: use --family binomial "
            "(the binary outcome g1below), or twolevel run --data FILE --y COUNT --x X --group G "
            "--family poisson on data with a count column")
    default = "outputs/lecture-binomial" if args.family == "binomial" else "outputs/lecture"
    out = check_output_folder(args.out or default)
    df = load_lecture()
    cen = center(df, "ses", by="schid", name="famsesc", means_name="meanses")
    if args.family == "binomial":
        from twolevel.workflows.lecture_glmm import (
            LECTURE_BINARY_SPEC,
            glmm_run_settings,
            run_glmm_workflow,
        )

        print(describe(df, cen))
        print(f"  binary outcome g1below (1 = below proficiency): {int(df['g1below'].sum()):,} "
              f"of {len(df):,} students ({100 * df['g1below'].mean():.1f}%)")
        print(flush=True)
        run_glmm_workflow(LECTURE_BINARY_SPEC, glmm_run_settings(seed=args.seed,
                                                                 quick=args.quick), out)
        return 0
    ols: GroupOLS = group_ols(OLS_FORMULA, df, "schid")
    print(describe(df, cen))
    print()
    print(ols.summary(rows=20))
    print(flush=True)
    run_workflow(LECTURE_SPEC, RunSettings(seed=args.seed, quick=args.quick), out)
    return 0
