"""glmer's C kernels (``models/glmm/cpirls.c``) against numba's (``models/glmm/kernels.py``, the
reference): the stage-1 and stage-2 objectives and the state they leave (u, β, η, the factors,
RX) agree to 1e-10 relative for every family and link, one to three random effects, rows sorted
by group or not, one or two threads, value-only or full evaluations, β on Z's columns or in
the offset, and the AGQ sum; two threads give the same bits on every call; a whole fit agrees;
the kernel route falls back to numba when the package has no compiled library (saying so once),
and says what to do when C was asked for; the dispatched (AVX2/AVX-512) and the forced-baseline
libraries give the same deviance to 1e-10 relative on the lecture data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import TwolevelError
from twolevel.models import native
from twolevel.models.glmm import cpirls
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.glmer import glmer
from twolevel.models.glmm.laplace import GlmmProblem
from twolevel.models.glmm.response import glmer_design


def _sim(seed=3, J=40, shuffle=False):
    """Two-level data with Bernoulli, binomial-with-trials and count responses."""
    rng = np.random.default_rng(seed)
    nj = rng.integers(2, 30, J)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size)
    z = rng.normal(size=g.size)
    w = rng.normal(size=J)[g]
    b = rng.normal(size=(J, 3)) * [0.8, 0.4, 0.3]
    eta = -0.3 + 0.6 * x + 0.4 * w + b[g, 0] + b[g, 1] * x + b[g, 2] * z
    p = 1 / (1 + np.exp(-eta))
    trials = rng.integers(1, 7, g.size)
    expo = rng.uniform(0.5, 3.0, g.size)
    d = pd.DataFrame({"g": [f"s{k:02d}" for k in g], "x": x, "z": z, "w": w,
                      "y01": rng.binomial(1, p), "succ": rng.binomial(trials, p),
                      "trials": trials, "count": rng.poisson(expo * np.exp(eta)), "expo": expo})
    if shuffle:
        d = d.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return d


CASES = [  # formula, family, link
    ("y01 ~ 1 + x + (1 + x | g)", "binomial", None),        # 0/1 logit, X among Z's columns
    ("y01 ~ 1 + x + w + (1 + x | g)", "binomial", None),    # w not in Z: o + Xβ pass
    ("y01 ~ 1 + x + (1 | g)", "binomial", None),            # q = 1
    ("y01 ~ 1 + x + z + (1 + x + z | g)", "binomial", None),  # q = 3
    ("cbind(succ, trials - succ) ~ 1 + x + (1 + x | g)", "binomial", None),  # proportions
    ("y01 ~ 1 + x + (1 + x | g)", "binomial", "probit"),
    ("y01 ~ 1 + x + (1 | g)", "binomial", "cloglog"),
    ("count ~ 1 + x + offset(log(expo)) + (1 + x | g)", "poisson", None),
    ("count ~ 1 + x + w + offset(log(expo)) + (1 | g)", "poisson", None),
]


def _problems(d, formula, family, link, nagq=1, threads=None, monkeypatch=None):
    """The same model with the C kernels and with numba's."""
    fam = get_family(family, link)
    design, resp = glmer_design(formula, d, fam, None)
    monkeypatch.setenv("TWOLEVEL_KERNELS", "c")
    pc = GlmmProblem(design, resp, fam, nagq=nagq)
    assert pc.route == "c"
    if threads is not None:
        pc._c = cpirls.CPirls(resp.y, resp.w, pc.X, pc.Z, pc.g, fam.code, pc.J, threads=threads)
        pc.set_warm_start(pc.initial)
    monkeypatch.setenv("TWOLEVEL_KERNELS", "numba")
    pn = GlmmProblem(design, resp, fam, nagq=nagq)
    assert pn.route == "numba"
    return pc, pn


def _close(a, b, rtol=1e-10):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(b)))))


def _points(prob, rng, k=4):
    """Parameter points around the initial fit: θ jittered, β jittered."""
    th0 = prob.design.T_to_theta(np.eye(prob.q)) * 0.7
    b0 = prob.initial.beta
    for _ in range(k):
        th = th0 + rng.normal(scale=0.15, size=th0.size)
        th[prob.design.theta_lower == 0] = np.abs(th[prob.design.theta_lower == 0])
        yield th, b0 + rng.normal(scale=0.1, size=b0.size)


def _same_state(a, b):
    assert a.iterations == b.iterations
    for f in ("value", "ldL2", "aic", "devsum", "usq"):
        _close(getattr(a, f), getattr(b, f))
    for f in ("u", "beta", "Lfac"):
        _close(getattr(a, f), getattr(b, f))
    if a.eta is not None and b.eta is not None:
        _close(a.eta, b.eta)


