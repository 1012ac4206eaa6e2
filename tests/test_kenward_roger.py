"""Kenward–Roger (pbkrtest) parity: per-group algebra against pbkrtest's numbers and against a
dense n × n transcription of pbkrtest's ``vcovAdj16_internal`` (test-only reference)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_golden

from twolevel.data.errors import TwolevelError
from twolevel.models.design import group_crossprods, make_design
from twolevel.models.inference.kenward_roger import (
    kenward_roger,
    kenward_roger_fit,
    kr_ddf,
    kr_vcov_adjusted,
)
from twolevel.models.lmm.deviance import pls_state, sigma_hat

SIM_THETA = [0.828738090645, -0.109408141387, 0.0303154782751, 0.554110593927, 0.11725651123,
             0.43697218766]
# lme4-algorithms.md §9 (pbkrtest 0.5.2), in R's column order
SIM_KR_DF = {"(Intercept)": 37.9461846803, "x1": 36.3259176433, "w": 37.1741275033,
             "x2": 35.9073585215, "x1:w": 42.2306083097}


def _fit_inputs(df, formula, theta):
    des = make_design(formula, df)
    cp = group_crossprods(des)
    st = pls_state(cp, des.theta_to_T(np.asarray(theta)))
    return des, cp, st


def test_hsb_kr_matches_pbkrtest(hsb):
    g = load_golden("hsb82_lme4.json")["m1_reml"]
    des, cp, st = _fit_inputs(hsb, "mAch ~ 1 + cses + (1 + cses | school)", g["theta"])
    r = kenward_roger(des, cp, g["theta"], g["sigma"], beta=st.beta)
    # pbkrtest via lmerTest summary(ddf="Kenward-Roger"), goldens hsb82_lme4.json
    np.testing.assert_allclose(r.se, [0.244508689672178, 0.128413946658041], rtol=1e-6)
    np.testing.assert_allclose(r.df, [158.845290986362, 148.490414097893], rtol=1e-6)
    assert r.names == ("(Intercept)", "cses")


def test_hsb_kr_at_engine_fit(hsb):
    """Issue 5 acceptance at the engine's own REML fit: within 1e-4 relative of pbkrtest."""
    from twolevel.models.lmm.lmer import lmer

    r = kenward_roger_fit(lmer("mAch ~ 1 + cses + (1 + cses | school)", hsb))
    np.testing.assert_allclose(r.se, [0.244508689672, 0.128413946658], rtol=1e-4)
    np.testing.assert_allclose(r.df, [158.845291, 148.490414], rtol=1e-4)


def test_sleepstudy_kr_df_17(sleepstudy):
    g = load_golden("sleepstudy_lme4.json")["m1_reml"]
    des, cp, _ = _fit_inputs(sleepstudy, "Reaction ~ 1 + Days + (1 + Days | Subject)", g["theta"])
    r = kenward_roger(des, cp, g["theta"], g["sigma"])
    np.testing.assert_allclose(r.df, [17.0, 17.0], rtol=1e-9)
    # balanced design: the KR adjustment vanishes, SE_KR = model SE (golden)
    np.testing.assert_allclose(r.se, [6.82459669495491, 1.54578964390598], rtol=1e-8)


def test_sim_3re_kr_df(sim_3re):
    des, cp, st = _fit_inputs(sim_3re, "y ~ x1*w + x2 + (1+x1+x2|g)", SIM_THETA)
    r = kenward_roger(des, cp, SIM_THETA, sigma_hat(st, True))
    got = dict(zip(r.names, r.df, strict=True))
    for name, want in SIM_KR_DF.items():
        assert got[name] == pytest.approx(want, rel=1e-7), name


def _dense_pbkrtest(des, theta, sigma):
    """pbkrtest's vcovAdj16_internal and Lb_ddf, literally, with dense n × n matrices."""
    X, Zr, gi = des.X, des.Z, des.group_index
    n, q = Zr.shape
    J = des.n_groups
    Z = np.zeros((n, J * q))
    for k in range(q):
        Z[np.arange(n), gi * q + k] = Zr[:, k]
    T = des.theta_to_T(np.asarray(theta))
    Sb = sigma**2 * T @ T.T
    tmpl = des.theta_template
    G, gam = [], []
    for k in range(des.n_theta):
        r, c = np.argwhere(tmpl == k)[0]
        E = np.zeros((q, q))
        E[r, c] = E[c, r] = 1.0
        G.append(Z @ np.kron(np.eye(J), E) @ Z.T)
        gam.append(Sb[r, c])
    G.append(np.eye(n))
    gam.append(sigma**2)
    Sigma = sum(g * Gi for g, Gi in zip(gam, G, strict=True))
    Si = np.linalg.inv(Sigma)
    Phi = np.linalg.inv(X.T @ Si @ X)
    m = len(G)
    H = [Gi @ Si for Gi in G]
    HX = [h @ X for h in H]
    TT = Si @ X
    P = [-(HX[r].T @ TT) for r in range(m)]
    Q = {(r, s): HX[r].T @ Si @ HX[s] for r in range(m) for s in range(m)}
    K = np.array([[np.sum(H[r].T * H[s]) for s in range(m)] for r in range(m)])
    IE2 = np.array([[K[r, s] - 2 * np.sum(Phi * Q[r, s]) + np.sum((Phi @ P[r]) * (P[s] @ Phi))
                     for s in range(m)] for r in range(m)])
    W = 2 * np.linalg.inv(IE2)
    U = sum(W[r, s] * (Q[r, s] - P[r] @ Phi @ P[s]) for r in range(m) for s in range(m))
    return Phi + 2 * Phi @ U @ Phi, Phi, P, W


