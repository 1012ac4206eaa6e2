"""``twolevel anova DATA FORMULA_SMALL FORMULA_BIG``: likelihood-ratio test of nested models.

Both models are fitted by REML and refitted by ML (lme4's ``anova``), then compared: lme4's table
(npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)) plus a boundary-corrected p-value when
the bigger model adds one random effect with its covariances (½χ²_k + ½χ²_{k+1}). ``--json``
prints one object with the keys models, chisq, df, p, p_mixture, mixture.
"""

from __future__ import annotations

import argparse
import json
import warnings

from twolevel.models.inference.anova import anova
from twolevel.models.lmm.lmer import lmer
from twolevel.workflows.commands import add_data_argument, add_engine_arguments, resolve_data
from twolevel.workflows.commands.fit import data_label


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``anova`` subcommand."""
    p = sub.add_parser(
        "anova",
        help="likelihood-ratio test of two nested models (ML refits, boundary-corrected p)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_argument(p)
    p.add_argument("small", metavar="FORMULA_SMALL", help="the smaller model's lme4 formula")
    p.add_argument("big", metavar="FORMULA_BIG", help="the bigger model's lme4 formula")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fit both models, compare them, print the table or the JSON object."""
    df, engine, opts = resolve_data(args)
    name = data_label(args.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = lmer(args.small, df, data_name=name, engine=engine, **opts)
        big = lmer(args.big, df, data_name=name, engine=engine, **opts)
    res = anova(small, big, names=["small", "big"])
    print(json.dumps(res.to_dict(), indent=2) if args.json else res.summary())
    return 0
