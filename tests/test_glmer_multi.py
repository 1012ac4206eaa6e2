"""glmer with several nested grouping factors (models/glmm/multi*.py): the block elimination
against dense linear algebra, the two spellings of a nested design, the summary layout, the
refusals (nAGQ > 1 as lme4, crossed factors) and every error message. Parity with lme4 is in
tests/test_glmer_multi_r.py."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import twolevel as tl
from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.multi import (
    MultiGlmmProblem,
    MultiPirlsError,
    eliminate,
    weighted_crossprods,
)
from twolevel.models.glmm.response import glmer_design


def _data(seed: int = 5, S: int = 15, C: int = 3, n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(1, S + 1), C * n)
    klass = np.tile(np.repeat(np.arange(1, C + 1), n), S)
    x = rng.normal(size=school.size)
    bs = rng.normal(0, 0.8, S)[school - 1]
    bc = rng.normal(0, 0.5, S * C)[(school - 1) * C + klass - 1]
    eta = -0.2 + 0.6 * x + bs + bc
    return pd.DataFrame({"school": school, "class": klass, "x": x,
                         "y": rng.binomial(1, 1 / (1 + np.exp(-eta))),
                         "k": rng.poisson(np.exp(0.3 + 0.2 * x + bs + bc))})


def _fit(formula, d, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.glmer(formula, d, **kw)


def _dense_Z(prob: MultiGlmmProblem) -> np.ndarray:
    """The n × Σℓ_k indicator-times-covariate matrix [Z_1 … Z_K] (dense, for the reference)."""
    blocks = []
    for f in prob.design.factors:
        for j in range(f.q):
            Zj = sp.csr_matrix((f.Z[:, j], (np.arange(f.Z.shape[0]), f.codes)),
                               shape=(f.Z.shape[0], f.n_levels)).toarray()
            blocks.append(Zj)
    return np.hstack(blocks)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("joint", [True, False])
def test_eliminate_matches_dense_penalised_least_squares(joint, compiled):
    d = _data()
    design, resp = glmer_design("y ~ x + (1 | school/class)", d, get_family("binomial"),
                                multi=True)
    prob = MultiGlmmProblem(design, resp, get_family("binomial"))
    rng = np.random.default_rng(0)
    W = rng.uniform(0.1, 0.3, design.n)
    z = rng.normal(size=design.n)
    theta = np.array([0.7, 1.3])
    C = weighted_crossprods(prob.codes, np.column_stack([prob.Zall, prob.X, z]), W,
                            prob.n_levels[0])
    ld, RX, beta, u = eliminate(C, prob.parents, prob.q, prob.n_levels, prob.T_blocks(theta),
                                design.p, joint, compiled=compiled)
    Z = _dense_Z(prob)
    lam = np.concatenate([np.full(f.n_levels, t) for f, t in zip(design.factors, theta,
                                                                  strict=True)])
    ZL = Z * lam
    M = ZL.T @ (W[:, None] * ZL) + np.eye(ZL.shape[1])
    assert ld == pytest.approx(np.linalg.slogdet(M)[1], rel=1e-12)
    X = design.X
    if joint:
        A = np.block([[M, ZL.T @ (W[:, None] * X)], [X.T @ (W[:, None] * ZL),
                                                      X.T @ (W[:, None] * X)]])
        sol = np.linalg.solve(A, np.concatenate([ZL.T @ (W * z), X.T @ (W * z)]))
        np.testing.assert_allclose(beta, sol[ZL.shape[1]:], rtol=1e-10, atol=1e-12)
        u_ref = sol[:ZL.shape[1]]
    else:
        u_ref = np.linalg.solve(M, ZL.T @ (W * z))
        assert not beta.any()
    np.testing.assert_allclose(np.concatenate([x[:, 0] for x in u]), u_ref, rtol=1e-9,
                               atol=1e-12)
    S = X.T @ (W[:, None] * X) - X.T @ (W[:, None] * ZL) @ np.linalg.solve(
        M, ZL.T @ (W[:, None] * X))
    np.testing.assert_allclose(RX @ RX.T, S, rtol=1e-10)


@pytest.mark.parametrize("joint", [True, False])
def test_compiled_elimination_matches_numpy_four_levels(joint):
    """numba's scalar elimination against the NumPy reference on a four-level chain
    (pupils in classes in schools in districts: three factors) and one factor alone."""
    d = _data(S=16)
    d["district"] = (d["school"] - 1) // 4
    rng = np.random.default_rng(4)
    for formula in ("y ~ x + (1 | district/school/class)", "y ~ x + (1 | school:class)"):
        design, resp = glmer_design(formula, d, get_family("binomial"), multi=True)
        prob = MultiGlmmProblem(design, resp, get_family("binomial"))
        W, z = rng.uniform(0.1, 0.3, design.n), rng.normal(size=design.n)
        C = weighted_crossprods(prob.codes, np.column_stack([prob.Zall, prob.X, z]), W,
                                prob.n_levels[0])
        Tb = prob.T_blocks(rng.uniform(0.3, 1.5, design.n_theta))
        a = eliminate(C, prob.parents, prob.q, prob.n_levels, Tb, design.p, joint)
        b = eliminate(C, prob.parents, prob.q, prob.n_levels, Tb, design.p, joint,
                      compiled=False)
        assert a[0] == pytest.approx(b[0], rel=1e-13)
        for x, y in zip([a[1], a[2], *a[3]], [b[1], b[2], *b[3]], strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13)


def test_weighted_crossprods_match_bincount():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 7, 200)
    V, W = rng.normal(size=(200, 4)), rng.uniform(size=200)
    C = weighted_crossprods(codes, V, W, 7)
    for a in range(4):
        for b in range(4):
            ref = np.bincount(codes, weights=W * V[:, a] * V[:, b], minlength=7)
            np.testing.assert_allclose(C[:, a, b], ref, rtol=1e-13, atol=1e-14)


def test_cond_var_matches_dense_inverse():
    d = _data()
    fit = _fit("y ~ x + (1 | school/class)", d, family="binomial")
    prob = fit.problem
    Z = _dense_Z(prob)
    lam = np.concatenate([np.full(f.n_levels, t) for f, t in zip(fit.design.factors, fit.theta,
                                                                  strict=True)])
    ZL = Z * lam
    W = prob.working_weights(fit.state)
    Minv = np.linalg.inv(ZL.T @ (W[:, None] * ZL) + np.eye(ZL.shape[1]))
    sd = np.sqrt(np.diag(Minv)) * lam
    re = fit.ranef()
    ours = np.concatenate([re[f.name].iloc[:, 1].to_numpy() for f in fit.design.factors])
    np.testing.assert_allclose(ours, sd, rtol=1e-9)


def test_two_spellings_of_nesting_agree():
    d = _data()
    a = _fit("y ~ x + (1 | school/class)", d, family="binomial")
    b = _fit("y ~ x + (1 | school) + (1 | school:class)", d, family="binomial")
    # the same model; the levels are ordered differently (class:school vs school:class), so
    # the sums run in another order: agreement to rounding along the optimizer's path
    assert a.minus2loglik == pytest.approx(b.minus2loglik, rel=1e-12)
    np.testing.assert_allclose(a.beta, b.beta, atol=1e-6 * float(a.se().min()))
    assert a.VarCorr().groups == ("class:school", "school")
    assert b.VarCorr().groups == ("school:class", "school")


def test_one_factor_spelt_as_interaction_matches_one_factor_glmer():
    """``(1 | school:class)`` alone goes through the several-factors path (one factor, an
    interaction): the same model as glmer's one-factor engine on a class id column."""
    d = _data()
    d["cid"] = d["school"] * 10 + d["class"]
    a = _fit("y ~ x + (1 | school:class)", d, family="binomial")
    b = _fit("y ~ x + (1 | cid)", d, family="binomial")
    assert a.minus2loglik == pytest.approx(b.minus2loglik, rel=1e-9)
    np.testing.assert_allclose(a.beta, b.beta, atol=1e-4 * float(b.se().min()))
    np.testing.assert_allclose(a.se(), b.se(), rtol=1e-4)


