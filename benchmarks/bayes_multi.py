"""The Bayesian three-level model (students in classes in schools; a script, not a test): the
default fit's diagnostic gate, its agreement with REML, and min-ESS per second against the
hand-written non-centred PyMC model.

    .venv/bin/python benchmarks/bayes_multi.py [--seed 1] [--schools 100] [--large-schools 500]
                                               [--skip-hand] [--hand-nutpie]

Data: ``--schools`` schools of 4 classes of 8–12 students (class labels 1–4 reused in every
school), x ~ N(0, 1), y = 1 + 0.5x + school intercept (SD 1) and slope (SD 0.4, correlation 0.3)
+ class intercept (SD 0.6) + N(0, 0.8²), fitted as
``y ~ x + (1 + x | school) + (1 | school:cls)``.

* ``ours``: ``fit_bayes`` with its defaults (the collapsed three-level model — classes and
  schools integrated out — compiled by PyTensor/Numba for nutpie; 4 × 1,000 draws; the class and
  school effects drawn afterwards); the gate over every parameter (γ, the SDs and correlation,
  every class and school effect).
* ``hand``: the same model as a PyMC user writes it — non-centred (``z ~ N(0, 1)``,
  ``b = z Lᵀ`` per factor, LKJ per factor, observation-level ``pm.Normal``; the same priors:
  :func:`twolevel.models.bayes.pymc_multi.build_multi_model` with ``likelihood="noncentered"``),
  ``pm.sample()`` with its defaults; ``hand_nutpie`` (``--hand-nutpie``): the same with
  ``nuts_sampler="nutpie"``.
* ``large``: ``ours`` on ``--large-schools`` schools (the "large simulated set"): posterior means
  of the variance components (school τ00, τ11, class τ, σ²) against REML (``tl.lmer``) in
  posterior SDs; target |difference| ≤ 0.2 posterior SD and the gate passed.

Each fit in a fresh process, timed whole (imports, compilation, sampling, effects); min-ESS per
second = min(bulk, tail ESS over every parameter) / wall. Target: ours / hand ≥ 10.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd

FORMULA = "y ~ x + (1 + x | school) + (1 | school:cls)"


def simulate(seed: int, n_school: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    L = np.array([[1.0, 0.0], [0.3 * 0.4, np.sqrt(1 - 0.09) * 0.4]])
    rows = []
    for s in range(n_school):
        u = L @ rng.normal(size=2)
        for c in range(4):
            uc = rng.normal(0, 0.6)
            m = int(rng.integers(8, 13))
            x = rng.normal(size=m)
            y = 1.0 + 0.5 * x + u[0] + u[1] * x + uc + rng.normal(0, 0.8, m)
            rows.append(pd.DataFrame({"school": s + 1, "cls": c + 1, "x": x, "y": y}))
    return pd.concat(rows, ignore_index=True)


def _gate(dg) -> dict:
    return {"divergences": dg.divergences, "max_rhat": dg.max_rhat, "worst_rhat": dg.worst_rhat,
            "min_ess_bulk": dg.min_ess_bulk, "min_ess_tail": dg.min_ess_tail,
            "worst_ess": dg.worst_ess, "passed": dg.passed}


def ours(seed: int, n_school: int) -> dict:
    from twolevel.models.bayes.fit import fit_bayes

    d = simulate(seed, n_school)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_bayes(FORMULA, d, progress=False)
    vc = fit.variance_components()
    return {**_gate(fit.diagnostics), "timings": fit.timings, "sampler": fit.sampler,
            "vc_mean": vc["mean"].to_dict(), "vc_sd": vc["sd"].to_dict(), "n": len(d)}


def hand(seed: int, n_school: int, nuts_sampler: str = "pymc") -> dict:
    import pymc as pm

    from twolevel.models.bayes.fit_multi import flat_params_multi
    from twolevel.models.bayes.gate import diagnose
    from twolevel.models.bayes.pymc_multi import build_multi_model
    from twolevel.models.design.multi import make_multi_design

    d = simulate(seed, n_school)
    design = make_multi_design(FORMULA, d)
    built = build_multi_model(design, likelihood="noncentered")
    t0 = time.perf_counter()
    with built.model:
        dt = pm.sample(random_seed=seed, progressbar=False, nuts_sampler=nuts_sampler)
    t_sample = time.perf_counter() - t0
    post = dt["posterior"].to_dataset() if hasattr(dt["posterior"], "to_dataset") \
        else dt.posterior
    ss = dt["sample_stats"]
    ss = ss.to_dataset() if hasattr(ss, "to_dataset") else ss
    import xarray as xr

    dg = diagnose(xr.DataTree.from_dict({"posterior": post, "sample_stats": ss}),
                  params=flat_params_multi(post, design))
    return {**_gate(dg), "timings": {"pm.sample": t_sample}}


def reml(seed: int, n_school: int) -> dict:
    import twolevel as tl

    d = simulate(seed, n_school)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = tl.lmer(FORMULA, d)
    vc = m.VarCorr().to_frame()
    return {"varcorr": vc.to_dict(orient="records"), "sigma2": float(m.sigma ** 2)}


def _run(worker: str, seed: int, n_school: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--worker", worker, "--seed", str(seed),
                          "--schools", str(n_school)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{worker} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["wall"] = time.perf_counter() - t0
    r["min_ess_per_s"] = min(r["min_ess_bulk"], r["min_ess_tail"]) / r["wall"]
    return r


def _print(name: str, r: dict) -> None:
    print(f"{name}: {r['wall']:.0f} s wall, divergences {r['divergences']}, max R-hat "
          f"{r['max_rhat']:.4f} ({r['worst_rhat']}), min ESS bulk {r['min_ess_bulk']:.0f} "
          f"({r['worst_ess']}), tail {r['min_ess_tail']:.0f}, gate "
          f"{'passed' if r['passed'] else 'FAILED'}, min-ESS/s {r['min_ess_per_s']:.2f}; "
          f"timings {json.dumps({k: round(v, 1) for k, v in r['timings'].items()})}",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--schools", type=int, default=100)
    ap.add_argument("--large-schools", type=int, default=500)
    ap.add_argument("--skip-hand", action="store_true")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--hand-nutpie", action="store_true")
    ap.add_argument("--worker", choices=["ours", "hand", "hand_nutpie", "reml"],
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        work = {"ours": lambda: ours(a.seed, a.schools),
                "hand": lambda: hand(a.seed, a.schools),
                "hand_nutpie": lambda: hand(a.seed, a.schools, "nutpie"),
                "reml": lambda: reml(a.seed, a.schools)}
        print(json.dumps(work[a.worker](), default=float))
        return 0
    print(f"{FORMULA}; {a.schools} schools x 4 classes x 8-12 students; data seed {a.seed}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    res = {"ours": _run("ours", a.seed, a.schools)}
    _print("ours", res["ours"])
    print(f"  ({res['ours']['n']} students; sampler: {res['ours']['sampler']})")
    for w in ([] if a.skip_hand else ["hand"]) + (["hand_nutpie"] if a.hand_nutpie else []):
        res[w] = _run(w, a.seed, a.schools)
        _print(w, res[w])
    o = res["ours"]
    for w, label in (("hand", "hand-written non-centred, pm.sample() defaults"),
                     ("hand_nutpie", "hand-written non-centred, nutpie")):
        if w in res:
            print(f"min-ESS/s ours / {label}: "
                  f"{o['min_ess_per_s'] / res[w]['min_ess_per_s']:.1f} (target >= 10)")
    if not a.skip_large:
        print(f"\nlarge set: {a.large_schools} schools; load {os.getloadavg()[0]:.2f}",
              flush=True)
        big = _run("ours", a.seed, a.large_schools)
        _print("ours (large)", big)
        t0 = time.perf_counter()
        rm = json.loads(subprocess.run(
            [sys.executable, __file__, "--worker", "reml", "--seed", str(a.seed), "--schools",
             str(a.large_schools)], capture_output=True, text=True, check=True
        ).stdout.strip().splitlines()[-1])
        print(f"REML fit {time.perf_counter() - t0:.1f} s (fresh process)")
        reml_v = {}
        for row in rm["varcorr"]:
            if row.get("var2") in (None, "") or pd.isna(row.get("var2")):
                grp = row["grp"]
                key = "Residual" if grp == "Residual" else f"{grp}:{row['var1']}"
                reml_v[key] = row["vcov"]
        worst = 0.0
        for k, mean in big["vc_mean"].items():
            sd = big["vc_sd"][k]
            z = (mean - reml_v[k]) / sd
            worst = max(worst, abs(z))
            print(f"  {k}: posterior mean {mean:.4f} (SD {sd:.4f}), REML {reml_v[k]:.4f}: "
                  f"{z:+.3f} posterior SD")
        print(f"largest |posterior mean - REML| = {worst:.3f} posterior SD (target <= 0.2); gate "
              f"{'passed' if big['passed'] else 'FAILED'}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
