"""The PyMC builders (structure, exact fast likelihoods), the collapsed pieces, the sampler and its
diagnostic gate, and every error message of the Bayesian entry points."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import multivariate_normal

from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.models.bayes.collapsed import draw_school_effects, school_marginal_loglik
from twolevel.models.bayes.fit import (
    SamplerSettings,
    diagnose,
    fit_bayes,
    posterior_predictive,
    prior_predictive,
    school_residual_ss,
    student_loglik,
)
from twolevel.models.bayes.priors import Prior, default_priors
from twolevel.models.bayes.pymc_model import build_model, collapsed_loglik, value_var_names
from twolevel.models.design import group_crossprods, make_design

F_SLOPE = "y ~ 1 + x + w + (1 + x | g)"


def _sim(J=12, seed=0, nmin=3, nmax=9):
    """A small two-level data set with a random intercept and slope and a level-2 predictor."""
    rng = np.random.default_rng(seed)
    n = rng.integers(nmin, nmax + 1, J)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=g.size)
    w = rng.normal(size=J)[g]
    b = rng.multivariate_normal([0, 0], [[4.0, -0.6], [-0.6, 1.0]], size=J)
    y = 10 + 2 * x + 0.5 * w + b[g, 0] + b[g, 1] * x + rng.normal(scale=1.5, size=g.size)
    return pd.DataFrame({"g": [f"s{k:02d}" for k in g], "x": x, "w": w, "y": y})


@pytest.fixture(scope="module")
def small():
    return _sim()


@pytest.fixture(scope="module")
def design(small):
    return make_design(F_SLOPE, small)


def _random_points(built, k, seed):
    """Random points in the unconstrained space of the model's free variables."""
    rng = np.random.default_rng(seed)
    ip = built.model.initial_point()
    return [{n: np.asarray(v) + rng.normal(scale=0.5, size=np.shape(v)) for n, v in ip.items()}
            for _ in range(k)]


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("likelihood", ["student", "suffstat", "collapsed"])
def test_model_names_dims_and_finite_gradient(design, likelihood):
    built = build_model(design, likelihood=likelihood, centering="noncentered")
    m = built.model
    assert built.structure == "lkj"
    assert list(m.coords["fixed"]) == ["(Intercept)", "x", "w"]
    assert list(m.coords["effect"]) == ["(Intercept)", "x"]
    assert list(m.coords["school"]) == sorted({f"s{k:02d}" for k in range(12)})
    names = set(m.named_vars)
    assert {"beta", "sigma", "chol_cov", "sd", "corr"} <= names
    assert m.named_vars_to_dims["beta"] == ("fixed",)
    assert m.named_vars_to_dims["corr"] == ("effect", "effect_b")
    if likelihood == "collapsed":
        assert "b_school" not in names and "marginal_loglik" in names
    else:
        assert m.named_vars_to_dims["b_school"] == ("school", "effect")
        assert m.named_vars_to_dims["z"] == ("school", "effect_nc")
    dlogp = m.compile_dlogp()
    for pt_ in _random_points(built, 3, 1):
        assert np.all(np.isfinite(dlogp(pt_)))


def test_centering_options(design):
    b1 = build_model(design, likelihood="suffstat", centering=1)
    assert b1.model.named_vars_to_dims["b_centered"] == ("school", "effect_c")
    assert list(b1.model.coords["effect_nc"]) == ["x"]
    b2 = build_model(design, likelihood="suffstat", centering="centered")
    assert "z" not in b2.model.named_vars and b2.n_centered == 2
    assert build_model(design, likelihood="suffstat", centering="auto").n_centered in (0, 1, 2)


def test_independent_effects_use_halfnormal_sds(small):
    d = make_design("y ~ 1 + x + (1 + x || g)", small)
    built = build_model(d, likelihood="collapsed")
    assert built.structure == "diag" and "chol_cov" not in built.model.named_vars
    assert built.model.named_vars_to_dims["sd"] == ("effect",)


def test_priors_print_and_override(design):
    pri = default_priors(design)
    text = str(pri)
    assert "beta  [(Intercept), x, w] ~ Normal(" in text and "corr  ~ LKJ(eta: 2.0)" in text
    new = pri.replace(corr=Prior("LKJ", eta=4.0), sigma=Prior("HalfNormal", sigma=3.0))
    built = build_model(design, new, likelihood="collapsed")
    assert built.priors.corr.params["eta"] == 4.0


# ----------------------------------------------------------------------------- exact likelihoods


