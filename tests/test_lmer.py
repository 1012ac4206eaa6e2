"""lmer(): parity with lme4 1.1-31 + lmerTest 3.1-3 on the golden data sets, the printed summary,
singular fits and every user-error message.

Goldens: tests/goldens/{sleepstudy,hsb82,lecture}_lme4.json (lme4_goldens.R), the printed
summaries tests/goldens/summaries_lme4.txt (summaries_lme4.R), sim_3re numbers from the lme4
lme4-algorithms.md §9. Tolerances are the issue's acceptance ones unless a tighter one is stated;
the default optimizer follows lme4's own path, so most agree to ~1e-7 or better.
"""

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import GOLDENS, load_golden

from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.data.loaders import load_data
from twolevel.models.lmm.lmer import lmer
from twolevel.models.lmm.results import deparse_formula

CASES = {
    "sleepstudy": ("sleepstudy_lme4.json", "Reaction ~ 1 + Days + (1 + Days | Subject)"),
    "hsb": ("hsb82_lme4.json", "mAch ~ 1 + cses + (1 + cses | school)"),
    "lecture": ("lecture_lme4.json", "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"),
}


@pytest.fixture(scope="session")
def lecture():
    return load_data("lecture")


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    golden, formula = CASES[request.param]
    df = request.getfixturevalue(request.param)
    return request.param, load_golden(golden), lmer(formula, df)


def _vc(fit) -> dict:
    """as.data.frame(VarCorr) keyed like the goldens: 'grp:var1:var2'."""
    out = {}
    for r in fit.VarCorr().to_frame().itertuples():
        v1 = r.var1 if isinstance(r.var1, str) else "NA"
        v2 = r.var2 if isinstance(r.var2, str) else ""
        out[f"{r.grp}:{v1}:{v2}"] = r.vcov
    return out


