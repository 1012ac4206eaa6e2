"""Benchmark of the Bayesian fit (a script, not a test): wall time and min-ESS per second.

    .venv/bin/python benchmarks/bayes_speed.py [--data lecture hsb] [--skip-hand] [--skip-pymc]

Each run is a fresh Python process, timed from its start (interpreter, imports, compilation,
sampling, drawing the school effects and diagnostics all included). Every model is run twice,
and ours ``--repeats`` times over (default 3, a new empty cache each time; the median wall time
is reported, the single times beside it: a 4-second run varies by ±0.5 s on this machine):

* **cold**: with empty caches, as on a fresh machine — a new numba cache directory
  (``NUMBA_CACHE_DIR``) and a new PyTensor compile directory
  (``PYTENSOR_FLAGS=base_compiledir=…``, which holds PyTensor's own numba cache too);
* **warm**: again, with the caches the cold run filled.

Models:

* ``ours``: :func:`twolevel.models.bayes.fit.fit_bayes` with its defaults — the collapsed model
  (LKJ(2) prior, school effects integrated out and drawn afterwards from their exact conditional
  posterior) through its compiled log-density and gradient (numba, cached) in nutpie's Rust NUTS
  with the low-rank mass-matrix adaptation, 4 chains × 1000 draws after 1000 tuning steps on 2
  cores; R̂ and ESS over every parameter (vectorised). Like ``pm.sample()``'s default it computes
  no pointwise log-likelihood (``log_likelihood="none"``). The ``twolevel bayes`` command runs the
  same function; its own start-up (the CLI imports every command module) is not counted here.
* ``hand``: the model a PyMC user writes by hand — observation-level likelihood, non-centred school
  effects ``z @ chol.T``, ``pm.LKJCholeskyCov(eta=2)`` — with the same priors, draws, chains and
  cores as ours, sampled twice: with ``pm.sample()``'s defaults (which pick nutpie when it is
  installed, as it is beside twolevel; if that fails, as recorded in stack-notes, PyMC's own NUTS
  is run and the failure reported) and with PyMC's own NUTS (``nuts_sampler="pymc"``, what a
  PyMC installation without nutpie runs; ``--skip-pymc`` leaves it out). R̂ and ESS over the
  same parameters by :func:`twolevel.models.bayes.fit.diagnose` (our vectorised version of
  ArviZ's, faster than the ``az.rhat``/``az.ess`` a user would call: the hand model's times are
  flattered, not ours).
* bambi is reported only when installed (its default model has no intercept–slope correlation).

For every run: divergences, max R-hat and min bulk ESS over **all** parameters (γ, SDs,
correlation, σ and every school effect), and min-ESS per second of wall time. Ratios are against
the hand-written runs measured in the same run (warm against warm), and cold/warm per model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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
    from twolevel.models.bayes.priors import default_priors
    from twolevel.models.design import make_design

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


def ours(data: str, draws: int, tune: int, chains: int, seed: int) -> dict:
    """twolevel's default Bayesian fit, as a user calls it."""
    import warnings

    from twolevel.data.loaders import load_data
    from twolevel.models.bayes.fit import SamplerSettings, fit_bayes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a failed gate shows in the numbers
        fit = fit_bayes(CASES[data][0], load_data(data), progress=False, log_likelihood="none",
                        settings=SamplerSettings(draws=draws, tune=tune, chains=chains,
                                                 seed=seed))
    d = fit.diagnostics
    return {"sampler": fit.sampler, "divergences": d.divergences, "max_rhat": d.max_rhat,
            "min_ess_bulk": d.min_ess_bulk, "min_ess_tail": d.min_ess_tail}


