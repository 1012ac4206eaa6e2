"""``twolevel.models.pvalues`` (the t and F tails of lmerTest's tables, without importing SciPy)
against SciPy's ``betainc``, ``stdtr`` and ``fdtrc``, the reference: 1e-12 relative for shape
parameters up to 5,000 (Satterthwaite df up to 10⁴), 1e-9 beyond (the continued fraction loses
digits near x = 1 when ν/2 is large; p-values are printed to 4 significant digits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from twolevel.models.pvalues import betainc_reg, f_sf, t_sf2

DFS = [0.5, 1.0, 2.5, 7.0, 30.0, 741.37, 1e4, 1e6, 1e7]
TS = [0.0, 1e-9, 1e-4, 0.3, 1.0, 1.96, 3.0, 8.0, 40.0, 300.0]


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


def tol(df: float) -> float:
    return 1e-12 if df <= 1e4 else 1e-9


@pytest.mark.parametrize("df", DFS)
def test_t_sf2_equals_scipy(df):
    t = np.array(TS + [-x for x in TS])
    ref = 2.0 * special.stdtr(df, -np.abs(t))
    if df == 1.0:  # Cauchy: exact, where stdtr rounds 1 − 6.4e-10 to 1 at t = 1e-9
        ref = 1.0 - 2.0 * np.arctan(np.abs(t)) / np.pi
    keep = ref > 1e-290  # below that both underflow
    assert rel(t_sf2(t, df)[keep], ref[keep]) < tol(df)


@pytest.mark.parametrize("d1", [1.0, 2.0, 3.5, 12.0])
@pytest.mark.parametrize("d2", [0.7, 4.0, 38.2, 1e3, 1e6])
def test_f_sf_equals_scipy(d1, d2):
    f = np.array([0.0, 1e-6, 0.2, 1.0, 2.5, 7.0, 40.0, 1e3])
    ref = special.fdtrc(d1, d2, f)
    keep = ref > 1e-290
    assert rel(f_sf(f, d1, d2)[keep], ref[keep]) < tol(d2)


def test_betainc_equals_scipy_on_random_arguments():
    rng = np.random.default_rng(3)
    a = np.exp(rng.uniform(-2, 8.5, 400))
    b = np.exp(rng.uniform(-2, 8.5, 400))
    x = rng.uniform(0, 1, 400)
    ref = special.betainc(a, b, x)
    keep = ref > 1e-290
    assert rel(betainc_reg(a, b, x)[keep], ref[keep]) < 1e-12


def test_edges():
    assert t_sf2(0.0, 5.0) == 1.0 and t_sf2(math.inf, 5.0) == 0.0
    assert math.isnan(t_sf2(1.0, 0.0)) and math.isnan(t_sf2(math.nan, 5.0))
    assert t_sf2(1.959963984540054, math.inf) == pytest.approx(0.05, rel=1e-14)
    assert f_sf(0.0, 2.0, 3.0) == 1.0 and math.isnan(f_sf(-1.0, 2.0, 3.0))
    assert betainc_reg(2.0, 3.0, 0.0) == 0.0 and betainc_reg(2.0, 3.0, 1.0) == 1.0


def test_continued_fraction_that_does_not_converge_says_so(monkeypatch):
    import twolevel.models.pvalues as pv

    monkeypatch.setattr(pv, "_MAX_ITER", 2)
    with pytest.raises(ArithmeticError, match=r"did not converge \(a=0.5, b=50.0\)"):
        pv.t_sf2(1.0, 100.0)