@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[1]} {c[2]}" for c in CASES])
def test_c_kernels_equal_numba(case, shuffle, monkeypatch):
    formula, family, link = case
    d = _sim(shuffle=shuffle)
    pc, pn = _problems(d, formula, family, link, monkeypatch=monkeypatch)
    assert pc._c.sorted is (not shuffle)
    _same_state(pc.initial, pn.initial)  # the first joint PIRLS, from η at μ-start (no warm start)
    rng = np.random.default_rng(1)
    for th, beta in _points(pc, rng):
        _same_state(pc.stage1_state(th), pn.stage1_state(th))
        _close(pc.stage1(th), pn.stage1(th))
        par = np.concatenate([th, beta])
        for exact in (False, True):
            a = pc.stage2_state(par, exact=exact, want_rx=True)
            b = pn.stage2_state(par, exact=exact, want_rx=True)
            _same_state(a, b)
            _close(np.tril(a.RX), np.tril(b.RX))
            _close(pc.stage2(par, exact=exact), b.value)
            _close(pc.stage2_state(par, exact=exact).value, b.value)


def test_agq_equals_numba(monkeypatch):
    d = _sim()
    for family, formula in (("binomial", "y01 ~ 1 + x + (1 | g)"),
                            ("poisson", "count ~ 1 + x + offset(log(expo)) + (1 | g)")):
        pc, pn = _problems(d, formula, family, None, nagq=9, monkeypatch=monkeypatch)
        for th, beta in _points(pc, np.random.default_rng(2)):
            par = np.concatenate([th, beta])
            _close(pc.stage2(par), pn.stage2(par))


@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[1]} {c[2]}" for c in CASES])
def test_two_threads_equal_numba(case, shuffle, monkeypatch):
    """Every family and shape on two threads (rows split by whole groups when sorted, per-thread
    sums otherwise) against numba's one."""
    formula, family, link = case
    d = _sim(J=80, shuffle=shuffle)
    pc, pn = _problems(d, formula, family, link, threads=2, monkeypatch=monkeypatch)
    assert pc._c.threads == 2
    for th, beta in _points(pc, np.random.default_rng(6), k=2):
        _same_state(pc.stage1_state(th), pn.stage1_state(th))
        par = np.concatenate([th, beta])
        _same_state(pc.stage2_state(par), pn.stage2_state(par))
        _close(pc.stage2(par), pn.stage2(par))


def test_two_threads_equal_one_and_repeat_to_the_bit(monkeypatch):
    """Rows split between two threads (sorted: by whole groups; unsorted: per-thread sums added
    in thread order) give the one-thread numbers to 1e-12 and the same bits on every call."""
    for shuffle in (False, True):
        d = _sim(J=60, shuffle=shuffle)
        f = "y01 ~ 1 + x + (1 + x | g)"
        p2, _ = _problems(d, f, "binomial", None, threads=2, monkeypatch=monkeypatch)
        p1, _ = _problems(d, f, "binomial", None, threads=1, monkeypatch=monkeypatch)
        assert p2._c.threads == 2 and p1._c.threads == 1
        for th, beta in _points(p1, np.random.default_rng(4)):
            par = np.concatenate([th, beta])
            v2 = [p2.stage2(par) for _ in range(5)] + [p2.stage1(th) for _ in range(3)]
            assert len(set(v2[:5])) == 1 and len(set(v2[5:])) == 1
            np.testing.assert_allclose(v2[0], p1.stage2(par), rtol=1e-12)
            np.testing.assert_allclose(v2[5], p1.stage1(th), rtol=1e-12)
            _same_state(p2.stage2_state(par), p1.stage2_state(par))


def test_fit_with_c_equals_fit_with_numba(monkeypatch):
    """A whole glmer fit by either route: the same optimum (to the optimiser's 1e-6, since the
    objectives differ in the last bits) and the same deviance to 1e-8."""
    d = _sim(seed=8, J=50)
    f = "y01 ~ 1 + x + (1 + x | g)"
    monkeypatch.setenv("TWOLEVEL_KERNELS", "c")
    mc = glmer(f, d)
    monkeypatch.setenv("TWOLEVEL_KERNELS", "numba")
    mn = glmer(f, d)
    assert mc.problem.route == "c" and mn.problem.route == "numba"
    np.testing.assert_allclose(mc.minus2loglik, mn.minus2loglik, rtol=1e-8)
    np.testing.assert_allclose(mc.beta, mn.beta, atol=1e-5)
    np.testing.assert_allclose(mc.theta, mn.theta, atol=1e-5)


def test_x_columns_in_z_and_threads_for():
    X = np.column_stack([np.ones(5), np.arange(5.0), np.arange(5.0) ** 2])
    Z = X[:, [1, 0]]
    assert cpirls.x_columns_in_z(X[:, :2], Z).tolist() == [1, 0]
    assert cpirls.x_columns_in_z(X, Z) is None
    assert cpirls.threads_for(100, 8) == 1
    assert cpirls.threads_for(10 * cpirls.MIN_ROWS_PER_THREAD, 2) == 2
    assert cpirls.threads_for(10 * cpirls.MIN_ROWS_PER_THREAD, 1) == 1


def test_more_effects_than_the_kernel_takes_says_what_to_do():
    n = 40
    with pytest.raises(TwolevelError, match=r"at most 16 random effects and 64 fixed effects, "
                       r"not 17 and 1; set TWOLEVEL_KERNELS=numba"):
        cpirls.CPirls(np.zeros(n), np.ones(n), np.ones((n, 1)), np.ones((n, 17)),
                      np.zeros(n, dtype=np.int64), 0, 1)


