"""Profile-likelihood, Wald and parametric-bootstrap confidence intervals (lme4 ``confint``)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import load_golden
from scipy import stats

from twolevel.data.errors import TwolevelError
from twolevel.models.design import group_crossprods, make_design
from twolevel.models.inference.intervals import confint_boot, confint_wald
from twolevel.models.inference.profile import (
    back_spline_predict,
    cv_to_sv,
    ml_refit,
    parameter_names,
    profile,
    profile_lrt,
    sv_to_cv,
)

SLEEP = "Reaction ~ 1 + Days + (1 + Days | Subject)"
HSB = "mAch ~ 1 + cses + (1 + cses | school)"


def _check_profile(df, formula, golden):
    g = load_golden(golden)["m1_reml"]
    des = make_design(formula, df)
    pr = profile(des, group_crossprods(des), theta_start=np.asarray(g["theta"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ci = pr.confint(0.95)
    assert list(ci.index) == list(g["profile_ci95"])  # lme4's names and order
    for name, (lo, hi) in g["profile_ci95"].items():
        # lme4 confint(method="profile", oldNames=FALSE); acceptance 2e-3, observed < 6e-5
        assert ci.loc[name].to_numpy() == pytest.approx([lo, hi], abs=2e-3), name
        assert ci.loc[name].to_numpy() == pytest.approx([lo, hi], abs=1e-4), name
    return pr, [str(w.message) for w in caught]


def test_sleepstudy_profile_ci(sleepstudy):
    pr, msgs = _check_profile(sleepstudy, SLEEP, "sleepstudy_lme4.json")
    assert msgs == []
    assert pr.base_deviance == pytest.approx(1751.93934448899, abs=1e-6)  # goldens m1_ml
    frame = pr.to_frame()
    assert set(frame["parameter"]) == set(pr.traces)
    # ζ is increasing along each trace (the spline path was used, no fallback)
    for tr in pr.traces.values():
        assert np.all(np.diff(tr.zeta) > 0)


@pytest.mark.slow
def test_hsb_profile_ci(hsb):
    _, msgs = _check_profile(hsb, HSB, "hsb82_lme4.json")
    # as lme4 (users-needs §5.2): the correlation's profile is not monotone at the -1 bound
    assert msgs == ["bad spline fit for cor_cses.(Intercept)|school: falling back to linear "
                    "interpolation"]


def test_sv_cv_round_trip(sleepstudy):
    g = load_golden("sleepstudy_lme4.json")["m1_reml"]
    des = make_design(SLEEP, sleepstudy)
    sv = cv_to_sv(des, np.asarray(g["theta"]), g["sigma"])
    vc = g["varcorr"]
    np.testing.assert_allclose(
        sv, [np.sqrt(vc["Subject:(Intercept):"]), 0.06555124, np.sqrt(vc["Subject:Days:"]),
             g["sigma"]], rtol=1e-6)
    np.testing.assert_allclose(sv_to_cv(des, sv), g["theta"], rtol=1e-12)
    assert sv_to_cv(des, np.array([1.0, 0.5, 1.0, 0.0])) is None  # σ = 0
    assert parameter_names(des) == ["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject",
                                    "sd_Days|Subject", "sigma"]


def test_back_spline_inverts_a_known_function():
    x = np.linspace(-2.0, 2.0, 9)
    z = np.sinh(x)  # monotone, curved
    got = back_spline_predict(x, z, np.array([-1.5, 0.3, 2.5, 10.0]))
    assert got[:3] == pytest.approx(np.arcsinh([-1.5, 0.3, 2.5]), abs=3e-2)
    assert np.isnan(got[3])  # beyond the profiled range
    with pytest.raises(ValueError, match="spline must be monotone"):
        back_spline_predict(x, np.cos(x), np.array([0.0]))


def test_profile_lrt_matches_profile_trace(sleepstudy):
    des = make_design(SLEEP, sleepstudy)
    cp = group_crossprods(des)
    refit = ml_refit(des, cp)
    pr = profile(des, cp, which=["sd_Days|Subject", "Days"])
    for name in ("sd_Days|Subject", "Days"):
        tr = pr.traces[name]
        k = len(tr.par) - 3
        assert profile_lrt(des, cp, refit, name, tr.par[k]) == pytest.approx(
            tr.zeta[k] ** 2, rel=1e-6, abs=1e-8)
    with pytest.raises(TwolevelError, match="unknown parameter 'tau'"):
        profile_lrt(des, cp, refit, "tau", 1.0)
    with pytest.raises(TwolevelError, match="cannot profile 'tau'"):
        profile(des, cp, which=["tau"])


def test_wald(sleepstudy):
    g = load_golden("sleepstudy_lme4.json")["m1_reml"]
    ci = confint_wald(list(g["fixef"]), list(g["fixef"].values()), list(g["se"].values()))
    # lme4 confint(method="Wald"): (Intercept) 238.029–264.781, Days 7.4376–13.4970
    np.testing.assert_allclose(ci.to_numpy(), [[238.029, 264.781], [7.4376, 13.4970]], atol=6e-4)
    ci2 = confint_wald(["b"], [0.0], [1.0], level=0.9, variance_names=["sigma"])
    assert np.isnan(ci2.loc["sigma"]).all()
    assert ci2.loc["b"].to_numpy() == pytest.approx([-stats.norm.ppf(0.95), stats.norm.ppf(0.95)])


def test_bootstrap_seeded_and_sensible(sleepstudy, capsys):
    g = load_golden("sleepstudy_lme4.json")["m1_reml"]
    des = make_design(SLEEP, sleepstudy)
    args = (des, np.asarray(g["theta"]), g["sigma"], np.asarray(list(g["fixef"].values())))
    b1 = confint_boot(*args, nsim=40, seed=7)
    b2 = confint_boot(*args, nsim=40, seed=7, progress=False)
    np.testing.assert_array_equal(b1.replicates, b2.replicates)
    assert "bootstrap: 40/40 refits" in capsys.readouterr().err
    ci = b1.confint()
    assert isinstance(ci, pd.DataFrame) and list(ci.index)[-2:] == ["(Intercept)", "Days"]
    est = dict(zip(b1.names, b1.estimate, strict=True))
    for name in ("sigma", "(Intercept)", "Days"):
        lo, hi = ci.loc[name]
        assert lo < est[name] < hi
    # the bootstrap SD of β̂ is near the model SE (6.82, 1.55) even with 40 draws
    sd = b1.replicates[:, -2:].std(axis=0, ddof=1)
    assert sd == pytest.approx([6.82, 1.55], rel=0.35)
    with pytest.raises(TwolevelError, match="needs nsim >= 2"):
        confint_boot(*args, nsim=1)


def test_confint_on_fit(sleepstudy):
    from twolevel.models.inference.intervals import confint
    from twolevel.models.lmm.lmer import lmer

    g = load_golden("sleepstudy_lme4.json")["m1_reml"]
    fit = lmer(SLEEP, sleepstudy)
    w = confint(fit, "Wald")
    assert list(w.index) == list(g["profile_ci95"])
    assert np.isnan(w.iloc[:4].to_numpy()).all()
    assert w.loc["Days"].to_numpy() == pytest.approx([7.4376, 13.4970], abs=6e-4)
    pr = confint(fit, "profile")
    for name, (lo, hi) in g["profile_ci95"].items():
        assert pr.loc[name].to_numpy() == pytest.approx([lo, hi], abs=2e-3), name
    with pytest.raises(TwolevelError, match="unknown confint method 'bayes'; choose one of"):
        confint(fit, "bayes")
    with pytest.raises(TwolevelError, match="confidence level must be between 0 and 1"):
        confint(fit, "Wald", level=95)
