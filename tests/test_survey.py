"""Sampling weights at two levels (pseudo-ML), sandwich SEs, plausible values (issue 23).

Goldens: ``tests/goldens/survey_wemix.json`` (WeMix 4.0.3 runs and tests, the WeMix vignette's
PISA 2012 Tables 1-2; provenance in the file and in ``tests/goldens/README.md``). Tolerances as
the issue: log pseudo-likelihood 1e-8 relative, β 1e-6 relative, robust SE 1e-5, variance
components 1e-5, their SEs 1e-4 (relative).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import DataError, TwolevelError
from twolevel.data.loaders import load_data
from twolevel.models.lmm.lmer import lmer
from twolevel.models.survey.crossprods import weighted_group_crossprods
from twolevel.models.survey.pml import (
    profiled_pseudo_loglik,
    pseudo_loglik,
)
from twolevel.models.survey.rubin import rubin_pool

GOLD = json.loads((Path(__file__).parent / "goldens" / "survey_wemix.json").read_text())
PISA_CSV = Path(__file__).parent / "goldens" / "pisa2012.csv"


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def wfit(formula, data, weights, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmer(formula, data, weights=weights, REML=False, **kw)


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    d = load_data("sleepstudy").copy()
    ids = sorted(d["Subject"].astype(int).unique())
    k = d["Subject"].astype(int).map({s: i for i, s in enumerate(ids)}).to_numpy()
    sub3 = d["Subject"].astype(int).isin([308, 309, 310]).to_numpy()
    d["W1"] = np.where(sub3, 2.0, 1.0)
    d["W2"] = 1.0
    d["W2b"] = np.where(sub3, 2.0, 1.0)
    d["wj"] = 1 + 0.25 * (k % 4)
    d["aij"] = 0.5 + ((d["Days"].to_numpy() + k) % 10) / 9 + 0.1 * (k % 3)
    d["W1u"] = d["aij"] * d["wj"]
    return d


# ------------------------------------------------------------------ WeMix's sleepstudy tests


def test_wemix_ss1_random_intercept(sleep):
    g = GOLD["ss1_ri"]
    f = wfit(g["formula"], sleep, ("W1", "W2"))
    assert rel(f.loglik, g["lnl"]) < 1e-8
    assert rel(f.beta, g["beta"]) < 1e-6
    assert rel(f.VarCorr().variances, g["tau"]) < 1e-5
    assert rel(f.VarCorr().residual, g["sigma2"]) < 1e-5
    assert rel(f.vcov().to_numpy(), g["vcov_robust"]) < 1e-5
    assert rel(f.se(), g["se"]) < 1e-5
    vse = f.varcorr_se()
    assert rel([vse["variances"]["(Intercept)"], vse["residual"]], g["vc_se"]) < 1e-4


@pytest.mark.parametrize("key, w2", [("ss4_ri", "W2b"), ("ss1_diag", "W2"),
                                     ("ss1_rs_lme4", "W2"), ("ss4_rs_lme4", "W2b")])
def test_wemix_sleepstudy_lnl(sleep, key, w2):
    g = GOLD[key]
    w1 = "W2b" if w2 == "W2b" else "W1"  # ss4: W1 = W2 = 2 (unconditional: a = 1, w_j = 2)
    f = wfit(g["formula"], sleep, (w1, w2))
    assert rel(f.loglik, g["lnl"]) < 1e-8


# ------------------------------------------------------------------ non-integer weights


def check_table(f, g, vc_se=True):
    assert rel(f.loglik, g["lnl"]) < 1e-8
    assert rel(f.beta, g["beta"]) < 1e-6
    assert rel(f.se(), g["se"]) < 1e-5
    vc = f.VarCorr()
    assert rel(vc.variances, g["var"]) < 1e-5
    if g["cov"]:
        assert rel([c for _, _, c, _ in vc.pairs()], g["cov"]) < 1e-5
    assert rel(vc.residual, g["sigma2"]) < 1e-5
    if vc_se and "var_se" in g:
        s = f.varcorr_se()
        assert rel(list(s["variances"].values()), g["var_se"]) < 1e-4
        if g["cov_se"]:
            assert rel(list(s["covariances"].values()), g["cov_se"]) < 1e-4
        assert rel(s["residual"], g["sigma2_se"]) < 1e-4


@pytest.mark.parametrize("model", ["ri", "rs", "diag", "rs_size", "rs_effective"])
def test_nonint_sleepstudy(sleep, model):
    g = GOLD["nonint"][model]
    f = wfit(g["formula"], sleep, ("W1u", "wj"), weight_scaling=g.get("scaling", "none"))
    check_table(f, g)


def test_conditional_weights_equal_unconditional_times_wj(sleep):
    g = GOLD["nonint"]["rs"]
    f = wfit(g["formula"], sleep, ("aij", "wj"), conditional_weights=True)
    check_table(f, g, vc_se=False)
    assert f.weights.to_dict() == {"level1": "aij", "level2": "wj", "conditional": True,
                                   "scaling": "none"}


def test_school_weights_times_ten(sleep):
    """ℓ_PL scales with c·w_j; estimates and SEs do not change (note §2.6)."""
    d = sleep.assign(wj10=sleep["wj"] * 10)
    f1 = wfit("Reaction ~ Days + (Days|Subject)", d, ("aij", "wj"), conditional_weights=True)
    f10 = wfit("Reaction ~ Days + (Days|Subject)", d, ("aij", "wj10"), conditional_weights=True)
    assert rel(f10.loglik, 10 * f1.loglik) < 1e-9
    assert rel(f10.beta, f1.beta) < 1e-7
    assert rel(f10.se(), f1.se()) < 1e-6


def test_unit_weights_equal_lmer_ml(sleep):
    d = sleep.assign(one=1.0)
    f = wfit("Reaction ~ Days + (Days|Subject)", d, ("one", "one"))
    m = lmer("Reaction ~ Days + (Days|Subject)", d, REML=False)
    # lme4's path stops ~1e-11 (relative) short of the optimum the PML fit polishes to
    assert f.loglik >= m.loglik - 1e-9 and rel(f.loglik, m.loglik) < 1e-9
    assert rel(f.beta, m.beta) < 1e-6
    assert rel(f.VarCorr().cov[np.tril_indices(2)], m.VarCorr().cov[np.tril_indices(2)]) < 2e-4
    assert rel(f.vcov(robust=False).to_numpy(), m.vcov().to_numpy()) < 1e-4


def test_objective_is_pure_function_of_theta(sleep):
    f = wfit("Reaction ~ Days + (Days|Subject)", sleep, ("W1u", "wj"))
    T = f.design.theta_to_T
    assert profiled_pseudo_loglik(f.theta, f.crossprods, T) == pytest.approx(f.loglik, rel=1e-14)
    full = pseudo_loglik(f.theta, f.beta - f.shift, f.sigma**2, f.crossprods, T)
    assert full == pytest.approx(f.loglik, rel=1e-12)
    # away from the optimum the profile is lower
    assert profiled_pseudo_loglik(f.theta * 1.1, f.crossprods, T) < f.loglik


def test_weighted_crossprods_by_hand():
    rng = np.random.default_rng(1)
    n, J = 50, 5
    g = rng.integers(0, J, n)
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    y = rng.normal(size=n)
    a = rng.uniform(0.2, 3, n)
    w = rng.uniform(1, 5, J)
    cp = weighted_group_crossprods(Z, X, y, g, a, w)
    V = np.column_stack([Z, X, y])
    for j in range(J):
        r = g == j
        np.testing.assert_allclose(cp.M[j], (V[r] * a[r, None]).T @ V[r], rtol=1e-12)
    assert cp.n_weighted == pytest.approx(float(np.sum(a * w[g])), rel=1e-13)


def test_summary_wald_and_ranef(sleep):
    f = wfit("Reaction ~ Days + (Days|Subject)", sleep, ("W1u", "wj"))
    s = f.summary()
    assert "pseudo-maximum likelihood" in s and "W1u" in s and "cluster-robust" in s
    w = f.wald_test(["Days"])
    assert w["statistic"] == pytest.approx((f.beta[1] / f.se().iloc[1]) ** 2, rel=1e-10)
    re = f.ranef()
    assert re.shape == (18, 4) and abs(re["(Intercept)"].mean()) < 20
    assert f.to_frame().shape == (2, 4)


# ------------------------------------------------------------------ lecture data, PISA


def test_lecture_derived_weights():
    d = load_data("lecture").copy()
    d["wj"] = 1 + 0.5 * (d["schid"].astype(int) % 7)
    d["wu"] = (0.5 + 0.25 * (d["stuid"].astype(int) % 5)) * d["wj"]
    for model in ("ri", "rs"):
        g = GOLD["lecture"][model]
        check_table(wfit(g["formula"], d, ("wu", "wj")), g)


def pisa() -> pd.DataFrame:
    d = pd.read_csv(PISA_CSV, dtype={"schoolid": str})
    levels = {"st29q03": ["Strongly agree", "Agree", "Disagree", "Strongly disagree"],
              "st04q01": ["Female", "Male"],
              "sc14q02": ["Not at all", "Very little", "To some extent", "A lot"]}
    # formulae orders a factor's levels alphabetically: number them so that R's reference
    # level (the first) sorts first, as in the published tables
    for c, lv in levels.items():
        d[c] = d[c].map({v: f"{i} {v}" for i, v in enumerate(lv)})
    return d


def test_pisa_table1():
    g = GOLD["pisa_table1"]
    f = wfit(g["formula"], pisa(), ("w_fstuwt", "w_fschwt"))
    assert rel(f.loglik, g["lnl"]) < 1e-8
    assert round(f.loglik, 1) == g["vignette"]["lnl"]
    assert rel(f.beta, list(g["beta"].values())) < 1e-6
    assert rel(f.se(), g["se"]) < 1e-5
    vc, vse = f.VarCorr(), f.varcorr_se()
    assert rel(vc.variances.iloc[0], g["tau"]) < 1e-5
    assert rel(vc.residual, g["sigma2"]) < 1e-5
    assert rel(vse["variances"]["(Intercept)"], g["tau_se"]) < 1e-4
    assert rel(vse["residual"], g["sigma2_se"]) < 1e-4
    v = g["vignette"]  # the printed digits
    assert round(vc.variances.iloc[0], 2) == v["tau"] and round(vc.residual, 2) == v["sigma2"]
    assert round(vse["variances"]["(Intercept)"], 2) == v["tau_se"]
    assert round(f.se().iloc[0], 4) == v["se_intercept"]


def test_pisa_table2():
    g = GOLD["pisa_table2"]
    f = wfit(g["formula"], pisa(), ("w_fstuwt", "w_fschwt"))
    assert rel(f.loglik, g["lnl"]) < 1e-8
    assert round(f.loglik, 1) == g["vignette"]["lnl"]
    fe, se = f.fixef(), f.se()
    assert rel(fe["(Intercept)"], g["beta_intercept"]) < 1e-6
    assert rel(fe["escs"], g["beta_escs"]) < 1e-6
    assert rel([se["(Intercept)"], se["escs"]], [g["se_intercept"], g["se_escs"]]) < 1e-5
    vc, vse = f.VarCorr(), f.varcorr_se()
    assert rel(vc.variances.to_numpy(), [g["tau"], g["tau_escs"]]) < 1e-5
    assert rel(vc.residual, g["sigma2"]) < 1e-5
    assert rel(list(vse["variances"].values()), [g["tau_se"], g["tau_escs_se"]]) < 1e-4
    assert rel(vse["residual"], g["sigma2_se"]) < 1e-4
    # the printed digits exactly. τ₀₀ is close to a rounding tie: the maximiser's τ₀₀ is
    # 1354.705031196 (50-digit evaluation, tests/test_survey_pisa_precision.py; our float64 fit
    # agrees to 1e-14), 3e-5 above 1354.705; WeMix's 1354.7056176 is past the maximum (ℓ lower
    # by 8.5e-10 on 1.3e7, profile slope −2.9e-6). Differences of ℓ cannot see this (its last
    # bit is 1.9e-9); the Newton steps on the analytic gradient do (docs/survey.md).
    v = g["vignette"]
    assert round(vc.variances.iloc[0], 2) == v["tau"]
    assert round(vc.variances.iloc[1], 2) == v["tau_escs"]
    assert round(vc.residual, 2) == v["sigma2"]


# ------------------------------------------------------------------ bad input (item 5)

F = "Reaction ~ Days + (1|Subject)"


@pytest.mark.parametrize("change, weights, message", [
    (None, ("nope", "wj"), "level-1 weight column 'nope' is not in the data"),
    (None, ("aij", "nope"), "level-2 weight column 'nope' is not in the data"),
    (lambda d: d.assign(aij=d["aij"].astype(str)), ("aij", "wj"),
     "level-1 weight column 'aij' is not numeric"),
    (lambda d: d.assign(aij=np.where(d.index == 3, -1.0, d["aij"])), ("aij", "wj"),
     "level-1 weight column 'aij' has 1 negative value(s) (first at row 3"),
    (lambda d: d.assign(wj=np.where(d.index == 5, np.inf, d["wj"])), ("aij", "wj"),
     "level-2 weight column 'wj' has 1 infinite value(s)"),
    (lambda d: d.assign(aij=np.where(d.index == 7, np.nan, d["aij"])), ("aij", "wj"),
     "level-1 weight column 'aij' has 1 missing value(s)"),
    (lambda d: d.assign(wj=np.where(d.index == 0, 9.0, d["wj"])), ("aij", "wj"),
     "level-2 weight column 'wj' varies within 1 'Subject' group(s) (e.g. 308)"),
])
def test_bad_weights(sleep, change, weights, message):
    d = change(sleep) if change else sleep
    with pytest.raises(DataError) as e:
        lmer(F, d, weights=weights, REML=False, conditional_weights=True)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_weights_with_reml_refused(sleep):
    with pytest.raises(TwolevelError, match=r"REML with sampling weights is not defined.*"
                       r"use REML=False"):
        lmer(F, sleep, weights=("aij", "wj"))


def test_weighted_lrt_refused(sleep):
    from twolevel.models.inference.anova import anova

    f1 = wfit(F, sleep, ("aij", "wj"))
    f2 = wfit("Reaction ~ Days + (Days|Subject)", sleep, ("aij", "wj"))
    for call in (lambda: f2.anova(f1), lambda: anova(f1, f2)):
        with pytest.raises(TwolevelError,
                           match=r"likelihood-ratio test of weighted .* fit\.wald_test"):
            call()


def test_zero_weight_school_dropped_and_counted(sleep):
    d = sleep.assign(wz=np.where(sleep["Subject"].astype(int) == 372, 0.0, sleep["wj"]),
                     az=np.where(sleep.index == 0, 0.0, sleep["aij"]))
    with pytest.warns(UserWarning) as rec:
        f = lmer(F, d, weights=("az", "wz"), REML=False, conditional_weights=True)
    msgs = " | ".join(str(w.message) for w in rec)
    assert "1 row(s) with a level-1 weight of 0 dropped" in msgs
    assert "1 school(s) with a level-2 weight of 0, or all level-1 weights 0, dropped" in msgs
    assert f.ngroups == 17 and f.nobs == 180 - 10 - 1
    ref = wfit(F, d[(d["wz"] > 0) & (d["az"] > 0)], ("az", "wz"), conditional_weights=True)
    assert f.loglik == pytest.approx(ref.loglik, rel=1e-12)


def test_unknown_scaling(sleep):
    with pytest.raises(DataError, match="unknown weight scaling 'gk'; choose one of: none, "
                       "size, effective"):
        lmer(F, sleep, weights=("aij", "wj"), REML=False, weight_scaling="gk")


# ------------------------------------------------------------------ plausible values


@pytest.fixture(scope="module")
def pisa_pv():
    d = pisa()
    return d, wfit("pv1math ~ escs + (1|schoolid)", d, ("w_fstuwt", "w_fschwt"),
                   pv=[f"pv{m}math" for m in range(1, 6)])


def test_rubin_by_hand(pisa_pv):
    d, pooled = pisa_pv
    fits = [wfit(f"pv{m}math ~ escs + (1|schoolid)", d, ("w_fstuwt", "w_fschwt"))
            for m in range(1, 6)]
    Q = np.array([f.beta for f in fits])
    U = np.array([f.se().to_numpy() ** 2 for f in fits])
    M = 5
    qbar, ubar = Q.mean(0), U.mean(0)
    B = ((Q - qbar) ** 2).sum(0) / (M - 1)
    T = ubar + (1 + 1 / M) * B
    lam = (1 + 1 / M) * B / T
    nu = (M - 1) / lam**2
    nu_com = pooled.nobs - 2
    nu_obs = (nu_com + 1) / (nu_com + 3) * nu_com * (1 - lam)
    p = pooled.pool
    assert p.m == 5
    np.testing.assert_allclose(p.qbar, qbar, rtol=1e-9)
    np.testing.assert_allclose(p.within, ubar, rtol=1e-7)
    np.testing.assert_allclose(p.between, B, rtol=1e-6)
    np.testing.assert_allclose(p.total, T, rtol=1e-7)
    np.testing.assert_allclose(p.riv, (1 + 1 / M) * B / ubar, rtol=1e-6)
    np.testing.assert_allclose(p.df_rubin, nu, rtol=1e-6)
    np.testing.assert_allclose(p.df_barnard_rubin, 1 / (1 / nu + 1 / nu_obs), rtol=1e-6)
    np.testing.assert_allclose(pooled.se(), np.sqrt(T), rtol=1e-7)
    s = pooled.summary()
    assert "5 sets pooled by Rubin's rules" in s and "pv5math" in s and "FMI" in s


def test_list_of_datasets_equals_pv(pisa_pv):
    d, pooled = pisa_pv
    sets = [d.assign(y=d[f"pv{m}math"]) for m in range(1, 6)]
    p2 = wfit("y ~ escs + (1|schoolid)", sets, ("w_fstuwt", "w_fschwt"))
    np.testing.assert_allclose(p2.pool.total, pooled.pool.total, rtol=1e-10)
    assert p2.labels[0] == "set 1"


def test_rubin_pool_infinite_dfcom():
    q = pd.DataFrame({"b": [1.0, 2.0, 4.0]})
    u = pd.DataFrame({"b": [0.5, 0.7, 0.6]})
    p = rubin_pool(q, u, float("inf"))
    assert float(p.df_barnard_rubin["b"]) == pytest.approx(float(p.df_rubin["b"]))


@pytest.mark.parametrize("pv, message", [
    (["pv1math", "nope"], "plausible-value column 'nope' is not in the data"),
    (["pv1math", "st04q01"], "plausible-value column 'st04q01' is not numeric"),
    ({"pv1math": ["pv1math", "pv2math"], "escs": ["escs", "escs", "escs"]},
     "plausible-value lists of different lengths: 'pv1math' has 2, 'escs' has 3"),
])
def test_bad_pv(pv, message):
    with pytest.raises(DataError) as e:
        lmer("pv1math ~ escs + (1|schoolid)", pisa(), pv=pv, REML=False)
    assert message in str(e.value)


def test_compiled_kernel_equals_numpy(sleep):
    from twolevel.models.survey.pml import profile_theta

    f = wfit("Reaction ~ Days + (Days|Subject)", sleep, ("W1u", "wj"))
    for th in (f.theta, np.array([0.3, -0.2, 0.05]), np.array([0.0, 0.0, 0.0])):
        Lam = f.design.theta_to_T(th)
        b1, s1, l1 = profile_theta(f.crossprods, Lam, compiled=True)
        b2, s2, l2 = profile_theta(f.crossprods, Lam, compiled=False)
        np.testing.assert_allclose(b1 + f.shift, b2 + f.shift, rtol=1e-10)
        assert s1 == pytest.approx(s2, rel=1e-10) and l1 == pytest.approx(l2, rel=1e-12)


# ------------------------------------------------------------------ weighted GLMMs


def test_glmer_wemix_binomial_agq13(sleep):
    """survey-weights.md §4.2 (WeMix test-1-main.R, ss1, nQuad = 13) and §4.3 (non-integer
    weights, AGHQ 13)."""
    from twolevel.models.glmm.glmer import glmer

    d = sleep.assign(bin=(sleep["Reaction"] >= 300).astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = glmer("bin ~ Days + (1|Subject)", d, family="binomial", nAGQ=13,
                  weights=("W1", "W2"))
        g = glmer("bin ~ Days + (1|Subject)", d, family="binomial", nAGQ=13,
                  weights=("W1u", "wj"))
    assert rel(f.loglik, -93.7516876503) < 1e-8
    assert rel(f.beta, [-3.34424154, 0.59273020]) < 1e-6
    assert rel(f.se(), [0.92463361, 0.12437123]) < 1e-5
    assert rel(f.tau**2, 4.12851390) < 1e-5
    assert rel(g.loglik, -120.61703838) < 1e-8
    assert rel(g.beta, [-3.631270322, 0.66398391684]) < 1e-6
    assert rel(g.se(), [1.0359548967, 0.16919736756]) < 1e-5
    assert rel(g.tau**2, 3.8163238597) < 1e-5
    assert "adaptive Gauss-Hermite quadrature, 13 points" in g.summary()


def test_glmer_weighted_refusals(sleep):
    from twolevel.data.errors import FormulaError
    from twolevel.models.glmm.glmer import glmer

    d = sleep.assign(bin=(sleep["Reaction"] >= 300).astype(float))
    with pytest.raises(FormulaError, match="weighted GLMMs support a random intercept only"):
        glmer("bin ~ Days + (Days|Subject)", d, weights=("W1", "W2"))
    with pytest.raises(DataError, match="response 'Reaction' must be 0/1"):
        glmer("Reaction ~ Days + (1|Subject)", d, weights=("W1", "W2"))
    f = glmer("bin ~ Days + (1|Subject)", d, weights=("W1", "W2"))
    with pytest.raises(TwolevelError, match="likelihood-ratio test of weighted"):
        f.anova(f)


# ------------------------------------------------------------------ DuckDB and Dask


@pytest.mark.parametrize("engine, scaling", [("duckdb", "none"), ("duckdb", "effective"),
                                             ("dask", "size")])
def test_scale_engines_equal_memory(sleep, tmp_path, engine, scaling):
    d = sleep.assign(W1u=np.where(sleep.index == 4, 0.0, sleep["W1u"]))
    path = tmp_path / "ss.parquet"
    d.to_parquet(path, index=False)
    f = "Reaction ~ Days + (Days|Subject)"
    mem = wfit(f, d, ("W1u", "wj"), weight_scaling=scaling)
    if engine == "dask":
        import dask.dataframe as dd

        src = dd.from_pandas(d, npartitions=3)
    else:
        src = str(path)
    big = wfit(f, src, ("W1u", "wj"), weight_scaling=scaling, engine=engine)
    assert big.loglik == pytest.approx(mem.loglik, rel=1e-9)
    np.testing.assert_allclose(big.beta, mem.beta, rtol=1e-8)
    np.testing.assert_allclose(big.se(), mem.se(), rtol=1e-6)
    assert big.nobs == mem.nobs == 179 and big.ngroups == 18
    assert big.weights.n_zero_rows == 1


def test_scale_engine_bad_weights(sleep, tmp_path):
    path = tmp_path / "ss.parquet"
    sleep.assign(wj=np.where(sleep.index == 0, 9.0, sleep["wj"]),
                 neg=-sleep["aij"]).to_parquet(path, index=False)
    with pytest.raises(DataError, match="level-2 weight column 'wj' varies within 1 'Subject'"):
        wfit(F, str(path), ("aij", "wj"), engine="duckdb", conditional_weights=True)
    with pytest.raises(DataError, match="level-1 weight column 'neg' has 180 negative"):
        wfit(F, str(path), ("neg", "wj"), engine="duckdb")
    with pytest.raises(DataError, match="level-1 weight column 'nope' is not in the data"):
        wfit(F, str(path), ("nope", "wj"), engine="duckdb")


def test_glmer_pv_pooled(sleep):
    from twolevel.models.glmm.glmer import glmer

    rng = np.random.default_rng(2)
    d = sleep.copy()
    for m in (1, 2, 3):
        d[f"b{m}"] = ((d["Reaction"] + rng.normal(0, 20, len(d))) >= 300).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = glmer("b1 ~ Days + (1|Subject)", d, family="binomial", weights=("W1u", "wj"),
                  pv=["b1", "b2", "b3"])
        fits = [glmer(f"b{m} ~ Days + (1|Subject)", d, family="binomial",
                      weights=("W1u", "wj")) for m in (1, 2, 3)]
    q = np.array([f.beta for f in fits])
    u = np.array([f.se().to_numpy() ** 2 for f in fits])
    np.testing.assert_allclose(p.pool.total, u.mean(0) + (4 / 3) * q.var(0, ddof=1), rtol=1e-9)
    assert set(p.to_dict()["varcorr_se"]) == {"variances", "covariances"}


def test_q2_kernel_equals_general_kernel():
    from twolevel.models.survey.kernels import weighted_schur_sums, weighted_schur_sums_q2

    rng = np.random.default_rng(1)
    A = rng.normal(size=(50, 5, 5))
    M = np.einsum("jab,jcb->jac", A, A) + np.eye(5)
    w = rng.uniform(1, 3, 50)
    Lam = np.array([[1.1, 0.0], [0.2, 0.5]])
    a, b = weighted_schur_sums(M, w, Lam, 2), weighted_schur_sums_q2(M, w, Lam)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-13)
    assert a[1] == pytest.approx(b[1], rel=1e-14)