def test_missing_library_falls_back_to_numba_once_or_says_what_to_do(monkeypatch):
    """No compiled library in the package (as an sdist installed without a compiler): by default
    the fit runs on numba's kernels and says so once, naming the reason and what to do;
    TWOLEVEL_KERNELS=c refuses with the same reason."""
    monkeypatch.setattr(cpirls, "MODULE", "twolevel.models.glmm._no_such_kernel")
    monkeypatch.setattr(native, "_WARNED", set())
    d = _sim()
    fam = get_family("binomial", None)
    design, resp = glmer_design("y01 ~ 1 + x + (1 | g)", d, fam, None)
    monkeypatch.setenv("TWOLEVEL_KERNELS", "auto")
    with pytest.warns(native.NumbaKernelWarning,
                      match=r"^twolevel: glmer runs on numba's kernels \(slower, compiled on first "
                            r"use\): no compiled _no_such_kernel library in the installed package "
                            r".*install a twolevel wheel built for this platform, or put a C "
                            r"compiler on PATH and reinstall from source \(in a checkout: make "
                            r"setup\)$"):
        assert GlmmProblem(design, resp, fam).route == "numba"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GlmmProblem(design, resp, fam).route == "numba"  # said once
    monkeypatch.setenv("TWOLEVEL_KERNELS", "c")
    with pytest.raises(TwolevelError, match=r"no compiled C kernels "
                       r"\(twolevel.models.glmm._no_such_kernel\): no compiled _no_such_kernel "
                       r"library .*or set TWOLEVEL_KERNELS=numba"):
        GlmmProblem(design, resp, fam)


def test_baseline_library_on_one_thread_equals_numba(monkeypatch):
    """The baseline build (TWOLEVEL_KERNEL_BASELINE=1: what an x86-64 machine without AVX2, or
    an aarch64 one, runs), on one thread, gives numba's numbers."""
    monkeypatch.setenv(native.BASELINE_ENV, "1")
    assert native.vector_path(cpirls.MODULE) == "baseline"
    d = _sim()
    pc, pn = _problems(d, "y01 ~ 1 + x + (1 + x | g)", "binomial", None, threads=1,
                       monkeypatch=monkeypatch)
    assert pc._c.lib is native.load(cpirls.MODULE).cdll
    for th, beta in _points(pc, np.random.default_rng(5)):
        par = np.concatenate([th, beta])
        _same_state(pc.stage2_state(par), pn.stage2_state(par))
        _close(pc.stage1(th), pn.stage1(th))


def test_dispatched_and_baseline_give_the_same_lecture_deviance(monkeypatch):
    """glmer's deviance (−2 log-likelihood, the Laplace objective of stage 2) on the lecture
    data at the fitted parameters and at points around them: the library chosen for this
    processor and the forced baseline agree to 1e-10 relative, on one thread and on two."""
    from twolevel.data.loaders import load_data

    d = load_data("lecture")
    f = "g1below ~ 1 + famsesc + (1 + famsesc | schid)"
    fam = get_family("binomial", None)
    design, resp = glmer_design(f, d, fam, None)
    monkeypatch.setenv("TWOLEVEL_KERNELS", "c")
    monkeypatch.delenv(native.BASELINE_ENV, raising=False)
    fit = glmer(f, d, family="binomial")
    probs = {}
    for label, base in (("dispatched", "0"), ("baseline", "1")):
        monkeypatch.setenv(native.BASELINE_ENV, base)
        for threads in (1, 2):
            p = GlmmProblem(design, resp, fam)
            p._c = cpirls.CPirls(resp.y, resp.w, p.X, p.Z, p.g, fam.code, p.J, threads=threads)
            p.set_warm_start(p.initial)
            probs[label, threads] = p
    assert probs["baseline", 1]._c.lib is not probs["dispatched", 1]._c.lib or \
        native.x86_level() == 0
    rng = np.random.default_rng(2)
    pars = [np.concatenate([fit.theta, fit.beta])]
    pars += [pars[0] + rng.normal(scale=0.05, size=pars[0].size) for _ in range(3)]
    for par in pars:
        ref = probs["baseline", 1].stage2(par)
        for key, p in probs.items():
            np.testing.assert_allclose(p.stage2(par), ref, rtol=1e-10, err_msg=str(key))


def test_a_fit_pickles_and_its_objective_runs_after(monkeypatch):
    """A glmer fit pickles (the C kernels' handle is left out and opened again on loading) and
    the loaded fit's objective gives the same value."""
    import pickle

    monkeypatch.setenv("TWOLEVEL_KERNELS", "c")
    m = glmer("y01 ~ 1 + x + (1 + x | g)", _sim(seed=9))
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.problem.route == "c" and m2.problem._c is not m.problem._c
    par = np.concatenate([m.theta, m.beta])
    assert m2.problem.stage2(par) == m.problem.stage2(par)
    np.testing.assert_array_equal(m2.ranef().to_numpy(), m.ranef().to_numpy())
