"""The collapsed likelihood of nested designs (every level integrated out) and the Bayesian fit
with several grouping factors: exact against the dense multivariate normal, gradient against
finite differences, the effects' conditional draws against the dense Gaussian conditional, the
non-centred PyMC reference model's structure, and a small seeded fit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.bayes.collapsed_multi import (
    draw_nested_effects,
    marginal_loglik,
    nested_crossprods,
)
from twolevel.models.bayes.multi_priors import (
    check_multi_priors,
    default_multi_priors,
    factor_structures,
)
from twolevel.models.design.multi import make_multi_design


def simulate(seed=1, n_school=6, n_class=3, n_stud=5, slope_school=True, slope_class=False,
             sd_school=(1.0, 0.4), sd_class=(0.7, 0.3), sigma=0.8, reuse_labels=True):
    """Students in classes in schools; class labels 1..n_class reused in every school."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_school):
        u_s = rng.normal(0, sd_school)
        for c in range(n_class):
            u_c = rng.normal(0, sd_class)
            nc = n_stud + int(rng.integers(0, 3))
            x = rng.normal(size=nc)
            w = rng.normal(size=nc)
            y = (1.0 + 0.5 * x - 0.3 * w + u_s[0] + (u_s[1] * x if slope_school else 0)
                 + u_c[0] + (u_c[1] * x if slope_class else 0) + rng.normal(0, sigma, nc))
            cl = c + 1 if reuse_labels else s * n_class + c + 1
            rows += [dict(school=s + 1, cls=cl, x=x[i], w=w[i], y=y[i]) for i in range(nc)]
    return pd.DataFrame(rows)


def _dense_Z(f):
    Zf = np.zeros((f.Z.shape[0], f.n_levels * f.q))
    for j in range(f.q):
        Zf[np.arange(f.Z.shape[0]), f.codes * f.q + j] = f.Z[:, j]
    return Zf


def dense_loglik(design, beta, Ls, sigma):
    """log N(y; Xβ, σ²I + Σ_k Z_k (I ⊗ L_kL_kᵀ) Z_kᵀ) by SciPy (the reference)."""
    V = sigma ** 2 * np.eye(design.n)
    for f, L in zip(design.factors, Ls, strict=True):
        Zf = _dense_Z(f)
        V += Zf @ np.kron(np.eye(f.n_levels), L @ L.T) @ Zf.T
    return stats.multivariate_normal(design.X @ beta, V).logpdf(design.y)


def random_L(rng, q):
    L = np.tril(rng.normal(size=(q, q)) * 0.5)
    L[np.diag_indices(q)] = np.abs(L[np.diag_indices(q)]) + 0.3
    return L


FORMULAS = [
    "y ~ x + w + (1 | school/cls)",
    "y ~ x + (1 + x | school) + (1 | school:cls)",
    "y ~ x + w + (1 + x | school/cls)",
    "y ~ x + (1 + x || school) + (1 + x | school:cls)",
]


@pytest.mark.parametrize("formula", FORMULAS)
def test_collapsed_equals_dense_mvn(formula):
    data = simulate(slope_class=True)
    design = make_multi_design(formula, data)
    cp = nested_crossprods(design)
    rng = np.random.default_rng(3)
    for _ in range(3):
        beta = rng.normal(size=design.p)
        Ls = [random_L(rng, f.q) for f in design.factors]
        sigma = float(rng.uniform(0.3, 1.5))
        ours = marginal_loglik(cp, beta[None], [L[None] for L in Ls], np.array([sigma]))[0]
        ref = dense_loglik(design, beta, Ls, sigma)
        assert abs(ours - ref) < 1e-10 * max(1.0, abs(ref))