def run_fresh(args: list[str], env: dict | None = None) -> tuple[float, str]:
    """Run a command in a fresh process; (wall seconds, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=3600,
                          env=env)
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
    ap.add_argument("--skip-pymc", action="store_true", help="no hand-written run on PyMC's NUTS")
    ap.add_argument("--repeats", type=int, default=3,
                    help="cold+warm pairs of our fit (median wall time; default 3)")
    ap.add_argument("--hand-repeats", type=int, default=1,
                    help="cold+warm pairs of each hand-written run (default 1)")
    ap.add_argument("--worker", choices=["ours", "hand", "hand-pymc"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        if a.worker == "ours":
            res = ours(a.worker_data, a.draws, a.tune, a.chains, a.seed)
        else:
            sampler = "pymc" if a.worker == "hand-pymc" else None
            res = hand_written(a.worker_data, a.draws, a.tune, a.chains, a.seed, sampler)
        print(json.dumps(res))
        return

    import os
    import tempfile

    py = sys.executable
    rows = []
    label = {"ours": "ours (collapsed, compiled, nutpie)", "hand": "hand-written, pm.sample()",
             "hand-pymc": "hand-written, PyMC NUTS"}
    workers = ["ours"] + ([] if a.skip_hand else ["hand"] + ([] if a.skip_pymc else ["hand-pymc"]))
    for data in a.data:
        for worker in workers:
            reps = a.repeats if worker == "ours" else a.hand_repeats
            walls: dict[str, list[float]] = {"cold": [], "warm": []}
            for _ in range(reps):
                with tempfile.TemporaryDirectory(prefix="bayes_speed_") as tmp:
                    env = {**os.environ, "NUMBA_CACHE_DIR": os.path.join(tmp, "numba"),
                           "TWOLEVEL_CACHE_DIR": os.path.join(tmp, "twolevel"),
                           "PYTENSOR_FLAGS": f"base_compiledir={os.path.join(tmp, 'pytensor')}"}
                    for state in ("cold", "warm"):
                        wall, out = run_fresh([py, str(Path(__file__).resolve()), "--worker",
                                               worker, "--worker-data", data, "--draws",
                                               str(a.draws), "--tune", str(a.tune), "--chains",
                                               str(a.chains), "--seed", str(a.seed)], env)
                        r = json.loads(out.strip().splitlines()[-1])
                        walls[state].append(wall)
                        print(f"[{data}] {worker} {state}: {wall:.1f} s, min ESS bulk "
                              f"{r['min_ess_bulk']:.0f}", flush=True)
            model = label[worker]
            if worker == "hand" and not r["sampler"].startswith("default"):
                model += f" [{r['sampler']}]"
            for state in ("cold", "warm"):  # the same seed: the same draws every repeat
                rows.append({"data": data, "model": model, "caches": state,
                             "wall_s": float(np.median(walls[state])),
                             "walls": " ".join(f"{w:.2f}" for w in walls[state]),
                             "divergences": r["divergences"], "max_rhat": r["max_rhat"],
                             "min_ess_bulk": r["min_ess_bulk"],
                             "min_ess_tail": r["min_ess_tail"]})
    try:
        import bambi  # noqa: F401
        print("bambi is installed but not benchmarked here (no intercept-slope correlation)")
    except ImportError:
        print("bambi: not installed (and its default model has no intercept-slope correlation)")

    import pandas as pd

    t = pd.DataFrame(rows)
    t["min_ess_per_s"] = t["min_ess_bulk"] / t["wall_s"]
    for (_data, _model), g in t.groupby(["data", "model"], sort=False):
        cold = g.loc[g["caches"] == "cold", "wall_s"]
        warm = g.loc[g["caches"] == "warm", "wall_s"]
        if len(cold) and len(warm):
            t.loc[g.index, "cold_over_warm"] = float(cold.iloc[0]) / float(warm.iloc[0])
    warm = t["caches"] == "warm"
    for data in t["data"].unique():
        sel = warm & (t["data"] == data)
        ours_rate = t.loc[sel & t["model"].str.startswith("ours"), "min_ess_per_s"]
        for kind, col in (("hand-written, pm.sample()", "ours_over_hand_nutpie"),
                          ("hand-written, PyMC NUTS", "ours_over_hand_pymc")):
            hand = t[sel & t["model"].str.startswith(kind)]
            if len(hand) and len(ours_rate):
                t.loc[sel & t["model"].str.startswith("ours"), col] = (
                    float(ours_rate.iloc[0]) / float(hand["min_ess_per_s"].iloc[0]))
    print()
    print(f"{a.chains} chains x {a.draws} draws (+{a.tune} tuning), fresh process each, "
          f"{os.cpu_count()} cores, load average before the run {LOAD0}; wall_s is the median "
          f"of the repeats in 'walls' ({a.repeats} for ours, {a.hand_repeats} for the hand model)")
    from twolevel.workflows.report import markdown_table

    print(markdown_table(t, digits=4))


LOAD0 = ""

if __name__ == "__main__":
    import os as _os

    LOAD0 = " ".join(f"{v:.2f}" for v in _os.getloadavg())
    main()
