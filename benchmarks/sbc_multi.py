"""Simulation-based calibration of the Bayesian three-level model (a script, not a test).

    .venv/bin/python benchmarks/sbc_multi.py [--reps 500] [--seed 1] [--thin 20]

Talts et al. (2018) for students in classes in schools, fitted as
``y ~ 1 + x + (1 + x | school) + (1 | school:cls)`` — an LKJ-correlated intercept and slope per
school, an intercept per class — on a fixed small nested design (12 schools of 3 classes of 3–8
students, x ~ N(0, 1); class labels 1–3 reused in every school). Each replicate draws
(γ, Σ_school, τ_class, σ) from the prior (fixed priors below; LKJ(2) on the 2 × 2 correlation:
(ρ + 1)/2 ~ Beta(2, 2)), simulates the effects and y, fits it with the sampled model of
``fit_bayes`` (the collapsed three-level PyMC model, compiled once; each replicate swaps its
cross-products c = Zᵀy, Xᵀy, yᵀy into the compiled function), default sampler settings
(target_accept 0.9, low-rank adaptation) with 4 chains × 500 draws after 500 tuning steps,
thinned to 99 draws, and records the rank of every true value among them: γ00, γ10, the school
variances τ00, τ11 and correlation ρ, the class variance τ_c and σ. Calibrated inference gives
uniform ranks on 0…99: per parameter the χ² test over 20 bins and the KS test of
(rank + U(0, 1))/100 against U(0, 1); either rejecting at 1% is a failure. Prints the time per
fit and what the default 500 replicates take; writes the ranks to
``benchmarks/results/sbc_multi_ranks.csv``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
FORMULA = "y ~ 1 + x + (1 + x | school) + (1 | school:cls)"
PARAMS = ["gamma00", "gamma10", "tau00", "tau11", "rho", "tau_class", "sigma"]


def design_data(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(12):
        for c in range(3):
            for _ in range(int(rng.integers(3, 9))):
                rows.append({"school": s + 1, "cls": c + 1, "x": rng.normal(), "y": rng.normal()})
    return pd.DataFrame(rows)


def priors_for(design):
    from twolevel.models.bayes.multi_priors import MultiPriors
    from twolevel.models.bayes.priors import Prior

    names = [f.name for f in design.factors]  # class:school first (more levels), then school
    assert names == ["school:cls", "school"], names
    return MultiPriors(
        beta=Prior("Normal", mu=0.0, sigma=[5.0, 2.0]),
        sd=(Prior("Gamma", alpha=2.0, beta=2.0 / 1.0),
            Prior("Gamma", alpha=2.0, beta=[2.0 / 3.0, 2.0 / 1.5])),
        corr=Prior("LKJ", eta=2.0), sigma=Prior("HalfStudentT", nu=4.0, sigma=2.0),
        fixed_names=design.x_names, factor_names=tuple(names),
        effect_names=tuple(f.z_names for f in design.factors))


def draw_truth(design, rng) -> tuple[dict, np.ndarray]:
    """(γ, Σ_school, τ_class, σ) from the priors of :func:`priors_for`, and y."""
    beta = rng.normal(0.0, [5.0, 2.0])
    sd_c = rng.gamma(2.0, 1.0 / 2.0)
    sd_s = rng.gamma(2.0, 1.0 / np.array([2.0 / 3.0, 2.0 / 1.5]))
    rho = 2.0 * rng.beta(2.0, 2.0) - 1.0
    sigma = abs(stats.t.rvs(4.0, scale=2.0, random_state=rng))
    fc, fs = design.factors
    Ls = np.array([[sd_s[0], 0.0], [rho * sd_s[1], np.sqrt(1 - rho ** 2) * sd_s[1]]])
    b_s = rng.normal(size=(fs.n_levels, 2)) @ Ls.T
    b_c = rng.normal(size=fc.n_levels) * sd_c
    y = (design.X @ beta + (fs.Z * b_s[fs.codes]).sum(1) + fc.Z[:, 0] * b_c[fc.codes]
         + rng.normal(size=design.n) * sigma)
    truth = {"gamma00": beta[0], "gamma10": beta[1], "tau00": sd_s[0] ** 2,
             "tau11": sd_s[1] ** 2, "rho": rho, "tau_class": sd_c ** 2, "sigma": sigma}
    return truth, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--thin", type=int, default=20)
    a = ap.parse_args()

    import dataclasses

    from twolevel.models.bayes.collapsed_multi import nested_crossprods
    from twolevel.models.bayes.fit import SamplerSettings
    from twolevel.models.bayes.fit_multi import factor_cholesky_draws
    from twolevel.models.bayes.pymc_model import sample_nuts
    from twolevel.models.bayes.pymc_multi import build_multi_model
    from twolevel.models.design.multi import make_multi_design

    print(f"SBC, {FORMULA}, {a.reps} replicates; load {os.getloadavg()[0]:.2f}", flush=True)
    design = make_multi_design(FORMULA, design_data(a.seed))
    priors = priors_for(design)
    built = build_multi_model(design, priors, crossprods=nested_crossprods(design))
    defaults = SamplerSettings()
    rng = np.random.default_rng(a.seed)
    ranks, divs, times = [], [], []
    t0 = time.perf_counter()
    for i in range(a.reps):
        truth, y = draw_truth(design, rng)
        cp = nested_crossprods(dataclasses.replace(design, y=y))
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dt = sample_nuts(built, draws=500, tune=500, chains=4, cores=2,
                             seed=a.seed * 1000 + i, target_accept=defaults.target_accept,
                             adaptation=defaults.adaptation, progress=False,
                             data={"c": cp.c, "Xty": cp.Xty, "yty": np.float64(cp.yty)})
        times.append(time.perf_counter() - t1)
        post = dt["posterior"].to_dataset()
        beta = post["beta"].transpose("chain", "draw", "fixed").to_numpy().reshape(-1, 2)
        Ls = factor_cholesky_draws(post, "school", 2)
        Ts = np.einsum("sik,sjk->sij", Ls, Ls)
        sd_c = post["sd_school:cls"].to_numpy().reshape(-1)
        draws = pd.DataFrame({
            "gamma00": beta[:, 0], "gamma10": beta[:, 1], "tau00": Ts[:, 0, 0],
            "tau11": Ts[:, 1, 1], "rho": Ts[:, 0, 1] / np.sqrt(Ts[:, 0, 0] * Ts[:, 1, 1]),
            "tau_class": sd_c ** 2, "sigma": post["sigma"].to_numpy().reshape(-1),
        }).iloc[:: a.thin].iloc[:99]
        ranks.append({p: int(np.sum(draws[p].to_numpy() < truth[p])) for p in PARAMS})
        divs.append(int(dt["sample_stats"]["diverging"].sum()))
        if (i + 1) % 10 == 0 or i == 0:
            print(f"{i + 1}/{a.reps} replicates, {time.perf_counter() - t0:.0f} s "
                  f"(first fit incl. compilation {times[0]:.1f} s)", flush=True)
    R = pd.DataFrame(ranks)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    R.assign(divergences=divs).to_csv(out / "sbc_multi_ranks.csv", index=False)
    L_max, bins = 99, 20
    edges = np.linspace(-0.5, L_max + 0.5, bins + 1)
    urng = np.random.default_rng(a.seed + 7)
    rows = []
    for p in PARAMS:
        counts, _ = np.histogram(R[p], bins=edges)
        chi2, pval = stats.chisquare(counts)
        ks = stats.kstest((R[p].to_numpy() + urng.uniform(size=len(R))) / (L_max + 1), "uniform")
        rows.append({"parameter": p, "chi2": chi2, "df": bins - 1, "p_chi2": pval,
                     "p_ks": ks.pvalue, "rejected at 1%": bool(pval < 0.01 or ks.pvalue < 0.01)})
    res = pd.DataFrame(rows)
    per_fit = float(np.median(times[1:])) if len(times) > 1 else times[0]
    print(f"\nSBC: {a.reps} replicates, ranks among {L_max} thinned draws, {bins} bins; "
          f"{sum(divs)} divergent transitions in all; {time.perf_counter() - t0:.0f} s")
    print(res.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"per fit (median, after the first): {per_fit:.2f} s; 500 replicates would take "
          f"about {500 * per_fit / 60:.0f} min; load {os.getloadavg()[0]:.2f}")
    print(f"target: no parameter rejected at 1% (the acceptance run has 500 replicates); "
          f"{a.reps} replicates here: "
          + ("not rejected" if not res["rejected at 1%"].any() else "REJECTED"))


if __name__ == "__main__":
    main()