def test_collapsed_three_nested_factors():
    """Four levels (occasions ⊂ students ⊂ classes ⊂ schools): the same recursion."""
    data = simulate(n_school=4, n_class=3, n_stud=6)
    data["pair"] = np.arange(len(data)) // 2
    design = make_multi_design("y ~ x + (1 | school/cls/pair)", data)
    assert len(design.factors) == 3
    cp = nested_crossprods(design)
    rng = np.random.default_rng(5)
    beta = rng.normal(size=design.p)
    Ls = [random_L(rng, 1) for _ in design.factors]
    ours = marginal_loglik(cp, beta[None], [L[None] for L in Ls], np.array([0.7]))[0]
    assert abs(ours - dense_loglik(design, beta, Ls, 0.7)) < 1e-9


def test_vectorised_over_draws():
    data = simulate()
    design = make_multi_design(FORMULAS[1], data)
    cp = nested_crossprods(design)
    rng = np.random.default_rng(2)
    S = 4
    beta = rng.normal(size=(S, design.p))
    Ls = [np.stack([random_L(rng, f.q) for _ in range(S)]) for f in design.factors]
    sig = rng.uniform(0.5, 1.0, S)
    both = marginal_loglik(cp, beta, Ls, sig)
    one = [marginal_loglik(cp, beta[s:s + 1], [L[s:s + 1] for L in Ls], sig[s:s + 1])[0]
           for s in range(S)]
    np.testing.assert_allclose(both, one, rtol=1e-13)


def test_effect_draws_match_dense_conditional():
    """Mean and covariance of many draws of (b_class, b_school) given fixed hyperparameters
    against the dense Gaussian conditional Cov(b, y)V⁻¹(y − Xβ)."""
    data = simulate(n_school=3, n_class=2, n_stud=4)
    design = make_multi_design(FORMULAS[1], data)
    cp = nested_crossprods(design)
    rng = np.random.default_rng(8)
    beta = rng.normal(size=design.p)
    Ls = [random_L(rng, f.q) for f in design.factors]
    sigma = 0.6
    S = 20000
    draws = draw_nested_effects(cp, np.tile(beta, (S, 1)), [np.tile(L, (S, 1, 1)) for L in Ls],
                                np.full(S, sigma), np.random.default_rng(9))
    flat = np.concatenate([d.reshape(S, -1) for d in draws], axis=1)
    Zs = [_dense_Z(f) for f in design.factors]
    G = [np.kron(np.eye(f.n_levels), L @ L.T) for f, L in zip(design.factors, Ls, strict=True)]
    Zall = np.hstack(Zs)
    Gall = np.zeros((Zall.shape[1],) * 2)
    o = 0
    for g in G:
        Gall[o:o + g.shape[0], o:o + g.shape[0]] = g
        o += g.shape[0]
    V = sigma ** 2 * np.eye(design.n) + Zall @ Gall @ Zall.T
    K = Gall @ Zall.T @ np.linalg.inv(V)
    mean = K @ (design.y - design.X @ beta)
    cov = Gall - K @ Zall @ Gall
    se = np.sqrt(np.diag(cov) / S)
    assert np.max(np.abs(flat.mean(0) - mean) / se) < 5.0
    np.testing.assert_allclose(np.cov(flat.T), cov, atol=0.05 * np.max(np.diag(cov)))


def test_not_nested_is_refused():
    data = simulate()
    data["other"] = np.arange(len(data)) % 4
    design = make_multi_design("y ~ x + (1 | school) + (1 | other)", data)
    with pytest.raises(TwolevelError, match="not nested in one another"):
        nested_crossprods(design)


def test_split_blocks_refused():
    data = simulate()
    design = make_multi_design("y ~ x + w + (1 + x | school) + (0 + w | school) + (1 | school:cls)",
                               data)
    with pytest.raises(FormulaError, match="splits the random effects of 'school'"):
        factor_structures(design)


