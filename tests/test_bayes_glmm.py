"""Bayesian binary and count two-level models: link-scale priors, the PyMC builder, the per-school
log-likelihood with the school effects integrated out (against brute-force quadrature), a small
seeded NUTS fit against the Laplace fit, the CLI and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.bayes.glmm_loglik import (
    row_constants,
    school_loglik_agq,
    student_loglik_glmm,
)
from twolevel.models.bayes.priors import default_glmm_priors
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.response import glmer_design

CASES = [("binomial", "logit"), ("binomial", "probit"), ("binomial", "cloglog"), ("poisson", "log")]


def _tiny(family: str, seed: int = 1, J: int = 3, nj: int = 6):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size)
    X = np.column_stack([np.ones(g.size), x])
    y = (rng.integers(0, 2, g.size) if family == "binomial" else rng.poisson(2.0, g.size))
    off = rng.normal(scale=0.1, size=g.size)
    return g, X, y.astype(float), off


def _brute_force(g, X, Z, y, n, off, family, link, beta, L, j) -> float:
    """log ∫ Π_i p(y_ij | η(u)) N(u; 0, I) du on a dense Gauss–Legendre grid over [−10, 10]^q
    (q = 1 or 2; 160 nodes per dimension: exact to rounding for these smooth integrands)."""
    m = g == j
    x, w = np.polynomial.legendre.leggauss(160)
    x, w = 10.0 * x, 10.0 * w
    q = Z.shape[1]
    grid = np.stack(np.meshgrid(*([x] * q), indexing="ij"), -1).reshape(-1, q)
    wts = np.prod(np.stack(np.meshgrid(*([w] * q), indexing="ij"), -1).reshape(-1, q), axis=1)
    b = grid @ L.T                                       # (G, q) school effects at each node
    eta = X[m] @ beta + off[m] + b @ Z[m].T              # (G, n_j)
    s, const = row_constants(y[m], n[m], family)
    if family == "poisson":
        ll = const + s * eta - np.exp(eta)
    else:
        mu = {"logit": special.expit, "probit": special.ndtr,
              "cloglog": lambda e: -np.expm1(-np.exp(e))}[link](eta)
        mu = np.clip(mu, np.finfo(float).eps, 1 - np.finfo(float).eps)
        ll = const + s * np.log(mu) + (n[m] - s) * np.log1p(-mu)
    logf = ll.sum(axis=1) + stats.norm.logpdf(grid).sum(axis=1)
    top = logf.max()
    return float(top + np.log(np.sum(wts * np.exp(logf - top))))


@pytest.mark.parametrize("family,link", CASES)
def test_school_loglik_agq_equals_brute_force_quadrature(family, link):
    g, X, y, off = _tiny(family)
    n = np.ones(y.size)
    for Z, beta, L in (
        (X[:, :1].copy(), np.array([0.3, -0.5]), np.array([[0.9]])),
        (X.copy(), np.array([0.3, -0.5]), np.array([[0.8, 0.0], [-0.3, 0.5]])),
    ):
        ref = np.array([_brute_force(g, X, Z, y, n, off, family, link, beta, L, j)
                        for j in range(3)])
        many = school_loglik_agq(X, Z, g, 3, y, n, off, family, link, beta[None], L[None],
                                 nodes=20)[0]
        np.testing.assert_allclose(many, ref, rtol=0, atol=1e-8)
        default = school_loglik_agq(X, Z, g, 3, y, n, off, family, link, beta[None], L[None])[0]
        np.testing.assert_allclose(default, ref, rtol=0, atol=2e-3)


def test_school_loglik_with_zero_variance_is_the_fixed_part_likelihood():
    g, X, y, off = _tiny("binomial")
    n = np.ones(y.size)
    beta = np.array([0.2, 0.4])
    got = school_loglik_agq(X, X, g, 3, y, n, off, "binomial", "logit", beta[None],
                            np.zeros((1, 2, 2)))[0]
    eta = X @ beta + off
    ll = y * eta - np.logaddexp(0, eta)
    np.testing.assert_allclose(got, np.bincount(g, ll), atol=1e-12)


def test_student_loglik_is_the_binomial_and_poisson_pmf():
    rng = np.random.default_rng(3)
    eta = rng.normal(size=20)
    X = eta[:, None]
    n = rng.integers(1, 6, 20).astype(float)
    s = rng.binomial(n.astype(int), 0.4)
    got = student_loglik_glmm(X, np.zeros((20, 1)), np.zeros(20, int), s / n, n,
                              np.zeros(20), "binomial", "logit", np.ones((1, 1)),
                              np.zeros((1, 1, 1)))[0]
    np.testing.assert_allclose(got, stats.binom.logpmf(s, n, special.expit(eta)), rtol=1e-12)
    c = rng.poisson(3.0, 20).astype(float)
    got = student_loglik_glmm(X, np.zeros((20, 1)), np.zeros(20, int), c, np.ones(20),
                              np.zeros(20), "poisson", "log", np.ones((1, 1)),
                              np.zeros((1, 1, 1)))[0]
    np.testing.assert_allclose(got, stats.poisson.logpmf(c, np.exp(eta)), rtol=1e-12)
    s2, const = row_constants(c, np.ones(20), "poisson")
    np.testing.assert_allclose(const, -special.gammaln(c + 1))


@pytest.mark.parametrize(("family", "link"), [("binomial", "logit"), ("binomial", "probit"),
                                           ("binomial", "cloglog"), ("poisson", "log")])
def test_student_loglik_in_blocks_of_draws_is_the_pmf_of_every_draw(family, link):
    """Blocks of draws (7 at a time, two threads, 30 draws: a last block of 2) give each draw's
    and student's log-pmf with η = xβ + o + z b_j, as SciPy computes it."""
    rng = np.random.default_rng(11)
    N, J, S = 60, 9, 30
    g = rng.integers(0, J, N)
    X = np.c_[np.ones(N), rng.normal(size=N)]
    Z = X.copy()
    off = 0.1 * rng.normal(size=N)
    beta, b = 0.3 * rng.normal(size=(S, 2)), 0.3 * rng.normal(size=(S, J, 2))
    n = rng.integers(1, 5, N).astype(float) if family == "binomial" else np.ones(N)
    eta = beta @ X.T + off + np.einsum("sik,ik->si", b[:, g, :], Z)
    if family == "poisson":
        c = rng.poisson(2.0, N).astype(float)
        ref = stats.poisson.logpmf(c, np.exp(eta))
        y = c
    else:
        k = rng.binomial(n.astype(int), 0.4)
        inv = {"logit": special.expit, "probit": special.ndtr,
               "cloglog": lambda e: -np.expm1(-np.exp(e))}[link]
        ref = stats.binom.logpmf(k, n, inv(eta))
        y = k / n
    got = student_loglik_glmm(X, Z, g, y, n, off, family, link, beta, b, chunk=7, threads=2)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    one = student_loglik_glmm(X, Z, g, y, n, off, family, link, beta, b, threads=1)
    np.testing.assert_array_equal(got, one)