def test_summary_layout_and_extractors():
    d = _data()
    fit = _fit("k ~ x + (1 | school/class)", d, family="poisson")
    s = fit.summary()
    assert s.startswith("Generalized linear mixed model fit by maximum likelihood (Laplace\n"
                        "  Approximation) [glmerMod]")
    assert " Family: poisson  ( log )" in s
    assert "Residual" not in s
    assert "Number of obs: 270, groups:  class:school, 45; school, 15" in s
    assert "Pr(>|z|)" in s
    assert fit.npar == 4 and fit.df_resid == 266
    assert fit.aic == pytest.approx(fit.minus2loglik + 8)
    vc = fit.VarCorr().to_frame()
    assert list(vc["grp"]) == ["class:school", "school"]
    assert fit.ngroups == {"class:school": 45, "school": 15}
    js = fit.to_dict()
    assert set(js["random"]) == {"class:school", "school"}
    long = fit.ranef_long()
    assert list(long.columns) == ["factor", "level", "effect", "mode", "condsd"]
    assert len(long) == 60
    np.testing.assert_allclose(fit.fitted(), fit.predict(type="response"))
    np.testing.assert_allclose(fit.residuals("response"), d["k"] - fit.fitted())
    co = fit.coef()["school"]
    assert np.allclose(co["x"], fit.beta[1])
    assert fit.vcov_rx().shape == (2, 2)
    assert "MultiGlmerFit" in repr(fit)


