"""The weighted fit's fast path (issue 23, speed): the weight checks fused into the one compiled
pass that sums the weighted per-school statistics, and the analytic gradient of the profiled log
pseudo-likelihood that the final Newton steps use. Each is checked against the row-wise
reference it replaces (``weights_by_codes`` + ``weighted_group_crossprods``; central
differences of ``profiled_pseudo_loglik``)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.data.loaders import load_data
from twolevel.models.design import make_design
from twolevel.models.lmm.lmer import lmer
from twolevel.models.survey.crossprods import (
    checked_weighted_crossprods,
    weighted_group_crossprods,
)
from twolevel.models.survey.pml import (
    profiled_pseudo_loglik,
    profiled_pseudo_loglik_gradient,
)
from twolevel.models.survey.weights import LEVEL2_RTOL, weights_by_codes

FORMULA = "y ~ 1 + x + z + (1 + x | g)"


def simulated(n: int = 600, J: int = 40, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, J, n)
    x, z = rng.normal(size=n), rng.normal(size=n)
    u0 = rng.normal(0, 1.0, J)
    u1 = 0.3 * u0 + rng.normal(0, 0.4, J)
    wj = rng.uniform(1, 4, J)
    return pd.DataFrame({"y": 50 + x + 0.2 * z + u0[g] + u1[g] * x + rng.normal(size=n),
                         "x": x, "z": z, "g": g, "wj": wj[g],
                         "w1": rng.uniform(0.5, 2.0, n) * wj[g], "a": rng.uniform(0.5, 2.0, n)})


def wfit(formula, data, weights, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmer(formula, data, weights=weights, REML=False, **kw)


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("scaling", ["none", "size", "effective"])
def test_one_pass_equals_rowwise_reference(conditional, scaling):
    d = simulated()
    des = make_design(FORMULA, d)
    l1 = "a" if conditional else "w1"
    w1, w2 = d[l1].to_numpy(), d["wj"].to_numpy()
    cp, a = checked_weighted_crossprods(des.Z, des.X, des.y, des.group_index, des.n_groups,
                                        w1, w2, conditional, scaling, LEVEL2_RTOL)
    sw = weights_by_codes(des.group_index, np.asarray(des.group_levels), w1, w2, group="g",
                          l1=l1, l2="wj", conditional=conditional, scaling=scaling)
    ref = weighted_group_crossprods(des.Z, des.X, des.y, des.group_index, sw.a,
                                    sw.w_school.to_numpy())
    np.testing.assert_allclose(a, sw.a, rtol=1e-14)
    np.testing.assert_array_equal(cp.w, ref.w)
    np.testing.assert_array_equal(cp.n, ref.n)
    np.testing.assert_allclose(cp.M, ref.M, rtol=1e-12, atol=1e-12 * np.abs(ref.M).max())
    np.testing.assert_allclose(cp.n_star, ref.n_star, rtol=1e-13)


@pytest.mark.parametrize("column, value", [("w1", np.nan), ("w1", -1.0), ("wj", np.inf),
                                           ("w1", 0.0), ("wj", 0.0), ("wj", "varies")])
def test_one_pass_hands_bad_or_zero_weights_to_the_rowwise_checks(column, value):
    d = simulated()
    if value == "varies":
        d.loc[d.index[d["g"] == d["g"].iloc[0]][1], "wj"] *= 1.5
    elif column == "wj":
        d.loc[d["g"] == d["g"].iloc[0], "wj"] = value
    else:
        d.loc[5, column] = value
    des = make_design(FORMULA, d)
    out = checked_weighted_crossprods(des.Z, des.X, des.y, des.group_index, des.n_groups,
                                      d["w1"].to_numpy(dtype=float),
                                      d["wj"].to_numpy(dtype=float), False, "none", LEVEL2_RTOL)
    assert out is None


def test_zero_weight_rows_fit_as_the_rows_dropped():
    """A zero weight takes the row-wise path (which drops the row); the fit equals the one-pass
    fit of the data without that row."""
    d = simulated()
    z = d.copy()
    z.loc[7, "w1"] = 0.0
    f0 = wfit(FORMULA, z, ("w1", "wj"))
    f1 = wfit(FORMULA, d.drop(index=7), ("w1", "wj"))
    assert f0.weights.n_zero_rows == 1 and f1.nobs == f0.nobs
    assert f0.loglik == pytest.approx(f1.loglik, rel=1e-12)
    np.testing.assert_allclose(f0.beta, f1.beta, rtol=1e-9)
    np.testing.assert_allclose(f0.theta, f1.theta, rtol=1e-7)


def _central(fn, x, h=1e-5):
    g = np.empty_like(x)
    for k in range(x.size):
        e = np.zeros_like(x)
        e[k] = h * max(abs(x[k]), 0.1)
        g[k] = (fn(x + e) - fn(x - e)) / (2 * e[k])
    return g


@pytest.mark.parametrize("formula", [
    "Reaction ~ Days + (1 | Subject)",
    "Reaction ~ Days + (Days | Subject)",
    "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)",
])
def test_gradient_equals_central_differences(formula):
    d = load_data("sleepstudy").copy()
    k = d["Subject"].astype("category").cat.codes.to_numpy()
    d["wj"] = 1 + 0.25 * (k % 4)
    d["w1"] = (0.5 + ((d["Days"].to_numpy() + k) % 10) / 9) * d["wj"]
    f = wfit(formula, d, ("w1", "wj"))
    T = f.design.theta_to_T
    for th in (f.theta * 1.3 + 0.05, f.theta * 0.6, f.theta):
        g = profiled_pseudo_loglik_gradient(th, f.crossprods, T)
        ref = _central(lambda t: profiled_pseudo_loglik(t, f.crossprods, T), th)
        scale = np.abs(_central(lambda t: profiled_pseudo_loglik(t, f.crossprods, T),
                                f.theta * 1.3 + 0.05)).max()
        np.testing.assert_allclose(g, ref, rtol=0, atol=2e-6 * scale)
    # the fit is the gradient's root, far below what differences of ℓ_p resolve
    g_hat = profiled_pseudo_loglik_gradient(f.theta, f.crossprods, T)
    assert np.abs(g_hat).max() < 1e-9 * scale


def test_gradient_three_random_effects():
    """q = 3 (general kernel, correlated): analytic = central differences."""
    d = simulated(n=900, J=30, seed=5)
    f = wfit("y ~ x + z + (1 + x + z | g)", d, ("w1", "wj"))
    T = f.design.theta_to_T
    th = f.theta + 0.05
    g = profiled_pseudo_loglik_gradient(th, f.crossprods, T)
    ref = _central(lambda t: profiled_pseudo_loglik(t, f.crossprods, T), th)
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_q2_score_kernel_equals_general_kernel():
    from twolevel.models.survey.kernels import weighted_score_sums, weighted_score_sums_q2

    d = simulated()
    f = wfit(FORMULA, d, ("w1", "wj"))
    r = np.append(-f.beta, 1.0)
    for th in (f.theta, np.array([0.7, -0.3, 0.2]), np.array([1.2, 0.0, 0.0])):
        Lam = f.design.theta_to_T(th)
        E1, G1 = weighted_score_sums(f.crossprods.M, f.crossprods.w, Lam, r, 2)
        E2, G2 = weighted_score_sums_q2(f.crossprods.M, f.crossprods.w, Lam, r)
        np.testing.assert_allclose(E2, E1, rtol=1e-12, atol=1e-12 * np.abs(E1).max())
        np.testing.assert_allclose(G2, G1, rtol=1e-12, atol=1e-12 * np.abs(G1).max())
