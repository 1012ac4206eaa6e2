"""Posterior predictions for existing and new schools, Bayesian R² and ICC per draw (issue 12),
on one small NUTS fit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import DataError
from twolevel.models.bayes.fit import SamplerSettings, fit_bayes
from twolevel.models.bayes.predict import bayes_icc, bayes_r2, predict_bayes
from twolevel.models.lmm.lmer import lmer
from twolevel.workflows.cli import main

pytestmark = pytest.mark.slow

F = "y ~ 1 + x + w + (1 + x | g)"


def _sim(J=40, seed=4):
    rng = np.random.default_rng(seed)
    n = rng.integers(3, 10, J)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=g.size)
    w = rng.normal(size=J)[g]
    b = rng.multivariate_normal([0, 0], [[4.0, -0.6], [-0.6, 1.0]], size=J)
    y = 10 + 2 * x + 0.5 * w + b[g, 0] + b[g, 1] * x + rng.normal(scale=1.5, size=g.size)
    return pd.DataFrame({"g": [f"s{k:02d}" for k in g], "x": x, "w": w, "y": y})


@pytest.fixture(scope="module")
def data():
    return _sim()


@pytest.fixture(scope="module")
def bfit(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small fit: the gate's ESS notes are expected
        return fit_bayes(F, data, settings=SamplerSettings(chains=2, draws=400, tune=400,
                                                           seed=5), progress=False)


def _flat(da):
    return da.transpose("chain", "draw", ...).to_numpy().reshape(-1, *da.shape[2:])


def test_predictions_group_and_variances(bfit, data):
    nd = pd.DataFrame({"x": [1.0, 1.0, 0.0, 1.0, 0.0], "w": 0.0,
                       "g": ["s03", "new", "new", "other", "new"]})
    p = predict_bayes(bfit, nd, allow_new_levels=True, seed=9)
    pred = p.datatree["predictions"]
    assert pred["y"].dims == ("chain", "draw", "pred")
    assert list(p.datatree["predictions_constant_data"]["g"].values) == list(nd["g"])
    mu = _flat(pred["mu"])
    # an existing school uses its b_school draw: μ = x₀ᵀβ_s + z₀ᵀb_j^(s) exactly
    post = bfit.posterior
    beta = _flat(post["beta"])
    b3 = _flat(post["b_school"].sel(school="s03"))
    np.testing.assert_allclose(mu[:, 0], beta @ [1, 1, 0] + b3 @ [1, 1], rtol=1e-12)
    # two rows of one new school share its effect; another new school has its own
    np.testing.assert_array_equal(mu[:, 2], mu[:, 4])
    assert not np.allclose(mu[:, 1], mu[:, 3])
    assert pred["y"].shape == (2, 400, 5)
    # new school: Var(ỹ) ≈ mean_s(z₀ᵀT_sz₀ + σ_s²) + var_s(x₀ᵀβ_s)
    # (predict-simulate-r2.md §5.4 check)
    sd, corr, sig = _flat(post["sd"]), _flat(post["corr"])[:, 1, 0], _flat(post["sigma"])
    zTz = sd[:, 0] ** 2 + 2 * corr * sd[:, 0] * sd[:, 1] + sd[:, 1] ** 2
    expect = np.mean(zTz + sig**2) + np.var(beta @ [1, 1, 0])
    y = _flat(pred["y"])
    assert y[:, 1].var() == pytest.approx(expect, rel=0.15)  # 800 draws: SE of a variance ≈ 5%
    s = p.summary(0.9)
    assert list(s.columns) == ["fit", "sd", "lwr", "upr", "mu"]
    assert (s["lwr"] < s["fit"]).all() and (s["fit"] < s["upr"]).all()
    # the REML interval for the same rows is close (40 schools)
    m = lmer(F, data)
    reml = m.predict(nd, allow_new_levels=True, interval="prediction", level=0.9)
    np.testing.assert_allclose(s["fit"], reml["fit"], atol=0.6)
    np.testing.assert_allclose(s["upr"] - s["lwr"], reml["upr"] - reml["lwr"], rtol=0.2)


def test_population_level_and_errors(bfit):
    nd = pd.DataFrame({"x": [0.0, 0.0], "w": [0.0, 0.0]})
    p = predict_bayes(bfit, nd, re_form="NA", seed=1)
    mu = _flat(p.datatree["predictions"]["mu"])
    assert not np.allclose(mu[:, 0], mu[:, 1])  # each population row gets its own school
    with pytest.raises(DataError, match=r"new level\(s\) of 'g' in newdata: 'zz'"):
        predict_bayes(bfit, pd.DataFrame({"x": [0.0], "w": [0.0], "g": ["zz"]}))
    with pytest.raises(DataError, match=r"newdata lacks column\(s\) 'w'"):
        predict_bayes(bfit, pd.DataFrame({"x": [0.0], "g": ["s01"]}))


def test_bayes_r2_and_icc(bfit, data):
    r2, ic = bayes_r2(bfit), bayes_icc(bfit)
    assert r2["r2_bayes"].dims == ("chain", "draw") and ic["icc"].shape == (2, 400)
    assert float(r2["r2_bayes"].min()) > 0 and float(r2["r2_bayes"].max()) < 1
    es = lmer(F, data).effect_sizes()
    assert float(ic["icc"].median()) == pytest.approx(es["icc"], abs=0.1)
    assert float(r2["r2_marginal"].median()) == pytest.approx(es["r2_marginal"], abs=0.1)
    assert float(r2["r2_conditional"].median()) == pytest.approx(es["r2_conditional"], abs=0.1)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cli_bayes(tmp_path, data):
    csv, nd, out = tmp_path / "d.csv", tmp_path / "nd.csv", tmp_path / "p.csv"
    data.to_csv(csv, index=False)
    pd.DataFrame({"x": [1.0], "w": [0.0], "g": ["new"]}).to_csv(nd, index=False)
    rc = main(["predict", str(csv), F, "--newdata", str(nd), "--out", str(out), "--bayes",
               "--allow-new-levels", "--chains", "2", "--draws", "200", "--tune", "200"])
    assert rc == 0
    got = pd.read_csv(out)
    assert list(got.columns) == ["x", "w", "g", "fit", "lwr", "upr", "sd"]
    assert got["lwr"].iloc[0] < got["fit"].iloc[0] < got["upr"].iloc[0]


def test_mixture_quantile_is_the_root_of_the_mixture_cdf():
    from scipy import optimize, stats

    from twolevel.models.bayes.predict import mixture_cdf, mixture_quantile

    rng = np.random.default_rng(3)
    loc = rng.normal(size=(500, 4)) * [0.1, 1.0, 5.0, 0.0]
    scale = rng.uniform(0.5, 2.0, size=(500, 4)) * [1.0, 1.0, 0.01, 1.0]
    for p in (0.005, 0.025, 0.5, 0.975):
        got = mixture_quantile(loc, scale, p)
        for i in range(4):
            def excess(y, i=i, p=p):
                return mixture_cdf(np.array([y]), loc[:, [i]], scale[:, [i]])[0] - p

            root = optimize.brentq(excess, -50, 50, xtol=1e-14)
            assert got[i] == pytest.approx(root, abs=1e-9)
    one = mixture_quantile(np.array([[2.0]]), np.array([[3.0]]), 0.975)
    assert one[0] == pytest.approx(stats.norm.ppf(0.975, 2.0, 3.0), rel=1e-12)


def test_summary_methods(bfit):
    nd = pd.DataFrame({"x": [1.0, 0.5], "w": 0.0, "g": ["s03", "new"]})
    p = predict_bayes(bfit, nd, allow_new_levels=True, seed=2)
    pred = p.datatree["predictions"]
    y = _flat(pred["y"])
    draws = p.summary(0.9, method="draws")
    np.testing.assert_allclose(draws["lwr"], np.quantile(y, 0.05, axis=0), rtol=1e-12)
    mix = p.summary(0.9)
    # the draws ỹ are draws from the mixture: their quantiles agree within sampling error
    np.testing.assert_allclose(mix[["lwr", "upr"]], draws[["lwr", "upr"]], atol=0.5)
    # an existing school's components are N(μ_s, σ_s²); a new school's integrate its effect out
    sig = _flat(bfit.posterior["sigma"])
    np.testing.assert_allclose(_flat(pred["pred_scale"])[:, 0], sig, rtol=1e-12)
    np.testing.assert_allclose(_flat(pred["pred_loc"])[:, 0], _flat(pred["mu"])[:, 0],
                               rtol=1e-12)
    assert (_flat(pred["pred_scale"])[:, 1] > sig).all()
    with pytest.raises(Exception, match="method must be 'mixture' or 'draws', got 'x'"):
        p.summary(method="x")
