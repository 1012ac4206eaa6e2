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
        print(f"{k:32s} {v.mean():9.4f} {v.std(ddof=1) / np.sqrt(v.size):8.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
