"""Satterthwaite df (models/lmm/satterthwaite.py) against lmerTest 3.1-3.

References: sim_3re df from docs/notes/lme4-algorithms.md §9; contest1D / contestMD values
printed by tests/goldens/summaries_lme4.R (section sim_contests of summaries_lme4.txt; R 4.2.2,
lmerTest 3.1-3) on sim_3re:
contestMD(m3, rbind(x1, x2)): Sum Sq 45.68033996, Mean Sq 22.84016998, NumDF 2,
DenDF 35.7588747, F 21.43217552, p 7.625113296e-07; contest1D(m3, x1 − x2): 0.8763649435,
SE 0.1345156521, df 39.04117665, t 6.514966324, p 9.94869565e-08.
"""

import numpy as np
import pytest

from twolevel.models.lmm.lmer import lmer
from twolevel.models.lmm.satterthwaite import (
    fstat_ddf,
    numderiv_hessian,
    numderiv_jacobian,
    varpar_info,
)

SIM_DF = {  # lme4-algorithms.md §9 (lmerTest), in R's column order
    "(Intercept)": 38.9549816647, "x1": 39.0388920574, "w": 38.5891212368,
    "x2": 31.6958574668, "x1:w": 46.1508476616,
}


@pytest.fixture(scope="module")
def sim_fit(sim_3re):
    return lmer("y ~ x1*w + x2 + (1+x1+x2|g)", sim_3re)


def _L(fit, **coefs):
    L = np.zeros(fit.design.p)
    for k, v in coefs.items():
        L[list(fit.design.x_names).index(k.replace("_", ":"))] = v
    return L


def test_sim3re_df(sim_fit):
    tab = sim_fit.coef_table()
    for name, ref in SIM_DF.items():
        assert tab.loc[name, "df"] == pytest.approx(ref, rel=1e-6), name


def test_contest1d_matches_lmertest(sim_fit):
    c = sim_fit.contest(_L(sim_fit, x1=1, x2=-1))
    assert c["Estimate"] == pytest.approx(0.8763649435, rel=1e-6)
    assert c["Std. Error"] == pytest.approx(0.1345156521, rel=1e-6)
    assert c["df"] == pytest.approx(39.04117665, rel=1e-6)
    assert c["t value"] == pytest.approx(6.514966324, rel=1e-6)
    assert c["Pr(>|t|)"] == pytest.approx(9.94869565e-08, rel=1e-5)


def test_contestmd_matches_lmertest(sim_fit):
    L = np.vstack([_L(sim_fit, x1=1), _L(sim_fit, x2=1)])
    r = sim_fit.contest(L)
    assert r["NumDF"] == 2
    assert r["DenDF"] == pytest.approx(35.7588747, rel=1e-6)
    assert r["F value"] == pytest.approx(21.43217552, rel=1e-6)
    assert r["Sum Sq"] == pytest.approx(45.68033996, rel=1e-6)
    assert r["Mean Sq"] == pytest.approx(22.84016998, rel=1e-6)
    assert r["Pr(>F)"] == pytest.approx(7.625113296e-07, rel=1e-5)
    one = sim_fit.contest(_L(sim_fit, x1_w=1)[None, :])  # 1-row matrix: the 1-D test
    assert one["df"] == pytest.approx(46.1508476616, rel=1e-6)


def test_numderiv_jacobian_agrees_with_analytic(sim_fit):
    a = varpar_info(sim_fit, jacobian="analytic")
    b = varpar_info(sim_fit, jacobian="numDeriv")
    np.testing.assert_allclose(a.jacobian, b.jacobian, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="jacobian must be 'analytic' or 'numDeriv'"):
        varpar_info(sim_fit, jacobian="complex")


def test_sleepstudy_vcov_varpar(sleepstudy):
    fit = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    # lme4-algorithms.md §9: lmerTest's vcov_varpar diagonal
    np.testing.assert_allclose(
        np.diag(fit.varpar_info.vcov_varpar), [0.05765275, 0.00554160, 0.00278818, 2.27409501],
        rtol=1e-5,
    )
    assert fit.varpar_info.warnings == ()


def test_numderiv_hessian_replica_on_known_function():
    def f(x):
        return np.exp(x[0]) * x[1] ** 3 + np.sin(x[0] * x[1])

    x = np.array([0.3, 1.2])
    a, b = x
    H = np.array([
        [np.exp(a) * b**3 - b * b * np.sin(a * b),
         3 * np.exp(a) * b**2 + np.cos(a * b) - a * b * np.sin(a * b)],
        [0, 6 * np.exp(a) * b - a * a * np.sin(a * b)],
    ])
    H[1, 0] = H[0, 1]
    np.testing.assert_allclose(numderiv_hessian(f, x), H, rtol=1e-7)
    J = numderiv_jacobian(lambda z: np.array([z[0] * z[1], z[0] ** 2]), x)
    np.testing.assert_allclose(J, [[b, a], [2 * a, 0]], rtol=1e-9, atol=1e-12)


def test_fstat_ddf_rules():
    assert fstat_ddf(np.array([10.0])) == 10.0
    assert fstat_ddf(np.array([10.0, 10.0])) == 10.0
    assert fstat_ddf(np.array([1.5, 30.0])) == 2.0
    nu = np.array([10.0, 20.0])
    E = np.sum(nu / (nu - 2))
    assert fstat_ddf(nu) == pytest.approx(2 * E / (E - 2))


def test_ml_fit_uses_ml_deviance(sleepstudy):
    # lmerTest on lmer(REML=FALSE) (summaries_lme4.txt): df 18.001 and 18.000
    fit = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, REML=False)
    np.testing.assert_allclose(fit.coef_table()["df"], [18.001, 18.000], atol=6e-4)
