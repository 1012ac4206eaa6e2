"""Compiled loop (numba) for one level of the nested block elimination.

Plain arrays in, numbers out. For every group i of a level (G_i of size m × m, already scaled,
the identity not yet added): Cholesky of G_i,11 + I_q = L Lᵀ in a small work array, forward
substitution Rᵀ = L⁻¹G_i,12, and the Schur complement G_i,22 − RRᵀ added into its parent's
block. This is :func:`twolevel.models.lmm.nested._eliminate` plus the sum to the parents,
without the intermediate (n, m, m) arrays. Compiled on first use (``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["eliminate_level"]


@numba.njit(cache=True, nogil=True)
def eliminate_level(G, t, q, parent, out):
    """Eliminate the first ``q`` rows/columns of every diag(t) G[i] diag(t) (adding I_q first)
    and add each Schur complement into ``out[parent[i]]`` (``out`` zeroed by the caller); ``t``
    scales the rows and columns (a diagonal T; ones when G is already scaled). Returns
    2Σ log diag L, or NaN when a block is not positive definite."""
    n, m, _ = G.shape
    r = m - q
    L = np.empty((q, q))
    Rt = np.empty((q, r))
    ld = 0.0
    for i in range(n):
        for a in range(q):
            for b in range(a + 1):
                s = G[i, a, b] * t[a] * t[b] + (1.0 if a == b else 0.0)
                for k in range(b):
                    s -= L[a, k] * L[b, k]
                if a == b:
                    if s <= 0.0:
                        return np.nan
                    L[a, a] = math.sqrt(s)
                    ld += 2.0 * math.log(L[a, a])
                else:
                    L[a, b] = s / L[b, b]
        for a in range(q):
            for c in range(r):
                s = G[i, a, q + c] * t[a] * t[q + c]
                for k in range(a):
                    s -= L[a, k] * Rt[k, c]
                Rt[a, c] = s / L[a, a]
        pi = parent[i]
        for c1 in range(r):
            for c2 in range(c1 + 1):
                s = G[i, q + c1, q + c2] * t[q + c1] * t[q + c2]
                for k in range(q):
                    s -= Rt[k, c1] * Rt[k, c2]
                out[pi, c1, c2] += s
                if c1 != c2:
                    out[pi, c2, c1] += s
    return ld
