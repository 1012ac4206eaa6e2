"""The per-school integrated log-likelihood of the full sampler's draws by the integrated
sampler's C kernel (``glmm_fit._school_loglik_c``) equals the numba reference
(:func:`twolevel.models.bayes.glmm_loglik.school_loglik_agq`, the same nodes) to 1e-9, for the
logit and log links with trials and offsets, one and two correlated or independent effects; other
links are left to the reference (None)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twolevel.models.bayes.glmm_fit import _school_loglik_c
from twolevel.models.bayes.glmm_loglik import school_loglik_agq
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.response import glmer_design


def _sim(seed=2, J=9):
    rng = np.random.default_rng(seed)
    nj = rng.integers(3, 12, J)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size)
    eta = -0.3 + 0.5 * x + rng.normal(size=J)[g] * 0.7
    trials = rng.integers(1, 6, g.size)
    expo = rng.uniform(0.5, 2.0, g.size)
    return pd.DataFrame({"g": [f"s{k}" for k in g], "x": x,
                         "y": rng.binomial(1, 1 / (1 + np.exp(-eta))),
                         "succ": rng.binomial(trials, 1 / (1 + np.exp(-eta))), "trials": trials,
                         "count": rng.poisson(expo * np.exp(eta)), "expo": expo})


@pytest.mark.parametrize(("family", "link", "formula"), [
    ("binomial", "logit", "y ~ 1 + x + (1 + x | g)"),
    ("binomial", "logit", "cbind(succ, trials - succ) ~ 1 + x + (1 | g)"),
    ("poisson", "log", "count ~ 1 + x + offset(log(expo)) + (1 + x | g)"),
    ("poisson", "log", "count ~ 1 + x + offset(log(expo)) + (1 + x || g)")])
def test_c_school_loglik_equals_the_reference(family, link, formula):
    d = _sim()
    design, resp = glmer_design(formula, d, get_family(family, link), None)
    q, S = design.q, 5
    rng = np.random.default_rng(1)
    beta = np.array([-0.3, 0.5]) + 0.1 * rng.normal(size=(S, 2))
    L = np.zeros((S, q, q))
    for i in range(S):
        L[i][np.diag_indices(q)] = rng.uniform(0.3, 1.0, q)
        if q == 2 and "||" not in formula:
            L[i, 1, 0] = rng.normal(0.0, 0.3)
    w = resp.w if family == "binomial" else np.ones(design.n)
    got = _school_loglik_c(design, resp, family, link, beta, L, None)
    ref = school_loglik_agq(design.X, design.Z, design.group_index, design.n_groups, resp.y, w,
                            resp.offset, family, link, beta, L, None)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_other_links_use_the_reference():
    d = _sim()
    design, resp = glmer_design("y ~ 1 + x + (1 | g)", d, get_family("binomial", "probit"), None)
    assert _school_loglik_c(design, resp, "binomial", "probit", np.zeros((1, 2)),
                            np.ones((1, 1, 1)), None) is None
