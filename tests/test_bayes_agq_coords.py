"""The integrated (AGQ) sampler's coordinates
(:func:`twolevel.models.bayes.agq.with_sampling_coordinates`): NUTS samples the LKJ model as
x = [β | log sd | atanh of the canonical partial correlations]; its log density is the
packed-Cholesky density at the same covariance plus the log Jacobian of the map between the two
(finite differences of a NumPy transform), its gradient equals finite differences, and the
expand callback writes each draw in the packed form, q = 2 and 3."""

from __future__ import annotations

import ctypes

import numpy as np
import pandas as pd
import pytest

from twolevel.models.bayes import agq
from twolevel.models.bayes.priors import default_glmm_priors
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.response import glmer_design


def _sim(seed=3, J=8):
    rng = np.random.default_rng(seed)
    nj = rng.integers(3, 12, J)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size)
    x2 = rng.normal(size=g.size)
    b = rng.normal(size=(J, 2)) * [0.7, 0.4]
    eta = -0.4 + 0.5 * x + b[g, 0] + b[g, 1] * x
    return pd.DataFrame({"g": [f"s{k}" for k in g], "x": x, "x2": x2,
                         "y": rng.binomial(1, 1 / (1 + np.exp(-eta))),
                         "count": rng.poisson(np.exp(eta))})


def _data(family, formula, structure="lkj"):
    d = _sim()
    fam = get_family(family, None)
    design, resp = glmer_design(formula, d, fam, None)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, family, fam.link)
    return agq.pack_agq(design, resp.y, resp.w, resp.offset, family, fam.link, pri, structure)


def _canonical(y, q, p=2):
    """[β | log sd | atanh CPC] → [β | packed L with log diagonal] (Stan's transform, NumPy)."""
    sd = np.exp(y[p:p + q])
    cpc = np.tanh(y[p + q:])
    Lc = np.zeros((q, q))
    Lc[0, 0] = 1.0
    k = 0
    for i in range(1, q):
        ss = 0.0
        for j in range(i):
            Lc[i, j] = cpc[k] * np.sqrt(1.0 - ss)
            ss += Lc[i, j] ** 2
            k += 1
        Lc[i, i] = np.sqrt(1.0 - ss)
    L = sd[:, None] * Lc
    r, c = np.tril_indices(q)
    v = L[r, c]
    v[r == c] = np.log(v[r == c])
    return np.concatenate([y[:p], v])


def _log_jacobian(y, q):
    h = 1e-6
    J = np.empty((y.size, y.size))
    for k in range(y.size):
        e = np.zeros_like(y)
        e[k] = h
        J[:, k] = (_canonical(y + e, q) - _canonical(y - e, q)) / (2 * h)
    return np.log(abs(np.linalg.det(J)))


@pytest.mark.parametrize(("family", "formula", "q"), [
    ("binomial", "y ~ 1 + x + (1 + x | g)", 2),
    ("poisson", "count ~ 1 + x + (1 + x + x2 | g)", 3)])
def test_sampling_coordinates_are_the_same_posterior(family, formula, q):
    data = _data(family, formula)
    samp = agq.with_sampling_coordinates(data)
    assert samp[4] == agq.SD_CPC and data[4] != agq.SD_CPC
    rng = np.random.default_rng(7)
    m = q * (q - 1) // 2
    for _ in range(3):
        y = np.concatenate([[-0.3, 0.4], np.log(rng.uniform(0.2, 1.0, q)),
                            rng.normal(0.0, 0.6, m)])
        lp_c, _, st_c = agq.agq_logp(_canonical(y, q), data)
        lp, g, st = agq.agq_logp(y, samp)
        assert st == 0 and st_c == 0
        # the same density of (β, T), in other coordinates: the Jacobian (finite differences
        # of a smooth transform: ~1e-10)
        assert lp == pytest.approx(lp_c + _log_jacobian(y, q), abs=1e-7)
        fd = np.empty_like(y)
        for k in range(y.size):
            e = np.zeros_like(y)
            e[k] = 1e-5
            fd[k] = (agq.agq_logp(y + e, samp)[0] - agq.agq_logp(y - e, samp)[0]) / 2e-5
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_expand_writes_the_packed_factor_and_school_logliks():
    q = 2
    data = _data("binomial", "y ~ 1 + x + (1 + x | g)")
    samp = agq.with_sampling_coordinates(data)
    J = int(data[2])
    y = np.array([-0.2, 0.3, np.log(0.7), np.log(0.4), 0.5])
    lib = agq.load()
    out = np.empty(y.size + J)
    dbl = ctypes.POINTER(ctypes.c_double)
    st = lib.twolevel_expand_agq(ctypes.c_uint64(y.size), ctypes.c_uint64(out.size),
                                 y.ctypes.data_as(dbl), out.ctypes.data_as(dbl),
                                 ctypes.c_void_p(samp.ctypes.data))
    assert st == 0
    x = _canonical(y, q)
    np.testing.assert_allclose(out[:y.size], x, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(out[y.size:], agq.agq_schools(x, data), rtol=1e-12)


def test_diagonal_structure_keeps_its_coordinates():
    data = _data("binomial", "y ~ 1 + x + (1 + x || g)", "diag")
    assert int(data[4]) != agq.SD_CPC
    assert np.array_equal(agq.with_sampling_coordinates(data), data)
