"""Profile intervals with several grouping factors (issue 22: "profile and Wald intervals").

Structural and self-consistency checks here; the live-R parity with lme4's
``confint(fit, method = "profile")`` is in ``tests/test_profile_multi_r.py``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import TwolevelError
from twolevel.models.inference.profile_multi import (
    drop_fixed_stats,
    multi_cv_to_sv,
    multi_parameter_names,
    multi_sv_to_cv,
    profile_multi,
)
from twolevel.models.lmm.lmer import lmer
from twolevel.models.lmm.multi import refit_ml_multi
from twolevel.workflows.cli import main


def _three(seed: int = 3) -> pd.DataFrame:
    """30 schools × 2–5 classes (labels restart per school) × 3–11 students, slopes at the
    school level."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, 31):
        u0, u1 = rng.multivariate_normal([0, 0], [[1.0, 0.3], [0.3, 0.4]])
        for c in range(1, rng.integers(2, 6) + 1):
            v0 = rng.normal(0, 0.7)
            n = rng.integers(3, 12)
            x = rng.normal(size=n)
            y = 1 + 0.5 * x + u0 + v0 + u1 * x + rng.normal(0, 1, n)
            rows += [(s, c, xi, yi) for xi, yi in zip(x, y, strict=True)]
    return pd.DataFrame(rows, columns=["school", "class", "x", "y"])


