"""The Bayesian binary-outcome model at the lecture's design (a script, not a test): the default
fit's diagnostic gate, its agreement with the Laplace fit, and min-ESS per second against the
hand-written PyMC model.

    .venv/bin/python benchmarks/bayes_glmm.py [--seed 1] [--skip-hand]

Data: the 742 schools and 11,091 students of the lecture data with their ``famsesc``, and a
Bernoulli outcome simulated as in ``benchmarks/glmer_speed.py`` (logit −0.4 + 0.5x, school
intercept SD 0.8, slope SD 0.3, correlation 0.3), fitted as ``y ~ 1 + x + (1 + x | g)``.

* ``ours``: ``fit_bayes(..., family="binomial", sampler="integrated")`` (the school effects
  integrated out by adaptive Gauss–Hermite quadrature and drawn afterwards; LKJ(2);
  ``SamplerSettings()``), no pointwise log-likelihood; the gate over every parameter (γ, SDs,
  correlation and all 1,484 school effects); posterior means of γ against ``glmer``'s Laplace
  estimates in posterior SDs.
* ``hand``: the same model as a PyMC user writes it (observation-level ``pm.Bernoulli``,
  ``z @ chol.T``, the same priors), ``pm.sample()`` with its defaults (4 × 1,000 draws, PyMC's
  NUTS); ``hand_nutpie``: the same with ``nuts_sampler="nutpie"``.
* ``full`` (``--full``): ``fit_bayes(..., sampler="full")``, every school effect sampled.

Each in a fresh process timed whole; min-ESS per second = min(bulk, tail ESS) / wall.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
FORMULA = "y ~ 1 + x + (1 + x | g)"


def ours(seed: int, sampler: str = "integrated") -> dict:
    from glmer_speed import lecture_data

    from twolevel.models.bayes.fit import fit_bayes

    d = lecture_data(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a failed gate shows in the numbers
        fit = fit_bayes(FORMULA, d, family="binomial", progress=False, log_likelihood="none",
                        sampler=sampler)
    dg = fit.diagnostics
    post = fit.posterior
    return {"divergences": dg.divergences, "max_rhat": dg.max_rhat, "worst_rhat": dg.worst_rhat,
            "min_ess_bulk": dg.min_ess_bulk, "min_ess_tail": dg.min_ess_tail,
            "worst_ess": dg.worst_ess, "passed": dg.passed,
            "mean": post["beta"].mean(("chain", "draw")).to_numpy().tolist(),
            "sd": post["beta"].std(("chain", "draw")).to_numpy().tolist(),
            "settings": {k: getattr(fit.settings, k) for k in ("chains", "draws", "tune",
                                                              "target_accept", "adaptation")},
            "sampler": fit.sampler}


def hand(seed: int, nuts_sampler: str = "pymc") -> dict:
    import numpy as np
    import pymc as pm
    from glmer_speed import lecture_data

    from twolevel.models.bayes.fit import diagnose
    from twolevel.models.bayes.priors import default_glmm_priors
    from twolevel.models.glmm.family import get_family
    from twolevel.models.glmm.response import glmer_design

    d = lecture_data(seed)
    fam = get_family("binomial", None)
    design, resp = glmer_design(FORMULA, d, fam)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, "binomial", "logit")
    codes = design.group_index
    coords = {"school": [str(s) for s in design.group_levels], "effect": ["(Intercept)", "x"],
              "effect_b": ["(Intercept)", "x"], "fixed": ["(Intercept)", "x"]}
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
        xv = d["x"].to_numpy(float)
        eta = beta[0] + b[codes, 0] + (beta[1] + b[codes, 1]) * xv
        pm.Bernoulli("y", logit_p=eta, observed=d["y"].to_numpy())
        dt = pm.sample(random_seed=seed, cores=2, progressbar=False, nuts_sampler=nuts_sampler)
    dg = diagnose(dt)
    return {"divergences": dg.divergences, "max_rhat": dg.max_rhat, "worst_rhat": dg.worst_rhat,
            "min_ess_bulk": dg.min_ess_bulk, "min_ess_tail": dg.min_ess_tail,
            "worst_ess": dg.worst_ess, "passed": dg.passed}


def grad_timing(seed: int, repeats: int = 200) -> None:
    """CPU time of one log density + gradient (one thread, this process), integrated (K nodes
    per dimension, NUTS's coordinates) against the full non-centred model, at glmer's
    estimate."""
    import numpy as np
    from glmer_speed import lecture_data

    from twolevel.models.bayes import agq
    from twolevel.models.bayes.agq_sampler import compile_agq
    from twolevel.models.bayes.ckernels import c_logp_and_grad
    from twolevel.models.bayes.glmm_sampler import compile_glmm
    from twolevel.models.bayes.priors import default_glmm_priors
    from twolevel.models.glmm.family import get_family
    from twolevel.models.glmm.response import glmer_design

    d = lecture_data(seed)
    design, resp = glmer_design(FORMULA, d, get_family("binomial", None))
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, "binomial", "logit")
    lap = laplace(seed)
    sd, rho = 0.8, 0.3  # near the simulation's values
    x = np.array([*lap["fixef"], np.log(sd), np.log(0.3), np.arctanh(rho)])

    def cpu_ms(fn) -> float:
        fn()
        t = time.thread_time()
        for _ in range(repeats):
            fn()
        return (time.thread_time() - t) / repeats * 1e3

    full = compile_glmm(design, resp.y, resp.w, resp.offset, "binomial", "logit", pri)
    xf = np.concatenate([x[:2], [np.log(sd), 0.3 * rho, np.log(0.3 * np.sqrt(1 - rho**2))],
                         np.zeros(full.n_dim - 5)])
    t_full = cpu_ms(lambda: c_logp_and_grad(xf, full.data, "glmm"))
    print(f"per log density + gradient (CPU, one thread): full non-centred {t_full:.3f} ms")
    value = {}
    for K in (1, 3, 5):
        m = compile_agq(design, resp.y, resp.w, resp.offset, "binomial", "logit", pri, K, 1)
        t = cpu_ms(lambda m=m: agq.agq_logp(x, m.sampling_data))
        value[K] = cpu_ms(lambda m=m: agq.agq_schools(x, m.sampling_data))
        print(f"  integrated K={K} ({K * K} nodes): {t:.3f} ms ({t / t_full:.1f}x the full); "
              f"value only {value[K]:.3f} ms")
    print(f"  where K=5's value + gradient goes: the modes and a one-node rule {value[1]:.3f} ms, "
          f"24 more nodes {value[5] - value[1]:.3f} ms, the gradient (node sums, implicit-"
          f"function pass) {t - value[5]:.3f} ms")


def laplace(seed: int) -> dict:
    from glmer_speed import lecture_data

    from twolevel.models.glmm.glmer import glmer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = glmer(FORMULA, lecture_data(seed), family="binomial")
    return {"fixef": m.fixef().to_numpy().tolist(), "se": m.se().to_numpy().tolist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-hand", action="store_true")
    ap.add_argument("--full", action="store_true",
                    help="also time sampler='full' (every school effect sampled)")
    ap.add_argument("--only", nargs="+", choices=["ours", "full", "hand", "hand_nutpie"],
                    help="run only these (default: ours, then hand and hand_nutpie)")
    ap.add_argument("--grad-timing", action="store_true",
                    help="only the CPU time of one log density + gradient, integrated vs full")
    ap.add_argument("--worker", choices=["ours", "full", "hand", "hand_nutpie"],
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.grad_timing:
        import os

        print(f"load {os.getloadavg()[0]:.2f}")
        grad_timing(a.seed)
        print(f"load at the end {os.getloadavg()[0]:.2f}")
        return 0
    if a.worker:
        work = {"ours": lambda: ours(a.seed), "full": lambda: ours(a.seed, "full"),
                "hand": lambda: hand(a.seed), "hand_nutpie": lambda: hand(a.seed, "nutpie")}
        print(json.dumps(work[a.worker]()))
        return 0
    import os

    print(f"Bernoulli, lecture design, data seed {a.seed}; load {os.getloadavg()[0]:.2f}")
    lap = laplace(a.seed)
    res = {}
    for w in a.only or (["ours"] + (["full"] if a.full else [])
                        + ([] if a.skip_hand else ["hand", "hand_nutpie"])):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--worker", w, "--seed", str(a.seed)],
                             capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - t0
        r = json.loads(out.strip().splitlines()[-1])
        r["wall"] = wall
        r["min_ess_per_s"] = min(r["min_ess_bulk"], r["min_ess_tail"]) / wall
        res[w] = r
        print(f"{w}: {wall:.0f} s, divergences {r['divergences']}, max R-hat "
              f"{r['max_rhat']:.4f} ({r['worst_rhat']}), min ESS bulk {r['min_ess_bulk']:.0f} "
              f"({r['worst_ess']}), tail {r['min_ess_tail']:.0f}, gate "
              f"{'passed' if r['passed'] else 'FAILED'}, min-ESS/s {r['min_ess_per_s']:.2f}",
              flush=True)
    if "ours" not in res:
        print(f"load at the end {os.getloadavg()[0]:.2f}")
        return 0
    o = res["ours"]
    print("ours settings:", o["settings"])
    for k, name in enumerate(["(Intercept)", "x"]):
        z = (o["mean"][k] - lap["fixef"][k]) / o["sd"][k]
        print(f"gamma {name}: posterior mean {o['mean'][k]:.4f} (SD {o['sd'][k]:.4f}), Laplace "
              f"{lap['fixef'][k]:.4f} (SE {lap['se'][k]:.4f}): {z:+.3f} posterior SD")
    print("ours sampler:", o["sampler"])
    for w, label, target in (("full", "ours with sampler='full'", None),
                             ("hand", "hand-written, pm.sample() defaults", 20.0),
                             ("hand_nutpie", "hand-written, nutpie", 5.0)):
        if w in res:
            ratio = o["min_ess_per_s"] / res[w]["min_ess_per_s"]
            goal = "" if target is None else (f" (target >= {target:.0f}: "
                                              f"{'met' if ratio >= target else 'NOT met'})")
            print(f"min-ESS/s ours / {label}: {ratio:.2f}{goal}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