def test_nagq0_stops_after_stage_one():
    d = _data()
    f0 = _fit("y ~ x + (1 | school/class)", d, family="binomial", nAGQ=0)
    f1 = _fit("y ~ x + (1 | school/class)", d, family="binomial")
    assert f0.nagq == 0 and f0.vcov_hessian is None
    assert f0.minus2loglik >= f1.minus2loglik - 1e-6
    assert "nAGQ = 0" in f0.summary()


def test_nagq_above_one_refused_as_lme4():
    d = _data()
    with pytest.raises(FormulaError, match="nAGQ > 1 is only available for models with a "
                                           "single, scalar random-effects term"):
        tl.glmer("y ~ x + (1 | school/class)", d, family="binomial", nAGQ=2)


def test_nagq_above_one_with_one_interaction_factor_says_what_to_do():
    d = _data()
    with pytest.raises(FormulaError, match="make it one column"):
        tl.glmer("y ~ x + (1 | school:class)", d, family="binomial", nAGQ=5)


def test_crossed_factors_refused():
    d = _data()
    d["rater"] = np.arange(len(d)) % 7
    with pytest.raises(FormulaError, match="crossed or partially crossed"), \
            pytest.warns(UserWarning, match="labels occur in several"):
        tl.glmer("y ~ x + (1 | school) + (1 | rater)", d, family="binomial")


def test_pirls_failure_message():
    d = _data()
    design, resp = glmer_design("k ~ x + (1 | school/class)", d, get_family("poisson"),
                                multi=True)
    prob = MultiGlmmProblem(design, resp, get_family("poisson"))
    with pytest.raises(MultiPirlsError, match="PIRLS"):
        prob.stage2_state(np.array([1.0, 1.0, 800.0, 0.0]))


def test_predict_and_residual_errors():
    d = _data()
    fit = _fit("y ~ x + (1 | school/class)", d, family="binomial")
    np.testing.assert_allclose(fit.predict(newdata=d), fit.predict(), rtol=1e-12)
    np.testing.assert_allclose(fit.predict(newdata=d, re_form="NA"), fit.predict(re_form="NA"),
                               rtol=1e-12)
    new = d.iloc[:2].assign(school=99)
    with pytest.raises(DataError, match="never saw"):
        fit.predict(newdata=new)
    np.testing.assert_allclose(fit.predict(newdata=new, allow_new_levels=True),
                               fit.fixef()["(Intercept)"] + fit.fixef()["x"] * new["x"])
    d["z"] = d["x"] ** 2
    fi = _fit("y ~ I(x^2) + (1 | school/class)", d, family="binomial")
    with pytest.raises(TwolevelError, match="does not rebuild I"):
        fi.predict(newdata=d)
    with pytest.raises(TwolevelError, match="type must be 'link' or 'response'"):
        fit.predict(type="probability")
    with pytest.raises(TwolevelError, match="type must be 'deviance', 'pearson'"):
        fit.residuals("working")


@pytest.mark.parametrize("family, link", [("binomial", "logit"), ("binomial", "probit"),
                                          ("binomial", "cloglog"), ("poisson", "log")])