def test_per_group_equals_dense_at_arbitrary_theta(sleepstudy):
    """Away from the optimum and with an unbalanced subset, per-group = dense pbkrtest."""
    df = sleepstudy[~((sleepstudy["Subject"] % 3 == 0) & (sleepstudy["Days"] > 6))]
    des = make_design("Reaction ~ 1 + Days + (1 + Days | Subject)", df)
    cp = group_crossprods(des)
    theta, sigma = np.array([0.7, -0.2, 0.4]), 20.0
    Phi_A, Phi, P, W = _dense_pbkrtest(des, theta, sigma)
    pieces = kr_vcov_adjusted(cp, des.theta_template, theta, sigma)
    np.testing.assert_allclose(pieces.Phi, Phi, rtol=1e-9)
    np.testing.assert_allclose(pieces.Phi_A, Phi_A, rtol=1e-8)
    np.testing.assert_allclose(pieces.W, W, rtol=1e-7)
    for a, b in zip(pieces.P, P, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-14)
    # a 2-row contrast (q = 2 F-test df) and a single one agree with the same Lb_ddf on dense P
    from twolevel.models.inference.kenward_roger import KRPieces

    dense = KRPieces(Phi=Phi, P=tuple(P), W=W, Phi_A=Phi_A, condition=1.0)
    for L in (np.array([1.0, 2.0]), np.eye(2)):
        assert kr_ddf(L, pieces) == pytest.approx(kr_ddf(L, dense), rel=1e-8)


def test_contrast_and_errors(hsb):
    g = load_golden("hsb82_lme4.json")["m1_reml"]
    des, cp, st = _fit_inputs(hsb, "mAch ~ 1 + cses + (1 + cses | school)", g["theta"])
    r = kenward_roger(des, cp, g["theta"], g["sigma"], L=[[0.0, 1.0]], beta=st.beta)
    assert r.df[0] == pytest.approx(148.490414097893, rel=1e-6)
    assert r.names == ("L1",)
    assert 0 < r.p_value[0] < 1e-30
    with pytest.raises(TwolevelError, match="Kenward-Roger's method is only available for REML"):
        kenward_roger(des, cp, g["theta"], g["sigma"], reml=False)
    with pytest.raises(TwolevelError, match="contrast L has 3 columns but the model has 2"):
        kenward_roger(des, cp, g["theta"], g["sigma"], L=[1.0, 0.0, 0.0])


@pytest.mark.parametrize("key", ["hsb_uncorrelated", "hsb_slopes_as_outcomes"])
def test_kr_two_terms_and_level2_predictors(hsb, key):
    """pbkrtest with '||' (two terms on one factor) and with cross-level interactions
    (goldens kr_hlm_lme4.json, made by kr_hlm_lme4.R)."""
    g = load_golden("kr_hlm_lme4.json")[key]
    des = make_design(g["formula"], hsb)
    cp = group_crossprods(des)
    r = kenward_roger(des, cp, g["theta"], g["sigma"])
    def key_of(n):  # formulae writes 'sectorPublic:cses' where R writes 'cses:sectorPublic'
        return ":".join(sorted(n.split(":")))

    got_se = {key_of(n): v for n, v in zip(r.names, r.se, strict=True)}
    got_df = {key_of(n): v for n, v in zip(r.names, r.df, strict=True)}
    for name, se, df in zip(map(key_of, g["names"]), g["se"], g["df"], strict=True):
        assert got_se[name] == pytest.approx(se, rel=1e-6), name
        assert got_df[name] == pytest.approx(df, rel=1e-6), name


def _golden_block(name):
    from conftest import GOLDENS

    text = (GOLDENS / "kr_summaries_lme4.txt").read_text().splitlines()
    i = text.index(f"===== {name}")
    j = next(k for k in range(i + 1, len(text)) if text[k].startswith("====="))
    return text[i + 1 : j]


@pytest.mark.parametrize("data_name, formula, block", [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", "sleepstudy_kr"),
    ("hsb", "mAch ~ 1 + cses + (1 + cses | school)", "hsb_kr"),
])
def test_summary_kenward_roger_prints_like_lmertest(request, data_name, formula, block):
    from twolevel.models.lmm.lmer import lmer

    fit = lmer(formula, request.getfixturevalue(data_name),
               data_name="Hsb82" if data_name == "hsb" else data_name)
    got = fit.summary(ddf="Kenward-Roger").splitlines()
    want = _golden_block(block)
    assert [ln.rstrip() for ln in got] == [ln.rstrip() for ln in want]


def test_kr_on_ml_fit_refused(sleepstudy):
    from twolevel.models.inference.kenward_roger import ddf_kenward_roger
    from twolevel.models.lmm.lmer import lmer

    fit = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, REML=False)
    with pytest.raises(TwolevelError, match="Kenward-Roger's method is only available for REML"):
        fit.summary(ddf="Kenward-Roger")
    with pytest.raises(TwolevelError, match="only available for REML model fits; refit with"):
        ddf_kenward_roger(fit, np.eye(2))
