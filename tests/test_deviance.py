"""Profiled deviance (models/lmm/deviance.py) against lme4's devfun, and its analytic gradient.

Reference values: lme4 1.1-31 (R 4.2.2) — docs/notes/lme4-algorithms.md §9 for sim_3re, and the
REML criteria of tests/goldens/*_lme4.json evaluated at lme4's θ̂.
"""

import numpy as np
import pytest
from conftest import load_golden

from twolevel.models.design import group_crossprods, make_design
from twolevel.models.lmm.deviance import (
    _pls_parts_batch,
    deviance_gradient,
    make_deviance,
    ml_deviance,
    pls_state,
    reml_criterion,
    sigma_hat,
)

SIM_FORMULA = "y ~ x1*w + x2 + (1+x1+x2|g)"
SIM_THETA = np.array([0.9, 0.1, -0.2, 0.5, 0.05, 0.3])


@pytest.fixture(scope="module")
def sim_design(sim_3re):
    return make_design(SIM_FORMULA, sim_3re)


def test_sim3re_devfun_matches_lme4(sim_design):
    # lme4-algorithms.md §9: REML devfun 1338.81302834, ML devfun 1326.05536818 at SIM_THETA
    assert make_deviance(sim_design, reml=True)(SIM_THETA) == pytest.approx(
        1338.81302834, rel=1e-10
    )
    assert make_deviance(sim_design, reml=False)(SIM_THETA) == pytest.approx(
        1326.05536818, rel=1e-10
    )


def test_sim3re_remlcrit_at_lme4_theta(sim_design):
    theta = [0.828738090645, -0.109408141387, 0.0303154782751, 0.554110593927, 0.11725651123,
             0.43697218766]  # lme4-algorithms.md §9
    assert make_deviance(sim_design)(np.array(theta)) == pytest.approx(1323.42585736, rel=1e-10)


@pytest.mark.parametrize(
    "golden, formula, frame",
    [
        ("sleepstudy_lme4.json", "Reaction ~ 1 + Days + (1 + Days | Subject)", "sleepstudy"),
        ("hsb82_lme4.json", "mAch ~ 1 + cses + (1 + cses | school)", "hsb"),
    ],
)
def test_golden_criteria_at_lme4_theta(golden, formula, frame, request):
    g = load_golden(golden)
    d = make_design(formula, request.getfixturevalue(frame))
    cp = group_crossprods(d)
    st = pls_state(cp, d.theta_to_T(np.array(g["m1_reml"]["theta"])))
    assert reml_criterion(st) == pytest.approx(g["m1_reml"]["reml_criterion"], rel=1e-10)
    assert ml_deviance(st) == pytest.approx(g["m1_reml"]["deviance_ml_at_reml_theta"], rel=1e-10)
    assert sigma_hat(st, reml=True) == pytest.approx(g["m1_reml"]["sigma"], rel=1e-9)
    fixef = list(g["m1_reml"]["fixef"].values())
    np.testing.assert_allclose(st.beta, fixef, rtol=1e-9)


def test_pls_state_shapes_and_definitions(sim_design):
    cp = group_crossprods(sim_design)
    T = sim_design.theta_to_T(SIM_THETA)
    st = pls_state(cp, T)
    J, q, p = 40, 3, 5
    assert st.L.shape == (J, q, q) and st.R.shape == (J, q, p) and st.cu.shape == (J, q)
    assert st.RX.shape == (p, p) and st.u.shape == (J, q) and st.b.shape == (J, q)
    # L_j L_jᵀ = TᵀA_jT + I and b = T u
    M = np.einsum("ab,jbc,cd->jad", T.T, cp.A, T) + np.eye(q)
    np.testing.assert_allclose(st.L @ np.swapaxes(st.L, 1, 2), M, rtol=1e-12)
    np.testing.assert_allclose(st.b, st.u @ T.T, rtol=1e-12)
    assert np.allclose(np.tril(st.RX, -1), 0)
    # r² equals the penalised residual sum of squares computed on the rows
    d = sim_design
    mu = d.X @ st.beta + np.einsum("nq,nq->n", d.Z, st.b[d.group_index])
    r2 = np.sum((d.y - mu) ** 2) + np.sum(st.u**2)
    assert st.r2 == pytest.approx(r2, rel=1e-10)
    assert st.ldL2 == pytest.approx(np.sum(np.linalg.slogdet(M)[1]), rel=1e-12)


