"""``twolevel fit DATA FORMULA``: fit a two-level linear mixed model by REML (or ML) like lme4.

``DATA`` is a built-in data set (``lecture``, ``hsb``, ``sleepstudy``) or the path of a CSV or
Parquet file. Prints lme4 + lmerTest's ``summary()`` (Satterthwaite df), or with ``--json`` one
object with the keys formula, reml, nobs, ngroups, criterion, loglik, aic, bic, theta, sigma,
fixef, se, df, t, p, varcorr, singular, converged, and the effect sizes icc (adjusted),
icc_unadjusted, r2_marginal, r2_conditional (as ``performance::icc`` / ``r2_nakagawa``; null for a
singular fit). ``--ranef CSV`` writes the BLUPs and their
conditional SDs per group.

With ``--family binomial|poisson`` (and ``--link``, ``--nagq``) the model is a GLMM fitted as
lme4's ``glmer``: the printout is glmer's ``summary()``, ``--json`` has the keys formula, family,
link, nagq, nobs, ngroups, deviance (−2 logLik as glmer reports it), loglik, aic, bic, theta,
fixef, se, z, p, varcorr, singular, converged, and ``--ranef`` writes the conditional modes and
``condsd_<effect>``. ``--confint wald|profile`` adds Wald or profile intervals (JSON key
``confint``); the other inference options are for linear mixed models only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

from twolevel.data.errors import TwolevelError
from twolevel.data.loaders import BUILTIN_DATASETS, load_data
from twolevel.models.fit_base import has_several_factors
from twolevel.models.lmm.lmer import lmer
from twolevel.workflows import inference
from twolevel.workflows.commands import (
    add_data_argument,
    add_engine_arguments,
    check_memory_engine_for_family,
    resolve_data,
    rows_read,
    survey,
)
from twolevel.workflows.commands.ols import write_csv_atomic


def data_label(spec: str) -> str:
    """The name printed on summary()'s "Data:" line: a built-in name, the file's stem, or a glob
    or folder as given."""
    if spec in BUILTIN_DATASETS or not Path(spec).is_file():
        return spec
    return Path(spec).stem


def write_parquet_atomic(frame, path: str) -> None:
    """Write a frame as Parquet through a temporary file in the same folder (no half files)."""
    import os
    import tempfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``fit`` subcommand."""
    p = sub.add_parser(
        "fit",
        help="REML/ML fit with lme4 + lmerTest's summary (Satterthwaite df)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_argument(p)
    p.add_argument("formula", metavar="FORMULA",
                   help="lme4 formula, e.g. 'g1rscore ~ 1 + famsesc + (1 + famsesc | schid)'")
    p.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--ranef", metavar="CSV",
                   help="write BLUPs and conditional SDs per group to this CSV file (a .parquet "
                   "name writes Parquet with the conditional variances too, for many schools)")
    p.add_argument("--optimizer", choices=("lme4", "tight", "newton"), default="lme4",
                   help="lme4: lme4's exact optimizer path (default); tight: then a polish; "
                        "newton (with --family): Newton steps on glmer's objective instead of "
                        "its Nelder-Mead, about twice as fast, within glmer's tolerances")
    p.add_argument("--family", choices=("binomial", "poisson"),
                   help="fit a GLMM like glmer (binary/binomial or count outcome)")
    p.add_argument("--link", help="link for --family: logit, probit, cloglog (binomial); log")
    p.add_argument("--nagq", type=int, default=1,
                   help="with --family: 1 = Laplace (default), up to 25 = adaptive "
                        "Gauss-Hermite quadrature (single random intercept only)")
    add_engine_arguments(p)  # --engine, --memory-limit, --scheduler
    inference.add_arguments(p)  # --ddf, --confint, --level, --nsim, --seed, --hlm, --schools
    survey.add_arguments(p)  # --weights, --conditional-weights, --weight-scaling, --pv
    p.set_defaults(func=run)


def _glmer_options_check(args: argparse.Namespace) -> None:
    if args.family is None:
        if args.link or args.nagq != 1:
            raise TwolevelError("--link and --nagq need --family binomial or --family poisson")
        if args.optimizer == "newton":
            raise TwolevelError("--optimizer newton is for --family fits (glmer); a linear mixed "
                                "model follows lme4's path (--optimizer lme4) or polishes it "
                                "(--optimizer tight)")
        return
    bad = [flag for flag, on in (
        ("--ml", args.ml), ("--hlm", args.hlm), ("--schools", args.schools),
        ("--ddf", args.ddf != "satterthwaite"),
        ("--confint " + str(args.confint), args.confint not in (None, "wald", "profile")),
    ) if on]
    if bad:
        raise TwolevelError(f"{', '.join(bad)} apply to linear mixed models only; with --family "
                            "use --json, --ranef, --nagq, --link, --optimizer, "
                            "--confint wald|profile")