def test_suffstat_logp_equals_student_logp(design):
    """Same free variables, same density: the per-school cross-products are exact."""
    a = build_model(design, likelihood="student", centering="noncentered")
    b = build_model(design, likelihood="suffstat", centering="noncentered")
    assert value_var_names(a) == value_var_names(b)
    fa, fb = a.model.compile_logp(), b.model.compile_logp()
    ga, gb = a.model.compile_dlogp(), b.model.compile_dlogp()
    for pt_ in _random_points(a, 5, 2):
        la, lb = float(fa(pt_)), float(fb(pt_))
        assert lb == pytest.approx(la, rel=1e-8)
        np.testing.assert_allclose(gb(pt_), ga(pt_), rtol=1e-7, atol=1e-7)


def test_collapsed_loglik_is_the_integrated_likelihood(design):
    """log p(y | β, Σ, σ) from the Woodbury pieces equals the dense multivariate normal density
    of every school, V_j = σ²I + Z_jΣZ_jᵀ (school effects integrated out)."""
    cp = group_crossprods(design)
    rng = np.random.default_rng(3)
    for _ in range(4):
        beta = rng.normal(size=design.p)
        Lm = np.array([[rng.uniform(0.5, 2), 0.0], [rng.normal(), rng.uniform(0.2, 1)]])
        sigma = rng.uniform(0.5, 2)
        dense = 0.0
        for j in range(design.n_groups):
            idx = design.group_index == j
            Zj = design.Z[idx]
            V = sigma**2 * np.eye(idx.sum()) + Zj @ Lm @ Lm.T @ Zj.T
            dense += multivariate_normal(design.X[idx] @ beta, V).logpdf(design.y[idx])
        Lnp = [[Lm[0, 0], None], [Lm[1, 0], Lm[1, 1]]]
        got = collapsed_loglik(cp, design.n, beta, Lnp, sigma, mod=np)
        assert got == pytest.approx(dense, rel=1e-10)
        rss0 = np.array([[np.sum((design.y - design.X @ beta)[design.group_index == j] ** 2)
                          for j in range(design.n_groups)]])
        per = school_marginal_loglik(cp.A, cp.B, cp.c, rss0, design.group_sizes, beta[None],
                                     Lm[None], np.array([sigma]))
        assert per.sum() == pytest.approx(dense, rel=1e-10)


def test_pointwise_pieces_equal_their_direct_formulas(design):
    """Per-school ‖y_j − X_jβ‖² from each school's cross-products equals the direct sum over its
    students; per-student log densities equal scipy's normal log density."""
    from scipy.stats import norm

    rng = np.random.default_rng(8)
    beta = rng.normal(size=(3, design.p))
    rss = school_residual_ss(design, beta)
    direct = np.array([[np.sum((design.y - design.X @ bs)[design.group_index == j] ** 2)
                        for j in range(design.n_groups)] for bs in beta])
    np.testing.assert_allclose(rss, direct, rtol=1e-10)
    b = rng.normal(size=(3, design.n_groups, design.q))
    sigma = rng.uniform(0.5, 2.0, size=3)
    ll = student_loglik(design, beta, b, sigma, chunk=2)
    mu = beta @ design.X.T + (design.Z[None] * b[:, design.group_index]).sum(-1)
    np.testing.assert_allclose(ll, norm.logpdf(design.y[None], mu, sigma[:, None]), rtol=1e-12)


def test_conditional_school_effects_match_dense_formula(design):
    """b_j | y, β, Σ, σ ~ N(P Z_jᵀr_j/σ², P), P = (Σ⁻¹ + Z_jᵀZ_j/σ²)⁻¹: mean and covariance of
    40,000 draws within Monte-Carlo error."""
    cp = group_crossprods(design)
    beta = np.array([10.0, 2.0, 0.5])
    Lm = np.array([[2.0, 0.0], [-0.3, 0.9]])
    sigma, S, j = 1.5, 40_000, 4
    b = draw_school_effects(cp.A, cp.B, cp.c, np.tile(beta, (S, 1)), np.tile(Lm, (S, 1, 1)),
                            np.full(S, sigma), np.random.default_rng(5))[:, j]
    idx = design.group_index == j
    Zj, r = design.Z[idx], design.y[idx] - design.X[idx] @ beta
    P = np.linalg.inv(np.linalg.inv(Lm @ Lm.T) + Zj.T @ Zj / sigma**2)
    m = P @ Zj.T @ r / sigma**2
    assert np.all(np.abs(b.mean(0) - m) < 4 * np.sqrt(np.diag(P) / S))
    np.testing.assert_allclose(np.cov(b.T), P, rtol=0.05, atol=0.01)


# ----------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def small_fit(small):
    return fit_bayes(F_SLOPE, _sim(J=40, seed=4),
                     settings=SamplerSettings(chains=2, draws=300, tune=300, seed=11),
                     progress=False)


