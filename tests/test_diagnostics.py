"""R̂ and bulk/tail ESS vectorised over parameters (twolevel.models.bayes.diagnostics) equal
ArviZ's ``rhat`` / ``ess`` to 1e-10, including ties, constant columns and odd numbers of draws."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from twolevel.models.bayes import diagnostics as D


def _chains(seed=0, C=4, n=400, k=40):
    """AR(1) chains with autocorrelations from −0.5 to 0.97, one column whose chains disagree,
    one with ties (rounded), one constant and one slowly drifting."""
    rng = np.random.default_rng(seed)
    phi = np.linspace(-0.5, 0.97, k)
    x = np.empty((C, n, k))
    x[:, 0] = rng.normal(size=(C, k))
    e = rng.normal(size=(C, n, k))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    x[1, :, 0] += 3.0
    x[:, :, 1] = np.round(x[:, :, 1])
    x[:, :, 2] = 7.0
    x[:, :, 3] += np.linspace(0, 5, n)
    return x


def _arviz(x):
    import arviz as az

    ds = xr.Dataset({"x": (("chain", "draw", "k"), x)})
    with np.errstate(all="ignore"):
        return [np.asarray(r["x"].to_numpy(), float) for r in (
            az.rhat(ds), az.ess(ds, method="bulk"), az.ess(ds, method="tail"),
            az.ess(ds, method="mean"))]


@pytest.mark.parametrize("seed, n", [(0, 400), (1, 333), (2, 1000)])
def test_rhat_and_ess_equal_arviz(seed, n):
    x = _chains(seed, n=n)
    got = list(D.rhat_ess(x)) + [D.ess_mean(x)]
    for name, g, w in zip(["rhat", "bulk", "tail", "mean"], got, _arviz(x), strict=True):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=name)
        ok = ~np.isnan(w)
        np.testing.assert_allclose(g[ok], w[ok], rtol=1e-10, err_msg=name)
    assert got[0][0] > 1.1  # the disagreeing chains are seen
    assert got[1][2] == x.shape[0] * (x.shape[1] // 2) * 2  # a constant has ESS = draws


def test_separate_functions_agree_with_rhat_ess():
    x = _chains(4, n=200, k=7)
    r, b, t = D.rhat_ess(x)
    np.testing.assert_array_equal(r, D.rhat_rank(x))
    np.testing.assert_array_equal(b, D.ess_bulk(x))
    np.testing.assert_array_equal(t, D.ess_tail(x))


def test_threads_give_the_same_numbers():
    x = _chains(5, n=100, k=600)
    for a, b in zip(D.rhat_ess(x, threads=2), D.rhat_ess(x, threads=1), strict=True):
        np.testing.assert_array_equal(a, b)