def test_priors_checked():
    data = simulate()
    design = make_multi_design(FORMULAS[0], data)
    pri = default_multi_priors(design)
    assert [p.dist for p in pri.sd] == ["Gamma", "Gamma"]
    with pytest.raises(TwolevelError, match="1 'sd' prior"):
        check_multi_priors(pri.replace(sd=pri.sd[:1]), design)
    with pytest.raises(TwolevelError, match="must be a MultiPriors"):
        check_multi_priors(object(), design)
    with pytest.raises(TwolevelError, match=r"prior 'sd\[school\]'"):
        check_multi_priors(pri.replace(sd=(pri.sd[0], pri.corr)), design)


# ----------------------------------------------------------------------------- PyTensor side


def _tensor_loglik(design, cp):
    """The collapsed log-likelihood graph of :mod:`twolevel.models.bayes.pymc_multi` as a
    function of (β, every factor's packed lower triangle, σ), with its gradient."""
    import pytensor
    import pytensor.tensor as pt

    from twolevel.models.bayes.pymc_multi import collapsed_multi_loglik

    beta = pt.dvector("beta")
    sigma = pt.dscalar("sigma")
    packs = [pt.dvector(f"L{k}") for k in range(len(design.factors))]
    Lam = []
    for f, v in zip(design.factors, packs, strict=True):
        rows, cols = np.tril_indices(f.q)
        ent = {(int(r), int(c)): v[i] for i, (r, c) in enumerate(zip(rows, cols, strict=True))}
        Lam.append([[ent[(i, j)] / sigma if j <= i else None for j in range(f.q)]
                    for i in range(f.q)])
    data = {"A": pt.as_tensor(cp.A), "B": pt.as_tensor(cp.B), "c": pt.as_tensor(cp.c),
            "XtX": pt.as_tensor(cp.XtX), "Xty": pt.as_tensor(cp.Xty),
            "yty": pt.as_tensor(np.float64(cp.yty)), "parents": cp.parents,
            "n_levels": cp.n_levels}
    ll = collapsed_multi_loglik(data, design.n, beta, Lam, sigma)
    inputs = [beta, sigma, *packs]
    return pytensor.function(inputs, [ll, *pt.grad(ll, inputs)], mode="NUMBA")


def test_tensor_graph_value_and_gradient():
    data = simulate(slope_class=True)
    design = make_multi_design(FORMULAS[2], data)
    cp = nested_crossprods(design)
    fn = _tensor_loglik(design, cp)
    rng = np.random.default_rng(11)
    beta = rng.normal(size=design.p)
    Ls = [random_L(rng, f.q) for f in design.factors]
    packs = [L[np.tril_indices(L.shape[0])] for L in Ls]
    sigma = 0.9

    def np_ll(beta, sigma, *packs):
        Lf = []
        for f, v in zip(design.factors, packs, strict=True):
            L = np.zeros((f.q, f.q))
            L[np.tril_indices(f.q)] = v
            Lf.append(L[None])
        return marginal_loglik(cp, np.asarray(beta)[None], Lf, np.array([sigma]))[0]

    out = fn(beta, sigma, *packs)
    ref = np_ll(beta, sigma, *packs)
    assert abs(out[0] - ref) < 1e-10 * abs(ref)
    assert abs(ref - dense_loglik(design, beta, Ls, sigma)) < 1e-9
    args = [beta, np.float64(sigma), *packs]
    h = 1e-6
    for k, a in enumerate(args):
        a = np.atleast_1d(np.asarray(a, float))
        for i in range(a.size):
            up, dn = [np.array(x, float) for x in args], [np.array(x, float) for x in args]
            up[k] = np.atleast_1d(up[k]).copy()
            dn[k] = np.atleast_1d(dn[k]).copy()
            up[k][i] += h
            dn[k][i] -= h
            if k == 1:
                up[k], dn[k] = up[k][0], dn[k][0]
            fd = (np_ll(*up) - np_ll(*dn)) / (2 * h)
            g = np.atleast_1d(out[1 + k])[i]
            assert abs(g - fd) < 1e-5 * max(1.0, abs(fd)), (k, i, g, fd)


