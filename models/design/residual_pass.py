"""Scaled-residual quantiles at scale: exact type-7 quantiles in streaming passes (spec §7).

lme4's summary prints the quantiles 0, .25, .5, .75, 1 of r_i = (y_i − x_iᵀβ̂ − z_iᵀb̃_j)/σ̂. At
scale the J-row table of b̃ is joined back to the rows on the group key, and:

1. one pass gives n, the exact min and max, and a rough quartile q̂ (DuckDB's ``approx_quantile``);
2. for each quartile p, with h = (n − 1)p and k = ⌊h⌋, a pass counts the rows below a window
   [q̂ − w, q̂ + w] and collects the sorted values inside it. When the count below is ≤ k and the
   window holds ranks k and k+1, the quantile is x₍ₖ₎ + (h − k)(x₍ₖ₊₁₎ − x₍ₖ₎), exactly R's type 7;
   otherwise the window is re-centred and widened and the pass repeated.

Only the window is held, never the rows. The counts and windows of Dask partitions add, so the
same passes serve both engines.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twolevel.models.design.sql import quote, sql_literal

__all__ = ["residual_quantiles", "residual_sql"]

_PROBS = (0.25, 0.5, 0.75)
_MAX_ROUNDS = 40


def residual_sql(design, beta: np.ndarray, sigma: float) -> str:
    """SQL of the scaled residual (y − Xβ − Σ_k b_k z_k)/σ, with b̃ from the joined table ``__b``."""
    xb = " + ".join(f"{sql_literal(float(b))} * ({x})"
                    for b, x in zip(beta, design.x_sql, strict=True))
    zb = " + ".join(f'"__b{k}" * ({z})' for k, z in enumerate(design.z_sql))
    return f"((({design.y_sql}) - ({xb or '0'}) - ({zb or '0'})) / {sql_literal(float(sigma))})"


def residual_quantiles(design, beta: np.ndarray, b: np.ndarray, sigma: float
                       ) -> tuple[np.ndarray, str]:
    """Quantiles 0, .25, .5, .75, 1 of the scaled residuals and a note: "(exact, streaming)" when
    every window closed, else "(approximate: T-Digest)" for the quartiles left open."""
    runner = design.runner
    bt = pd.DataFrame({design.group: design.group_levels})
    for k in range(design.q):
        bt[f"__b{k}"] = b[:, k]
    runner.set_table("__b", bt)
    from_ = f"{design.from_sql} JOIN __b USING ({quote(design.group)})"
    sub = (f"(SELECT {residual_sql(design, beta, sigma)} AS r FROM {from_} "
           f"WHERE {design.where_sql}) AS __r")
    first = runner.scalar(["count(*) AS n_r", "min(r) AS lo_r", "max(r) AS hi_r",
                           "approx_quantile(r, [0.25, 0.5, 0.75]) AS w_aq"], sub, "TRUE")
    n = int(first["n_r"])
    aq = np.asarray(first["w_aq"], dtype=float).reshape(-1, 3)  # one row of 3 per partition
    guess = np.median(aq, axis=0)
    lo_r, hi_r = float(first["lo_r"]), float(first["hi_r"])
    out = {0.0: lo_r, 1.0: hi_r}
    width = {p: 1e-3 for p in _PROBS}
    centre = {p: float(g) for p, g in zip(_PROBS, guess, strict=True)}
    open_ = list(_PROBS)
    for _ in range(_MAX_ROUNDS):
        if not open_:
            break
        sel = []
        for i, p in enumerate(open_):
            lo, hi = centre[p] - width[p], centre[p] + width[p]
            sel.append(f"count(*) FILTER (WHERE r < {sql_literal(lo)}) AS n_below{i}")
            sel.append(f"list(r ORDER BY r) FILTER (WHERE r >= {sql_literal(lo)} AND "
                       f"r <= {sql_literal(hi)}) AS w_win{i}")
        res = runner.scalar(sel, sub, "TRUE")
        still = []
        for i, p in enumerate(open_):
            below = int(res[f"n_below{i}"])
            win = np.sort(np.asarray(res[f"w_win{i}"], dtype=float))
            h = (n - 1) * p
            k = int(np.floor(h))
            if below <= k and below + win.shape[0] >= k + 2 - (k + 1 >= n):
                x0 = win[k - below]
                x1 = win[min(k + 1 - below, win.shape[0] - 1)] if k + 1 < n else x0
                out[p] = float(x0 + (h - k) * (x1 - x0))
                continue
            # move the window toward the missing ranks and widen it
            centre[p] += -width[p] if below > k else width[p]
            width[p] *= 4.0
            still.append(p)
        open_ = still
    note = "(exact, streaming passes)"
    if open_:
        for p in open_:
            out[p] = float(centre[p])
        note = "(approximate for " + ", ".join(str(p) for p in open_) + ")"
    return np.array([out[0.0], out[0.25], out[0.5], out[0.75], out[1.0]]), note