def run_glmer(args: argparse.Namespace) -> int:
    """The --family path: glmer fit, summary or JSON, optional --ranef CSV."""
    from twolevel.models.glmm.glmer import glmer

    df = load_data(args.data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = glmer(args.formula, df, family=args.family, link=args.link, nAGQ=args.nagq,
                    optimizer=args.optimizer, data_name=data_label(args.data))
        ci = fit.confint(method=args.confint, level=args.level) if args.confint else None
    if args.json:
        out = fit.to_dict()
        if ci is not None:
            out["confint"] = {k: [float(v) for v in row] for k, row in zip(
                ci.index, ci.to_numpy(), strict=True)}
        print(json.dumps(out, indent=2))
        for w in caught:
            print(f"twolevel fit: note: {w.message}", file=sys.stderr)
    else:
        print(fit.summary())
        if ci is not None:
            print(f"\n{args.confint.capitalize()} confidence intervals:\n" + ci.to_string())
        shown = set(fit.notes) | set(fit.optinfo.messages)
        for w in caught:
            if str(w.message) not in shown:
                print(str(w.message))
    if args.ranef and has_several_factors(fit):  # long rows: factor, level, effect, mode, condsd
        write_csv_atomic(fit.ranef_long(), args.ranef)
    elif args.ranef:
        re = fit.ranef(cond_var=True)
        keep = list(fit.design.z_names) + [f"condsd_{n}" for n in fit.design.z_names]
        write_csv_atomic(re[keep].reset_index(), args.ranef)
    return 0


def _run_several(fit, args: argparse.Namespace, caught, source: dict) -> int:
    """Several grouping factors: summary or JSON (``random`` keyed by lme4's factor names,
    ``residual``, and ``source``'s ``engine`` and ``rows_read`` as for one factor), ``--ranef``
    as long rows factor, level, effect, mode, condsd; ``--hlm`` adds HLM3's reliabilities and χ²
    tests (two nested factors; JSON keys ``reliability``, ``chi2_tau``, each keyed by factor then
    coefficient)."""
    if args.schools:
        raise TwolevelError("--schools not available yet with several grouping factors; use "
                            "--json, --ranef, --ddf, --hlm, --confint wald|profile|boot")
    hlm3 = None
    if args.hlm:
        from twolevel.models.inference.hlm3 import hlm3_statistics_fit

        hlm3 = hlm3_statistics_fit(fit)  # before any output: an error leaves nothing half-done
    ddf = inference.DDF_CHOICES[args.ddf or "satterthwaite"]
    if ddf == "HLM":
        raise TwolevelError("--ddf hlm is for one grouping factor; with several use "
                            "--ddf satterthwaite or kenward-roger")
    ci = fit.confint(args.confint, args.level) if args.confint in ("wald", "profile") else None
    if args.confint == "boot":
        from twolevel.models.inference.simulate_multi import bootstrap_multi

        if args.nsim < 2:
            raise TwolevelError(f"--nsim must be at least 2 for bootstrap intervals, got "
                                f"{args.nsim}")
        ci = bootstrap_multi(fit, args.nsim, args.seed).confint(args.level)
    if args.json:
        out = fit.to_dict(ddf) | source
        if ci is not None:
            out["confint"] = {str(n): [None if math.isnan(v) else float(v) for v in row]
                              for n, row in zip(ci.index, ci.to_numpy(), strict=True)}
        if hlm3 is not None:
            out |= hlm3.to_dict()
        print(json.dumps(out, indent=2))
        for w in caught:
            print(f"twolevel fit: note: {w.message}", file=sys.stderr)
    else:
        print(fit.summary(ddf))
        if ci is not None:
            title = {"wald": "Wald", "profile": "likelihood profile"}.get(
                args.confint, f"parametric bootstrap, {args.nsim} simulations, seed {args.seed}")
            print(f"\nConfidence intervals ({title}):\n"
                  + ci.to_string(float_format=lambda v: f"{v:.4f}", na_rep="NA"))
        if hlm3 is not None:
            print("\nHLM3 statistics:\n" + hlm3.summary())
        for w in caught:
            print(str(w.message))
    if args.ranef:
        write_csv_atomic(fit.ranef_long(), args.ranef)
    return 0


def run(args: argparse.Namespace) -> int:
    """Fit, then print the summary or the JSON object; write --ranef if asked."""
    if survey.wanted(args):
        return survey.run_survey(args, data_label(args.data))
    check_memory_engine_for_family(args)
    _glmer_options_check(args)
    if args.family is not None:
        return run_glmer(args)
    df, engine, opts = resolve_data(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = lmer(args.formula, df, REML=not args.ml, optimizer=args.optimizer,
                   data_name=data_label(args.data), engine=engine,
                   **(opts | ({"per_group_x": True}
                              if opts and (args.hlm or args.schools or args.confint == "boot")
                              else {})))
    if has_several_factors(fit):
        return _run_several(fit, args, caught, {"engine": engine, "rows_read": rows_read(fit, df)})
    with warnings.catch_warnings(record=True) as caught_extra:
        warnings.simplefilter("always")
        extras = inference.compute(fit, args)  # before any output: errors leave nothing half-done
    caught = list(caught) + list(caught_extra)
    if args.json:
        es = {k: (v if math.isfinite(v) else None) for k, v in fit.effect_sizes().items()}
        out = fit.to_dict(extras.ddf) | es | extras.json
        out |= {"engine": engine, "rows_read": rows_read(fit, df)}
        print(json.dumps(out, indent=2))
        for w in caught_extra:  # lme4's notes on the intervals; stdout holds only the JSON
            print(f"twolevel fit: note: {w.message}", file=sys.stderr)
    else:
        print(fit.summary(extras.ddf))
        for block in extras.text:
            print("\n" + block)
        shown = set(fit.design.notes) | {fit.singular_explanation()}
        for w in caught:
            if str(w.message) not in shown:
                print(str(w.message))
    if args.ranef and args.ranef.lower().endswith(".parquet"):
        write_parquet_atomic(fit.ranef(cond_var=True).reset_index(), args.ranef)
    elif args.ranef:
        re = fit.ranef(cond_var=True)
        keep = list(fit.design.z_names) + [f"condsd_{n}" for n in fit.design.z_names]
        write_csv_atomic(re[keep].reset_index(), args.ranef)
    extras.write_files(args)
    return 0