def _sim(J=40, seed=4, g00=-0.4, g10=0.7, sd0=0.8, sd1=0.4, rho=-0.3):
    rng = np.random.default_rng(seed)
    nj = rng.integers(15, 30, J)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size)
    c = rho * sd0 * sd1
    b = rng.multivariate_normal([0, 0], [[sd0**2, c], [c, sd1**2]], size=J)
    eta = g00 + b[g, 0] + (g10 + b[g, 1]) * x
    y = rng.binomial(1, special.expit(eta))
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{j:02d}" for j in g]})


def test_default_glmm_priors_are_link_scale():
    d = _sim()
    fam = get_family("binomial")
    design, resp = glmer_design("y ~ 1 + x + (1 + x | g)", d, fam)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, "binomial", "logit")
    assert pri.sigma is None and "sigma ~" not in str(pri)
    mu, sig = pri.beta.param("mu", 2), pri.beta.param("sigma", 2)
    assert mu[0] == pytest.approx(special.logit(d["y"].mean()))
    assert sig[0] == 2.5 and sig[1] == pytest.approx(2.5 / d["x"].std(ddof=1))
    assert pri.sd.param("beta", 2)[0] == pytest.approx(2.0)  # Gamma(2, 2/1): mean 1 (logit scale)
    fam = get_family("poisson")
    dp = d.assign(k=np.arange(len(d)) % 4, e=1.0 + np.arange(len(d)) % 3)
    design, resp = glmer_design("k ~ 1 + x + offset(log(e)) + (1 | g)", dp, fam)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, "poisson", "log")
    assert pri.beta.param("mu", 2)[0] == pytest.approx(np.log(dp["k"].sum() / dp["e"].sum()))


