"""Benchmark of the Bayesian fit (a script, not a test): wall time and min-ESS per second.

    .venv/bin/python benchmarks/bayes_speed.py [--data lecture hsb] [--skip-hand]

Each run is a fresh Python process, timed from its start (interpreter, imports, PyTensor/Numba
compilation, sampling, drawing the school effects and diagnostics all included):

* ``ours``: ``twolevel bayes DATA FORMULA --json`` — the default model (LKJ(2) prior, school
  effects integrated out and drawn afterwards from their exact conditional posterior; nutpie with
  its low-rank mass-matrix adaptation), 4 chains × 1000 draws after 1000 tuning steps on 2 cores;
  R̂ and ESS over every parameter, half of them in a helper process. Like ``pm.sample()``'s
  default, ``--json`` computes no pointwise log-likelihood (nothing reads it; ``--out`` adds the
  per-school one, and :func:`twolevel.models.bayes.fit.fit_bayes` stores per-student and per-school ones).
* ``hand``: the model a PyMC user writes by hand — observation-level likelihood, non-centred school
  effects ``z @ chol.T``, ``pm.LKJCholeskyCov(eta=2)`` — with the same priors, draws, chains and
  cores as ours, sampled twice: with ``pm.sample()``'s defaults (which pick nutpie when it is
  installed, as it is beside twolevel; if that fails, as recorded in stack-notes, PyMC's own NUTS
  is run and the failure reported) and with PyMC's own NUTS (``nuts_sampler="pymc"``, what a
  PyMC installation without nutpie runs). R̂ and ESS over the same parameters with ArviZ in one
  process (:func:`twolevel.models.bayes.fit.diagnose`), as a user of ``pm.sample()`` gets them.
* bambi is reported only when installed (its default model has no intercept–slope correlation).

For every run: divergences, max R-hat and min bulk ESS over **all** parameters (γ, SDs,
correlation, σ and every school effect), and min-ESS per second of wall time. Ratios are against
the two hand-written runs measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "lecture": ("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", "g1rscore", "famsesc", "schid"),
    "hsb": ("mAch ~ 1 + cses + (1 + cses | school)", "mAch", "cses", "school"),
}


def hand_written(data: str, draws: int, tune: int, chains: int, seed: int,
                 nuts_sampler: str | None) -> dict:
    """The observation-level non-centred LKJ model, written as in PyMC's documentation."""
    import numpy as np
    import pymc as pm

    from twolevel.data.loaders import load_data
    from twolevel.models.bayes.fit import diagnose
    from twolevel.models.design import make_design
    from twolevel.models.bayes.priors import default_priors

    formula, y, x, g = CASES[data]
    df = load_data(data)
    pri = default_priors(make_design(formula, df))  # the same priors as ours
    schools, codes = np.unique(df[g].astype(str).to_numpy(), return_inverse=True)
    coords = {"school": schools, "effect": ["(Intercept)", x], "effect_b": ["(Intercept)", x],
              "fixed": ["(Intercept)", x]}
    with pm.Model(coords=coords):
        beta = pm.Normal("beta", mu=np.array(pri.beta.params["mu"]),
                         sigma=np.array(pri.beta.params["sigma"]), dims="fixed")
        chol, corr, sds = pm.LKJCholeskyCov(
            "chol_cov", n=2, eta=2.0, compute_corr=True,
            sd_dist=getattr(pm, pri.sd.dist).dist(
                **{k: np.array(v) for k, v in pri.sd.params.items()}, shape=2))
        pm.Deterministic("sd", sds, dims="effect")
        pm.Deterministic("corr", corr, dims=("effect", "effect_b"))
        z = pm.Normal("z", 0.0, 1.0, dims=("school", "effect"))
        b = pm.Deterministic("b_school", z @ chol.T, dims=("school", "effect"))
        sigma = pm.HalfStudentT("sigma", nu=4.0, sigma=float(pri.sigma.params["sigma"]))
        xv = df[x].to_numpy(float)
        mu = beta[0] + b[codes, 0] + (beta[1] + b[codes, 1]) * xv
        pm.Normal("y", mu=mu, sigma=sigma, observed=df[y].to_numpy(float))
        sampler = "pymc" if nuts_sampler == "pymc" else "default (nutpie)"
        try:
            dt = pm.sample(draws=draws, tune=tune, chains=chains, cores=2, random_seed=seed,
                           progressbar=False, nuts_sampler=nuts_sampler)
        except Exception as exc:  # noqa: BLE001 - reported, then PyMC's own NUTS
            sampler = f"pymc (default failed: {type(exc).__name__}: {str(exc)[:120]})"
            dt = pm.sample(draws=draws, tune=tune, chains=chains, cores=2, random_seed=seed,
                           progressbar=False, nuts_sampler="pymc")
    d = diagnose(dt)
    return {"sampler": sampler, "divergences": d.divergences, "max_rhat": d.max_rhat,
            "min_ess_bulk": d.min_ess_bulk, "min_ess_tail": d.min_ess_tail}