def test_pymc_models_structure():
    import pymc as pm

    from twolevel.models.bayes.pymc_multi import build_multi_model

    data = simulate()
    design = make_multi_design(FORMULAS[1], data)
    nc = build_multi_model(design, likelihood="noncentered")
    m = nc.model
    free = {rv.name: rv.owner.op.__class__.__name__ for rv in m.free_RVs}
    # one LKJ per correlated factor, independent SDs for the 1 × 1 factor, standard-normal z
    assert "chol_cov_school" in free and "sd_school:cls" in free
    assert {"z_school", "z_school:cls", "beta", "sigma"} <= set(free)
    for name in ("z_school", "z_school:cls"):
        assert isinstance(m[name].owner.op, type(pm.Normal.dist(0, 1).owner.op))
    assert m.named_vars_to_dims["b_school"] == ("school", "effect_school")
    assert m.named_vars_to_dims["b_school:cls"] == ("school:cls", "effect_school:cls")
    assert [o.name for o in m.observed_RVs] == ["y"]
    ip = m.initial_point()
    z = np.random.default_rng(1).normal(size=ip["z_school:cls"].shape)
    ip["z_school:cls"] = z
    outs = m.replace_rvs_by_values([m["b_school:cls"], m["sd_school:cls"], m["b_school"]])
    fn = m.compile_fn(outs, inputs=m.value_vars, on_unused_input="ignore", mode="NUMBA")
    b, sd, b2 = fn(ip)
    np.testing.assert_allclose(b, z * sd)  # b = z Lᵀ with L = diag(sd)
    assert b2.shape == (6, 2)
    with pytest.raises(TwolevelError, match="likelihood 'student' is not known"):
        build_multi_model(design, likelihood="student")
    col = build_multi_model(design)
    assert [p.name for p in col.model.potentials] == ["marginal_loglik"]
    assert not any(rv.name.startswith("z_") for rv in col.model.free_RVs)


# ----------------------------------------------------------------------------- the fit


