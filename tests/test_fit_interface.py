"""One fit interface for LMMs and GLMMs (issue 21): the lme4 generics on both fit classes, every
module-level function of ``tl.__all__`` that takes a fit called on an lmer *and* a glmer fit, one
random-number convention (``rng=`` a seed or a Generator, ``seed=`` still accepted), short
``repr``s, and ``summary()`` as text plus tables (and HTML for notebooks)."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pandas as pd
import pytest

import twolevel as tl
from twolevel.data.errors import TwolevelError

LMM_F = "y ~ x + (1 + x | g)"
GLMM_F = "yb ~ x + (1 + x | g)"


def _data(seed: int = 2101) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    J = 30
    g = np.repeat(np.arange(1, J + 1), rng.integers(12, 25, J))
    x = rng.normal(size=g.size)
    b0, b1 = rng.normal(0, 0.9, J), rng.normal(0, 0.4, J)
    eta = 0.2 + 0.8 * x + b0[g - 1] + b1[g - 1] * x
    return pd.DataFrame({"y": 10 + 2 * eta + rng.normal(size=g.size),
                         "yb": rng.binomial(1, 1 / (1 + np.exp(-eta))), "x": x, "g": g})


@pytest.fixture(scope="module")
def fits():
    d = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = tl.lmer(LMM_F, d)
        gl = tl.glmer(GLMM_F, d, family="binomial")
        lm0 = tl.lmer("y ~ 1 + (1 | g)", d)
        gl0 = tl.glmer("yb ~ 1 + (1 | g)", d, family="binomial")
    return {"lmer": lm, "glmer": gl, "lmer0": lm0, "glmer0": gl0}


GENERICS = ("fixef", "ranef", "coef", "VarCorr", "vcov", "confint", "predict", "simulate",
            "summary", "to_frame", "logLik", "AIC", "BIC", "deviance")


@pytest.mark.parametrize("kind", ["lmer", "glmer"])
def test_lme4_generics_on_both_fits(fits, kind):
    fit = fits[kind]
    assert isinstance(fit, tl.models.fit_base.MixedFit)
    for name in GENERICS:
        assert callable(getattr(fit, name)), name
    assert fit.nobs == len(_data()) and fit.ngroups == 30
    assert fit.logLik() == fit.loglik and fit.AIC() == fit.aic and fit.BIC() == fit.bic
    re = fit.ranef(cond_var=True)
    assert {"condsd_(Intercept)", "condsd_x", "condcov_(Intercept):x"} <= set(re.columns)
    assert list(fit.ranef(cond_var=False).columns) == ["(Intercept)", "x"]
    co = fit.coef()
    np.testing.assert_allclose(co["x"], fit.fixef()["x"] + re["x"])
    assert fit.vcov().shape == (2, 2) and fit.VarCorr().cov.shape == (2, 2)
    assert fit.to_frame().shape[0] == 2 and np.isfinite(fit.deviance())
    sims = fit.simulate(3, rng=4)
    assert sims.shape == (fit.nobs, 3)
    ci = fit.confint(method="Wald")
    assert list(ci.columns) == ["2.5 %", "97.5 %"]


def test_confint_module_equals_method_on_glmer(fits):
    g = fits["glmer0"]
    for method in ("Wald", "profile"):
        pd.testing.assert_frame_equal(tl.confint(g, method=method), g.confint(method=method))
    boot = tl.confint(g, method="boot", nsim=4, rng=2)
    assert list(boot.index) == ["sd_(Intercept)|g", "(Intercept)"]


# name in tl.__all__ → how it is called on a fit (m0 the smaller model of the same kind)
CALLS = {
    "anova": lambda m, m0: tl.anova(m0, m),
    "bootstrap": lambda m, m0: tl.bootstrap(m, nsim=3, rng=1),
    "confint": lambda m, m0: tl.confint(m, method="Wald"),
    "hlm_statistics_fit": lambda m, m0: tl.hlm_statistics_fit(m),
    "icc": lambda m, m0: tl.icc(m),
    "icc_at": lambda m, m0: tl.icc_at(m, [[1.0, 0.0], [1.0, 1.0]]),
    "kenward_roger_fit": lambda m, m0: tl.kenward_roger_fit(m),
    "predict": lambda m, m0: tl.predict(m),
    "prv": lambda m, m0: tl.prv(m0, m),
    "r2_nakagawa": lambda m, m0: tl.r2_nakagawa(m),
    "refit_ml": lambda m, m0: tl.refit_ml(m),
    "residual_summary_fit": lambda m, m0: tl.residual_summary_fit(m),
    "school_table_fit": lambda m, m0: tl.school_table_fit(m),
    "simulate": lambda m, m0: tl.simulate(m, 2, rng=1),
    "snijders_bosker": lambda m, m0: tl.snijders_bosker(m0, m),
}
# what a glmer fit is refused with (lme4/pbkrtest/performance refuse or do not define these)
GLMER_REFUSED = {
    "hlm_statistics_fit": "lmer fits only",
    "kenward_roger_fit": "pbkrtest refuses glmer fits too",
    "prv": "residual variances",
    "school_table_fit": "residual variance",
    "snijders_bosker": "residual variances",
}


def _takes_a_fit(name: str) -> bool:
    """A function whose first argument is an lmer/glmer fit (the Bayesian functions take a
    BayesFit and are left out)."""
    obj = getattr(tl, name)
    if tl._API[name].startswith("twolevel.models.bayes"):
        return False
    if tl._API[name] == "twolevel.models.lmm.multi":  # take a MultiFit: tests/test_multilevel.py
        return False
    if inspect.isclass(obj) or not callable(obj):
        return False
    params = list(inspect.signature(obj).parameters)
    return bool(params) and params[0] in {"fit", "fits", "null"}


def test_every_fit_function_is_covered():
    assert {n for n in tl.__all__ if _takes_a_fit(n)} == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_module_function_on_lmer_and_glmer(fits, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert CALLS[name](fits["lmer"], fits["lmer0"]) is not None
        if name in GLMER_REFUSED:
            with pytest.raises(TwolevelError, match=GLMER_REFUSED[name]) as err:
                CALLS[name](fits["glmer"], fits["glmer0"])
            assert "\n" not in str(err.value)  # one line
        else:
            assert CALLS[name](fits["glmer"], fits["glmer0"]) is not None


def test_glmer_refit_ml_is_the_fit_itself(fits):
    assert tl.refit_ml(fits["glmer"]) is fits["glmer"] and fits["glmer"].reml is False


def test_rng_convention(fits):
    for fit in (fits["lmer"], fits["glmer"]):
        a = tl.simulate(fit, 2, rng=7)
        pd.testing.assert_frame_equal(a, tl.simulate(fit, 2, seed=7))
        pd.testing.assert_frame_equal(a, tl.simulate(fit, 2, rng=np.random.default_rng(7)))
        assert not a.equals(tl.simulate(fit, 2, rng=8))
        with pytest.raises(TwolevelError, match="either rng= .* or seed=, not both"):
            tl.simulate(fit, 2, rng=1, seed=1)
    m = fits["lmer0"]
    b1, b2 = tl.bootstrap(m, nsim=3), tl.bootstrap(m, nsim=3, seed=1)
    pd.testing.assert_frame_equal(b1.table, b2.table)  # the default stays seed 1
    assert b1.seed == 1 and tl.bootstrap(m, nsim=3, rng=np.random.default_rng(1)).seed is None
    p1 = tl.predict(m, interval="bootstrap", nsim=20, rng=3).iloc[:3]
    p2 = tl.predict(m, interval="bootstrap", nsim=20, seed=3).iloc[:3]
    pd.testing.assert_frame_equal(p1, p2)


def test_glmer_bootstrap_refits_simulated_responses(fits):
    g = fits["glmer0"]
    b = tl.bootstrap(g, nsim=6, rng=5)
    assert b.nsim == 6 and b.n_failed == 0 and b.seed == 5 and "sigma" not in b.table
    assert list(b.lme4_columns()) == ["sd_(Intercept)|g", "(Intercept)"]
    assert b.table["(Intercept)"].std() > 0  # each replicate is a different refit
    # the estimate row is the fit itself
    assert b.estimate["objective"] == g.minus2loglik
    assert b.estimate["sd_(Intercept)|g"] == np.sqrt(g.VarCorr().cov[0, 0])
    pd.testing.assert_frame_equal(b.table, tl.bootstrap(g, nsim=6, seed=5).table)


def test_glmer_simulate_draws_from_the_model(fits):
    g = fits["glmer0"]
    sims = g.simulate(400, rng=11)
    assert set(np.unique(sims.to_numpy())) <= {0.0, 1.0}
    # the mean of the simulated responses is the marginal mean E[g⁻¹(β₀ + b)] of the model
    b = np.random.default_rng(0).normal(0, np.sqrt(g.VarCorr().cov[0, 0]), 200_000)
    marginal = float(np.mean(1 / (1 + np.exp(-(g.beta[0] + b)))))
    assert abs(sims.to_numpy().mean() - marginal) < 0.01
    fixed = g.simulate(200, rng=1, use_u=True).to_numpy().mean(axis=1)
    assert np.corrcoef(fixed, g.fitted())[0, 1] > 0.95  # use_u keeps each school's mode
    with pytest.raises(TwolevelError, match="fitted rows only"):
        g.simulate(1, newdata=_data().head())


@pytest.mark.parametrize("kind", ["lmer", "glmer"])
def test_repr_is_short(fits, kind):
    fit = fits[kind]
    r = repr(fit)
    assert len(r) < 300 and r.startswith(f"<{type(fit).__name__} 'y")
    assert f"nobs={fit.nobs}" in r and "groups=g:30" in r
    from twolevel.models.fit_base import short_repr  # a very long formula is shortened

    assert len(short_repr("LmerFit", [("nobs", 1)], "y ~ " + " + ".join(["x"] * 400))) < 300


@pytest.mark.parametrize("kind", ["lmer", "glmer"])
def test_summary_is_text_and_tables(fits, kind):
    fit = fits[kind]
    s = fit.summary()
    assert isinstance(s, str) and str(s) == str(fit) and repr(s) == str(s)
    pd.testing.assert_frame_equal(s.coefficients, fit.to_frame())
    pd.testing.assert_frame_equal(s.random_effects, fit.VarCorr().to_frame())
    assert s.fit_statistics["nobs"] == fit.nobs
    html = fit._repr_html_()
    assert html.count("<table") == 3 and "Fixed effects" in html and "Random effects" in html
    assert "(Intercept)" in html


def test_survey_fit_reprs_are_short():
    """The fit classes of survey data (sampling weights, plausible values / imputed sets)."""
    d = _data()
    rng = np.random.default_rng(3)
    d["w1"] = rng.uniform(0.5, 2.0, len(d))
    d["w2"] = rng.uniform(0.5, 2.0, 31)[d.g]
    d2 = d.assign(y=d.y + rng.normal(size=len(d)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = [tl.lmer("y ~ x + (1 | g)", d, weights=("w1", "w2"), REML=False),
                tl.glmer("yb ~ x + (1 | g)", d, family="binomial", weights=("w1", "w2")),
                tl.lmer("y ~ x + (1 | g)", [d, d2]),
                tl.fit_bayes("y ~ 1 + x + (1 | g)", [d, d2], progress=False,
                             settings=tl.SamplerSettings(chains=2, draws=100, tune=100, seed=1))]
    names = ["WeightedLmerFit", "WeightedGlmerFit", "PooledFit", "StackedBayesFit"]
    for fit, name in zip(fits, names, strict=True):
        r = repr(fit)
        assert type(fit).__name__ == name and r.startswith(f"<{name} 'y") and len(r) < 300, r
