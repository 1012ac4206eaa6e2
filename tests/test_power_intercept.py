"""The one-random-effect refit of power simulations (:mod:`twolevel.models.power.intercept`)
against the general route: the same draws, criterion, REML fit and lmerTest Satterthwaite test."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest

import twolevel as tl
from twolevel.data.errors import TwolevelError
from twolevel.models.design import group_crossprods
from twolevel.models.inference.simulate import _NoiseBasis, simulate_crossprods
from twolevel.models.lmm.deviance import make_deviance
from twolevel.models.lmm.satterthwaite import contest1d, devfun_vp, numderiv_hessian
from twolevel.models.power.intercept import (
    InterceptModel,
    cholesky_small,
    hessian2,
    vcov_varpar,
)
from twolevel.models.power.simulation import SimulationJob, design_population, run_simulations


def _model(fit):
    cp = fit.crossprods
    return InterceptModel.of(cp, _NoiseBasis.of(fit.design, cp), fit.theta, fit.sigma, fit.beta)


@pytest.fixture(scope="module")
def lecture():
    d = tl.load_data("lecture")
    return tl.lmer("g1rscore ~ famsesc + (1 | schid)", d)


@pytest.fixture(scope="module")
def unbalanced():
    rng = np.random.default_rng(8)
    sizes = rng.integers(2, 30, 25)
    school = np.repeat(np.arange(25), sizes)
    x = rng.standard_normal(school.size)
    w = rng.standard_normal(25)[school]
    y = 0.4 * x + 0.3 * w + 0.6 * rng.standard_normal(25)[school] + rng.standard_normal(
        school.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.lmer("y ~ x + w + (1 | school)", pd.DataFrame({"y": y, "x": x, "w": w,
                                                                 "school": school}))


@pytest.mark.parametrize("name", ["lecture", "unbalanced"])
def test_criterion_fit_and_test_equal_the_general_route(name, request):
    """REML criterion = make_deviance's; refit from lme4's start = tl.lmer's θ̂, β̂, σ̂; the
    Satterthwaite t, df and p at the fit = lmerTest's contest1D (:func:`contest1d`)."""
    fit = request.getfixturevalue(name)
    cp = fit.crossprods
    prof = _model(fit).profile(cp.c[:, 0], cp.Xty, cp.yty)
    general = make_deviance(fit.design, reml=True, crossprods=cp)
    for th in (0.0, 0.05, 0.3, 1.0, 2.5, -0.4):
        assert prof.reml(np.array([th])) == pytest.approx(general(np.array([th])), rel=1e-11)
    theta, beta, sigma = prof.fit(fit.design.theta_start(), fit.design.theta_lower)
    assert theta == pytest.approx(float(fit.theta[0]), rel=1e-7)
    np.testing.assert_allclose(beta, fit.beta, rtol=1e-7, atol=1e-10)
    assert sigma == pytest.approx(float(fit.sigma), rel=1e-8)
    for k in range(fit.design.p):
        t, nu, p = prof.satterthwaite(float(fit.theta[0]), np.asarray(fit.beta), float(fit.sigma),
                                      k)
        ref = contest1d(fit, np.eye(fit.design.p)[k])
        assert t == pytest.approx(ref["t value"], rel=1e-9)
        assert nu == pytest.approx(ref["df"], rel=1e-7)
        assert p == pytest.approx(ref["Pr(>|t|)"], rel=1e-7, abs=1e-300)