def test_devfun_is_pure(sim_design):
    f = make_deviance(sim_design)
    a = f(SIM_THETA)
    f(np.ones(6))
    assert f(SIM_THETA) == a


def test_negative_diagonal_and_singular_T_accepted(sim_design):
    f = make_deviance(sim_design)
    neg = SIM_THETA.copy()
    neg[0] = -1e-4  # numDeriv's step at a zero diagonal goes here
    assert np.isfinite(f(neg))
    # T with a zero diagonal (singular) and T = 0 (no random effects: the OLS REML criterion)
    sing = SIM_THETA.copy()
    sing[5] = 0.0
    assert np.isfinite(f(sing))
    zero = f(np.zeros(6))
    d = sim_design
    n, p = d.n, d.p
    resid = d.y - d.X @ np.linalg.lstsq(d.X, d.y, rcond=None)[0]
    rss = resid @ resid
    ols = np.linalg.slogdet(d.X.T @ d.X)[1] + (n - p) * (1 + np.log(2 * np.pi * rss / (n - p)))
    assert zero == pytest.approx(ols, rel=1e-12)


@pytest.mark.parametrize("reml", [True, False])
def test_analytic_gradient_matches_finite_differences(sim_design, reml):
    cp = group_crossprods(sim_design)
    f = make_deviance(sim_design, reml=reml, crossprods=cp)
    g = deviance_gradient(sim_design, cp, SIM_THETA, reml=reml)
    h = 1e-6
    fd = np.array([(f(SIM_THETA + h * e) - f(SIM_THETA - h * e)) / (2 * h) for e in np.eye(6)])
    np.testing.assert_allclose(g, fd, atol=2e-6, rtol=1e-7)


def test_gradient_double_bar_structural_zeros(sleepstudy):
    d = make_design("Reaction ~ Days + (Days || Subject)", sleepstudy)
    cp = group_crossprods(d)
    f = make_deviance(d, crossprods=cp)
    th = np.array([0.9, 0.2])
    g = deviance_gradient(d, cp, th)
    fd = [(f(th + 1e-6 * e) - f(th - 1e-6 * e)) / 2e-6 for e in np.eye(2)]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=2e-5)


@pytest.mark.parametrize(
    "formula, theta",
    [
        ("Reaction ~ Days + (1 | Subject)", [0.8]),
        ("Reaction ~ Days + (1 + Days | Subject)", [0.9, 0.1, 0.2]),
        ("Reaction ~ Days + (1 + Days | Subject)", [-1e-4, 0.3, 0.0]),
        ("Reaction ~ Days + (Days || Subject)", [0.9, 0.2]),
    ],
)
def test_compiled_criterion_equals_numpy_pls_state(formula, theta, sleepstudy):
    # the optimizer's compiled path (twolevel.models.lmm.kernels) against the full NumPy PLS
    # solution
    d = make_design(formula, sleepstudy)
    cp = group_crossprods(d)
    th = np.array(theta)
    st = pls_state(cp, d.theta_to_T(th))
    assert make_deviance(d, crossprods=cp)(th) == pytest.approx(reml_criterion(st), rel=1e-12)
    assert make_deviance(d, reml=False, crossprods=cp)(th) == pytest.approx(ml_deviance(st),
                                                                            rel=1e-12)


def test_compiled_criterion_any_q_and_batch(sim_design):
    cp = group_crossprods(sim_design)
    f = make_deviance(sim_design, crossprods=cp)
    thetas = [SIM_THETA, SIM_THETA * 0.5, np.ones(6)]
    for th in thetas:
        st = pls_state(cp, sim_design.theta_to_T(th))
        assert f(th) == pytest.approx(reml_criterion(st), rel=1e-12)
    r2, ldL2, ldRX2 = _pls_parts_batch(cp, np.array([sim_design.theta_to_T(t) for t in thetas]))
    for k, th in enumerate(thetas):
        st = pls_state(cp, sim_design.theta_to_T(th))
        np.testing.assert_allclose([r2[k], ldL2[k], ldRX2[k]], [st.r2, st.ldL2, st.ldRX2],
                                   rtol=1e-12)