@pytest.fixture(scope="module")
def small_fit():
    import twolevel as tl

    data = simulate(seed=4, n_school=12, n_class=3, n_stud=6)
    s = tl.SamplerSettings(chains=2, draws=300, tune=300, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the gate at 2 × 300 draws
        fit = tl.fit_bayes("y ~ x + (1 + x | school) + (1 | school:cls)", data, settings=s,
                           progress=False)
    return fit, data


def test_fit_bayes_three_levels(small_fit):
    import twolevel as tl
    from twolevel.models.bayes.fit_multi import MultiBayesFit

    fit, data = small_fit
    assert isinstance(fit, MultiBayesFit)
    post = fit.posterior
    assert post["b_school"].dims == ("chain", "draw", "school", "effect_school")
    assert list(post["school"].to_numpy()) == [str(i) for i in range(1, 13)]
    assert post["b_school:cls"].shape[2:] == (36, 1)
    assert post["school:cls"].to_numpy()[:2].tolist() == ["1:1", "1:2"]
    assert fit.diagnostics.divergences == 0
    vc = fit.variance_components()
    assert list(vc.index) == ["school:cls:(Intercept)", "school:(Intercept)", "school:x",
                              "Residual"]
    tab = fit.to_frame()
    assert "corr:school:(Intercept):x" in tab.index and "sd:school:cls:(Intercept)" in tab.index
    text = str(fit.summary())
    assert "Gate:" in text and "school:cls 36" in text
    # the posterior is about the REML fit (loose: 600 draws of a small data set)
    m = tl.lmer("y ~ x + (1 + x | school) + (1 | school:cls)", data)
    z = (tab.loc["fixef:x", "mean"] - m.fixef()["x"]) / tab.loc["fixef:x", "sd"]
    assert abs(z) < 1.0
    assert abs(tab.loc["sigma", "mean"] - m.sigma) < 3 * tab.loc["sigma", "sd"]
    re = fit.ranef("school")
    assert list(re.columns) == ["level", "effect", "mean", "sd", "q2.5", "q97.5", "size"]
    assert len(re) == 24 and re["size"].sum() == 2 * len(data)
    with pytest.raises(TwolevelError, match="'class' is not a grouping factor"):
        fit.ranef("class")
    sh = fit.shrinkage_table("school:cls")
    assert len(sh) == 36 and sh["size"].sum() == len(data)
    # partial pooling: the posterior intercepts are pulled towards 0
    assert np.abs(sh["posterior"]).sum() < np.abs(sh["raw"]).sum()
    with pytest.raises(TwolevelError, match="'class' is not a grouping factor"):
        fit.shrinkage_table("class")
    import dataclasses

    slope_only = make_multi_design("y ~ x + (0 + x | school) + (1 | school:cls)", data)
    with pytest.raises(TwolevelError, match="'school' has no random intercept"):
        dataclasses.replace(fit, design=slope_only).shrinkage_table("school")


def test_save_and_json(small_fit, tmp_path):
    import xarray as xr

    fit, _ = small_fit
    fit.save(tmp_path / "fit.nc")
    back = xr.open_datatree(tmp_path / "fit.nc", engine="h5netcdf")
    np.testing.assert_array_equal(back["posterior"]["b_school:cls"].to_numpy(),
                                  fit.posterior["b_school:cls"].to_numpy())
    js = fit.posterior_json()
    assert set(js["sigma"]) == {"mean", "sd", "q2.5", "q97.5"}


def test_effects_drawn_exactly_given_draws(small_fit):
    """The stored effects are draws of the exact conditional: their mean over draws equals the
    average conditional mean (Rao–Blackwell) within Monte Carlo error."""
    from twolevel.models.bayes.fit_multi import factor_cholesky_draws

    fit, _ = small_fit
    post = fit.posterior
    cp = nested_crossprods(fit.design)
    Ls = [factor_cholesky_draws(post, f.name, f.q) for f in fit.design.factors]
    beta = fit.draws("beta", "fixed")
    sigma = fit.draws("sigma")
    # the conditional mean: draw with σ·e = 0 by a zero-noise generator
    class Zero:
        def standard_normal(self, shape):
            return np.zeros(shape)

    means = draw_nested_effects(cp, beta, Ls, sigma, Zero())
    b = fit.draws("b_school", "school", "effect_school")
    diff = b.mean(0) - means[1].mean(0)
    se = b.std(0) / np.sqrt(b.shape[0])
    assert np.max(np.abs(diff / se)) < 5.0


def test_fit_bayes_several_factors_refuses_other_families():
    import twolevel as tl

    data = simulate()
    data["y01"] = (data["y"] > 1).astype(int)
    with pytest.raises(TwolevelError, match="several grouping factors .* fits normal outcomes"):
        tl.fit_bayes("y01 ~ x + (1 | school/cls)", data, family="binomial")
    with pytest.raises(TwolevelError, match="takes the rows as a pandas DataFrame"):
        from twolevel.models.bayes.fit_multi import fit_bayes_multi

        fit_bayes_multi("y ~ x + (1 | school/cls)", data.to_dict())


def test_level_figures(small_fit):
    import twolevel as tl
    from twolevel.workflows.bayes_levels import level_caterpillar_figures, level_shrinkage_figures

    fit, data = small_fit
    m = tl.lmer(fit.formula, data)
    cats = level_caterpillar_figures(fit, m)
    assert list(cats) == ["school:cls", "school"]
    shr = level_shrinkage_figures(fit)
    assert list(shr) == ["school:cls", "school"]
    import matplotlib.pyplot as plt

    for fig in [*cats.values(), *shr.values()]:
        assert fig.axes
        plt.close(fig)