def test_draw_is_the_general_routes_draw(unbalanced):
    """The same random stream gives the same response cross-products as simulate_crossprods."""
    fit = unbalanced
    model = _model(fit)
    d, cp = fit.design, fit.crossprods
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    c, Xty, yty = model.draw(rng1)
    T = d.theta_to_T(fit.theta)
    b = fit.sigma * rng2.standard_normal((d.n_groups, d.q)) @ T.T
    ref = simulate_crossprods(d, cp, _NoiseBasis.of(d, cp), b, fit.sigma, fit.beta, rng2)
    np.testing.assert_allclose(c, ref.c[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Xty, ref.Xty, rtol=1e-12)
    assert yty == pytest.approx(ref.yty, rel=1e-12)
    assert rng1.random() == rng2.random()  # both consumed the same draws


@pytest.mark.parametrize("kw", [
    dict(schools=40, students=20, icc=0.1),  # balanced: one school size
    dict(schools=20, students=10, icc=0.1, r2_1=0.5),  # one size, p = 3: the general Cholesky
    dict(schools=12, students=6, icc=0.2, cv=0.3),  # 7 sizes: scalar sums
    dict(schools=14, students=8, icc=0.2, cv=0.5),  # 11 sizes: sums in NumPy
    dict(schools=30, students=12, icc=0.15, cv=0.8, r2_1=0.3, r2_2=0.4),  # 22 sizes, p = 4
])
def test_power_simulation_equals_the_general_route(kw):
    """Per seed, the fast route's p-values are the general route's (same draws; the refits
    differ by rounding only), and so are the rejections."""
    sd = tl.study_design("cra2", **kw)
    design, theta, sigma, beta, col = design_population(sd, 0.4, np.random.default_rng(0))
    job = SimulationJob(design=design, theta=theta, sigma=sigma, beta=beta, column=col)
    fast = job.prepare().fast
    assert fast is not None
    K = fast.a.shape[0]
    assert (K == 1) == (kw.get("cv", 0.0) == 0.0)
    slow = dataclasses.replace(job, fast=False)
    assert slow.prepare().fast is None
    p_fast = run_simulations(job, 60, seed=5)
    p_slow = run_simulations(slow, 60, seed=5)
    assert np.all(np.isfinite(p_fast)) and np.all(np.isfinite(p_slow))
    np.testing.assert_allclose(p_fast, p_slow, rtol=1e-4, atol=1e-7)
    assert np.array_equal(p_fast < 0.05, p_slow < 0.05)


def test_cholesky_small_and_its_errors():
    rng = np.random.default_rng(1)
    M = rng.standard_normal((4, 4))
    S = M @ M.T + 0.1 * np.eye(4)
    L = np.array(cholesky_small(S.ravel().tolist(), 4)).reshape(4, 4)
    np.testing.assert_allclose(L, np.linalg.cholesky(S), rtol=1e-13, atol=1e-14)
    tail = S.copy()
    tail[3, 3] = tail[3, :3] @ np.linalg.solve(S[:3, :3], tail[:3, 3]) - 1e-14
    assert cholesky_small(tail.ravel().tolist(), 4)[-1] == 0.0  # an exact fit: r = 0
    bad = S.copy()
    bad[1, 1] = bad[0, 1] ** 2 / bad[0, 0] - 1.0
    with pytest.raises(TwolevelError, match="downdated XᵀX is not positive definite"):
        cholesky_small(bad.ravel().tolist(), 4)


def test_hessian2_is_numderiv(lecture):
    D = devfun_vp(lecture)
    vp = np.append(lecture.theta, lecture.sigma)
    H = hessian2(lambda a, b: D(np.array([a, b])), float(vp[0]), float(vp[1]))
    np.testing.assert_allclose(H, numderiv_hessian(D, vp), rtol=1e-12, atol=0)
    # at θ = 0 numDeriv's step is eps = 1e-4 (|x| < zero.tol)
    vp0 = np.array([0.0, float(vp[1])])
    H0 = hessian2(lambda a, b: D(np.array([a, b])), 0.0, float(vp[1]))
    np.testing.assert_allclose(H0, numderiv_hessian(D, vp0), rtol=1e-12, atol=0)


def test_vcov_varpar_is_the_pseudo_inverse():
    H = [[3.0, 0.4], [0.4, 0.9]]
    np.testing.assert_allclose(vcov_varpar(H), 2.0 * np.linalg.inv(H), rtol=1e-14)
    v = np.array([0.6, 0.8])
    Hs = (5.0 * np.outer(v, v)).tolist()  # one eigenvalue 0: the pseudo-inverse
    np.testing.assert_allclose(vcov_varpar(Hs), 2.0 * np.outer(v, v) / 5.0, rtol=1e-12,
                               atol=1e-15)


def test_needs_one_random_effect_and_a_full_rank_x():
    d = tl.load_data("lecture")
    m = tl.lmer("g1rscore ~ famsesc + (1 + famsesc | schid)", d)
    cp = m.crossprods
    with pytest.raises(TwolevelError, match="needs q = 1, this model has q = 2 random effects"):
        InterceptModel.of(cp, _NoiseBasis.of(m.design, cp), m.theta, m.sigma, m.beta)
    fit = tl.lmer("g1rscore ~ famsesc + (1 | schid)", d)
    X = np.column_stack([fit.design.X, fit.design.X[:, 1]])
    flat = dataclasses.replace(fit.design, X=X, x_names=(*fit.design.x_names, "copy"))
    cpf = group_crossprods(flat)
    with pytest.raises(TwolevelError, match="downdated XᵀX is not positive definite"):
        InterceptModel.of(cpf, _NoiseBasis.of(flat, cpf), fit.theta, fit.sigma,
                          np.append(fit.beta, 0.0))
    job = SimulationJob(design=flat, theta=fit.theta, sigma=fit.sigma,
                        beta=np.append(fit.beta, 0.0), column=1)
    assert job.prepare().fast is None  # the general route reports each failed refit
    assert math.isnan(run_simulations(job, 1)[0])


def test_written_out_p2_criterion_is_the_general_cholesky():
    """The written-out branch (p = 2, one school size) equals cholesky_small on S − wG."""
    sd = tl.study_design("cra2", schools=10, students=6, icc=0.2)
    design, theta, sigma, beta, col = design_population(sd, 0.5, np.random.default_rng(0))
    prep = SimulationJob(design=design, theta=theta, sigma=sigma, beta=beta,
                         column=col).prepare()
    prof = prep.fast.profile(*prep.fast.draw(np.random.default_rng(2)))
    assert prof._K1 and prof._m == 3
    for th in (0.0, 0.2, 0.7, -1.3):
        L = cholesky_small(prof.down_dated(th), 3)
        r2, ldL2, ldRX2 = prof.parts(th)
        assert r2 == pytest.approx(L[8] ** 2, rel=1e-14)
        assert ldRX2 == pytest.approx(2.0 * (math.log(L[0]) + math.log(L[4])), rel=1e-14)
        assert ldL2 == pytest.approx(prof.log_det_L2(th), rel=1e-14)


def test_random_slope_without_intercept_equals_the_general_route():
    """q = 1 with a random slope, (0 + x | school): a_j = Σ x² differs in every school (K = J)."""
    rng = np.random.default_rng(12)
    J, n = 15, 8
    school = np.repeat(np.arange(J), n)
    x = rng.standard_normal(J * n)
    y = (0.3 + 0.4 * rng.standard_normal(J)[school]) * x + rng.standard_normal(J * n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = tl.lmer("y ~ x + (0 + x | school)", pd.DataFrame({"y": y, "x": x,
                                                                "school": school}))
    beta = np.array(fit.beta, float)
    beta[1] = 0.25
    job = SimulationJob(design=fit.design, theta=np.asarray(fit.theta, float),
                        sigma=float(fit.sigma), beta=beta, column=1)
    assert job.prepare().fast.a.shape[0] == J
    p_fast = run_simulations(job, 40, seed=9)
    p_slow = run_simulations(dataclasses.replace(job, fast=False), 40, seed=9)
    np.testing.assert_allclose(p_fast, p_slow, rtol=1e-4, atol=1e-7)
    res = tl.power(fit, term="x", effect=0.25, nsim=40, seed=9)
    assert res.table["failed"].iloc[0] == 0
