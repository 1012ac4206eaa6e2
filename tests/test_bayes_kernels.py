"""The compiled log-density and gradient (numba: twolevel.models.bayes.kernels; C:
twolevel.models.bayes.ckernels) equal the PyMC model's ``compile_logp`` / ``compile_dlogp`` at
random points to 1e-10 (and each other to 1e-12), for q = 1, 2, 3, correlated and independent
effects, level-2 predictors and every prior family; the compiled sampler returns the DataTree
layout of nutpie on the PyMC model; the compiled library is found (the dispatched and the
forced-baseline builds agree to 1e-12) and refused as documented; importing the fit module and
touching SamplerSettings start no process and write no file."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import pymc_reference

from twolevel.data.errors import TwolevelError
from twolevel.models import native
from twolevel.models.bayes import ckernels, kernels, sampler
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
    dict(beta=Prior("StudentT", nu=5.0, mu=1.0, sigma=10.0),
         sigma=Prior("Gamma", alpha=2.0, beta=0.5),
         sd=Prior("HalfCauchy", beta=2.0), corr=Prior("LKJ", eta=1.5)),
    dict(sigma=Prior("HalfNormal", sigma=3.0), sd=Prior("Exponential", lam=0.7)),
    dict(sigma=Prior("Exponential", lam=0.3), sd=Prior("HalfStudentT", nu=3.0, sigma=2.0),
         corr=Prior("LKJ", eta=4.0)),
]


@pytest.fixture(scope="module")
def data():
    return _sim()


def _assert_kernel_equals_pymc(built, cp, n_points=6, seed=0):
    names, x0, reference = pymc_reference(built.model)
    packed = sampler.pack_data(cp, built.design.n, built.priors, built.structure)
    # PyMC's initial point is the kernels' support point (nutpie jitters around it)
    np.testing.assert_allclose(
        sampler.support_point(built.priors, built.design.q, built.design.p, built.structure),
        x0, rtol=1e-12)
    rng = np.random.default_rng(seed)
    for _ in range(n_points):
        x = x0 + rng.uniform(-1.5, 1.5, x0.size)
        want_lp, want_g = reference(x)
        lp, g = kernels.logp_and_grad(x, packed)
        assert abs(lp - want_lp) <= 1e-10 * abs(want_lp), (lp, want_lp)
        np.testing.assert_allclose(g, want_g, rtol=1e-10, atol=1e-10 * np.abs(want_g).max())
        # the C kernel: the same operations in the same order as numba's
        lp_c, g_c, status = ckernels.c_logp_and_grad(x, packed)
        assert status == 0
        assert abs(lp_c - lp) <= 1e-12 * abs(lp), (lp_c, lp)
        np.testing.assert_allclose(g_c, g, rtol=1e-12, atol=1e-12 * np.abs(g).max())
        assert abs(lp_c - want_lp) <= 1e-10 * abs(want_lp), (lp_c, want_lp)
        np.testing.assert_allclose(g_c, want_g, rtol=1e-10, atol=1e-10 * np.abs(want_g).max())


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


@pytest.mark.parametrize("k", range(len(FORMULAS)))
def test_expand_draws_gives_pymc_deterministics(data, k):
    """σ, the packed factor, the SDs and the correlation matrix from x, as the PyMC model has
    them, for a stack of draws at once."""
    d = make_design(FORMULAS[k], data)
    cp = group_crossprods(d)
    built = build_model(d, likelihood="collapsed", crossprods=cp)
    model = built.model
    structure = sampler.effect_structure(d)
    names, shapes = sampler.expand_names(d.q, d.p, structure)
    assert names == [v.name for v in model.unobserved_value_vars]
    x0 = sampler.support_point(built.priors, d.q, d.p, structure)
    xs = np.stack([x0 + np.linspace(-0.8, 0.9, x0.size) * (k + 1) / 3 for k in range(3)])
    got = sampler.expand_draws(xs.reshape(1, 3, -1), d.q, d.p, structure)
    fn = model.compile_fn(model.unobserved_value_vars, inputs=model.value_vars,
                          on_unused_input="ignore", mode="FAST_COMPILE")
    for i, x in enumerate(xs):
        point, o = {}, 0
        for v, sh in zip(model.value_vars, shapes, strict=False):
            size = int(np.prod(sh, dtype=int))
            point[v.name] = x[o:o + size].reshape(sh)
            o += size
        want = dict(zip(names, fn(point), strict=True))
        for name in got:
            np.testing.assert_allclose(got[name][0, i], want[name], rtol=1e-12, atol=1e-14)


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
    for grp in ("sample_stats", "warmup_sample_stats"):
        a, b = ours[grp].to_dataset(), ref[grp].to_dataset()
        for v in b.data_vars:
            assert a[v].dims == b[v].dims and a[v].dtype == b[v].dtype, v
    pa, pb = ours["posterior"].to_dataset(), ref["posterior"].to_dataset()
    for v in ("beta", "sigma"):
        m1, m2 = pa[v].mean(("chain", "draw")), pb[v].mean(("chain", "draw"))
        sd = pb[v].std(("chain", "draw"))
        assert np.all(np.abs(m1 - m2) < 0.5 * sd), v


@pytest.mark.slow
def test_driver_draws_are_nutpies_own(data):
    """run_nuts (nutpie's Rust extension driven directly) gives bitwise the draws and sample
    statistics of nutpie.sample on the same callbacks, settings and seed: the reference."""
    import nutpie
    from nutpie.compile_pymc import CompiledPyMCModel

    d = make_design(FORMULAS[1], data)
    cp = group_crossprods(d)
    model, _, _ = sampler.compile_collapsed(d, cp)
    kw = dict(draws=100, tune=100, chains=2, seed=11, target_accept=0.9)
    lib = sampler.nutpie_lib()
    assert lib is nutpie._lib
    settings = sampler.nuts_settings(lib, adaptation="low_rank", **kw)
    draws, stats = sampler.run_nuts(model, settings, 2, False, lib)
    ours = sampler.trace_to_datatree(draws, stats, model, settings.as_dict()["settings"])
    logp_addr, copy_addr, _owner = sampler.callbacks(2)  # the callbacks run_nuts used
    ref_model = CompiledPyMCModel(
        _n_dim=model.n_dim, dims={"x": ("unconstrained_parameter",)}, _coords=model.coords,
        _shapes={"x": (model.n_dim,)}, compiled_logp_func=SimpleNamespace(address=logp_addr),
        compiled_expand_func=SimpleNamespace(address=copy_addr),
        initial_point_func=model.initial_point,
        shared_data={}, shared_var_keys={}, user_data=model.data, n_expanded=model.n_dim,
        shape_info=(["x"], [slice(0, model.n_dim)], [(model.n_dim,)]), logp_func=None,
        expand_func=None, reparameterized_names=[])
    ref = nutpie.sample(ref_model, cores=2, progress_bar=False, adaptation="low_rank", **kw)
    x = ref["posterior"]["x"].to_numpy()
    want = sampler.expand_draws(x, model.q, model.p, model.structure)
    for name, v in want.items():
        np.testing.assert_array_equal(ours["posterior"][name].to_numpy(), v)
    a, b = ours["sample_stats"].to_dataset(), ref["sample_stats"].to_dataset()
    assert set(a.data_vars) == set(b.data_vars)
    for v in ("diverging", "energy", "n_steps", "step_size", "logp", "tuning"):
        np.testing.assert_array_equal(a[v].to_numpy(), b[v].to_numpy())
    wa = ours["warmup_posterior"]["sigma"].to_numpy()
    np.testing.assert_array_equal(wa, np.exp(ref["warmup_posterior"]["x"].to_numpy()[..., d.p]))


def test_dispatched_and_baseline_libraries_give_the_same_density(data, monkeypatch):
    """The library chosen for this processor (AVX2 / AVX-512 on x86-64) and the forced baseline
    (TWOLEVEL_KERNEL_BASELINE=1) give the same log density and gradient to 1e-12 relative, for
    the q = 2 and the general callbacks, on the lecture data and on simulated data."""
    from twolevel.data.loaders import load_data

    cases = [("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", load_data("lecture")),
             (FORMULAS[-1], data)]
    for formula, frame in cases:
        d = make_design(formula, frame)
        cp = group_crossprods(d)
        pri = default_priors(d)
        structure = sampler.effect_structure(d)
        packed = sampler.pack_data(cp, d.n, pri, structure)
        x0 = sampler.support_point(pri, d.q, d.p, structure)
        rng = np.random.default_rng(4)
        for _ in range(4):
            x = x0 + rng.uniform(-1.0, 1.0, x0.size)
            got = {}
            for base in ("0", "1"):
                monkeypatch.setenv(native.BASELINE_ENV, base)
                got[base] = ckernels.c_logp_and_grad(x, packed)
            (lp, g, s), (lp0, g0, s0) = got["0"], got["1"]
            assert s == s0 == 0
            assert abs(lp - lp0) <= 1e-12 * abs(lp0), (lp, lp0)
            np.testing.assert_allclose(g, g0, rtol=1e-12, atol=1e-12 * np.abs(g0).max())
    monkeypatch.setenv(native.BASELINE_ENV, "1")
    assert native.vector_path(ckernels.MODULE) == "baseline"


def test_importing_the_fit_module_starts_no_process_and_writes_no_file(tmp_path):
    """``import twolevel`` and touching ``tl.SamplerSettings`` (which imports the Bayesian fit
    module) start no process and write nothing: no child process appears, the cache folder and
    the working folder stay empty."""
    cache, work = tmp_path / "cache", tmp_path / "work"
    cache.mkdir()
    work.mkdir()
    code = ("import os, subprocess\n"
            "started = []\n"
            "real = subprocess.Popen.__init__\n"
            "def spy(self, *a, **k):\n"
            "    started.append(a[0] if a else k.get('args'))\n"
            "    real(self, *a, **k)\n"
            "subprocess.Popen.__init__ = spy\n"
            "os.fork = lambda: (_ for _ in ()).throw(AssertionError('fork'))\n"
            "import twolevel as tl\n"
            "s = tl.SamplerSettings()\n"
            "from twolevel.models.bayes import fit, sampler\n"
            "assert not started, started\n"
            "print(type(s).__name__)\n")
    env = {**os.environ, "TWOLEVEL_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(cache),
           "NUMBA_CACHE_DIR": str(cache / "numba"), "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=work, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SamplerSettings"
    assert not list(cache.rglob("*")) and not list(work.rglob("*"))


def test_missing_library_falls_back_to_numba_or_says_what_to_do(monkeypatch):
    """No compiled library in the package: the default route is numba (the first fit says so
    once); TWOLEVEL_KERNELS=c refuses with a message saying what to do; a bad route value is
    named."""
    monkeypatch.setattr(ckernels, "MODULE", "twolevel.models.bayes._no_such_kernel")
    monkeypatch.setattr(native, "_WARNED", set())
    monkeypatch.setenv("TWOLEVEL_KERNELS", "auto")
    assert ckernels.kernel_route() == "numba"
    with pytest.warns(native.NumbaKernelWarning, match=r"^twolevel: fit_bayes runs on numba's "
                      r"kernels .*no compiled _no_such_kernel library"):
        logp, copy, owner = sampler.callbacks(2)
    assert logp == kernels.logp_cfunc(2).address and copy == kernels.copy_cfunc().address
    assert "numba" in sampler.kernel_description()
    monkeypatch.setenv("TWOLEVEL_KERNELS", "c")
    with pytest.raises(TwolevelError, match=r"no compiled C kernels \(twolevel.models.bayes."
                       r"_no_such_kernel\): .*or set TWOLEVEL_KERNELS=numba"):
        sampler.callbacks(2)
    monkeypatch.setenv("TWOLEVEL_KERNELS", "fortran")
    with pytest.raises(TwolevelError, match=r"TWOLEVEL_KERNELS='fortran' is not a kernel route; "
                       r"use one of auto, c, numba"):
        ckernels.kernel_route()


def test_stale_library_is_not_loaded(tmp_path, monkeypatch):
    """In a checkout, a library older than its C source (edited since ``make setup``) is not
    loaded; the reason says to rebuild."""
    import importlib.machinery
    import shutil
    import types

    lib = native.load(ckernels.MODULE).path
    pkg = tmp_path / "stalepkg"
    pkg.mkdir()
    copy = pkg / ("_ckernels" + importlib.machinery.EXTENSION_SUFFIXES[0])
    shutil.copy(lib, copy)
    (pkg / "ckernels.c").write_text("/* newer */\n")
    os.utime(copy, (lib.stat().st_mtime,) * 2)
    os.utime(pkg / "ckernels.c", (lib.stat().st_mtime + 100,) * 2)
    mod = types.ModuleType("stalepkg")
    mod.__path__ = [str(pkg)]
    monkeypatch.setitem(sys.modules, "stalepkg", mod)
    monkeypatch.setenv(native.BASELINE_ENV, "1")
    assert native.load("stalepkg._ckernels") is None
    assert native.reason("stalepkg._ckernels").endswith(
        "is older than ckernels.c (edited since the build); rebuild with make setup "
        "(pip install -e .)")
