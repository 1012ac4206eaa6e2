"""The compiled log-density and gradient (twolevel.models.bayes.kernels) equal the PyMC model's
``compile_logp`` / ``compile_dlogp`` at random points to 1e-10, for q = 1, 2, 3, correlated and
independent effects, level-2 predictors and every prior family; the compiled sampler returns the
DataTree layout of nutpie on the PyMC model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twolevel.models.bayes import kernels, sampler
from twolevel.models.bayes.priors import Prior, default_priors
from twolevel.models.bayes.pymc_model import build_model
from twolevel.models.design import group_crossprods, make_design


def _sim(J=15, seed=3):
    """Two-level data with three student-level predictors and a level-2 predictor ``w``."""
    rng = np.random.default_rng(seed)
    n = rng.integers(2, 10, J)
    g = np.repeat(np.arange(J), n)
    x1, x2 = rng.normal(size=g.size), rng.normal(size=g.size)
    w = rng.normal(size=J)[g]
    b = rng.normal(size=(J, 3)) * [2.0, 0.7, 0.4]
    y = (5 + 1.5 * x1 - x2 + 0.8 * w + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2
         + rng.normal(scale=1.2, size=g.size))
    return pd.DataFrame({"g": [f"s{k}" for k in g], "x1": x1, "x2": x2, "w": w, "y": y})


FORMULAS = [
    "y ~ 1 + x1 + w + (1 | g)",                      # q = 1
    "y ~ 1 + x1 + w + (1 + x1 | g)",                 # q = 2, LKJ
    "y ~ 1 + x1 + x2 + w + (1 + x1 + x2 | g)",       # q = 3, LKJ
    "y ~ 1 + x1 + x2 + w + (1 + x1 + x2 || g)",      # q = 3, independent
]
OTHER_PRIORS = [
    dict(beta=Prior("StudentT", nu=5.0, mu=1.0, sigma=10.0), sigma=Prior("Gamma", alpha=2.0, beta=0.5),
         sd=Prior("HalfCauchy", beta=2.0), corr=Prior("LKJ", eta=1.5)),
    dict(sigma=Prior("HalfNormal", sigma=3.0), sd=Prior("Exponential", lam=0.7)),
    dict(sigma=Prior("Exponential", lam=0.3), sd=Prior("HalfStudentT", nu=3.0, sigma=2.0),
         corr=Prior("LKJ", eta=4.0)),
]


@pytest.fixture(scope="module")
def data():
    return _sim()


def _assert_kernel_equals_pymc(built, cp, n_points=6, seed=0):
    model = built.model
    # PyTensor's Python linker: no compilation, the same float64 graph
    logp = model.compile_logp(mode="FAST_COMPILE")
    dlogp = model.compile_dlogp(mode="FAST_COMPILE")
    packed = sampler.pack_data(cp, built.design.n, built.priors, built.structure)
    names = [v.name for v in model.value_vars]
    ip = model.initial_point()
    shapes = [np.shape(ip[nm]) for nm in names]
    x0 = np.concatenate([np.ravel(ip[nm]) for nm in names])
    # PyMC's initial point is the kernels' support point (nutpie jitters around it)
    np.testing.assert_allclose(
        sampler.support_point(built.priors, built.design.q, built.design.p, built.structure),
        x0, rtol=1e-12)
    rng = np.random.default_rng(seed)
    for _ in range(n_points):
        x = x0 + rng.uniform(-1.5, 1.5, x0.size)
        point, o = {}, 0
        for nm, sh in zip(names, shapes, strict=True):
            size = int(np.prod(sh, dtype=int))
            point[nm] = x[o:o + size].reshape(sh)
            o += size
        want_lp, want_g = float(logp(point)), np.asarray(dlogp(point))
        lp, g = kernels.logp_and_grad(x, packed)
        assert abs(lp - want_lp) <= 1e-10 * abs(want_lp), (lp, want_lp)
        np.testing.assert_allclose(g, want_g, rtol=1e-10, atol=1e-10 * np.abs(want_g).max())


@pytest.mark.parametrize("formula", FORMULAS)
def test_logp_and_gradient_equal_pymc_default_priors(data, formula):
    d = make_design(formula, data)
    cp = group_crossprods(d)
    _assert_kernel_equals_pymc(build_model(d, likelihood="collapsed", crossprods=cp), cp)


@pytest.mark.parametrize("formula, k", [(FORMULAS[1], 0), (FORMULAS[1], 1), (FORMULAS[1], 2),
                                        (FORMULAS[3], 0), (FORMULAS[3], 2)])
def test_logp_and_gradient_equal_pymc_other_priors(data, formula, k):
    d = make_design(formula, data)
    cp = group_crossprods(d)
    pri = default_priors(d).replace(**OTHER_PRIORS[k])
    _assert_kernel_equals_pymc(build_model(d, pri, likelihood="collapsed", crossprods=cp), cp,
                               seed=k)


def test_logp_on_hsb_equals_pymc(hsb):
    d = make_design("mAch ~ 1 + cses + meanses + (1 + cses | school)", hsb)
    cp = group_crossprods(d)
    _assert_kernel_equals_pymc(build_model(d, likelihood="collapsed", crossprods=cp), cp,
                               n_points=3)


def test_expand_gives_pymc_deterministics(data):
    """σ, the packed factor, the SDs and the correlation matrix from x, as the PyMC model has them."""
    d = make_design(FORMULAS[2], data)
    cp = group_crossprods(d)
    built = build_model(d, likelihood="collapsed", crossprods=cp)
    model = built.model
    names, shapes = sampler.expand_names(d.q, d.p, "lkj")
    assert names == [v.name for v in model.unobserved_value_vars]
    x = sampler.support_point(built.priors, d.q, d.p, "lkj")
    x = x + np.linspace(-0.8, 0.9, x.size)
    out = np.empty(sum(int(np.prod(s, dtype=int)) for s in shapes))
    kernels.expand(x, sampler.pack_data(cp, d.n, built.priors, "lkj"), out)
    point, o = {}, 0
    for v, sh in zip(model.value_vars, shapes, strict=False):
        size = int(np.prod(sh, dtype=int))
        point[v.name] = x[o:o + size].reshape(sh)
        o += size
    fn = model.compile_fn(model.unobserved_value_vars, inputs=model.value_vars,
                          on_unused_input="ignore", mode="FAST_COMPILE")
    want = np.concatenate([np.ravel(v) for v in fn(point)])
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)


def test_unsupported_prior_family_is_refused(data):
    from twolevel.data.errors import TwolevelError

    d = make_design(FORMULAS[1], data)
    pri = default_priors(d)
    object.__setattr__(pri.sigma, "dist", "Weibull")
    with pytest.raises(TwolevelError, match="no compiled kernel"):
        sampler.pack_data(group_crossprods(d), d.n, pri, "lkj")


@pytest.mark.slow
def test_compiled_sampler_returns_the_pymc_models_layout(data):
    """sample_collapsed's DataTree has the groups, variables, dims and coordinates of nutpie's run
    on the PyMC model (pymc_model.sample_nuts), and a similar posterior."""
    from twolevel.models.bayes.pymc_model import sample_nuts
    from twolevel.models.bayes.sampler import sample_collapsed

    d = make_design(FORMULAS[1], data)
    cp = group_crossprods(d)
    kw = dict(draws=300, tune=300, chains=2, cores=2, seed=5, target_accept=0.9, progress=False)
    ours, _ = sample_collapsed(d, cp, **kw)
    ref = sample_nuts(build_model(d, likelihood="collapsed", crossprods=cp), **kw)
    assert set(ours.children) == set(ref.children)
    for grp in ("posterior", "warmup_posterior"):
        a, b = ours[grp].to_dataset(), ref[grp].to_dataset()
        assert set(a.data_vars) == set(b.data_vars) == {"beta", "sigma", "chol_cov", "sd", "corr"}
        for v in a.data_vars:
            assert a[v].dims == b[v].dims and a[v].shape == b[v].shape, v
            for dim in a[v].dims[2:]:
                assert list(a[dim].to_numpy()) == list(b[dim].to_numpy())
    assert set(ours["sample_stats"].to_dataset().data_vars) == set(
        ref["sample_stats"].to_dataset().data_vars)
    pa, pb = ours["posterior"].to_dataset(), ref["posterior"].to_dataset()
    for v in ("beta", "sigma"):
        m1, m2 = pa[v].mean(("chain", "draw")), pb[v].mean(("chain", "draw"))
        sd = pb[v].std(("chain", "draw"))
        assert np.all(np.abs(m1 - m2) < 0.5 * sd), v


@pytest.mark.slow
def test_cold_cache_is_filled_by_the_compile_helper(tmp_path):
    """With an empty numba cache, start_kernel_compile's helper process compiles the q = 2
    callbacks into it (a fresh installation's first fit then only loads them)."""
    import os
    import subprocess
    import sys

    code = ("from twolevel.models.bayes import sampler as s\n"
            "assert not s._kernels_cached(2)\n"
            "s.start_kernel_compile(2)\n"
            "assert True in s._PENDING\n"
            "s.wait_kernel_compile(2)\n"
            "assert s._kernels_cached(2) and not s._PENDING\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)
    assert list((tmp_path / "numba").rglob("kernels._logp_c_q2-*.nbi"))
