"""Tail probabilities of the t and F distributions, for the p-values of lmerTest's tables, without
importing SciPy.

Why not ``scipy.special.stdtr`` / ``fdtrc``: importing ``scipy.special`` costs about 0.2–0.4 s of
CPU (SciPy's array-API layer imports ``numpy.f2py`` and ``numpy.testing``), a third of what
``twolevel fit`` spends in all, for two numbers per coefficient. Both tails are the regularised
incomplete beta function, evaluated here by its continued fraction (Numerical Recipes §6.4,
modified Lentz). ``tests/test_pvalues.py`` holds every function to SciPy's (``betainc``,
``stdtr``, ``fdtrc``), the reference: 1e-12 relative up to 10⁴ degrees of freedom, 1e-9 up to
10⁷ (near x = 1 with ν/2 large the continued fraction loses digits; a p-value is printed to four
significant digits).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["betainc_reg", "f_sf", "t_sf2"]

_TINY = 1e-300
_EPS = 1e-16
_MAX_ITER = 100_000


def _betacf(a: float, b: float, x: float, y: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz):

    I_x(a, b) = x^a (1−x)^b / (a B(a, b)) · 1 / (1 + d₁ / (1 + d₂ / (1 + …))), with
    d_{2m+1} = −(a+m)(a+b+m) x / ((a+2m)(a+2m+1)) and d_{2m} = m(b−m) x / ((a+2m−1)(a+2m));
    it converges fast for x < (a+1)/(a+b+2). The first denominator 1 − (a+b)x/(a+1) is formed
    as (1 − b + (a+b)y)/(a+1) from y = 1 − x: near x = 1 with a large the first form loses
    most of its digits."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, (1.0 - b + qab * y) / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def _stirlerr(x: float) -> float:
    """Stirling's remainder δ(x) = log Γ(x) − [(x − ½) log x − x + ½ log 2π], by its asymptotic
    series 1/(12x) − 1/(360x³) + 1/(1260x⁵) − 1/(1680x⁷) + 1/(1188x⁹) (x ≥ 15: error < 1e-16)."""
    x2 = 1.0 / (x * x)
    return (1.0 / 12 - x2 * (1.0 / 360 - x2 * (1.0 / 1260 - x2 * (1.0 / 1680 - x2 / 1188)))) / x


def _lbeta(a: float, b: float) -> float:
    """log B(a, b) = log Γ(a) + log Γ(b) − log Γ(a + b), without the cancellation of the three
    log-gammas when the larger argument is large: with a ≥ b and a ≥ 15,
    log B = log Γ(b) − (a − ½) log1p(b/a) − b log(a + b) + b + δ(a) − δ(a + b)."""
    if a < b:
        a, b = b, a
    if a < 15.0:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return (math.lgamma(b) - (a - 0.5) * math.log1p(b / a) - b * math.log(a + b) + b
            + _stirlerr(a) - _stirlerr(a + b))


def _log_front(a: float, b: float, x: float, y: float) -> float:
    """log of x^a y^b / (a B(a, b)) with y = 1 − x (each log from the smaller of x and y, by
    log1p, so that neither loses digits near 1)."""
    lx = math.log1p(-y) if y < 0.5 else math.log(x)
    ly = math.log1p(-x) if x < 0.5 else math.log(y)
    return a * lx + b * ly - math.log(a) - _lbeta(a, b)


def _betainc_scalar(a: float, b: float, x: float, y: float | None = None) -> float:
    """I_x(a, b); ``y`` = 1 − x when the caller can form it without cancellation."""
    if math.isnan(a) or math.isnan(b) or math.isnan(x) or a <= 0 or b <= 0 or not 0 <= x <= 1:
        return math.nan
    if y is None:
        y = 1.0 - x
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(_log_front(a, b, x, y)) * _betacf(a, b, x, y)
    return 1.0 - math.exp(_log_front(b, a, y, x)) * _betacf(b, a, y, x)


def betainc_reg(a, b, x):
    """Regularised incomplete beta function I_x(a, b) = B(x; a, b) / B(a, b), with
    B(x; a, b) = ∫₀ˣ t^{a−1} (1−t)^{b−1} dt (``scipy.special.betainc``).

    Parameters
    ----------
    a, b : float or array_like
        Positive shape parameters.
    x : float or array_like
        Point in [0, 1].

    Returns
    -------
    float or numpy.ndarray
        I_x(a, b), broadcast over the arguments; NaN outside the domain.

    Examples
    --------
    >>> from twolevel.models.pvalues import betainc_reg
    >>> round(float(betainc_reg(2.0, 3.0, 0.4)), 6)
    0.5248
    """
    out = np.vectorize(_betainc_scalar, otypes=[float])(a, b, x)
    return float(out) if out.ndim == 0 else out


def t_sf2(t, df):
    """Two-sided p-value of a t statistic, P(|T_ν| ≥ |t|) = 2·``stdtr``(ν, −|t|)
    = I_{ν/(ν+t²)}(ν/2, 1/2).

    Parameters
    ----------
    t : float or array_like
        t statistics.
    df : float or array_like
        Degrees of freedom ν > 0 (not necessarily whole: Satterthwaite's or Kenward–Roger's).

    Returns
    -------
    float or numpy.ndarray
        The p-values, as lmerTest's ``Pr(>|t|)``; NaN where t or ν is NaN or ν ≤ 0.

    Examples
    --------
    >>> from twolevel.models.pvalues import t_sf2
    >>> round(t_sf2(1.959963984540054, 1e12), 8)
    0.05
    """
    def one(t: float, nu: float) -> float:
        if math.isnan(t) or math.isnan(nu) or nu <= 0:
            return math.nan
        if math.isinf(t):
            return 0.0
        t2 = t * t
        if math.isinf(nu):  # the normal limit
            return math.erfc(abs(t) / math.sqrt(2.0))
        # x = ν/(ν+t²) and 1 − x = t²/(ν+t²), each formed without cancellation
        if t2 == 0:
            return 1.0
        return _betainc_scalar(0.5 * nu, 0.5, nu / (nu + t2), t2 / (nu + t2))

    out = np.vectorize(one, otypes=[float])(t, df)
    return float(out) if out.ndim == 0 else out


def f_sf(f, df1, df2):
    """Upper tail of the F distribution, P(F_{d₁,d₂} ≥ f) = ``fdtrc``(d₁, d₂, f)
    = I_{d₂/(d₂+d₁f)}(d₂/2, d₁/2).

    Parameters
    ----------
    f : float or array_like
        F statistics (≥ 0).
    df1, df2 : float or array_like
        Numerator and denominator degrees of freedom (> 0).

    Returns
    -------
    float or numpy.ndarray
        The p-values, as lmerTest's ``Pr(>F)``; NaN outside the domain.

    Examples
    --------
    >>> from twolevel.models.pvalues import f_sf
    >>> round(f_sf(3.0, 2.0, 30.0), 6)
    0.064713
    """
    def one(f: float, d1: float, d2: float) -> float:
        if math.isnan(f) or math.isnan(d1) or math.isnan(d2) or d1 <= 0 or d2 <= 0 or f < 0:
            return math.nan
        if math.isinf(f):
            return 0.0
        if f == 0:
            return 1.0
        return _betainc_scalar(0.5 * d2, 0.5 * d1, d2 / (d2 + d1 * f), d1 * f / (d2 + d1 * f))

    out = np.vectorize(one, otypes=[float])(f, df1, df2)
    return float(out) if out.ndim == 0 else out
