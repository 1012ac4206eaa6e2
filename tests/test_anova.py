"""anova(m_small, m_big): lme4's likelihood-ratio table (with ML refits), the boundary-corrected
mixture p and the refusals. Goldens: tests/goldens/*_lme4.json "anova_m2_m1" (lme4 1.1-31) and the
printed tables in summaries_lme4.txt."""

import re

import numpy as np
import pytest
from conftest import GOLDENS, load_golden

from twolevel.data.errors import TwolevelError
from twolevel.data.loaders import load_data
from twolevel.models.inference.anova import anova, mixture_pvalue
from twolevel.models.lmm.lmer import lmer

CASES = {
    "sleepstudy": ("sleepstudy_lme4.json", "Reaction ~ 1 + Days + (1 | Subject)",
                   "Reaction ~ 1 + Days + (1 + Days | Subject)"),
    "hsb": ("hsb82_lme4.json", "mAch ~ 1 + cses + (1 | school)",
            "mAch ~ 1 + cses + (1 + cses | school)"),
    "lecture": ("lecture_lme4.json", "g1rscore ~ 1 + famsesc + (1 | schid)",
                "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"),
}


@pytest.fixture(scope="session")
def lecture():
    return load_data("lecture")


@pytest.mark.parametrize("name", list(CASES))
def test_anova_matches_lme4(name, request):
    golden, small, big = CASES[name]
    df = request.getfixturevalue(name)
    g = load_golden(golden)["anova_m2_m1"]
    res = anova(lmer(big, df), lmer(small, df))  # given out of order: sorted by npar like lme4
    assert res.refitted and res.formulas == (small, big)
    np.testing.assert_array_equal(res.npar, g["npar"])
    for ours, key in [(res.aic, "AIC"), (res.bic, "BIC"), (res.loglik, "logLik"),
                      (res.deviance, "deviance")]:
        np.testing.assert_allclose(ours, g[key], atol=1e-3)
    assert res.chisq[1] == pytest.approx(g["Chisq"], abs=1e-3)
    assert res.df[1] == g["Df"]
    assert res.p[1] == pytest.approx(g["p_naive"], rel=1e-3)
    assert res.p_mixture[1] == pytest.approx(g["p_mixture_half_chi2_1_2"], rel=1e-3)
    assert res.mixture[1] == "0.5*chi2(1) + 0.5*chi2(2)"
    assert np.isnan(res.chisq[0]) and np.isnan(res.p_mixture[0])


def _r_section(name):
    text = (GOLDENS / "summaries_lme4.txt").read_text()
    parts = re.split(r"^===== (\S+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=False))[name].rstrip("\n")


@pytest.mark.parametrize("section, frame, names, data_name", [
    ("sleepstudy_anova", "sleepstudy", ["m0", "m1"], "sleepstudy"),
    ("lecture_anova", "lecture", ["l0", "l1"], "lecture"),
])
def test_anova_prints_like_lme4(section, frame, names, data_name, request):
    _, small, big = CASES[frame]
    df = request.getfixturevalue(frame)
    r_small, r_big = (f.replace("1 + Days + (1 + Days", "Days + (Days").replace(
        "1 + Days + (1 |", "Days + (1 |") for f in (small, big))
    res = anova(lmer(r_small, df, data_name=data_name), lmer(r_big, df, data_name=data_name),
                names=names)
    lines = res.summary().splitlines()
    assert lines[0] == "refitting model(s) with ML (instead of REML)"
    table = "\n".join(lines[1:-1])
    assert table == _r_section(section)
    assert lines[-1].startswith(f"Boundary-corrected p ({names[1]} vs {names[0]}): ")
    assert "0.5*chi2(1) + 0.5*chi2(2)" in lines[-1]


def test_frames_and_dict(sleepstudy):
    _, small, big = CASES["sleepstudy"]
    res = anova(lmer(small, sleepstudy), lmer(big, sleepstudy))
    fr = res.to_frame()
    assert list(fr.columns) == ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df",
                                "Pr(>Chisq)", "p_mixture", "mixture"]
    d = res.to_dict()
    assert set(d) == {"models", "chisq", "df", "p", "p_mixture", "mixture"}
    assert set(d["models"][0]) == {"formula", "npar", "aic", "bic", "loglik", "deviance"}