def run_fresh(args: list[str]) -> tuple[float, str]:
    """Run a command in a fresh process; (wall seconds, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["lecture", "hsb"], choices=list(CASES))
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--seed", type=int, default=20250121)
    ap.add_argument("--skip-hand", action="store_true", help="only our fit")
    ap.add_argument("--worker", choices=["hand", "hand-pymc"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        sampler = "pymc" if a.worker == "hand-pymc" else None
        print(json.dumps(hand_written(a.worker_data, a.draws, a.tune, a.chains, a.seed, sampler)))
        return

    py = sys.executable
    rows = []
    for data in a.data:
        formula = CASES[data][0]
        wall, out = run_fresh([py, "-m", "twolevel.workflows.cli", "bayes", data, formula, "--json",
                               "--no-progress", "--draws", str(a.draws), "--tune", str(a.tune),
                               "--chains", str(a.chains), "--seed", str(a.seed)])
        r = json.loads(out)
        rows.append({"data": data, "model": "ours (collapsed, nutpie)", "wall_s": wall,
                     "divergences": r["divergences"], "max_rhat": r["max_rhat"],
                     "min_ess_bulk": r["min_ess_bulk"], "min_ess_tail": r["min_ess_tail"]})
        print(f"[{data}] ours: {wall:.1f} s, min ESS bulk {r['min_ess_bulk']:.0f}", flush=True)
        for worker in ([] if a.skip_hand else ["hand", "hand-pymc"]):
            wall, out = run_fresh([py, str(Path(__file__).resolve()), "--worker", worker,
                                   "--worker-data", data, "--draws", str(a.draws), "--tune",
                                   str(a.tune), "--chains", str(a.chains), "--seed", str(a.seed)])
            r = json.loads(out.strip().splitlines()[-1])
            rows.append({"data": data, "model": f"hand-written, sampler {r['sampler']}",
                         "wall_s": wall, "divergences": r["divergences"],
                         "max_rhat": r["max_rhat"], "min_ess_bulk": r["min_ess_bulk"],
                         "min_ess_tail": r["min_ess_tail"]})
            print(f"[{data}] {worker}: {wall:.1f} s, min ESS bulk {r['min_ess_bulk']:.0f}",
                  flush=True)
    try:
        import bambi  # noqa: F401
        print("bambi is installed but not benchmarked here (no intercept-slope correlation)")
    except ImportError:
        print("bambi: not installed (and its default model has no intercept-slope correlation)")

    import pandas as pd

    t = pd.DataFrame(rows)
    t["min_ess_per_s"] = t["min_ess_bulk"] / t["wall_s"]
    for data in t["data"].unique():
        sel = t["data"] == data
        for kind in ("default (nutpie)", "pymc"):
            hand = t[sel & (t["model"] == f"hand-written, sampler {kind}")]
            if len(hand):
                t.loc[sel, f"ratio_vs_hand_{kind.split()[0]}"] = (
                    t.loc[sel, "min_ess_per_s"] / float(hand["min_ess_per_s"].iloc[0]))
    print()
    print(f"{a.chains} chains x {a.draws} draws (+{a.tune} tuning), fresh process each, 2 cores")
    from twolevel.workflows.report import markdown_table

    print(markdown_table(t, digits=4))


if __name__ == "__main__":
    main()