def _crossed(seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ua, ub = rng.normal(0, 0.8, 30), rng.normal(0, 0.5, 10)
    rows = []
    for a in range(30):
        for b in rng.choice(10, size=4, replace=False):
            for _ in range(2):
                x = rng.normal()
                rows.append((a + 1, b + 1, x, 2 + 0.4 * x + ua[a] + ub[b] + rng.normal()))
    return pd.DataFrame(rows, columns=["a", "b", "x", "y"])


FORMULA = "y ~ x + (1 + x | school) + (1 | school:class)"


def test_sdcor_scale_round_trip():
    fit = lmer(FORMULA, _three())
    d = fit.design
    sv = multi_cv_to_sv(d, fit.theta, fit.sigma)
    vc = fit.VarCorr()
    # .sig01: class within school; .sig02-.sig04: school's SD, correlation, SD
    assert multi_parameter_names(d) == [".sig01", ".sig02", ".sig03", ".sig04", ".sigma"]
    C = vc.covs[1]
    np.testing.assert_allclose(sv, [np.sqrt(vc.covs[0][0, 0]), np.sqrt(C[0, 0]),
                                    C[1, 0] / np.sqrt(C[0, 0] * C[1, 1]), np.sqrt(C[1, 1]),
                                    fit.sigma], rtol=1e-12)
    np.testing.assert_allclose(multi_sv_to_cv(d, sv), fit.theta, rtol=1e-12, atol=1e-14)
    bad = sv.copy()
    bad[-1] = 0.0
    assert multi_sv_to_cv(d, bad) is None


@pytest.mark.parametrize("data, formula", [(_three(), FORMULA),
                                           (_crossed(), "y ~ x + (1 | a) + (1 | b)")])
def test_fixed_effect_held_equals_a_refit_with_an_offset(data, formula):
    """The statistics with β_x held at b (MᵀCM) give the ML criterion of the model fitted to
    y − b·x without x, rebuilt from the rows."""
    fit = lmer(formula, data, REML=False)
    b = 0.3
    st = drop_fixed_stats(fit.stats, 1, b)
    d2 = data.assign(y=data["y"] - b * data["x"])
    ref = lmer(formula.replace("y ~ x +", "y ~ 1 +"), d2, REML=False)
    np.testing.assert_allclose(st.C if hasattr(st, "C") else st.Arr,
                               ref.stats.C if hasattr(ref.stats, "C") else ref.stats.Arr,
                               rtol=1e-10, atol=1e-9)
    pr = profile_multi(fit, which=["x"])
    tr = pr.traces["x"]
    ml = refit_ml_multi(fit)
    # a profile point's ζ² is the deviance increase of the refit with x·b as an offset
    k = int(np.argmin(np.abs(tr.par - tr.par[0])))
    d3 = data.assign(y=data["y"] - tr.par[k] * data["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref3 = lmer(formula.replace("y ~ x +", "y ~ 1 +"), d3, REML=False, optimizer="tight")
    assert tr.zeta[k] ** 2 == pytest.approx(ref3.criterion - ml.criterion, rel=1e-6, abs=1e-8)


def test_profile_intervals_contain_the_estimates_and_are_ordered():
    fit = lmer("y ~ x + (1 | school/class)", _three())
    ci = fit.confint()  # lme4's default method: profile
    assert list(ci.index) == [".sig01", ".sig02", ".sigma", "(Intercept)", "x"]
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    ml = refit_ml_multi(fit)
    est = np.concatenate([multi_cv_to_sv(fit.design, ml.theta, ml.sigma), ml.state.beta])
    assert np.all(ci.iloc[:, 0].to_numpy() < est) and np.all(est < ci.iloc[:, 1].to_numpy())
    # the profile interval of a fixed effect is close to Wald's with many groups
    w = fit.confint("Wald")
    assert ci.loc["x"].to_numpy() == pytest.approx(w.loc["x"].to_numpy(), rel=0.05)


def test_confint_methods_and_errors():
    import twolevel as tl

    fit = lmer("y ~ x + (1 | school/class)", _three())
    w = tl.confint(fit, method="Wald")
    assert w.loc[".sigma"].isna().all()
    b = tl.confint(fit, method="boot", nsim=4, seed=2)
    assert list(b.index) == list(w.index)
    np.testing.assert_array_equal(b.to_numpy(), fit.confint("boot", nsim=4, seed=2).to_numpy())
    with pytest.raises(TwolevelError, match="unknown confint method 'bayes'; choose one of"):
        fit.confint("bayes")
    with pytest.raises(TwolevelError, match="confidence level must be between 0 and 1"):
        fit.confint("Wald", 95)
    with pytest.raises(TwolevelError, match="the bootstrap needs nsim >= 2 simulations, got 1"):
        fit.confint("boot", nsim=1)
    with pytest.raises(TwolevelError, match=r"cannot profile 'tau': parameters are \.sig01"):
        profile_multi(fit, which=["tau"])


def test_drop_fixed_stats_refuses_unknown_statistics():
    with pytest.raises(TypeError, match="unknown statistics dict"):
        drop_fixed_stats({}, 0, 1.0)


def test_cli_profile_intervals(tmp_path, capsys):
    csv = tmp_path / "three.csv"
    _three().to_csv(csv, index=False)
    assert main(["fit", str(csv), "y ~ x + (1 | school/class)", "--json", "--confint",
                 "profile"]) == 0
    out = json.loads(capsys.readouterr().out)
    fit = lmer("y ~ x + (1 | school/class)", _three())
    ci = fit.confint("profile")
    assert list(out["confint"]) == list(ci.index)
    np.testing.assert_allclose(out["confint"][".sig02"], ci.loc[".sig02"].to_numpy())
    assert main(["fit", str(csv), "y ~ x + (1 | school/class)", "--confint", "profile"]) == 0
    assert "Confidence intervals (likelihood profile):" in capsys.readouterr().out


def test_profile_zeta_names_the_unknown_parameter():
    import twolevel as tl
    from twolevel.data.errors import TwolevelError
    from twolevel.models.inference.profile_core import profile_zeta
    from twolevel.models.inference.profile_multi import multi_profile_problem

    prob = multi_profile_problem(tl.lmer("mAch ~ ses + (1 | sector/school)",
                                         tl.load_data("hsb")))
    with pytest.raises(TwolevelError, match=r"cannot profile 'sd_ses': parameters are \.sig01, "
                                            r"\.sig02, \.sigma, \(Intercept\), ses"):
        profile_zeta(prob, "sd_ses", 1.0)
    assert profile_zeta(prob, "ses", float(prob.refit.beta[1]) + 2 * prob.refit.se[1]) > 1.5