def test_builder_structure_and_likelihood():
    """The PyMC model has the Gaussian builder's names and dims, and its observed log-likelihood
    at a point equals the per-student formula."""
    from twolevel.models.bayes.pymc_glmm import build_glmm_model

    d = _sim(J=12)
    fam = get_family("binomial", "probit")
    design, resp = glmer_design("y ~ 1 + x + (1 + x | g)", d, fam)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, "binomial", "probit")
    built = build_glmm_model(design, resp.y, resp.w, resp.offset, "binomial", "probit", pri)
    m = built.model
    names = {v.name for v in m.free_RVs}
    assert names == {"beta", "chol_cov", "z"}
    assert m.named_vars_to_dims["b_school"] == ("school", "effect")
    assert m.named_vars_to_dims["z"] == ("school", "effect_nc")
    assert built.n_centered == 0
    point = m.initial_point()
    rng = np.random.default_rng(0)
    point = {k: v + rng.normal(scale=0.3, size=np.shape(v)) for k, v in point.items()}
    obs = m[design.response]
    logp = m.compile_logp(vars=[obs], sum=True)(point)
    outs = m.replace_rvs_by_values([m["beta"], m["b_school"]])  # values, not prior draws
    beta, b = m.compile_fn(outs, inputs=m.value_vars, on_unused_input="ignore")(point)
    ref = student_loglik_glmm(design.X, design.Z, design.group_index, resp.y, resp.w,
                              resp.offset, "binomial", "probit", beta[None], b[None]).sum()
    assert logp == pytest.approx(ref, rel=1e-10)
    # the response is pm.Data: another response with the same design is swapped in (SBC)
    import pymc as pm

    flipped = 1.0 - resp.y
    with m:
        pm.set_data({"observed": flipped})
    ref2 = student_loglik_glmm(design.X, design.Z, design.group_index, flipped, resp.w,
                               resp.offset, "binomial", "probit", beta[None], b[None]).sum()
    assert m.compile_logp(vars=[obs], sum=True)(point) == pytest.approx(ref2, rel=1e-10)
    centred = build_glmm_model(design, resp.y, resp.w, resp.offset, "binomial", "probit", pri,
                               centering=1)
    assert {v.name for v in centred.model.free_RVs} == {"beta", "chol_cov", "z", "b_centered"}


