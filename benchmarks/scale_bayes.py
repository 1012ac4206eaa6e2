"""Bayesian fit at scale (issue 13): ``fit_bayes`` through DuckDB against the REML fit. A script,
not a test.

Usage::

    .venv/bin/python benchmarks/scale_bayes.py [--rows 10000000] [--schools 100000]
        [--draws 1000] [--tune 1000] [--chains 2] [--scratch DIR] [--keep]

Writes the data of ``benchmarks/scale_out.py`` (same generator and formula) into a scratch folder,
fits REML with ``engine="duckdb"``, then ``fit_bayes(..., engine="duckdb")`` (collapsed likelihood,
per-school log-likelihood; school effects summarised when there are more than 20,000 schools).
Prints the statistics and sampling times, the diagnostic gate, and for every fixed effect
|γ̂_REML − posterior mean| / posterior SD (the acceptance asks for ≤ 0.2).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_out import FORMULA, REPO, generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=1e7)
    ap.add_argument("--schools", type=int, default=100_000)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()

    from twolevel.models.bayes.fit import SamplerSettings, fit_bayes
    from twolevel.models.lmm.lmer import lmer

    base = Path(args.scratch or tempfile.mkdtemp(prefix="twolevel-bayes-")).resolve()
    if REPO in base.parents or base == REPO:
        sys.exit(f"--scratch {base} is inside the repository; use a scratch folder elsewhere")
    n = int(args.rows)
    folder = base / f"n{n}_J{args.schools}"
    if not folder.exists() or not any(folder.glob("*.parquet")):
        folder.mkdir(parents=True, exist_ok=True)
        generate(folder, n, args.schools, args.seed)
    files = str(folder / "*.parquet")
    warnings.simplefilter("ignore", UserWarning)
    t = time.perf_counter()
    reml = lmer(FORMULA, files, engine="duckdb")
    t_reml = time.perf_counter() - t
    t = time.perf_counter()
    settings = SamplerSettings(chains=args.chains, draws=args.draws, tune=args.tune,
                               cores=args.cores, seed=args.seed)
    fit = fit_bayes(FORMULA, files, engine="duckdb", settings=settings, progress=False,
                    log_likelihood="school")
    t_bayes = time.perf_counter() - t
    d = fit.diagnostics
    print(f"{n:,} rows, {reml.ngroups:,} schools: REML (DuckDB statistics + fit) {t_reml:.1f} s; "
          f"fit_bayes {t_bayes:.1f} s (" + ", ".join(f"{k} {v:.1f} s"
                                                   for k, v in fit.timings.items()) + ")")
    print(f"gate: {'PASSED' if d.passed else 'FAILED'}; divergences {d.divergences}, max R-hat "
          f"{d.max_rhat:.4f}, min ESS bulk {d.min_ess_bulk:.0f}, tail {d.min_ess_tail:.0f}")
    post = fit.posterior_json()
    worst = 0.0
    for name, est in reml.fixef().items():
        p = post[f"fixef:{name}"]
        z = abs(est - p["mean"]) / p["sd"]
        worst = max(worst, z)
        print(f"  {name:12s} REML {est: .5f}  posterior {p['mean']: .5f} (sd {p['sd']:.5f})  "
              f"|diff|/sd {z:.3f}")
    stored = "school_effects (mean, sd per school)" if "school_effects" in fit.datatree else \
        "b_school draws"
    print(f"max |γ_REML − γ_post| / sd_post = {worst:.3f}; school effects stored as {stored}")
    if not args.keep:
        shutil.rmtree(base if not args.scratch else folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
