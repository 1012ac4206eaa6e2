"""Monte-Carlo summaries of simulated power: the share of rejections, its standard error and
Wilson's score interval."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["summarise", "wilson_interval"]


def wilson_interval(k: int, m: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a binomial share k/m: (p̂ + z²/2m ± z√(p̂(1−p̂)/m + z²/4m²))
    / (1 + z²/m)."""
    if m == 0:
        return (math.nan, math.nan)
    z = float(stats.norm.isf((1.0 - level) / 2.0))
    p = k / m
    den = 1.0 + z * z / m
    mid = (p + z * z / (2 * m)) / den
    half = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def summarise(p: np.ndarray, alpha: float) -> dict:
    """The Monte-Carlo summary of one setting's p-values (NaN: a failed refit): ``nsim``,
    ``failed``, ``rejections`` (p < α), ``power`` = rejections / m successful refits, ``se`` =
    √(p̂(1−p̂)/m) and Wilson's 95% ``lower``/``upper`` (:func:`wilson_interval`)."""
    ok = p[np.isfinite(p)]
    m, k = ok.size, int(np.sum(ok < alpha))
    pw = k / m if m else math.nan
    lo, hi = wilson_interval(k, m)
    return {"nsim": int(p.size), "failed": int(p.size - m), "rejections": k, "power": pw,
            "se": math.sqrt(pw * (1 - pw) / m) if m else math.nan, "lower": lo, "upper": hi}