def test_small_fit_is_reproducible_and_complete(small_fit):
    dt = small_fit.datatree
    post = dt["posterior"]
    assert post["b_school"].dims == ("chain", "draw", "school", "effect")
    assert post["b_school"].shape == (2, 300, 40, 2)
    ll = dt["log_likelihood"]
    assert ll["y"].shape[-1] == small_fit.design.n and ll["y_by_school"].shape[-1] == 40
    d = small_fit.diagnostics
    assert d.divergences == 0 and d.max_rhat < 1.05 and len(d.bfmi) == 2
    assert d.worst_ess.startswith(("beta", "sd", "corr", "sigma", "b_school"))
    again = fit_bayes(F_SLOPE, _sim(J=40, seed=4),
                      settings=SamplerSettings(chains=2, draws=300, tune=300, seed=11),
                      progress=False)
    xr.testing.assert_equal(dt["posterior"].to_dataset(), again.datatree["posterior"].to_dataset())
    f = small_fit.to_frame()
    assert list(f.index) == ["fixef:(Intercept)", "fixef:x", "fixef:w", "sd:(Intercept)", "sd:x",
                             "corr:(Intercept):x", "sigma"]
    assert "Gate:" in small_fit.summary()


def test_posterior_saves_and_reopens(small_fit, tmp_path):
    import arviz as az

    path = tmp_path / "post.nc"
    small_fit.save(path)
    dt = az.from_netcdf(path)
    assert "y_by_school" in dt["log_likelihood"] and "y" not in dt["log_likelihood"]
    np.testing.assert_array_equal(dt["posterior"]["beta"].to_numpy(),
                                  small_fit.posterior["beta"].to_numpy())


def test_predictive_draws_have_the_data_shape(small_fit):
    yrep = posterior_predictive(small_fit, 7, seed=1)
    assert yrep.shape == (7, small_fit.design.n) and np.isfinite(yrep).all()
    pri = prior_predictive(small_fit.design, None, 5, seed=2)
    assert pri["y"].shape == (5, small_fit.design.n) and pri["b"].shape == (5, 40, 2)


def test_gate_reports_each_problem_in_plain_words():
    rng = np.random.default_rng(0)
    bad = rng.normal(size=(2, 50))
    bad[1] += 5.0  # the chains disagree
    post = xr.Dataset({"beta": (("chain", "draw", "fixed"), bad[:, :, None]),
                       "sigma": (("chain", "draw"), np.abs(bad) + 1)},
                      coords={"fixed": ["(Intercept)"]})
    div = np.zeros((2, 50), bool)
    div[0, 3] = True
    energy = np.cumsum(rng.normal(size=(2, 50)), axis=1) * 0.01 + rng.normal(size=(2, 50)) * 1e-4
    stats = xr.Dataset({"diverging": (("chain", "draw"), div),
                        "energy": (("chain", "draw"), energy)})
    dt = xr.DataTree.from_dict({"posterior": post, "sample_stats": stats})
    d = diagnose(dt)
    text = "\n".join(d.problems)
    assert not d.passed
    assert "1 divergent transitions after warm-up" in text
    assert "R-hat" in text and "the chains disagree; run more tuning and draws" in text
    assert "effective sample size too small" in text
    assert "the energy distribution is poorly explored" in text


# ----------------------------------------------------------------------------- bad input


def test_formula_the_builders_cannot_express(small):
    d = make_design("y ~ 1 + x + w + (1 + x | g) + (0 + w | g)", small)
    with pytest.raises(FormulaError, match=r"splits the random effects into blocks "
                                           r"\(\(Intercept\) \+ x \| g\) \+ \(w \| g\)"):
        build_model(d)


def test_prior_with_wrong_shape(design):
    pri = default_priors(design).replace(beta=Prior("Normal", mu=0.0, sigma=[1.0, 2.0]))
    with pytest.raises(TwolevelError, match="prior 'beta' parameter 'sigma' has 2 values but the "
                                            "model has 3 coefficients for it; give one value or 3"):
        build_model(design, pri)


def test_prior_of_wrong_family_and_parameters(design):
    with pytest.raises(TwolevelError,
                       match="prior 'sd' is Normal, which twolevel cannot use there"):
        build_model(design, default_priors(design).replace(sd=Prior("Normal", mu=0, sigma=1)))
    with pytest.raises(TwolevelError, match=r"missing: sigma; unknown: scale"):
        build_model(design, default_priors(design).replace(sigma=Prior("HalfNormal", scale=1)))
    with pytest.raises(TwolevelError, match="prior 'corr' parameter 'eta' must be positive"):
        build_model(design, default_priors(design).replace(corr=Prior("LKJ", eta=-1.0)))


def test_unknown_likelihood_and_centering(design):
    with pytest.raises(TwolevelError, match="likelihood 'exact' is not known; choose one of "
                                            "collapsed, suffstat, student"):
        build_model(design, likelihood="exact")
    with pytest.raises(TwolevelError, match="centering 'half' is not valid"):
        build_model(design, centering="half")


