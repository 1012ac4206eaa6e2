"""``twolevel predict DATA FORMULA --newdata CSV --out CSV``: fit, then predict new rows.

Fits FORMULA on DATA by REML (``--ml`` for ML; ``--bayes`` for NUTS) and writes the rows of
``--newdata`` with the columns ``fit``, ``lwr``, ``upr`` added (and ``se`` for REML, ``sd`` for
Bayes). REML predictions are lme4's ``predict`` (``--re-form NA`` for the population level,
``--allow-new-levels`` for schools not in DATA, which get school effect 0);
``--interval confidence`` is for the fitted mean, ``prediction`` (default) for a new student's
score; ``bootstrap`` is a parametric-bootstrap prediction interval that also carries the
uncertainty of the variance components (``--nsim``, ``--seed``). With ``--bayes`` the interval
is the equal-tailed posterior predictive interval (new schools' effects drawn from N(0, T) per
draw; the quantiles of the posterior predictive mixture, ``BayesPredictions.summary``). All
intervals at ``--level`` (default 0.95).
"""

from __future__ import annotations

import argparse
import warnings

from twolevel.data.errors import TwolevelError
from twolevel.data.loaders import load_data, read_table
from twolevel.workflows.commands import add_data_argument
from twolevel.workflows.commands.ols import write_csv_atomic


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand."""
    p = sub.add_parser(
        "predict",
        help="predict new students (existing or new schools) with intervals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_argument(p)
    p.add_argument("formula", metavar="FORMULA",
                   help="lme4 formula (several grouping factors, e.g. (1 | school/class): "
                        "REML with confidence, prediction or bootstrap intervals)")
    p.add_argument("--newdata", metavar="CSV", required=True,
                   help="CSV/Parquet file of the rows to predict (the formula's columns)")
    p.add_argument("--out", metavar="CSV", required=True, help="write the predictions here")
    p.add_argument("--re-form", default=None, metavar="NA",
                   help="'NA' (or '~0'): population-level predictions without school effects")
    p.add_argument("--allow-new-levels", action="store_true",
                   help="predict schools not in DATA (school effect 0, or a draw for --bayes)")
    p.add_argument("--interval", choices=("confidence", "prediction", "bootstrap"),
                   default="prediction", help="interval type (default: prediction)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--ml", action="store_true", help="fit by maximum likelihood, not REML")
    p.add_argument("--nsim", type=int, default=1000, help="bootstrap refits (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the bootstrap / the draws")
    p.add_argument("--bayes", action="store_true", help="Bayesian fit (NUTS) and predictive draws")
    p.add_argument("--draws", type=int, default=1000, help="NUTS draws per chain (--bayes)")
    p.add_argument("--chains", type=int, default=4, help="NUTS chains (--bayes)")
    p.add_argument("--tune", type=int, default=1000, help="NUTS tuning steps (--bayes)")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if not 0.0 < args.level < 1.0:
        raise TwolevelError(f"--level must be between 0 and 1 (e.g. 0.95), got {args.level}")
    if args.interval == "bootstrap" and args.nsim <= 0:
        raise TwolevelError(f"--nsim must be a positive number of refits, got {args.nsim}")
    if args.bayes and args.interval != "prediction":
        raise TwolevelError("--bayes gives posterior predictive intervals: use --interval "
                            "prediction (the default) with it")


def run(args: argparse.Namespace) -> int:
    """Fit, predict, write the CSV."""
    _check(args)
    df = load_data(args.data)
    nd = read_table(args.newdata)
    if args.bayes:
        from twolevel.models.bayes.fit import SamplerSettings, fit_bayes
        from twolevel.models.bayes.predict import predict_bayes

        settings = SamplerSettings(chains=args.chains, draws=args.draws, tune=args.tune,
                                   seed=args.seed)
        fit = fit_bayes(args.formula, df, settings=settings, progress=False,
                        log_likelihood="none")
        res = predict_bayes(fit, nd, re_form=args.re_form, allow_new_levels=args.allow_new_levels,
                            seed=args.seed).summary(args.level)
        cols = {"fit": res["fit"], "lwr": res["lwr"], "upr": res["upr"], "sd": res["sd"]}
    else:
        from twolevel.models.inference.predict import predict
        from twolevel.models.lmm.lmer import lmer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fit's notes belong to `twolevel fit`
            fit = lmer(args.formula, df, REML=not args.ml)
        res = predict(fit, nd, re_form=args.re_form, allow_new_levels=args.allow_new_levels,
                      interval=args.interval, level=args.level, nsim=args.nsim, seed=args.seed)
        cols = {"fit": res["fit"], "lwr": res["lwr"], "upr": res["upr"], "se": res["se"]}
    out = nd.copy()
    for k, v in cols.items():
        out[k] = v.to_numpy()
    write_csv_atomic(out, args.out)
    return 0
