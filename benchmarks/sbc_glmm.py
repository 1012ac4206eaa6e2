"""Simulation-based calibration of the Bayesian binary-outcome model (a script, not a test).

    .venv/bin/python benchmarks/sbc_glmm.py [--reps 1000] [--seed 1] [--draws 500] [--route agq]

Talts et al. (2018) for ``y ~ 1 + x + (1 + x | g)`` with a Bernoulli (logit) outcome, the
non-centred LKJ model of :mod:`twolevel.models.bayes.pymc_glmm`: a fixed design (40 schools of
5–15 students, x ~ N(0, 1)); the priors are the default link-scale family of
:func:`twolevel.models.bayes.priors.default_glmm_priors` computed as if ȳ = ½ (intercept
Normal(0, 2.5), slope Normal(0, 2.5/sd(x)), SDs Gamma(2, 2/s), LKJ(2)): the default intercept
prior is centred on g(ȳ) of the data, which an SBC cannot use because the data are drawn from
it. (γ, SDs, ρ, school effects, y) are drawn from the PyMC model's prior predictive (the
specification), each data set is fitted by NUTS with the binary-outcome sampler defaults
(``SamplerSettings.for_family("binomial", sampler=...)``: for the integrated sampler low-rank
adaptation, target_accept 0.8; for the full one diagonal adaptation, target_accept 0.8) on the
same sampler the default fit uses — the school effects integrated out by adaptive Gauss–Hermite
quadrature (:func:`twolevel.models.bayes.agq_sampler.sample_agq`; ``--route c``: the non-centred
C log density and gradient through nutpie, :func:`twolevel.models.bayes.glmm_sampler.sample_glmm`;
``--route pymc``: the PyMC model compiled once, the response swapped in by
``sample_nuts(data={"observed": y})``) — 4 chains ×
``--draws`` after as many tuning steps, thinned to 99 draws, and the rank of the true value is
recorded for γ00, γ10, sd0, sd1 and ρ. χ² test of uniform ranks over 20 bins (rejected at 1% is a
failure). Ranks in ``benchmarks/results/sbc_glmm_ranks_<route>.csv``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ["gamma00", "gamma10", "sd0", "sd1", "rho"]
FORMULA = "y ~ 1 + x + (1 + x | g)"


def design_data(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = rng.integers(5, 16, 40)
    g = np.repeat(np.arange(40), n)
    return pd.DataFrame({"g": g, "x": rng.normal(size=g.size),
                         "y": rng.integers(0, 2, g.size)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=1000,
                    help="simulated data sets (the issue's acceptance: 1,000; one integrated "
                         "fit of this design takes ~6 s of CPU, ~3 s on 2 idle cores)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--route", choices=["agq", "c", "pymc"], default="agq",
                    help="the integrated (AGQ) sampler (the default fit's), the compiled "
                         "non-centred C model (sampler='full') or the PyMC model")
    a = ap.parse_args()

    import pymc as pm

    from twolevel.models.bayes.fit import SamplerSettings
    from twolevel.models.bayes.glmm_sampler import sample_glmm
    from twolevel.models.bayes.priors import default_glmm_priors
    from twolevel.models.bayes.pymc_glmm import build_glmm_model
    from twolevel.models.bayes.pymc_model import sample_nuts
    from twolevel.models.glmm.family import get_family
    from twolevel.models.glmm.response import glmer_design

    df = design_data(a.seed)
    design, resp = glmer_design(FORMULA, df, get_family("binomial", "logit"))
    half = np.full(design.n, 0.5)  # the priors as if ȳ = ½ (module docstring)
    priors = default_glmm_priors(design, half, resp.w, resp.offset, "binomial", "logit")
    built = build_glmm_model(design, resp.y, resp.w, resp.offset, "binomial", "logit", priors)
    with built.model:
        prior = pm.sample_prior_predictive(draws=a.reps, random_seed=a.seed,
                                           var_names=["beta", "sd", "corr", design.response])
    pr = prior["prior"]
    beta = pr["beta"].to_numpy().reshape(a.reps, -1)
    sd = pr["sd"].to_numpy().reshape(a.reps, -1)
    corr = pr["corr"].to_numpy().reshape(a.reps, 2, 2)[:, 0, 1]
    ys = prior["prior_predictive"][design.response].to_numpy().reshape(a.reps, -1)
    true = pd.DataFrame({"gamma00": beta[:, 0], "gamma10": beta[:, 1], "sd0": sd[:, 0],
                         "sd1": sd[:, 1], "rho": corr})
    st = SamplerSettings.for_family("binomial",
                                    sampler="integrated" if a.route == "agq" else "full")
    print(f"priors: {priors.to_dict()}")
    print(f"route: {a.route}; sampler: {st.adaptation} adaptation, "
          f"target_accept {st.target_accept}, 4 chains x {a.draws} draws after {a.draws} "
          "tuning steps", flush=True)
    ranks, divs = [], []
    t0 = time.perf_counter()
    for i in range(a.reps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kw = dict(draws=a.draws, tune=a.draws, chains=4, cores=2, seed=a.seed * 1000 + i,
                      target_accept=st.target_accept, progress=False, adaptation=st.adaptation)
            if a.route == "agq":
                from twolevel.models.bayes.agq_sampler import sample_agq

                dt = sample_agq(design, ys[i].astype(float), resp.w, resp.offset, "binomial",
                                "logit", priors, **kw)[0]
            elif a.route == "c":
                dt = sample_glmm(design, ys[i].astype(float), resp.w, resp.offset, "binomial",
                                 "logit", priors, **kw)
            else:
                dt = sample_nuts(built, data={"observed": ys[i].astype(float)}, **kw)
        post = dt["posterior"].to_dataset()
        b = post["beta"].transpose("chain", "draw", "fixed").to_numpy().reshape(-1, 2)
        s = post["sd"].transpose("chain", "draw", "effect").to_numpy().reshape(-1, 2)
        r = post["corr"].to_numpy().reshape(-1, 2, 2)[:, 0, 1]
        draws = pd.DataFrame({"gamma00": b[:, 0], "gamma10": b[:, 1], "sd0": s[:, 0],
                              "sd1": s[:, 1], "rho": r})
        thin = max(len(draws) // 99, 1)
        draws = draws.iloc[::thin].iloc[:99]
        ranks.append({p: int(np.sum(draws[p].to_numpy() < true.loc[i, p])) for p in PARAMS})
        divs.append(int(dt["sample_stats"]["diverging"].sum()))
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{a.reps} replicates, {time.perf_counter() - t0:.0f} s", flush=True)
    R = pd.DataFrame(ranks)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    R.assign(divergences=divs).to_csv(out / f"sbc_glmm_ranks_{a.route}.csv", index=False)
    bins, L = 20, len(draws)
    edges = np.linspace(-0.5, L + 0.5, bins + 1)
    rows = []
    for p in PARAMS:
        counts, _ = np.histogram(R[p], bins=edges)
        chi2, pval = stats.chisquare(counts)
        rows.append({"parameter": p, "chi2": chi2, "df": bins - 1, "p": pval,
                     "uniformity rejected at 1%": pval < 0.01})
    n_div = sum(d > 0 for d in divs)
    print(f"\nSBC (Bernoulli, route {a.route}): {a.reps} replicates, ranks among {L} thinned "
          f"draws, {bins} bins; {sum(divs)} divergent transitions in all (in {n_div} "
          f"replicates); {time.perf_counter() - t0:.0f} s")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
