"""``twolevel bayes DATA FORMULA``: the same two-level model by NUTS (PyMC model, nutpie sampler).

``DATA`` is a built-in data set (``lecture``, ``hsb``, ``sleepstudy``) or a CSV/Parquet file;
``FORMULA`` is the lme4 formula of ``twolevel fit``. The default model has an LKJ(2) prior on the
correlation of the school effects and integrates the school effects out (they are drawn afterwards
from their exact conditional posterior); ``--likelihood suffstat`` samples them non-centred.
Prints the summary with the diagnostic gate (divergences, R-hat, ESS over every parameter,
BFMI), or with ``--json`` one object with divergences, max_rhat, min_ess_bulk, min_ess_tail,
wall_seconds, draws, chains and posterior ({name: {mean, sd, q2.5, q97.5}} for fixef:<name>,
sd:<effect>, corr:<a>:<b>, sigma). ``--family binomial|poisson [--link L]`` fits a binary or
count outcome (glmer's response forms; link-scale priors; no sigma): the school effects
integrated out by adaptive Gauss–Hermite quadrature inside NUTS and drawn afterwards where that
applies (``--sampler auto``, default), else (or with ``--sampler full``) sampled non-centred.
``--out DIR`` saves the posterior as ``DIR/posterior.nc`` (reopen with ``arviz.from_netcdf``;
with each school's log-likelihood, its effects integrated out, for leave-one-school-out) and the
summary as ``DIR/summary.txt``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from twolevel.data.errors import TwolevelError
from twolevel.workflows.commands import (
    add_data_argument,
    add_engine_arguments,
    check_memory_engine_for_family,
    resolve_data,
    rows_read,
)
from twolevel.workflows.report import atomic_replace_dir


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bayes`` subcommand."""
    from twolevel.models.bayes.fit import SamplerSettings

    d = SamplerSettings()
    p = sub.add_parser(
        "bayes",
        help="Bayesian fit by NUTS (LKJ prior, school effects integrated out or non-centred)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_argument(p)
    p.add_argument("formula", metavar="FORMULA", help="lme4 formula with one grouping factor")
    p.add_argument("--chains", type=int, default=d.chains)
    p.add_argument("--draws", type=int, default=None,
                   help=f"draws per chain (default {d.draws}; {d.for_family('binomial').draws} "
                        "for binomial/poisson)")
    p.add_argument("--tune", type=int, default=None,
                   help=f"tuning steps per chain (default {d.tune}; "
                        f"{d.for_family('binomial', sampler='integrated').tune} with --sampler "
                        "integrated)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--target-accept", type=float, default=None,
                   help=f"default {d.target_accept} ({d.for_family('binomial').target_accept} "
                        "for binomial/poisson)")
    p.add_argument("--cores", type=int, default=d.cores)
    p.add_argument("--likelihood", choices=("collapsed", "suffstat", "student"),
                   default="collapsed", help="default %(default)s (normal outcomes)")
    p.add_argument("--family", choices=("gaussian", "binomial", "poisson"), default="gaussian",
                   help="binomial (0/1, cbind(s, f)) or poisson (counts, offset(log(e))) outcomes: "
                        "school effects sampled non-centred; default %(default)s")
    p.add_argument("--link", help="binomial: logit (default), probit, cloglog; poisson: log")
    p.add_argument("--sampler", choices=("full", "integrated", "auto"), default=None,
                   help="binomial/poisson: 'auto' (default) the integrated sampler where it "
                        "applies, else 'full' with a line saying why; 'integrated' integrates "
                        "each school's effects out by adaptive Gauss-Hermite quadrature inside "
                        "NUTS and draws them afterwards; 'full' samples every school effect "
                        "non-centred")
    p.add_argument("--out", metavar="DIR", help="save posterior.nc and summary.txt here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.link and args.family == "gaussian":
        raise TwolevelError("--link needs --family binomial or --family poisson")
    if args.sampler and args.family == "gaussian":
        raise TwolevelError("--sampler needs --family binomial or --family poisson (a normal "
                            "outcome's school effects are always integrated out exactly)")
    for name in ("chains", "draws", "tune", "cores"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise TwolevelError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.target_accept is not None and not 0.5 <= args.target_accept < 1:
        raise TwolevelError(f"--target-accept must be in [0.5, 1), got {args.target_accept}")


def run(args: argparse.Namespace) -> int:
    """Fit, print, then write --out (atomically: the folder appears whole or not at all)."""
    from twolevel.models.bayes.fit import SamplerSettings, fit_bayes

    t0 = time.perf_counter()
    _check(args)
    check_memory_engine_for_family(args)
    df, engine, opts = resolve_data(args)
    check_memory_engine_for_family(args, engine)
    sampler = args.sampler or "auto"
    if sampler == "auto" and args.family != "gaussian":
        from twolevel.models.bayes.glmm_fit import integrated_sampler_reason

        why = integrated_sampler_reason(args.formula, df, args.family, args.link)
        if why is not None:
            print(f"twolevel bayes: {why}; sampling every school effect (--sampler full)",
                  file=sys.stderr)
        sampler = "integrated" if why is None else "full"
    settings = SamplerSettings.for_family(args.family, sampler=sampler, chains=args.chains,
                                          draws=args.draws, tune=args.tune, seed=args.seed,
                                          target_accept=args.target_accept, cores=args.cores)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        # compute only what is written: posterior.nc keeps the per-school log-likelihood
        # (leave-one-school-out); nothing else here reads a log-likelihood
        fit = fit_bayes(args.formula, df, likelihood=args.likelihood, settings=settings,
                        progress=not (args.no_progress or args.json),
                        log_likelihood="school" if args.out else "none",
                        family=args.family, link=args.link, engine=engine,
                        memory_limit=opts.get("memory_limit"), scheduler=opts.get("scheduler"),
                        sampler=sampler)
    wall = time.perf_counter() - t0
    d = fit.diagnostics
    if args.json:
        print(json.dumps({
            "divergences": d.divergences, "max_rhat": d.max_rhat,
            "min_ess_bulk": d.min_ess_bulk, "min_ess_tail": d.min_ess_tail,
            "wall_seconds": wall, "draws": settings.draws, "chains": settings.chains,
            "posterior": fit.posterior_json(),
            "engine": engine, "rows_read": rows_read(fit, df),
        }, indent=2))
    else:
        print(fit.summary())
        print(f"\nwall time {wall:.1f} s (" + ", ".join(f"{k} {v:.1f} s"
                                                      for k, v in fit.timings.items()) + ")")
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "NUTS fit" in str(w.message):
            print(f"twolevel bayes: warning: {w.message}", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            fit.save(tmp / "posterior.nc")
            (tmp / "summary.txt").write_text(fit.summary() + "\n")
            atomic_replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return 0
