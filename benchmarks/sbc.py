"""Simulation-based calibration of the default Bayesian model (a script, not a test).

    .venv/bin/python benchmarks/sbc.py [--reps 200] [--seed 1]

Talts et al. (2018): draw (γ, T, σ) from the prior, simulate a data set of a fixed small
students-in-schools design (30 schools of 4–12 students, x ~ N(0, 1)), fit it by NUTS with the
same priors (the default collapsed model and sampler settings: target_accept 0.9, nutpie's
low-rank mass-matrix adaptation; 4 chains × 500 draws after 500 tuning steps, thinned to
99 draws), and record the rank of the true value among the posterior draws for γ00, γ10, τ00,
τ11, ρ and σ. Calibrated inference gives uniform ranks on 0…99. Prints, per parameter, the
χ² test of uniformity over 20 bins (p-values; rejected at 1% is a failure) and writes the rank
histograms to ``docs/figures/sbc_ranks.png`` and the ranks to ``benchmarks/results/sbc_ranks.csv``.

The fits run through the compiled collapsed model that ``fit_bayes`` uses
(:func:`twolevel.models.bayes.sampler.sample_collapsed`): nothing is compiled per replicate, each
only packs its own cross-products. The data sets are drawn from the prior by the PyMC model
(:func:`twolevel.models.bayes.fit.prior_predictive`), the specification.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ["gamma00", "gamma10", "tau00", "tau11", "rho", "sigma"]


def design_data(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = rng.integers(4, 13, 30)
    g = np.repeat(np.arange(30), n)
    return pd.DataFrame({"g": g, "x": rng.normal(size=g.size), "y": rng.normal(size=g.size)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--thin", type=int, default=20)
    a = ap.parse_args()

    import warnings

    from twolevel.models.bayes.fit import SamplerSettings, cholesky_draws, prior_predictive
    from twolevel.models.bayes.priors import ModelPriors, Prior
    from twolevel.models.bayes.sampler import sample_collapsed
    from twolevel.models.design import group_crossprods, make_design

    design = make_design("y ~ 1 + x + (1 + x | g)", design_data(a.seed))
    priors = ModelPriors(
        beta=Prior("Normal", mu=0.0, sigma=[5.0, 2.0]),
        sd=Prior("Gamma", alpha=2.0, beta=[2.0 / 3.0, 2.0 / 1.5]),  # the default family
        corr=Prior("LKJ", eta=2.0), sigma=Prior("HalfStudentT", nu=4.0, sigma=2.0),
        fixed_names=design.x_names, effect_names=design.z_names,
    )
    truth = prior_predictive(design, priors, a.reps, seed=a.seed)
    Lt = truth["L"]
    T = np.einsum("sik,sjk->sij", Lt, Lt)
    true = pd.DataFrame({
        "gamma00": truth["beta"][:, 0], "gamma10": truth["beta"][:, 1],
        "tau00": T[:, 0, 0], "tau11": T[:, 1, 1],
        "rho": T[:, 0, 1] / np.sqrt(T[:, 0, 0] * T[:, 1, 1]), "sigma": truth["sigma"],
    })
    defaults = SamplerSettings()  # the default target_accept and mass-matrix adaptation
    ranks, diag = [], []
    t0 = time.perf_counter()
    for i in range(a.reps):
        cp = group_crossprods(dataclasses.replace(design, y=truth["y"][i]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dt, _ = sample_collapsed(dataclasses.replace(design, y=truth["y"][i]), cp, priors,
                                     draws=500, tune=500, chains=4, cores=2,
                                     seed=a.seed * 1000 + i, target_accept=defaults.target_accept,
                                     adaptation=defaults.adaptation, progress=False)
        post = dt["posterior"].to_dataset()
        beta = post["beta"].transpose("chain", "draw", "fixed").to_numpy().reshape(-1, 2)
        L = cholesky_draws(post, 2)
        Tp = np.einsum("sik,sjk->sij", L, L)
        sig = post["sigma"].to_numpy().reshape(-1)
        draws = pd.DataFrame({
            "gamma00": beta[:, 0], "gamma10": beta[:, 1], "tau00": Tp[:, 0, 0],
            "tau11": Tp[:, 1, 1], "rho": Tp[:, 0, 1] / np.sqrt(Tp[:, 0, 0] * Tp[:, 1, 1]),
            "sigma": sig,
        }).iloc[:: a.thin].iloc[:99]  # 99 draws: ranks 0…99, 5 per bin of 20
        ranks.append({p: int(np.sum(draws[p].to_numpy() < true.loc[i, p])) for p in PARAMS})
        diag.append(int(dt["sample_stats"]["diverging"].sum()))
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{a.reps} replicates, {time.perf_counter() - t0:.0f} s", flush=True)
    R = pd.DataFrame(ranks)
    L_max = len(draws)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    R.assign(divergences=diag).to_csv(out / "sbc_ranks.csv", index=False)

    bins = 20
    edges = np.linspace(-0.5, L_max + 0.5, bins + 1)
    rows = []
    for p in PARAMS:
        counts, _ = np.histogram(R[p], bins=edges)
        chi2, pval = stats.chisquare(counts)
        rows.append({"parameter": p, "chi2": chi2, "df": bins - 1, "p": pval,
                     "uniformity rejected at 1%": pval < 0.01})
    res = pd.DataFrame(rows)
    print(f"\nSBC: {a.reps} replicates, ranks among {L_max} thinned draws, {bins} bins; "
          f"{sum(diag)} divergent transitions in all; {time.perf_counter() - t0:.0f} s")
    print(res.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(11, 6), layout="constrained")
    expect = a.reps / bins
    band = stats.binom.ppf([0.005, 0.995], a.reps, 1 / bins)
    for ax, p, r in zip(axes.ravel(), PARAMS, rows, strict=True):
        ax.axhspan(band[0], band[1], color="0.85")
        ax.axhline(expect, color="0.4", lw=1)
        ax.hist(R[p], bins=edges, color="#3b7dd8", edgecolor="white")
        ax.set_title(f"{p}: χ² p = {r['p']:.2f}", fontsize=10)
        ax.set_xlabel(f"rank among {L_max} posterior draws")
    fig.suptitle(f"SBC rank histograms, {a.reps} data sets from the prior (grey: 99% band of a "
                 "uniform histogram)")
    figs = ROOT / "docs" / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    fig.savefig(figs / "sbc_ranks.png", dpi=100)
    print(f"wrote {figs / 'sbc_ranks.png'} and {out / 'sbc_ranks.csv'}")


if __name__ == "__main__":
    main()