def test_mixture_for_uncorrelated_slope_and_none_for_fixed_change(sleepstudy):
    m0 = lmer("Reaction ~ Days + (1 | Subject)", sleepstudy)
    m1 = lmer("Reaction ~ Days + (1 + Days || Subject)", sleepstudy)
    r = anova(m0, m1)
    assert r.mixture[1] == "0.5*chi2(0) + 0.5*chi2(1)"
    assert r.p_mixture[1] == pytest.approx(0.5 * r.p[1], rel=1e-12)
    m2 = lmer("Reaction ~ 1 + (1 | Subject)", sleepstudy)
    m3 = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    r2 = anova(m2, m3)
    assert r2.mixture[1] == "" and np.isnan(r2.p_mixture[1])
    assert "no simple chi-square mixture applies" in r2.summary()
    assert r2.to_dict()["p_mixture"] is None


def test_mixture_pvalue_formula():
    assert mixture_pvalue(3.0, 1) == pytest.approx(0.5 * (0.0832645166635504 + 0.22313016014843))
    assert mixture_pvalue(0.0, 0) == 1.0


def test_ml_fits_are_not_refitted(sleepstudy):
    m0 = lmer("Reaction ~ Days + (1 | Subject)", sleepstudy, REML=False)
    m1 = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, REML=False)
    r = anova(m0, m1)
    assert not r.refitted and "refitting" not in r.summary()
    assert r.deviance[1] == m1.criterion


def test_refuses_different_data(sleepstudy):
    m0 = lmer("Reaction ~ Days + (1 | Subject)", sleepstudy)
    m1 = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy.iloc[:170])
    with pytest.raises(TwolevelError, match="models were not all fitted to the same size of data "
                       "set: 'm1' uses 180 rows, 'm2' uses 170 rows"):
        anova(m0, m1)
    other = sleepstudy.assign(Reaction=sleepstudy["Reaction"] + 1.0)
    m2 = lmer("Reaction ~ Days + (Days | Subject)", other)
    with pytest.raises(TwolevelError, match="models 'm1' and 'm2' were not fitted to the same "
                       "data"):
        anova(m0, m2)


def test_refuses_non_nested(sleepstudy):
    df = sleepstudy.assign(Days2=sleepstudy["Days"] ** 2)
    a = lmer("Reaction ~ Days + (Days | Subject)", df)
    b = lmer("Reaction ~ Days2 + (Days | Subject)", df)
    with pytest.raises(TwolevelError, match="model 'm1' is not nested in 'm2': 'm2' lacks fixed "
                       "effect\\(s\\) Days of 'm1'"):
        anova(a, b)
    df = df.assign(Days3=df["Days"] ** 3, Days4=df["Days"] ** 4)
    c = lmer("Reaction ~ Days + Days2 + Days3 + Days4 + (1 | Subject)", df)  # npar 7 > 6
    with pytest.raises(TwolevelError, match="lacks random-effect \\(co\\)variance\\(s\\) "
                       "\\(Intercept\\):Days, Days, Days:\\(Intercept\\)"):
        anova(a, c)


def test_refuses_different_response_and_single_model(sleepstudy):
    df = sleepstudy.assign(R2=sleepstudy["Reaction"])
    a = lmer("Reaction ~ Days + (1 | Subject)", df)
    b = lmer("R2 ~ Days + (Days | Subject)", df)
    with pytest.raises(TwolevelError, match="have different responses \\('Reaction' and 'R2'\\)"):
        anova(a, b)
    with pytest.raises(TwolevelError, match="anova needs at least two fitted models"):
        anova(a)
    with pytest.raises(TwolevelError, match="2 models but 1 names"):
        anova(a, a, names=["x"])
