"""``twolevel anova DATA FORMULA_SMALL FORMULA_BIG``: likelihood-ratio test of nested models.

Both models are fitted by REML and refitted by ML (lme4's ``anova``), then compared: lme4's table
(npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)) plus a boundary-corrected p-value when
the bigger model adds one random effect with its covariances (½χ²_k + ½χ²_{k+1}). ``--json``
prints one object with the keys models, chisq, df, p, p_mixture, mixture.

With ``--family binomial|poisson`` (``--link``, ``--nagq``) both models are glmer fits (Laplace
by default), compared without refitting, as lme4's ``anova`` does for GLMMs.
"""

from __future__ import annotations

import argparse
import json
import warnings

from twolevel.models.fit_base import has_several_factors
from twolevel.models.inference.anova import anova
from twolevel.models.lmm.lmer import lmer
from twolevel.workflows.commands import (
    add_data_argument,
    add_engine_arguments,
    check_memory_engine_for_family,
    resolve_data,
)
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
    p.add_argument("--family", choices=("binomial", "poisson"),
                   help="compare two GLMMs fitted like glmer")
    p.add_argument("--link", help="link for --family (logit, probit, cloglog; log)")
    p.add_argument("--nagq", type=int, default=1, help="with --family: 1 = Laplace (default)")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fit both models, compare them, print the table or the JSON object."""
    check_memory_engine_for_family(args)
    df, engine, opts = resolve_data(args)
    check_memory_engine_for_family(args, engine)
    name = data_label(args.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.family is not None:
            from twolevel.models.glmm.glmer import glmer

            small, big = (glmer(f, df, family=args.family, link=args.link, nAGQ=args.nagq,
                                data_name=name) for f in (args.small, args.big))
        else:
            small = lmer(args.small, df, data_name=name, engine=engine, **opts)
            big = lmer(args.big, df, data_name=name, engine=engine, **opts)
    if has_several_factors(small) or has_several_factors(big):
        from twolevel.models.lmm.multi import anova_multi

        out = anova_multi(small, big, names=("small", "big"))
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            for m in out["models"]:
                print(f"{m['name']}: {m['formula']}  npar {m['npar']}  logLik {m['loglik']:.4f}")
            print(f"Chisq {out['chisq']:.4f}  Df {out['df']:g}  Pr(>Chisq) {out['p']:.4g}"
                  + (f"  ({out['mixture']}: p = {out['p_mixture']:.4g})" if out["mixture"]
                     else ""))
        return 0
    res = anova(small, big, names=["small", "big"])
    print(json.dumps(res.to_dict(), indent=2) if args.json else res.summary())
    return 0