def test_unknown_adaptation_and_log_likelihood(small):
    from twolevel.models.bayes.pymc_model import sample_nuts

    built = build_model(make_design("y ~ 1 + x + (1 | g)", small))
    with pytest.raises(TwolevelError, match="adaptation 'dense' is not one of nutpie's low_rank, "
                                            "diag, draw_diag; use one of those"):
        sample_nuts(built, draws=10, tune=10, chains=1, cores=1, seed=1, target_accept=0.8,
                    progress=False, adaptation="dense")
    with pytest.raises(TwolevelError, match="log_likelihood 'all' is not one of both, school, "
                                            "none; use one of those"):
        fit_bayes("y ~ 1 + x + (1 | g)", small, progress=False, log_likelihood="all")


def test_log_likelihood_per_school_only(small):
    fit = fit_bayes("y ~ 1 + x + (1 | g)", small, progress=False, log_likelihood="school",
                    settings=SamplerSettings(chains=2, draws=100, tune=100, seed=2))
    ll = fit.datatree["log_likelihood"]
    assert list(ll.data_vars) == ["y_by_school"] and ll["y_by_school"].shape == (2, 100, 12)


def test_one_school_is_refused():
    df = pd.DataFrame({"g": ["a"] * 6, "x": np.arange(6.0), "y": np.arange(6.0) ** 1.5})
    with pytest.raises(DataError, match=r"grouping column 'g' has only 1 group \(a\); "
                                      "a two-level model needs at least 2 groups"):
        fit_bayes("y ~ 1 + x + (1 | g)", df, progress=False)


def test_default_sd_prior_is_boundary_avoiding_gamma(design):
    """Gamma(2, 2/s) per random effect (module docstring of twolevel.models.bayes.priors), s the
    data scale."""
    pri = default_priors(design)
    assert pri.sd.dist == "Gamma" and pri.sd.params["alpha"] == 2.0
    s_y = float(np.std(design.y, ddof=1))
    assert pri.sd.params["beta"][0] == pytest.approx(2.0 / s_y, rel=1e-12)
    s_x = float(np.std(design.Z[:, 1], ddof=1))
    assert pri.sd.params["beta"][1] == pytest.approx(2.0 * s_x / s_y, rel=1e-12)
    assert "sd    [(Intercept), x] ~ Gamma(alpha: 2.0, beta: [" in str(pri)


@pytest.mark.slow
def test_collapsed_posterior_matches_noncentred_within_4_mcse():
    """The collapsed model (school effects integrated out, drawn afterwards) and the non-centred
    model (school effects sampled) have the same posterior: means and SDs of γ, τ, ρ, σ agree
    within 4 Monte-Carlo standard errors (4 chains × 1000 draws each). 14 comparisons at once:
    with 3 MCSE about one draw set in 25 fails by chance (one did, by 3.1 MCSE, in a fresh
    clone's first run with empty caches, whose draws differed from a warm run's in the last
    bits), with 4 MCSE about one in 1,000; a real difference of about 0.15 posterior SD in any
    of them still fails."""
    import arviz as az

    df = _sim(J=60, seed=8, nmin=8, nmax=20)
    s = SamplerSettings(chains=4, draws=1000, tune=1000, seed=3, target_accept=0.95)
    fits = {lik: fit_bayes(F_SLOPE, df, likelihood=lik, centering="noncentered", settings=s,
                           progress=False) for lik in ("collapsed", "suffstat")}
    assert fits["suffstat"].diagnostics.divergences == 0

    def quantities(fit):
        post = fit.posterior
        sd = post["sd"]
        q = {
            "gamma00": post["beta"].sel(fixed="(Intercept)"),
            "gamma10": post["beta"].sel(fixed="x"),
            "gamma01": post["beta"].sel(fixed="w"),
            "tau00": sd.sel(effect="(Intercept)") ** 2, "tau11": sd.sel(effect="x") ** 2,
            "rho": post["corr"].sel(effect="x", effect_b="(Intercept)"), "sigma": post["sigma"],
        }
        return xr.Dataset({k: v.drop_vars(["fixed", "effect", "effect_b"], errors="ignore")
                           for k, v in q.items()})

    qa, qb = quantities(fits["collapsed"]), quantities(fits["suffstat"])
    for stat, method in (("mean", "mean"), ("std", "sd")):
        ma, mb = az.mcse(qa, method=method), az.mcse(qb, method=method)
        for v in qa.data_vars:
            a = float(getattr(qa[v], stat)(("chain", "draw")))
            b = float(getattr(qb[v], stat)(("chain", "draw")))
            tol = 4.0 * float(np.hypot(ma[v], mb[v]))
            assert abs(a - b) <= tol, (stat, v, a, b, tol)
