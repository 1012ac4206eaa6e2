"""``twolevel fit DATA FORMULA --weights L1 L2 [--pv COL …]``: the survey path of ``fit``.

With ``--family binomial|poisson`` (and ``--nagq``) a weighted random-intercept GLMM is fitted.
Weighted fits are pseudo-maximum likelihood (``--ml`` is implied; REML is not defined with
sampling weights). ``--json`` prints the keys of an unweighted fit that apply — ``fixef``,
``se`` (robust; Rubin's √T with ``--pv``), ``varcorr``, ``loglik`` (the log pseudo-likelihood;
the mean over sets with ``--pv``), ``nobs``, ``ngroups`` — plus ``weights`` {level1, level2,
conditional, scaling}, ``varcorr_se`` {variances, covariances, residual} (sandwich; pooled by
Rubin's rules with ``--pv``) and, with ``--pv``, ``pv`` {m, within, between, total, riv, fmi,
df_rubin, df_barnard_rubin, df_com}. ``--engine duckdb|dask`` (and ``--scheduler``) compute the
weighted sums where the files are (not with ``--pv`` or ``--family``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from twolevel.data.errors import TwolevelError
from twolevel.data.loaders import load_data
from twolevel.models.lmm.lmer import lmer
from twolevel.workflows.commands import resolve_data
from twolevel.workflows.commands.ols import write_csv_atomic

__all__ = ["add_arguments", "wanted", "run_survey"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--weights, --conditional-weights, --weight-scaling, --pv."""
    p.add_argument("--weights", nargs=2, metavar=("L1COL", "L2COL"),
                   help="sampling weights: level-1 (student) and level-2 (school) columns; "
                        "pseudo-maximum likelihood with cluster-robust SEs")
    p.add_argument("--conditional-weights", action="store_true",
                   help="the level-1 weights are conditional on the school (Stata, Mplus); "
                        "default: unconditional (WeMix), divided by the school weight")
    p.add_argument("--weight-scaling", choices=("none", "size", "effective"), default="none",
                   help="rescale level-1 weights within schools: none (default), size (sum to "
                        "n_j) or effective (sum to the effective n_j)")
    p.add_argument("--pv", nargs="+", metavar="COL",
                   help="plausible values: the formula's response is the first column; every "
                        "column is fitted in turn and the fits pooled by Rubin's rules")


def wanted(args: argparse.Namespace) -> bool:
    """Whether the survey path applies (any of its flags given)."""
    return bool(args.weights or args.pv or args.conditional_weights
                or args.weight_scaling != "none")


def _check(args: argparse.Namespace) -> None:
    if not args.weights and (args.conditional_weights or args.weight_scaling != "none"):
        raise TwolevelError("--conditional-weights and --weight-scaling need --weights L1COL L2COL")
    bad = [flag for flag, on in (
        ("--family with --pv", args.family is not None and bool(args.pv)),
        ("--family without --weights", args.family is not None and not args.weights),
        ("--hlm", args.hlm),
        ("--schools", args.schools), ("--confint", args.confint is not None),
        ("--ddf", args.ddf != "satterthwaite"),
        ("--engine duckdb|dask with --pv or --family",
         (args.engine not in ("auto", "memory") or bool(args.scheduler))
         and (bool(args.pv) or args.family is not None)),
    ) if on]
    if bad:
        raise TwolevelError(f"{', '.join(bad)} cannot be combined with --weights/--pv; weighted "
                            "and plausible-value fits give robust (or Rubin) SEs and Wald tests: "
                            "use --json, --ranef, --conditional-weights, --weight-scaling, --pv")
    if args.pv and args.ranef:
        raise TwolevelError("--ranef is for one fit; with --pv there is one per plausible value")


def run_survey(args: argparse.Namespace, data_name: str) -> int:
    """Fit, then print the summary or the JSON object."""
    _check(args)
    if args.pv or args.family is not None:
        df, opts = load_data(args.data), {}
    else:
        df, engine, opts = resolve_data(args)
        opts = {k: v for k, v in opts.items() if k in ("memory_limit", "scheduler")}
        opts["engine"] = engine
    weights = tuple(args.weights) if args.weights else None
    formula = args.formula
    if args.pv:
        response = formula.split("~", 1)[0].strip()
        if response != args.pv[0]:
            raise TwolevelError(f"with --pv the formula's response must be the first PV column "
                                f"'{args.pv[0]}', got '{response}'")
    reml = not args.ml and weights is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.family is not None:
            from twolevel.models.glmm.glmer import glmer

            if args.link:
                raise TwolevelError("weighted GLMMs use the canonical link (logit, log); drop "
                                    "--link")
            fit = glmer(formula, df, family=args.family, nAGQ=args.nagq, weights=weights,
                        conditional_weights=args.conditional_weights,
                        weight_scaling=args.weight_scaling, data_name=data_name)
        else:
            fit = lmer(formula, df, REML=reml, weights=weights,
                       conditional_weights=args.conditional_weights,
                       weight_scaling=args.weight_scaling, pv=args.pv, data_name=data_name,
                       **opts)
        out = fit.to_dict()
        if weights is not None:
            out["weights"] = {"level1": weights[0], "level2": weights[1],
                              "conditional": bool(args.conditional_weights),
                              "scaling": args.weight_scaling}
    if args.json:
        print(json.dumps(out, indent=2))
        for msg in dict.fromkeys(str(w.message) for w in caught):
            print(f"twolevel fit: note: {msg}", file=sys.stderr)
    else:
        print(fit.summary())
        shown = set(getattr(fit, "notes", ()))
        for msg in dict.fromkeys(str(w.message) for w in caught):  # once, not once per PV
            if msg not in shown:
                print(msg)
    if args.ranef:
        re = fit.ranef(cond_var=True)
        keep = [c for c in list(fit.design.z_names)
                + [f"condsd_{n}" for n in fit.design.z_names] if c in re.columns]
        write_csv_atomic(re[keep].reset_index(), args.ranef)
    return 0
