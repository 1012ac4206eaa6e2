"""Compiled loop over the schools for the profiled log pseudo-likelihood (numba,
``cache=True``): the same sums as :func:`twolevel.models.survey.pml.profile_theta`'s NumPy
path, which is kept as the independent check (``tests/test_survey.py``)."""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["weighted_group_sums", "weighted_schur_sums", "weighted_schur_sums_q2"]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def weighted_schur_sums(M: np.ndarray, w: np.ndarray, Lam: np.ndarray, q: int
                        ) -> tuple[np.ndarray, float]:
    """Σ_j w_j C_j and Σ_j w_j log|L_j| with L_j = I + ΛᵀS_zzΛ = R_jR_jᵀ and
    C_j = Q_j − V_jᵀV_j, V_j = R_j⁻¹ΛᵀP_j (``pml`` module docstring); M is (J, q+p+1, q+p+1)."""
    J, m, _ = M.shape
    r = m - q
    Cs = np.zeros((r, r))
    logdet = 0.0
    L = np.empty((q, q))
    W = np.empty((q, q))
    V = np.empty((q, r))
    for j in range(J):
        wj = w[j]
        # W = S_zz Λ, L = ΛᵀW + I
        for c in range(q):
            for b in range(q):
                s = 0.0
                for d in range(q):
                    s += M[j, c, d] * Lam[d, b]
                W[c, b] = s
        for a in range(q):
            for b in range(a + 1):
                s = 1.0 if a == b else 0.0
                for c in range(q):
                    s += Lam[c, a] * W[c, b]
                L[a, b] = s
        # Cholesky in place (lower)
        ld = 0.0
        for a in range(q):
            s = L[a, a]
            for k in range(a):
                s -= L[a, k] * L[a, k]
            ld += math.log(s)
            L[a, a] = math.sqrt(s)
            for i in range(a + 1, q):
                t = L[i, a]
                for k in range(a):
                    t -= L[i, k] * L[a, k]
                L[i, a] = t / L[a, a]
        logdet += wj * ld
        # V = R⁻¹ Λᵀ P
        for k in range(r):
            for a in range(q):
                s = 0.0
                for c in range(q):
                    s += Lam[c, a] * M[j, c, q + k]
                for b in range(a):
                    s -= L[a, b] * V[b, k]
                V[a, k] = s / L[a, a]
        for k in range(r):
            for ll in range(k, r):
                s = M[j, q + k, q + ll]
                for a in range(q):
                    s -= V[a, k] * V[a, ll]
                Cs[k, ll] += wj * s
    for k in range(r):
        for ll in range(k):
            Cs[k, ll] = Cs[ll, k]
    return Cs, logdet


@numba.njit(cache=True, nogil=True, error_model="numpy")
def weighted_schur_sums_q2(M: np.ndarray, w: np.ndarray, Lam: np.ndarray
                           ) -> tuple[np.ndarray, float]:
    """:func:`weighted_schur_sums` for q = 2 (a random intercept and slope; Λ lower
    triangular), written out in scalars."""
    J, m, _ = M.shape
    r = m - 2
    l00, l10, l11 = Lam[0, 0], Lam[1, 0], Lam[1, 1]
    Cs = np.zeros((r, r))
    v0 = np.empty(r)
    v1 = np.empty(r)
    logdet = 0.0
    for j in range(J):
        s00, s01, s11 = M[j, 0, 0], M[j, 0, 1], M[j, 1, 1]
        a00 = s00 * l00 + s01 * l10
        a10 = s01 * l00 + s11 * l10
        L00 = l00 * a00 + l10 * a10 + 1.0
        L10 = l11 * a10
        L11 = l11 * s11 * l11 + 1.0
        r00 = math.sqrt(L00)
        r10 = L10 / r00
        d11 = L11 - r10 * r10
        r11 = math.sqrt(d11)
        wj = w[j]
        logdet += wj * (math.log(L00) + math.log(d11))
        for k in range(r):
            p0 = M[j, 0, 2 + k]
            p1 = M[j, 1, 2 + k]
            x0 = (l00 * p0 + l10 * p1) / r00
            v0[k] = x0
            v1[k] = (l11 * p1 - r10 * x0) / r11
        for k in range(r):
            for ll in range(k, r):
                Cs[k, ll] += wj * (M[j, 2 + k, 2 + ll] - v0[k] * v0[ll] - v1[k] * v1[ll])
    for k in range(r):
        for ll in range(k):
            Cs[k, ll] = Cs[ll, k]
    return Cs, logdet


@numba.njit(cache=True, nogil=True)
def weighted_group_sums(cols: np.ndarray, codes: np.ndarray, a: np.ndarray, n_groups: int
                        ) -> np.ndarray:
    """One pass over the rows: S[g, k, l] = Σ_{i in g} a_i c_ik c_il with c_i0 = 1 and
    c_ik = ``cols[k − 1, i]`` (``cols`` is (d, n)); returns (J, d+1, d+1), symmetric."""
    d, n = cols.shape
    S = np.zeros((n_groups, d + 1, d + 1))
    c = np.empty(d + 1)
    c[0] = 1.0
    for i in range(n):
        g = codes[i]
        ai = a[i]
        for k in range(d):
            c[k + 1] = cols[k, i]
        for k in range(d + 1):
            ak = ai * c[k]
            for ll in range(k, d + 1):
                S[g, k, ll] += ak * c[ll]
    for g in range(n_groups):
        for k in range(d + 1):
            for ll in range(k):
                S[g, k, ll] = S[g, ll, k]
    return S