def test_bad_input_messages():
    from twolevel.models.bayes.fit import fit_bayes
    from twolevel.models.bayes.pymc_glmm import binomial_trials, build_glmm_model

    d = _sim(J=6)
    with pytest.raises(FormulaError, match="link 'log' does not exist for family 'binomial'"):
        fit_bayes("y ~ x + (1 | g)", d, family="binomial", link="log")
    with pytest.raises(FormulaError, match="family 'gamma' is not supported"):
        fit_bayes("y ~ x + (1 | g)", d, family="gamma")
    with pytest.raises(TwolevelError, match="whole numbers of successes and trials"):
        binomial_trials(np.array([0.5, 0.25]), np.array([3.0, 4.0]))
    fam = get_family("poisson")
    dp = d.assign(k=np.arange(len(d)) % 3)
    design, resp = glmer_design("k ~ x + (1 | g)", dp, fam)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, "poisson", "log")
    with pytest.raises(TwolevelError, match="prior weights are not supported"):
        build_glmm_model(design, resp.y, resp.w * 2, resp.offset, "poisson", "log", pri)
    with pytest.raises(TwolevelError, match="centering 'sideways' is not valid"):
        fit_bayes("y ~ x + (1 | g)", d, family="binomial", centering="sideways")


@pytest.mark.slow
def test_small_bernoulli_fit_agrees_with_laplace():
    """A seeded non-centred fit of a random-slope logistic model: no divergences, and the
    posterior means of γ within 0.5 posterior SD of glmer's Laplace estimates."""
    from twolevel.models.bayes.fit import SamplerSettings, fit_bayes
    from twolevel.models.glmm.glmer import glmer

    d = _sim()
    f = "y ~ 1 + x + (1 + x | g)"
    fit = fit_bayes(f, d, family="binomial", progress=False,
                    settings=SamplerSettings(chains=2, draws=400, tune=400, seed=3))
    assert fit.diagnostics.divergences == 0
    tab = fit.to_frame()
    lap = glmer(f, d, family="binomial")
    for k, nm in enumerate(lap.fixef().index):
        row = tab.loc[f"fixef:{nm}"]
        assert abs(row["mean"] - lap.fixef().iloc[k]) < 0.5 * row["sd"], nm
    assert "sigma" not in tab.index
    ll = fit.datatree["log_likelihood"]
    assert ll["y"].shape == (2, 400, len(d))
    assert ll["y_by_school"].shape == (2, 400, 40)
    assert "Family: binomial (logit link)" in fit.summary()


