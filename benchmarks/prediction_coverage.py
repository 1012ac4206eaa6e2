"""Coverage of the REML 95% prediction intervals at the lecture's design (a script, not a test).

Design: the 742 schools and 11,091 students of the lecture data (school sizes 10–25, the
group-mean-centred ``famsesc``), held fixed; responses simulated from the lecture's lme4 estimates
(γ00 = 95.26, γ10 = 7.38, τ00 = 54.893, τ11 = 4.656, ρ = −0.24, σ² = 233.954) for
``g1rscore ~ 1 + famsesc + (1 + famsesc | schid)`` and refitted by REML from the per-school
cross-products (:func:`twolevel.models.inference.simulate.refits`).

Per data set, for a student with famsesc = x₀ (default: one SD of famsesc above the school mean):

* **new school**: ŷ₀ = x₀ᵀβ̂ ± z·sqrt(x₀ᵀV̂x₀ + z₀ᵀT̂z₀ + σ̂²); the new student's score is
  N(x₀ᵀγ, z₀ᵀTz₀ + σ²), so the exact conditional coverage is Φ((u − μ)/s) − Φ((l − μ)/s);
* **existing school** (the smallest, and the median-size school): ŷ₀ = x₀ᵀβ̂ + z₀ᵀb̃_j ±
  z·sqrt(PEV + σ̂²) (joint covariance of β̂ and b̃_j); the score is N(x₀ᵀγ + z₀ᵀb_j, σ²) given
  that school's true effect b_j.

The coverage is the average of these exact conditional probabilities (Monte-Carlo SE from their
spread), the method of ``predict-simulate-r2.md`` §6. Intervals plug in θ̂; with 742 schools that
is adequate.

``--bayes K`` adds K data sets (simulated row by row) fitted by NUTS (collapsed model, 2 chains ×
``--draws``), with the equal-tailed 95% posterior predictive intervals of the same students (new
school: effects from N(0, T_s) per draw; existing school: its conditional draws), scored the same
way, for both interval methods of ``BayesPredictions.summary``: ``mixture`` (the default: quantiles
of the normal mixture (1/S) Σ_s N(m_s, v_s)) and ``draws`` (sample quantiles of the S draws ỹ,
whose expected coverage for independent draws is about level·(S − 1)/(S + 1): 0.9481 at S = 1,000).
One fit takes about a second (compiled collapsed sampler).

``--few-schools K`` adds the case where the plug-in falls short: the design of the first 6
sleepstudy subjects (J = 6), data simulated from its REML fit, a new subject at Days = 5, the
plug-in interval against the studentized parametric-bootstrap interval
(``interval="bootstrap"``, ``--boot-nsim`` refits each), K data sets.

Usage::

    nice -n 10 .venv/bin/python benchmarks/prediction_coverage.py --nsim 2000 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twolevel.data.loaders import load_lecture  # noqa: E402
from twolevel.models.design import group_crossprods, make_design  # noqa: E402
from twolevel.models.inference.predict import (  # noqa: E402
    new_school_variance,
    prediction_error_variance,
)
from twolevel.models.inference.simulate import refits  # noqa: E402
from twolevel.models.lmm.deviance import sigma_hat  # noqa: E402

FORMULA = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"
TRUE = {"gamma00": 95.26, "gamma10": 7.38, "tau00": 54.893, "tau11": 4.656, "rho": -0.24,
        "sigma2": 233.954}


def true_parameters() -> tuple[np.ndarray, float, np.ndarray]:
    """(β, σ, T_cov) of the generating model."""
    t = TRUE
    cov01 = t["rho"] * np.sqrt(t["tau00"] * t["tau11"])
    T = np.array([[t["tau00"], cov01], [cov01, t["tau11"]]])
    return np.array([t["gamma00"], t["gamma10"]]), float(np.sqrt(t["sigma2"])), T


def _fitlike(state, sigma):
    """What the interval functions read from a fit: the PLS state, σ̂ and VarCorr's T̂."""
    cov = sigma**2 * state.T @ state.T.T
    return SimpleNamespace(state=state, sigma=sigma, VarCorr=lambda: SimpleNamespace(cov=cov))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nsim", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--x0", type=float, default=None, help="famsesc of the student (default 1 SD)")
    ap.add_argument("--bayes", type=int, default=0, help="data sets fitted by NUTS (default 0)")
    ap.add_argument("--draws", type=int, default=500, help="NUTS draws per chain (--bayes)")
    ap.add_argument("--few-schools", type=int, default=0, help="data sets at J = 6 (default 0)")
    ap.add_argument("--boot-nsim", type=int, default=300, help="refits per bootstrap interval")
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        design = make_design(FORMULA, load_lecture())
    cp = group_crossprods(design)
    beta, sigma, Tcov = true_parameters()
    theta = design.T_to_theta(np.linalg.cholesky(Tcov / sigma**2))
    x0 = float(np.std(design.X[:, 1])) if args.x0 is None else args.x0
    X0 = np.array([[1.0, x0]])
    sizes = design.group_sizes
    schools = {"smallest": int(np.argmin(sizes)),
               "median size": int(np.argsort(sizes)[len(sizes) // 2])}
    z = float(stats.norm.ppf(0.975))
    s_new = float(np.sqrt(X0[0] @ Tcov @ X0[0] + sigma**2))
    cov = {"new school": [], **{f"existing ({k}, n={sizes[j]})": [] for k, j in schools.items()}}
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    for rep in refits(design, cp, theta, sigma, beta, reml=True, nsim=args.nsim, rng=rng):
        if rep is None:
            continue
        sig = sigma_hat(rep.state, True)
        f = _fitlike(rep.state, sig)
        mu = float(X0[0] @ rep.state.beta)
        se = float(np.sqrt(new_school_variance(f, X0, X0)[0]))
        m_true = float(X0[0] @ beta)
        cov["new school"].append(stats.norm.cdf((mu + z * se - m_true) / s_new)
                                 - stats.norm.cdf((mu - z * se - m_true) / s_new))
        for j, key in zip(schools.values(), list(cov)[1:], strict=True):
            jj = np.array([j])
            pev = float(prediction_error_variance(f, X0, X0, jj)[0])
            se = np.sqrt(pev + sig**2)
            yhat = mu + float(X0[0] @ rep.state.b[j])
            truth = m_true + float(X0[0] @ rep.b_true[j])
            cov[key].append(stats.norm.cdf((yhat + z * se - truth) / sigma)
                            - stats.norm.cdf((yhat - z * se - truth) / sigma))
    secs = time.perf_counter() - t0
    print(f"prediction-interval coverage at the lecture design: {args.nsim} data sets, seed "
          f"{args.seed}, famsesc x0 = {x0:.4f}, nominal 0.95 (REML, plug-in θ̂); {secs:.1f} s")
    print(f"{'student in':32s} {'coverage':>9s} {'MC SE':>8s}")
    for k, v in cov.items():
        v = np.asarray(v)
        print(f"{k:32s} {v.mean():9.5f} {v.std(ddof=1) / np.sqrt(v.size):8.5f}")
    if args.bayes > 0:
        bayes_coverage(design, X0, schools, args)
    if args.few_schools > 0:
        few_schools_coverage(args)
    return 0


def few_schools_coverage(args) -> None:
    """The ``--few-schools`` part (module docstring)."""
    from twolevel.data.loaders import load_sleepstudy
    from twolevel.models.inference.predict import predict
    from twolevel.models.lmm.lmer import lmer

    f = "Reaction ~ Days + (Days | Subject)"
    d = load_sleepstudy()
    small = d[d["Subject"].isin([308, 309, 310, 330, 331, 332])].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = lmer(f, small)
    beta, sigma, T = m.beta, m.sigma, m.VarCorr().cov
    X, Z, g = m.design.X, m.design.Z, m.design.group_index
    x0 = np.array([1.0, 5.0])
    s_true, mu_true = float(np.sqrt(x0 @ T @ x0 + sigma**2)), float(x0 @ beta)
    nd = pd.DataFrame({"Days": [5.0], "Subject": ["new"]})
    rng = np.random.default_rng([args.seed, 11])
    cov = {"plug-in": [], "bootstrap-t": []}
    t0 = time.perf_counter()
    for k in range(args.few_schools):
        b = rng.multivariate_normal([0.0, 0.0], T, size=6)
        y = X @ beta + np.einsum("nq,nq->n", Z, b[g]) + sigma * rng.standard_normal(len(small))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mk = lmer(f, small.assign(Reaction=y))
        for name, kind in (("plug-in", "prediction"), ("bootstrap-t", "bootstrap")):
            r = predict(mk, nd, allow_new_levels=True, interval=kind, nsim=args.boot_nsim,
                        seed=k)
            lo, hi = float(r["lwr"].iloc[0]), float(r["upr"].iloc[0])
            cov[name].append(stats.norm.cdf((hi - mu_true) / s_true)
                             - stats.norm.cdf((lo - mu_true) / s_true))
    print(f"few schools (first 6 sleepstudy subjects, new subject at Days 5): "
          f"{args.few_schools} data sets, {args.boot_nsim} refits per bootstrap interval, "
          f"{time.perf_counter() - t0:.0f} s")
    for k, v in cov.items():
        v = np.asarray(v)
        print(f"{k:32s} {v.mean():9.4f} {v.std(ddof=1) / np.sqrt(v.size):8.5f}")


def bayes_coverage(design, X0, schools, args) -> None:
    """The ``--bayes`` part (module docstring)."""
    from twolevel.models.bayes.fit import SamplerSettings, fit_bayes
    from twolevel.models.bayes.predict import predict_bayes

    beta, sigma, Tcov = true_parameters()
    frame = load_lecture()
    rng = np.random.default_rng([args.seed, 7])
    levels = design.group_levels
    nd = pd.DataFrame({"famsesc": X0[0, 1], "schid": ["__new__"]
                       + [levels[j] for j in schools.values()]})
    s_new = float(np.sqrt(X0[0] @ Tcov @ X0[0] + sigma**2))
    m_true = float(X0[0] @ beta)
    methods = ("mixture", "draws")
    cov = {(m, k): [] for m in methods
           for k in ["new school"] + [f"existing ({k})" for k in schools]}
    vratio = []  # the new school's posterior predictive variance over the true one
    t0 = time.perf_counter()
    for k in range(args.bayes):
        b = rng.standard_normal((design.n_groups, 2)) @ np.linalg.cholesky(Tcov).T
        y = (design.X @ beta + np.einsum("nq,nq->n", design.Z, b[design.group_index])
             + sigma * rng.standard_normal(design.n))
        df = frame.assign(g1rscore=y)  # make_design keeps the rows in order (no NA here)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_bayes(FORMULA, df, progress=False, log_likelihood="none",
                            settings=SamplerSettings(chains=2, draws=args.draws,
                                                     tune=args.draws, seed=args.seed + k))
        pred = predict_bayes(fit, nd, allow_new_levels=True, seed=k)
        pp = pred.datatree["predictions"]
        loc0 = pp["pred_loc"].isel(pred=0).to_numpy().ravel()
        sc0 = pp["pred_scale"].isel(pred=0).to_numpy().ravel()
        vratio.append((np.mean(sc0**2) + np.var(loc0)) / s_new**2)
        for method in methods:
            s = pred.summary(0.95, method=method)
            lo, hi = s["lwr"].to_numpy(), s["upr"].to_numpy()
            cov[method, "new school"].append(stats.norm.cdf((hi[0] - m_true) / s_new)
                                             - stats.norm.cdf((lo[0] - m_true) / s_new))
            for i, (name, j) in enumerate(schools.items(), start=1):
                truth = m_true + float(X0[0] @ b[j])
                cov[method, f"existing ({name})"].append(
                    stats.norm.cdf((hi[i] - truth) / sigma)
                    - stats.norm.cdf((lo[i] - truth) / sigma))
    print(f"Bayes (NUTS, collapsed, 2 x {args.draws} draws): {args.bayes} data sets, "
          f"{time.perf_counter() - t0:.0f} s; interval = summary(method=...)")
    vr = np.asarray(vratio)
    print(f"new school: posterior predictive variance / true variance, mean {vr.mean():.5f} "
          f"(MC SE {vr.std(ddof=1) / np.sqrt(vr.size):.5f})")
    for (method, k), v in cov.items():
        v = np.asarray(v)
        se = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else float("nan")
        print(f"{k + ', ' + method:32s} {v.mean():9.5f} {se:8.5f}")

if __name__ == "__main__":
    sys.exit(main())
