"""The C log density and gradient of the non-centred GLMM (``twolevel_logp_glmm`` in
``ckernels.c``) equal the PyMC model's (:func:`twolevel.models.bayes.pymc_glmm.build_glmm_model`,
``compile_logp`` / ``compile_dlogp``) to 1e-10 at random points: Bernoulli and binomial (trials)
with the logit link, Poisson with an offset, a random intercept, a correlated random slope (LKJ)
and independent effects; other priors; the compiled fit's DataTree has the PyMC route's variables
and dims, and its posterior agrees with the PyMC route's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import pymc_reference

from twolevel.models.bayes import ckernels
from twolevel.models.bayes.glmm_sampler import compile_glmm, compiled_glmm_supported
from twolevel.models.bayes.priors import Prior, default_glmm_priors
from twolevel.models.bayes.pymc_glmm import build_glmm_model
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.response import glmer_design


def _sim(seed=5, J=12):
    """Two-level data with a Bernoulli, a binomial (with trials) and a count response."""
    rng = np.random.default_rng(seed)
    nj = rng.integers(3, 9, J)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size)
    w = rng.normal(size=J)[g]
    b = rng.normal(size=(J, 2)) * [0.8, 0.4]
    eta = -0.3 + 0.6 * x + 0.4 * w + b[g, 0] + b[g, 1] * x
    p = 1 / (1 + np.exp(-eta))
    trials = rng.integers(1, 7, g.size)
    expo = rng.uniform(0.5, 3.0, g.size)
    return pd.DataFrame({
        "g": [f"s{k:02d}" for k in g], "x": x, "w": w,
        "y01": rng.binomial(1, p), "succ": rng.binomial(trials, p), "trials": trials,
        "count": rng.poisson(expo * np.exp(eta)), "expo": expo})


CASES = [
    ("y01 ~ 1 + x + w + (1 | g)", "binomial", None),
    ("y01 ~ 1 + x + w + (1 + x | g)", "binomial", None),
    ("cbind(succ, trials - succ) ~ 1 + x + (1 + x | g)", "binomial", None),
    ("y01 ~ 1 + x + (1 + x || g)", "binomial", None),
    ("count ~ 1 + x + w + offset(log(expo)) + (1 + x | g)", "poisson", None),
    ("count ~ 1 + x + offset(log(expo)) + (1 | g)", "poisson", None),
]


@pytest.fixture(scope="module")
def data():
    d = _sim()
    d["fail"] = d["trials"] - d["succ"]
    return d


def _check(data, formula, family, priors_kw=None, n_points=5, seed=0):
    fam = get_family(family, None)
    formula = formula.replace("trials - succ", "fail")
    design, resp = glmer_design(formula, data, fam)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, fam.name, fam.link)
    if priors_kw:
        pri = pri.replace(**priors_kw)
    assert compiled_glmm_supported(fam.name, fam.link, 0, pri)
    built = build_glmm_model(design, resp.y, resp.w, resp.offset, fam.name, fam.link, pri)
    names, x0, reference = pymc_reference(built.model)
    cm = compile_glmm(design, resp.y, resp.w, resp.offset, fam.name, fam.link, pri)
    assert cm.n_dim == x0.size
    np.testing.assert_allclose(cm.x0, x0, rtol=1e-12)  # PyMC's initial point
    rng = np.random.default_rng(seed)
    for _ in range(n_points):
        x = x0 + rng.uniform(-1.5, 1.5, x0.size)
        want_lp, want_g = reference(x)
        lp, g, status = ckernels.c_logp_and_grad(x, cm.data, "glmm")
        assert status == 0
        assert abs(lp - want_lp) <= 1e-10 * abs(want_lp), (lp, want_lp)
        np.testing.assert_allclose(g, want_g, rtol=1e-10, atol=1e-10 * np.abs(want_g).max())
    return names


@pytest.mark.parametrize("formula, family, _", CASES)
def test_glmm_kernel_equals_pymc(data, formula, family, _):
    names = _check(data, formula, family)
    assert names[-1] == "z" and names[0] == "beta"


@pytest.mark.parametrize("k", [0, 1])
def test_glmm_kernel_equals_pymc_other_priors(data, k):
    other = [dict(beta=Prior("StudentT", nu=4.0, mu=0.5, sigma=3.0),
                  sd=Prior("HalfNormal", sigma=1.5), corr=Prior("LKJ", eta=1.5)),
             dict(sd=Prior("Exponential", lam=2.0), corr=Prior("LKJ", eta=3.0))][k]
    _check(data, CASES[1][0], "binomial", other, seed=k)


def test_unsupported_models_take_the_pymc_route(data):
    fam = get_family("binomial", "probit")
    design, resp = glmer_design(CASES[1][0], data, fam)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, fam.name, fam.link)
    assert not compiled_glmm_supported("binomial", "probit", 0, pri)
    assert not compiled_glmm_supported("binomial", "logit", 1, pri)  # centred effects
    assert compiled_glmm_supported("binomial", "logit", 0, pri)


@pytest.mark.slow
def test_compiled_fit_has_the_pymc_routes_variables_and_posterior(monkeypatch):
    """fit_bayes(family="binomial") on the C kernel and on the PyMC model (TWOLEVEL_KERNELS=numba
    has no compiled GLMM, so the PyMC route runs): the same posterior variables, dims and
    coordinates, and posterior means of β and the SDs within 0.3 posterior SD."""
    from twolevel.models.bayes.fit import SamplerSettings, fit_bayes

    d = _sim(seed=9, J=40)
    s = SamplerSettings(chains=2, draws=600, tune=600, seed=4, target_accept=0.8,
                        adaptation="diag")
    f = "y01 ~ 1 + x + w + (1 + x | g)"
    fits = {}
    for route in ("c", "numba"):
        monkeypatch.setenv("TWOLEVEL_KERNELS", route)
        fits[route] = fit_bayes(f, d, family="binomial", settings=s, progress=False,
                                log_likelihood="none", sampler="full")
    c, ref = fits["c"], fits["numba"]
    assert "compiled from C" in c.sampler and "PyTensor" in ref.sampler
    pc, pr = c.posterior, ref.posterior
    assert set(pc.data_vars) == set(pr.data_vars)
    for v in pr.data_vars:
        assert pc[v].dims == pr[v].dims, v
        for dim in pr[v].dims[2:]:
            assert list(pc[v][dim].values) == list(pr[v][dim].values), (v, dim)
    for v in ("beta", "sd"):
        m1, m2 = pc[v].mean(("chain", "draw")), pr[v].mean(("chain", "draw"))
        assert np.all(np.abs(m1 - m2) < 0.3 * pr[v].std(("chain", "draw"))), v
    assert c.diagnostics.divergences == 0