@pytest.mark.slow
def test_cli_bayes_family_json():
    d = _sim(J=20)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.csv"
        d.to_csv(path, index=False)
        r = subprocess.run([sys.executable, "-m", "twolevel", "bayes", str(path),
                            "y ~ 1 + x + (1 | g)", "--family", "binomial", "--json", "--chains",
                            "2", "--draws", "200", "--tune", "200"], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert {"divergences", "max_rhat", "min_ess_bulk", "min_ess_tail", "wall_seconds",
                "draws", "chains", "posterior"} <= set(out)
        assert "fixef:x" in out["posterior"] and "sigma" not in out["posterior"]
        r = subprocess.run([sys.executable, "-m", "twolevel", "bayes", str(path),
                            "y ~ 1 + x + (1 | g)", "--link", "probit"], capture_output=True,
                           text=True)
        assert r.returncode == 2 and "--link needs --family" in r.stderr
        r = subprocess.run([sys.executable, "-m", "twolevel", "bayes", str(path),
                            "y ~ 1 + x + (1 | g)", "--family", "binomial", "--sampler",
                            "integrated", "--chains", "2", "--draws", "200"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert "integrated out by adaptive Gauss-Hermite quadrature" in r.stdout
        assert "Chains: 2 x 200 draws after 500 tuning steps" in r.stdout
        assert "target_accept 0.8" in r.stdout
        r = subprocess.run([sys.executable, "-m", "twolevel", "bayes", str(path),
                            "y ~ 1 + x + (1 | g)", "--family", "binomial", "--link", "cloglog",
                            "--sampler", "auto", "--chains", "1", "--draws", "30", "--tune",
                            "30", "--json"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([sys.executable, "-m", "twolevel", "bayes", str(path),
                            "y ~ 1 + x + (1 | g)", "--sampler", "integrated"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "--sampler needs --family binomial or --family " \
                                     "poisson" in r.stderr


def test_family_refuses_statistics_engines(tmp_path):
    from twolevel.models.bayes.fit import fit_bayes

    d = _sim(J=6)
    with pytest.raises(TwolevelError, match="family='binomial' is fitted from the rows"):
        fit_bayes("y ~ x + (1 | g)", d, family="binomial", engine="duckdb")
    path = tmp_path / "b.csv"
    d.to_csv(path, index=False)
    for cmd in (["fit", str(path), "y ~ x + (1 | g)"], ["bayes", str(path), "y ~ x + (1 | g)"],
                ["anova", str(path), "y ~ 1 + (1 | g)", "y ~ x + (1 | g)"]):
        r = subprocess.run([sys.executable, "-m", "twolevel", *cmd, "--family", "binomial",
                            "--engine", "duckdb"], capture_output=True, text=True)
        assert r.returncode == 2, (cmd, r.stderr)
        assert "--family binomial is fitted from the rows in memory" in r.stderr


def test_sampler_defaults_per_family():
    from twolevel.models.bayes.fit import SamplerSettings

    assert SamplerSettings.for_family("gaussian") == SamplerSettings()
    b = SamplerSettings.for_family("binomial", draws=300, target_accept=None)
    assert (b.adaptation, b.target_accept, b.draws, b.tune) == ("diag", 0.8, 300, 1000)
    p = SamplerSettings.for_family("poisson")
    assert (p.adaptation, p.target_accept, p.draws) == ("diag", 0.8, 2000)
    i = SamplerSettings.for_family("binomial", sampler="integrated", draws=300)
    assert (i.adaptation, i.target_accept, i.draws, i.tune) == ("low_rank", 0.8, 300, 500)


def test_normal_model_settings_on_a_glmm_warn():
    """SamplerSettings() (low-rank adaptation, the normal model's default) passed to a binary
    fit: a warning saying what it costs and what to use; the fit runs as asked."""
    from twolevel.models.bayes.fit import SamplerSettings, fit_bayes

    d = _sim(J=12, seed=3)
    with pytest.warns(UserWarning, match=r"adaptation='low_rank'.*about 10x slower.*use "
                      r"SamplerSettings.for_family\('binomial', \.\.\.\)"):
        fit = fit_bayes("y ~ 1 + x + (1 + x | g)", d, family="binomial", progress=False,
                        log_likelihood="none", sampler="full",
                        settings=SamplerSettings(chains=2, draws=50, tune=50))
    assert fit.settings.adaptation == "low_rank"


@pytest.mark.slow
def test_gil_free_route_samples_the_same_model():
    """sample_nuts(gil_free=True) (nutpie.compile_pymc_model's cfunc, used from GIL_FREE_ROWS
    rows) returns the layout of the cached route and a posterior in agreement with it."""
    from twolevel.models.bayes.pymc_glmm import build_glmm_model
    from twolevel.models.bayes.pymc_model import sample_nuts

    d = _sim(J=30)
    fam = get_family("binomial", "logit")
    design, resp = glmer_design("y ~ 1 + x + (1 + x | g)", d, fam)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, "binomial", "logit")
    built = build_glmm_model(design, resp.y, resp.w, resp.offset, "binomial", "logit", pri)
    kw = dict(draws=400, tune=400, chains=2, cores=2, seed=3, target_accept=0.8,
              progress=False, adaptation="diag")
    a = sample_nuts(built, gil_free=True, **kw)["posterior"].to_dataset()
    b = sample_nuts(built, **kw)["posterior"].to_dataset()
    assert set(a.data_vars) == set(b.data_vars) and a["b_school"].dims == b["b_school"].dims
    sd = b["beta"].std(("chain", "draw"))
    assert np.all(np.abs(a["beta"].mean(("chain", "draw")) - b["beta"].mean(("chain", "draw")))
                  < 0.5 * sd)
    with pytest.raises(TwolevelError, match="data= swaps need the cached route"):
        sample_nuts(built, gil_free=True, data={"X": design.X}, **kw)
