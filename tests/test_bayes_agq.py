"""The integrated (AGQ) GLMM likelihood of ``cagq.c`` (:mod:`twolevel.models.bayes.agq`): each
school's log-likelihood with its effects integrated out and its gradient in (β, L) equal a
brute-force reference — dense tensor Gauss–Legendre quadrature (120 points per dimension over
±12 Laplace SDs, computed here in NumPy) — to 1e-8, for every family/link, q = 1 and 2, with
offsets and trials; the whole log density's gradient equals central finite differences to 1e-6
relative; the school-effect draws follow the exact conditional posterior (moments and CDF of
the dense quadrature)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from twolevel.models.bayes import agq
from twolevel.models.bayes.priors import default_glmm_priors
from twolevel.models.bayes.sampler import effect_structure
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.response import glmer_design

CASES = [  # (family, link, response, formula extras)
    ("binomial", "logit", "y01", ""),
    ("binomial", "probit", "y01", ""),
    ("binomial", "cloglog", "y01", ""),
    ("binomial", "logit", "cbind(succ, trials - succ)", ""),
    ("binomial", "probit", "cbind(succ, trials - succ)", ""),
    ("binomial", "cloglog", "cbind(succ, trials - succ)", ""),
    ("poisson", "log", "count", " + offset(log(expo))"),
]
RANDOM = {1: "(1 | g)", 2: "(1 + x | g)"}


def _sim(seed=3, J=8):
    rng = np.random.default_rng(seed)
    nj = rng.integers(3, 12, J)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size)
    b = rng.normal(size=(J, 2)) * [0.7, 0.4]
    eta = -0.4 + 0.5 * x + b[g, 0] + b[g, 1] * x
    p = 1 / (1 + np.exp(-eta))
    trials = rng.integers(1, 8, g.size)
    expo = rng.uniform(0.5, 3.0, g.size)
    return pd.DataFrame({"g": [f"s{k}" for k in g], "x": x, "y01": rng.binomial(1, p),
                         "succ": rng.binomial(trials, p), "trials": trials,
                         "count": rng.poisson(expo * np.exp(eta)), "expo": expo})


def _setup(family, link, response, extra, q, nodes):
    d = _sim()
    formula = f"{response} ~ 1 + x{extra} + {RANDOM[q]}"
    fam = get_family(family, link)
    design, resp = glmer_design(formula, d, fam, None)
    priors = default_glmm_priors(design, resp.y, resp.w, resp.offset, family, link)
    structure = effect_structure(design)
    data = agq.pack_agq(design, resp.y, resp.w, resp.offset, family, link, priors, structure,
                        nodes=nodes)
    return design, resp, data, structure


def _x(q, structure, rng):
    beta = np.array([-0.3, 0.4]) + 0.1 * rng.normal(size=2)
    if structure == "lkj":
        cov = np.array([np.log(0.8), 0.2, np.log(0.5)]) + 0.1 * rng.normal(size=3)
    else:
        cov = np.array([np.log(0.9)]) + 0.1 * rng.normal(size=q)
    return np.concatenate([beta, cov])


def _unpack_L(x, q, structure):
    L = np.zeros((q, q))
    if structure == "lkj":
        r, c = np.tril_indices(q)
        v = x[2:2 + r.size].copy()
        v[r == c] = np.exp(v[r == c])
        L[r, c] = v
    else:
        L[np.arange(q), np.arange(q)] = np.exp(x[2:2 + q])
    return L


def _ll_d1(link, eta, s, n):
    """Row log-likelihood (without constants) and its derivative in η, in NumPy."""
    if link == "logit":
        mu = special.expit(eta)
        return s * eta - n * np.logaddexp(0.0, eta), s - n * mu
    if link == "log":
        return s * eta - np.exp(eta), s - np.exp(eta)
    if link == "probit":
        lp, lq = special.log_ndtr(eta), special.log_ndtr(-eta)
        phi = stats.norm.logpdf(eta)
        return s * lp + (n - s) * lq, s * np.exp(phi - lp) - (n - s) * np.exp(phi - lq)
    v = np.exp(eta)
    return s * np.log(-np.expm1(-v)) - (n - s) * v, s * v / np.expm1(v) - (n - s) * v


def _brute_school(link, X, Z, s, n, off, const, beta, L, npts=120, half=12.0):
    """log ∫ Π p(y|η) N(u; 0, I) du, its gradient in β and L (posterior mean of the score), and
    the posterior mean/cov of u and the nodes/weights, by dense tensor Gauss–Legendre quadrature
    in the coordinates of the Laplace approximation."""
    q = Z.shape[1]
    A = Z @ L  # rows a_i = Lᵀ z_i
    eta0 = off + X @ beta

    def f(u):  # u (..., q)
        ll, _ = _ll_d1(link, eta0 + u @ A.T, s, n)
        return ll.sum(-1) - 0.5 * (u * u).sum(-1)

    u = np.zeros(q)  # Newton with numerical Hessian: only the box's centre depends on it
    for _ in range(100):
        _, d1 = _ll_d1(link, eta0 + A @ u, s, n)
        g = A.T @ d1 - u
        h = 1e-5
        Hm = np.empty((q, q))
        for k in range(q):
            e = np.zeros(q)
            e[k] = h
            _, dp = _ll_d1(link, eta0 + A @ (u + e), s, n)
            _, dm = _ll_d1(link, eta0 + A @ (u - e), s, n)
            Hm[:, k] = -((A.T @ dp - (u + e)) - (A.T @ dm - (u - e))) / (2 * h)
        Hm = 0.5 * (Hm + Hm.T)
        step = np.linalg.solve(Hm, g)
        u = u + step
        if np.abs(step).max() < 1e-12:
            break
    Sfac = np.linalg.inv(np.linalg.cholesky(Hm)).T
    t, wt = np.polynomial.legendre.leggauss(npts)
    t, wt = t * half, wt * half
    grids = np.meshgrid(*[t] * q, indexing="ij")
    T = np.stack([gg.ravel() for gg in grids], -1)
    W = np.prod(np.meshgrid(*[wt] * q, indexing="ij"), axis=0).ravel()
    U = u + T @ Sfac.T
    lf = f(U) + np.log(W)
    m = lf.max()
    w = np.exp(lf - m)
    Z0 = w.sum()
    val = const + np.log(abs(np.linalg.det(Sfac))) + m + np.log(Z0) - 0.5 * q * np.log(2 * np.pi)
    w = w / Z0
    _, d1 = _ll_d1(link, eta0[None] + U @ A.T, s, n)  # (nodes, rows)
    gbeta = w @ (d1 @ X)
    F2 = d1 @ Z  # (nodes, q)
    gL = np.einsum("t,tk,tl->kl", w, F2, U)
    mean = w @ U
    cov = (U - mean).T @ ((U - mean) * w[:, None])
    return val, gbeta, np.tril(gL), mean, cov, U, w


def _school_rows(design, resp, family, j):
    from twolevel.models.bayes.glmm_loglik import binomial_trials

    rows = np.flatnonzero(np.asarray(design.group_index) == j)
    if family == "binomial":
        s, n = binomial_trials(resp.y, resp.w)
        const = (special.gammaln(n + 1) - special.gammaln(s + 1) - special.gammaln(n - s + 1))
    else:
        s, n = np.round(resp.y), np.ones(design.n)
        const = -special.gammaln(s + 1)
    return (design.X[rows], design.Z[rows], s[rows], n[rows], resp.offset[rows],
            const[rows].sum())


@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize(("family", "link", "response", "extra"), CASES)
def test_agq_equals_brute_force(family, link, response, extra, q):
    """Q_j and its gradient in (β, L) of every school vs dense quadrature, to 1e-8 (with enough
    nodes that the rule's own error is below that: 40 per dimension for q = 1, 60 for q = 2,
    as one binomial cloglog school here is far from Gaussian)."""
    nodes = 40 if q == 1 else 60
    design, resp, data, structure = _setup(family, link, response, extra, q, nodes)
    rng = np.random.default_rng(11)
    x = _x(q, structure, rng)
    L = _unpack_L(x, q, structure)
    qj, gb, gL, uj, _ = agq.agq_schools(x, data, gradient=True)
    for j in range(design.n_groups):
        X, Z, s, n, off, const = _school_rows(design, resp, family, j)
        val, gbeta, gLb, mean, _, _, _ = _brute_school(
            "log" if family == "poisson" else link, X, Z, s, n, off, const, x[:2], L)
        assert qj[j] == pytest.approx(val, rel=1e-8, abs=1e-8), (j, qj[j], val)
        np.testing.assert_allclose(gb[j], gbeta, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(np.tril(gL[j]), gLb, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize(("family", "link", "response", "extra"), CASES)
def test_agq_gradient_equals_finite_differences(family, link, response, extra, q):
    """The whole log density's gradient (the total derivative of the AGQ rule, through the mode
    and the curvature, plus the priors) vs central differences, at the default nodes and at
    K = 1 (Laplace), to 1e-6 relative."""
    rng = np.random.default_rng(5)
    for nodes in (None, 1):
        _, _, data, structure = _setup(family, link, response, extra, q, nodes)
        x = _x(q, structure, rng)
        lp, g, st = agq.agq_logp(x, data)
        assert st == 0 and np.isfinite(lp)
        fd = np.empty_like(x)
        for k in range(x.size):
            e = np.zeros_like(x)
            h = 1e-5 * max(1.0, abs(x[k]))
            e[k] = h
            fd[k] = (agq.agq_logp(x + e, data)[0] - agq.agq_logp(x - e, data)[0]) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_threads_give_the_same_density():
    """Two OpenMP threads over schools give bitwise the density of one."""
    _, _, data, structure = _setup("binomial", "logit", "y01", "", 2, None)
    x = _x(2, structure, np.random.default_rng(1))
    a = agq.agq_logp(x, agq.with_threads(data, 1))
    b = agq.agq_logp(x, agq.with_threads(data, 2))
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


@pytest.mark.parametrize(("family", "link", "response", "extra", "q"), [
    ("binomial", "logit", "y01", "", 1), ("poisson", "log", "count", " + offset(log(expo))", 2),
    ("binomial", "cloglog", "cbind(succ, trials - succ)", "", 2)])
def test_school_effect_draws_are_exact(family, link, response, extra, q):
    """Draws of u_j given a fixed (β, L): mean and variance within 5 Monte-Carlo SEs of the
    dense-quadrature posterior, and for q = 1 the CDF not rejected by a Kolmogorov–Smirnov test
    against the quadrature CDF (p > 0.001)."""
    design, resp, data, structure = _setup(family, link, response, extra, q, None)
    x = _x(q, structure, np.random.default_rng(2))
    L = _unpack_L(x, q, structure)
    S = 4000
    u, acc = agq.draw_school_effects_agq(np.tile(x, (S, 1)), data, seed=7)
    assert u.shape == (S, design.n_groups, q) and 0.3 < acc.mean() <= 1.0
    for j in range(design.n_groups):
        X, Z, s, n, off, const = _school_rows(design, resp, family, j)
        _, _, _, mean, cov, U, w = _brute_school(
            "log" if family == "poisson" else link, X, Z, s, n, off, const, x[:2], L,
            npts=600 if q == 1 else 120)
        se = np.sqrt(np.diag(cov) / S)
        assert np.all(np.abs(u[:, j].mean(0) - mean) < 5 * se), (j, u[:, j].mean(0), mean)
        var_se = np.diag(cov) * np.sqrt(2.0 / S) * 1.5  # allow for mild excess kurtosis
        assert np.all(np.abs(u[:, j].var(0) - np.diag(cov)) < 5 * var_se)
        if q == 1:
            order = np.argsort(U[:, 0])
            cdf_x, cdf_y = U[order, 0], np.cumsum(w[order]) - 0.5 * w[order]
            p = stats.kstest(u[:, j, 0], lambda v, a=cdf_x, c=cdf_y: np.interp(v, a, c)).pvalue
            assert p > 1e-3, (j, p)


def test_q_above_three_and_unknown_link_say_what_to_do():
    design, resp, _, structure = _setup("binomial", "logit", "y01", "", 1, None)
    priors = default_glmm_priors(design, resp.y, resp.w, resp.offset, "binomial", "logit")
    with pytest.raises(Exception, match="no integrated .AGQ. kernel"):
        agq.pack_agq(design, resp.y, resp.w, resp.offset, "binomial", "cauchit", priors,
                     structure)
    with pytest.raises(Exception, match="nodes=70"):
        agq.pack_agq(design, resp.y, resp.w, resp.offset, "binomial", "logit", priors,
                     structure, nodes=70)


def test_newton_start_does_not_change_the_density():
    """Where Newton starts (agq.with_start) changes the cost, not the value or gradient."""
    _, _, data, structure = _setup("poisson", "log", "count", " + offset(log(expo))", 2, None)
    x = _x(2, structure, np.random.default_rng(4))
    b0 = np.random.default_rng(5).normal(size=(int(data[2]), 2))
    a = agq.agq_logp(x, data)
    b = agq.agq_logp(x, agq.with_start(data, b0))
    assert b[0] == pytest.approx(a[0], rel=1e-12)
    np.testing.assert_allclose(b[1], a[1], rtol=1e-9)


@pytest.mark.parametrize(("family", "link", "response", "extra"), [CASES[0], CASES[-1]])
def test_agq_gradient_q3_equals_finite_differences(family, link, response, extra):
    """Three correlated effects per school (27 nodes by default): the gradient equals central
    finite differences to 1e-6 relative."""
    d = _sim()
    d["x2"] = np.random.default_rng(9).normal(size=len(d))
    fam = get_family(family, link)
    design, resp = glmer_design(f"{response} ~ 1 + x{extra} + (1 + x + x2 | g)", d, fam, None)
    priors = default_glmm_priors(design, resp.y, resp.w, resp.offset, family, link)
    data = agq.pack_agq(design, resp.y, resp.w, resp.offset, family, link, priors, "lkj")
    x = np.array([-0.3, 0.4, np.log(0.7), 0.1, np.log(0.4), -0.1, 0.05, np.log(0.3)])
    lp, g, st = agq.agq_logp(x, data)
    assert st == 0 and np.isfinite(lp)
    fd = np.empty_like(x)
    for k in range(x.size):
        e = np.zeros_like(x)
        e[k] = 1e-5
        fd[k] = (agq.agq_logp(x + e, data)[0] - agq.agq_logp(x - e, data)[0]) / 2e-5
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
