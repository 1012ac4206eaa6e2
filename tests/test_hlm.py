"""HLM's statistics (reliability, χ² of τ = 0, plausible ranges, ICC, df rule, robust SEs) on HSB.

Acceptance numbers are R&B (2002) ch. 4 as recomputed with lme4 REML estimates
(users-needs.md §5): they are reproduced by REML fits, which the tests make with
the engine's deviance and optimizer (lme4's path)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_golden

from twolevel.data.errors import TwolevelError
from twolevel.models.design import group_crossprods, make_design
from twolevel.models.inference.hlm import (
    cluster_robust_vcov,
    coefficient_equations,
    hlm_ddf,
    hlm_statistics,
    icc,
    plausible_range,
    precision_weights,
    proportion_reduction,
    slope_precision_weights,
    unit_ols,
)
from twolevel.models.lmm.deviance import make_deviance, pls_state, sigma_hat
from twolevel.models.lmm.optimize import optimize_theta


def _reml(df, formula):
    des = make_design(formula, df)
    cp = group_crossprods(des)
    opt = optimize_theta(make_deviance(des, True, cp), des.theta_start(), des.theta_lower)
    st = pls_state(cp, des.theta_to_T(opt.theta))
    return des, cp, opt.theta, sigma_hat(st, True), st.beta


@pytest.fixture(scope="module")
def hsb_rs(hsb):
    g = load_golden("hsb82_lme4.json")["m1_reml"]
    des = make_design("mAch ~ 1 + cses + (1 + cses | school)", hsb)
    cp = group_crossprods(des)
    st = pls_state(cp, des.theta_to_T(np.asarray(g["theta"])))
    return des, cp, np.asarray(g["theta"]), g["sigma"], st.beta


def test_hsb_random_slope_acceptance(hsb_rs):
    des, cp, theta, sigma, beta = hsb_rs
    s = hlm_statistics(des, cp, theta, sigma, beta)
    np.testing.assert_allclose(s.reliability, [0.9076, 0.2637], atol=5e-5)
    (c0, df0, p0), (c1, df1, p1) = s.chi2["(Intercept)"], s.chi2["cses"]
    assert (c0, c1) == (pytest.approx(1771.01, abs=0.005), pytest.approx(213.46, abs=0.005))
    assert df0 == df1 == 159
    assert p1 == pytest.approx(0.0026, abs=5e-5) and p0 < 1e-250
    lo0, hi0 = s.plausible["(Intercept)"]
    lo1, hi1 = s.plausible["cses"]
    np.testing.assert_allclose([lo0, hi0, lo1, hi1], [6.86, 18.41, 0.56, 3.83], atol=0.005)
    assert s.n_sufficient == 160
    np.testing.assert_array_equal(s.hlm_df, [159, 159])
    frame = s.to_frame()
    assert list(frame["coefficient"]) == ["(Intercept)", "cses"]
    text = s.summary()
    assert "1771.01" in text and "213.46" in text and "0.9076" in text and "6.86 to 18.41" in text


def test_hsb_at_engine_reml_fit_equals_golden_fit(hsb):
    """The same numbers from the engine's own REML fit (not only at lme4's θ̂)."""
    des, cp, theta, sigma, beta = _reml(hsb, "mAch ~ 1 + cses + (1 + cses | school)")
    s = hlm_statistics(des, cp, theta, sigma, beta)
    np.testing.assert_allclose(s.reliability, [0.9076, 0.2637], atol=5e-5)
    assert s.chi2["cses"][0] == pytest.approx(213.46, abs=0.005)


def test_null_model_icc(hsb):
    des, cp, theta, sigma, beta = _reml(hsb, "mAch ~ 1 + (1 | school)")
    tau00, s2 = (sigma * theta[0]) ** 2, sigma**2
    assert beta[0] == pytest.approx(12.6370, abs=5e-5)
    assert tau00 == pytest.approx(8.6140, abs=5e-4)
    assert s2 == pytest.approx(39.1483, abs=5e-4)
    assert icc(tau00, s2) == pytest.approx(0.1804, abs=5e-5)
    s = hlm_statistics(des, cp, theta, sigma, beta)
    # R&B Table 4.2: reliability .901, χ² 1660.23 on 159 df
    assert s.reliability[0] == pytest.approx(0.901, abs=5e-4)
    assert s.chi2["(Intercept)"][0] == pytest.approx(1660.23, abs=0.01)
    assert s.chi2["(Intercept)"][1] == 159


def test_intercepts_and_slopes_as_outcomes(hsb):
    """R&B Table 4.5 model: level-2 predictors enter the χ² prediction and the df (157)."""
    des, cp, theta, sigma, beta = _reml(hsb, "mAch ~ meanses*cses + sector*cses + (cses|school)")
    s = hlm_statistics(des, cp, theta, sigma, beta)
    np.testing.assert_allclose(s.reliability, [0.733, 0.051], atol=5e-4)
    assert s.chi2["(Intercept)"][0] == pytest.approx(605.0, abs=0.05)
    assert s.chi2["cses"][0] == pytest.approx(162.2, abs=0.05)
    assert s.chi2["cses"][1] == 157
    assert s.chi2["cses"][2] == pytest.approx(0.37, abs=0.005)
    np.testing.assert_array_equal(hlm_ddf(des), [157] * 6)


def test_df_rule_level1_fixed_and_level2(hsb):
    des = make_design("mAch ~ meanses + cses + minrty + (1 | school)", hsb)
    eqs = {e.column: e for e in coefficient_equations(des)}
    assert eqs["meanses"].coefficient == "(Intercept)" and eqs["meanses"].is_level2_predictor
    assert not eqs["cses"].random and not eqs["minrtyYes"].random
    df = dict(zip(des.x_names, hlm_ddf(des), strict=True))
    assert df["(Intercept)"] == df["meanses"] == 160 - 1 - 1
    assert df["cses"] == df["minrtyYes"] == 7185 - 4


def test_precision_weights_match_ols_variances(hsb_rs):
    des, cp, theta, sigma, _ = hsb_rs
    T = des.theta_to_T(theta)
    tau = sigma**2 * T @ T.T
    n = des.group_sizes
    ss = cp.A[:, 1, 1] - cp.A[:, 0, 1] ** 2 / cp.A[:, 0, 0]  # Σ_i (x_ij − x̄_j)²
    ols = unit_ols(des, cp)
    w1 = slope_precision_weights(tau[1, 1], sigma**2, ss)
    np.testing.assert_allclose(w1, 1 / (tau[1, 1] + sigma**2 * ols.XtX_inv[:, 1, 1]), rtol=1e-10)
    w0 = precision_weights(tau[0, 0], sigma**2, n)
    assert w0[np.argmax(n)] == pytest.approx(1 / (tau[0, 0] + sigma**2 / n.max()))


def test_unit_ols_agrees_with_models_ols(hsb, hsb_rs):
    from twolevel.models.tables.ols import group_ols

    des, cp, *_ = hsb_rs
    mine = unit_ols(des, cp)
    theirs = group_ols("mAch ~ 1 + cses", hsb, "school")
    np.testing.assert_allclose(mine.beta[:, 0], theirs.table["B0_hat"], rtol=1e-9)
    np.testing.assert_allclose(mine.beta[:, 1], theirs.table["B1_hat"], rtol=1e-9)


def test_cluster_robust_equals_dense_sandwich(sleepstudy):
    g = load_golden("sleepstudy_lme4.json")["m1_reml"]
    des = make_design("Reaction ~ 1 + Days + (1 + Days | Subject)", sleepstudy)
    cp = group_crossprods(des)
    theta, sigma = np.asarray(g["theta"]), g["sigma"]
    beta = pls_state(cp, des.theta_to_T(theta)).beta
    T = des.theta_to_T(theta)
    bread = np.zeros((2, 2))
    meat = np.zeros((2, 2))
    for j in range(des.n_groups):
        rows = des.group_index == j
        X, Z, y = des.X[rows], des.Z[rows], des.y[rows]
        Vi = np.linalg.inv(sigma**2 * (np.eye(rows.sum()) + Z @ T @ T.T @ Z.T))
        bread += X.T @ Vi @ X
        s = X.T @ Vi @ (y - X @ beta)
        meat += np.outer(s, s)
    B = np.linalg.inv(bread)
    J = des.n_groups
    for kind, c in (("CR0", 1.0), ("CR1", J / (J - 1)), ("CR1S", J * 179 / ((J - 1) * 178))):
        np.testing.assert_allclose(
            cluster_robust_vcov(des, cp, theta, sigma, beta, kind), c * B @ meat @ B, rtol=1e-9
        )
    with pytest.raises(TwolevelError, match="unknown cluster-robust type 'HC3'"):
        cluster_robust_vcov(des, cp, theta, sigma, beta, "HC3")


def test_small_formulas():
    assert plausible_range(10.0, 4.0) == pytest.approx((10 - 1.959964 * 2, 10 + 1.959964 * 2))
    assert proportion_reduction(8.614, 2.639) == pytest.approx(0.6936, abs=1e-4)
    with pytest.raises(TwolevelError, match="needs a positive base variance, got 0"):
        proportion_reduction(0.0, 1.0)