def test_reml_parity(case):
    name, g, fit = case
    ref = g["m1_reml"]
    # criterion never worse than lme4's by more than 1e-6 (and, following lme4's path, not lower)
    assert fit.reml_criterion <= ref["reml_criterion"] + 1e-6
    assert fit.reml_criterion == pytest.approx(ref["reml_criterion"], abs=1e-6)
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-5, atol=1e-7)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-6)
    np.testing.assert_allclose(fit.fixef().to_numpy(), list(ref["fixef"].values()), rtol=1e-5)
    assert list(fit.fixef().index) == list(ref["fixef"])
    np.testing.assert_allclose(fit.se().to_numpy(), list(ref["se"].values()), rtol=1e-4)
    vc = _vc(fit)
    for key, val in ref["varcorr"].items():
        assert vc[key] == pytest.approx(val, rel=2e-3), key
    assert fit.loglik == pytest.approx(ref["loglik_restricted"], abs=1e-6)
    assert fit.aic == pytest.approx(ref["aic"], abs=1e-6)
    assert fit.bic == pytest.approx(ref["bic"], abs=1e-6)
    assert fit.deviance(reml=False) == pytest.approx(ref["deviance_ml_at_reml_theta"], abs=1e-3)
    q = np.quantile(fit.residuals(scaled=True), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(q, ref["scaled_residual_quantiles"], rtol=1e-3, atol=1e-5)
    assert fit.nobs == g["nobs"] and fit.ngroups == g["ngroups"] and fit.npar == 6


def test_satterthwaite_parity(case):
    name, g, fit = case
    tab = fit.coef_table()
    ref = g["m1_reml"]
    np.testing.assert_allclose(tab["df"], list(ref["satterthwaite_df"].values()), rtol=1e-6)
    np.testing.assert_allclose(tab["t value"], list(ref["t"].values()), rtol=1e-5)
    pref = np.array(list(ref["p"].values()))
    big = pref > 1e-300
    np.testing.assert_allclose(tab["Pr(>|t|)"].to_numpy()[big], pref[big], rtol=1e-4)


def test_ranef_parity(case):
    name, g, fit = case
    re = fit.ranef(cond_var=True)
    names = list(fit.design.z_names)
    for row in g["m1_reml"]["ranef_first3"]:
        r = re.loc[re.index.astype(str) == row["group"]].iloc[0]
        np.testing.assert_allclose(r[names].to_numpy(float), row["u"], rtol=1e-3, atol=1e-6)
        cv = [r[f"condvar_{names[0]}"], r[f"condcov_{names[0]}:{names[1]}"],
              r[f"condvar_{names[1]}"]]
        np.testing.assert_allclose(cv, row["cond_var"], rtol=1e-3)
        assert r[f"condsd_{names[1]}"] == pytest.approx(np.sqrt(row["cond_var"][2]), rel=1e-3)


@pytest.mark.parametrize("name", list(CASES))
def test_ml_fit_parity(name, request):
    golden, formula = CASES[name]
    g = load_golden(golden)["m1_ml"]
    fit = lmer(formula, request.getfixturevalue(name), REML=False)
    assert fit.criterion <= g["deviance"] + 1e-6
    assert fit.criterion == pytest.approx(g["deviance"], abs=1e-3)
    assert fit.deviance() == fit.criterion and fit.loglik == -fit.criterion / 2
    np.testing.assert_allclose(fit.theta, g["theta"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fit.fixef().to_numpy(), list(g["fixef"].values()), rtol=1e-5)
    vc = _vc(fit)
    for key, val in g["varcorr"].items():
        assert vc[key] == pytest.approx(val, rel=2e-3), key


def test_sim3re_parity(sim_3re):
    fit = lmer("y ~ x1*w + x2 + (1+x1+x2|g)", sim_3re)
    # lme4-algorithms.md §9 (nloptwrap, 80 evaluations)
    theta = [0.828738090645, -0.109408141387, 0.0303154782751, 0.554110593927, 0.11725651123,
             0.43697218766]
    assert fit.reml_criterion <= 1323.42585736 + 1e-6
    assert fit.reml_criterion == pytest.approx(1323.42585736, abs=1e-6)
    np.testing.assert_allclose(fit.theta, theta, rtol=1e-6)
    assert fit.optsum.bobyqa_evaluations == 80
    assert fit.npar == 12


def test_optimizer_record_sleepstudy(sleepstudy):
    fit = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    o = fit.optsum
    assert o.bobyqa_evaluations == 43  # lme4: 43 evaluations
    assert o.converged and o.mode == "lme4" and not any(o.at_lower)
    np.testing.assert_allclose(o.theta0, [1, 0, 1])
    assert np.max(np.abs(o.gradient)) < 2e-3  # lme4's check.conv.grad tolerance
    assert "LN_BOBYQA" in o.summary() and o.to_frame().shape == (3, 5)


def test_tight_mode_never_worse(sleepstudy, hsb):
    for df, f in [(sleepstudy, "Reaction ~ Days + (Days | Subject)"),
                  (hsb, "mAch ~ 1 + cses + (1 + cses | school)")]:
        a = lmer(f, df)
        b = lmer(f, df, optimizer="tight")
        assert b.reml_criterion <= a.reml_criterion + 1e-12
        assert b.optsum.mode == "tight" and b.optsum.lme4_fmin == pytest.approx(a.reml_criterion)


def test_intercept_only_and_double_bar(sleepstudy):
    g = load_golden("sleepstudy_lme4.json")["m2_reml"]
    fit = lmer("Reaction ~ 1 + Days + (1 | Subject)", sleepstudy)
    assert fit.reml_criterion == pytest.approx(g["reml_criterion"], abs=1e-6)
    assert fit.VarCorr().variances["(Intercept)"] == pytest.approx(
        g["varcorr"]["Subject:(Intercept):"], rel=2e-3)
    assert fit.npar == 4
    fit2 = lmer("Reaction ~ Days + (Days || Subject)", sleepstudy)
    vc = fit2.VarCorr()
    assert vc.pairs() == [] and fit2.design.n_theta == 2
    assert list(vc.to_frame()["grp"]) == ["Subject", "Subject.1", "Residual"]


def test_coef_fitted_residuals(sleepstudy):
    fit = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    c = fit.coef()
    re = fit.ranef(cond_var=False)
    np.testing.assert_allclose(c["Days"], fit.fixef()["Days"] + re["Days"])
    mu = fit.fitted()
    np.testing.assert_allclose(fit.residuals(), fit.design.y - mu)
    np.testing.assert_allclose(fit.residuals(scaled=True), (fit.design.y - mu) / fit.sigma)
    V = fit.vcov().to_numpy()
    # lme4-algorithms.md §9: vcov = [[46.57512004879, −1.45108841663], [·, 2.38946562321]]
    np.testing.assert_allclose(V, [[46.57512004879, -1.45108841663],
                                   [-1.45108841663, 2.38946562321]], rtol=1e-6)
    assert list(fit.to_frame().columns) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]


# --------------------------------------------------------------------------- printed summary


def _r_sections() -> dict[str, str]:
    text = (GOLDENS / "summaries_lme4.txt").read_text()
    parts = re.split(r"^===== (\S+)\n", text, flags=re.M)
    return {parts[i]: parts[i + 1].rstrip("\n") for i in range(1, len(parts) - 1, 2)}


@pytest.mark.parametrize(
    "section, frame, formula, reml, data_name",
    [
        ("sleepstudy_reml", "sleepstudy", "Reaction ~ Days + (Days | Subject)", True, "sleepstudy"),
        ("sleepstudy_ml", "sleepstudy", "Reaction ~ Days + (Days | Subject)", False, "sleepstudy"),
        ("hsb_reml", "hsb", "mAch ~ 1 + cses + (1 + cses | school)", True, "Hsb82"),
        ("hsb_uncorrelated", "hsb", "mAch ~ 1 + cses + meanses + (1 + cses || school)", True,
         "Hsb82"),
        ("lecture_reml", "lecture", "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", True,
         "lecture"),
    ],
)
def test_summary_prints_like_lme4(section, frame, formula, reml, data_name, request):
    fit = lmer(formula, request.getfixturevalue(frame), REML=reml, data_name=data_name)
    assert fit.summary() == _r_sections()[section]


def test_deparse_formula_like_r():
    assert deparse_formula("y ~ x1*w + x2 + (1+x1+x2|g)") == "y ~ x1 * w + x2 + (1 + x1 + x2 | g)"
    assert deparse_formula("y~x:z+(1+x||g)") == "y ~ x:z + (1 + x || g)"


def test_summary_ddf_dispatch(sleepstudy):
    fit = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    plain = fit.summary(ddf="lme4")
    assert plain.startswith("Linear mixed model fit by REML ['lmerMod']")
    assert "t value" in plain and "Pr(>|t|)" not in plain
    with pytest.raises(TwolevelError, match="unknown ddf method 'Welch'; choose one of"):
        fit.summary(ddf="Welch")


# ----------------------------------------------------------------------------- singular fits


def _zero_slope_data(seed=3):
    """Random intercepts and a fixed slope only: the slope's variance across groups is 0."""
    rng = np.random.default_rng(seed)
    J, nj = 30, 12
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=J * nj)
    y = 1 + 0.5 * x + rng.normal(scale=1.0, size=J)[g] + rng.normal(scale=0.5, size=J * nj)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def test_singular_fit_detected_and_explained():
    df = _zero_slope_data()
    with pytest.warns(UserWarning, match="boundary \\(singular\\) fit"):
        fit = lmer("y ~ x + (1 + x | g)", df)
    assert fit.is_singular()
    msg = fit.singular_explanation()
    assert re.search(r"variance of 'x' across g groups is estimated as \(nearly\) zero|"
                     r"correlation between '\(Intercept\)' and 'x'", msg)
    assert "drop the random slope(s) of 'x'" in msg
    assert "boundary (singular) fit" in fit.summary()
    # lme4's rule: a diagonal θ below 1e-4
    assert np.min(fit.theta[fit.design.theta_lower == 0]) < 1e-4