def test_sweep_kernel_matches_numpy_reference(family, link):
    from twolevel.models.glmm.multi import family_rows, unit_deviance
    from twolevel.models.glmm.multi_kernels import sweep_kernel

    d = _data()
    fam = get_family(family, link)
    resp_col = "y" if family == "binomial" else "k"
    design, resp = glmer_design(f"{resp_col} ~ x + (1 | school/class)", d, fam, multi=True)
    prob = MultiGlmmProblem(design, resp, fam)
    rng = np.random.default_rng(1)
    eta = rng.normal(0, 1.5, design.n)
    off = rng.normal(0, 0.1, design.n)
    C = np.empty((prob.n_levels[0], prob.VZX.shape[1] + 1, prob.VZX.shape[1] + 1))
    dev = sweep_kernel(fam.code, eta, off, resp.y, resp.w, prob.VZX, prob.codes64, C, True)
    mu, dmu, V = family_rows(fam.code, eta)
    assert dev == pytest.approx(unit_deviance(fam.code, resp.y, mu, resp.w).sum(), rel=1e-12)
    W = dmu * dmu * resp.w / V
    z = eta - off + (resp.y - mu) / dmu
    ref = weighted_crossprods(prob.codes, np.column_stack([prob.VZX, z]), W, prob.n_levels[0])
    np.testing.assert_allclose(C, ref, rtol=1e-11, atol=1e-11)


def test_rows_with_a_missing_group_are_dropped_and_counted():
    d = _data()
    d.loc[3, "class"] = np.nan
    d.loc[7, "x"] = np.nan
    with pytest.warns(UserWarning, match="2 row"):
        fit = tl.glmer("y ~ x + (1 | school/class)", d, family="binomial")
    assert fit.nobs == len(d) - 2
    ref = _fit("y ~ x + (1 | school/class)", d.drop(index=[3, 7]), family="binomial")
    assert fit.minus2loglik == pytest.approx(ref.minus2loglik, rel=1e-12)


def test_anova_of_glmer_fits_with_several_factors():
    from twolevel.models.lmm.multi import anova_multi

    d = _data()
    small = _fit("y ~ x + (1 | school)", d, family="binomial")
    big = _fit("y ~ x + (1 | school/class)", d, family="binomial")
    out = anova_multi(small, big)
    assert out["chisq"] == pytest.approx(2 * (big.loglik - small.loglik), abs=1e-9)
    assert out["df"] == 1.0 and out["mixture"] == "0.5*chi2(0) + 0.5*chi2(1)"
    lm = tl.lmer("y ~ x + (1 | school/class)", d)
    with pytest.raises(TwolevelError, match="not of one family"):
        anova_multi(small, lm)


def test_tight_and_newton_optimizers():
    d = _data()
    a = _fit("k ~ x + (1 | school/class)", d, family="poisson")
    t = _fit("k ~ x + (1 | school/class)", d, family="poisson", optimizer="tight")
    nw = _fit("k ~ x + (1 | school/class)", d, family="poisson", optimizer="newton")
    prob = t.problem
    # the converged objective at the tight optimum is no worse than at glmer's point
    assert t.minus2loglik <= prob.stage2(np.r_[a.theta, a.beta], exact=True) + 1e-9
    assert nw.optinfo.stage2_optimizer in ("Newton", "Nelder_Mead")
    np.testing.assert_allclose(nw.beta, a.beta, atol=1e-2 * float(a.se().min()))


def test_confint_wald_in_every_fit_s_argument_order():
    """``fit.confint(method, level)`` as for every other fit, and ``tl.confint`` routes here;
    profile intervals are refused with what to use."""
    fit = _fit("y ~ x + (1 | school/class)", _data(), family="binomial")
    ci = tl.confint(fit, method="Wald", level=0.9)
    assert list(ci.columns) == ["5 %", "95 %"]  # R's names
    np.testing.assert_allclose(ci.to_numpy(), fit.confint("Wald", 0.9).to_numpy())
    z = 1.6448536269514722
    np.testing.assert_allclose(ci.iloc[:, 1] - ci.iloc[:, 0], 2 * z * fit.se(), rtol=1e-12)
    with pytest.raises(TwolevelError, match="confint method 'profile' is not available for a "
                                            "glmer fit with several grouping factors"):
        tl.confint(fit)