def test_uncorrelated_zero_variance_named():
    df = _zero_slope_data()
    with pytest.warns(UserWarning):
        fit = lmer("y ~ x + (1 + x || g)", df)
    assert fit.is_singular()
    assert ("variance of 'x' across g groups is estimated as (nearly) zero"
            in fit.singular_explanation())


def test_nonsingular_has_no_explanation(sleepstudy):
    fit = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    assert not fit.is_singular() and fit.singular_explanation() == ""


# ------------------------------------------------------------------------------ user errors


def test_error_no_random_term(sleepstudy):
    with pytest.raises(FormulaError, match="has no random-effects term such as"):
        lmer("Reaction ~ Days", sleepstudy)


def test_error_missing_group_column(sleepstudy):
    with pytest.raises(DataError, match="grouping column 'school' is not in the data"):
        lmer("Reaction ~ Days + (1 | school)", sleepstudy)


def test_error_slope_constant_within_groups(hsb):
    with pytest.raises(FormulaError, match="random slope 'meanses' .* is constant within every "
                       "'school' group: .* keep 'meanses' as a fixed effect"):
        lmer("mAch ~ cses + meanses + (1 + meanses | school)", hsb)


def test_error_more_random_effects_than_observations():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.normal(size=20), "x": rng.normal(size=20),
                       "g": np.repeat(np.arange(10), 2)})
    with pytest.raises(DataError, match="number of observations \\(20\\) <= number of random "
                       "effects \\(20\\)"):
        lmer("y ~ x + (1 + x | g)", df)


def test_rank_deficient_x_dropped_with_message(sleepstudy):
    df = sleepstudy.assign(Days2=2 * sleepstudy["Days"])
    with pytest.warns(UserWarning, match="rank deficient so dropping 1 column\\(s\\): Days2"):
        fit = lmer("Reaction ~ Days + Days2 + (Days | Subject)", df)
    assert list(fit.fixef().index) == ["(Intercept)", "Days"]
    assert "rank deficient" in fit.summary()
    ref = load_golden("sleepstudy_lme4.json")["m1_reml"]
    assert fit.reml_criterion == pytest.approx(ref["reml_criterion"], abs=1e-6)


def test_error_unknown_optimizer(sleepstudy):
    with pytest.raises(TwolevelError, match="unknown optimizer 'bfgs'; choose 'lme4'"):
        lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, optimizer="bfgs")


def test_no_warnings_on_regular_fit(sleepstudy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
