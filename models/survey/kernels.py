"""Compiled loop over the schools for the profiled log pseudo-likelihood (numba,
``cache=True``): the same sums as :func:`twolevel.models.survey.pml.profile_theta`'s NumPy
path, which is kept as the independent check (``tests/test_survey.py``)."""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["weighted_checked_sums", "weighted_group_sums", "weighted_schur_sums",
           "weighted_schur_sums_q2", "weighted_score_sums", "weighted_score_sums_q2"]


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
    triangular), written out in scalars with L_j⁻¹ = adj(L_j)/|L_j| (one logarithm and one
    division per school, no square roots): with B = ΛᵀP_j,
    C_j[k,l] = Q_j[k,l] − (L11 B0k B0l − L10 (B0k B1l + B1k B0l) + L00 B1k B1l)/|L_j|."""
    J, m, _ = M.shape
    r = m - 2
    l00, l10, l11 = Lam[0, 0], Lam[1, 0], Lam[1, 1]
    Cs = np.zeros((r, r))
    b0 = np.empty(r)
    b1 = np.empty(r)
    logdet = 0.0
    for j in range(J):
        s00, s01, s11 = M[j, 0, 0], M[j, 0, 1], M[j, 1, 1]
        a00 = s00 * l00 + s01 * l10
        a10 = s01 * l00 + s11 * l10
        L00 = l00 * a00 + l10 * a10 + 1.0
        L10 = l11 * a10
        L11 = l11 * s11 * l11 + 1.0
        det = L00 * L11 - L10 * L10
        wj = w[j]
        logdet += wj * math.log(det)
        c = wj / det
        c00, c10, c11 = c * L11, c * L10, c * L00
        for k in range(r):
            p0 = M[j, 0, 2 + k]
            p1 = M[j, 1, 2 + k]
            b0[k] = l00 * p0 + l10 * p1
            b1[k] = l11 * p1
        for k in range(r):
            x0 = c00 * b0[k] - c10 * b1[k]
            x1 = c11 * b1[k] - c10 * b0[k]
            for ll in range(k, r):
                Cs[k, ll] += wj * M[j, 2 + k, 2 + ll] - (x0 * b0[ll] + x1 * b1[ll])
    for k in range(r):
        for ll in range(k):
            Cs[k, ll] = Cs[ll, k]
    return Cs, logdet


@numba.njit(cache=True, nogil=True, error_model="numpy")
def weighted_score_sums(M: np.ndarray, w: np.ndarray, Lam: np.ndarray, r: np.ndarray, q: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The two sums of :func:`twolevel.models.survey.pml.profiled_pseudo_loglik_gradient`:
    E = Σ_j w_j e_j u_jᵀ and G = Σ_j w_j L_j⁻¹ΛᵀS_zz (q × q each), with b_j = P_j r,
    u_j = L_j⁻¹Λᵀb_j, e_j = b_j − S_zzΛu_j, L_j = I + ΛᵀS_zzΛ (Cholesky per school)."""
    J, m, _ = M.shape
    E = np.zeros((q, q))
    G = np.zeros((q, q))
    L = np.empty((q, q))
    W = np.empty((q, q))
    b = np.empty(q)
    t = np.empty(q)
    u = np.empty(q)
    B = np.empty((q, q))
    for j in range(J):
        wj = w[j]
        for c in range(q):  # W = S_zz Λ, b = P r
            s = 0.0
            for k in range(m - q):
                s += M[j, c, q + k] * r[k]
            b[c] = s
            for d in range(q):
                s = 0.0
                for e in range(q):
                    s += M[j, c, e] * Lam[e, d]
                W[c, d] = s
        for a in range(q):  # L = ΛᵀW + I (lower), then its Cholesky factor in place
            for d in range(a + 1):
                s = 1.0 if a == d else 0.0
                for c in range(q):
                    s += Lam[c, a] * W[c, d]
                L[a, d] = s
        for a in range(q):
            s = L[a, a]
            for k in range(a):
                s -= L[a, k] * L[a, k]
            L[a, a] = math.sqrt(s)
            for i in range(a + 1, q):
                v = L[i, a]
                for k in range(a):
                    v -= L[i, k] * L[a, k]
                L[i, a] = v / L[a, a]
        # u = L⁻¹ Λᵀ b and B = L⁻¹ Λᵀ S_zz = L⁻¹ Wᵀ (column by column): forward, back
        for col in range(q + 1):
            for a in range(q):
                if col == 0:
                    s = 0.0
                    for c in range(q):
                        s += Lam[c, a] * b[c]
                else:
                    s = W[col - 1, a]
                for k in range(a):
                    s -= L[a, k] * t[k]
                t[a] = s / L[a, a]
            for a in range(q - 1, -1, -1):
                s = t[a]
                for k in range(a + 1, q):
                    s -= L[k, a] * t[k]
                t[a] = s / L[a, a]
            if col == 0:
                for a in range(q):
                    u[a] = t[a]
            else:
                for a in range(q):
                    B[a, col - 1] = t[a]
        for a in range(q):
            s = b[a]
            for d in range(q):
                s -= W[a, d] * u[d]  # e = b − S_zz Λ u
            for d in range(q):
                E[a, d] += wj * s * u[d]
                G[a, d] += wj * B[a, d]
    return E, G


@numba.njit(cache=True, nogil=True, error_model="numpy")
def weighted_score_sums_q2(M: np.ndarray, w: np.ndarray, Lam: np.ndarray, r: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`weighted_score_sums` for q = 2 (Λ lower triangular), in scalars with
    L_j⁻¹ = adj(L_j)/|L_j|; W = S_zzΛ, so S_zzΛu = Wu and L_j⁻¹ΛᵀS_zz = L_j⁻¹Wᵀ."""
    J, m, _ = M.shape
    nr = m - 2
    l00, l10, l11 = Lam[0, 0], Lam[1, 0], Lam[1, 1]
    E = np.zeros((2, 2))
    G = np.zeros((2, 2))
    for j in range(J):
        s00, s01, s11 = M[j, 0, 0], M[j, 0, 1], M[j, 1, 1]
        W00 = s00 * l00 + s01 * l10
        W10 = s01 * l00 + s11 * l10
        W01 = s01 * l11
        W11 = s11 * l11
        L00 = l00 * W00 + l10 * W10 + 1.0
        L10 = l11 * W10
        L11 = l11 * W11 + 1.0
        idet = 1.0 / (L00 * L11 - L10 * L10)
        i00, i10, i11 = L11 * idet, -L10 * idet, L00 * idet
        b0 = 0.0
        b1 = 0.0
        for k in range(nr):
            b0 += M[j, 0, 2 + k] * r[k]
            b1 += M[j, 1, 2 + k] * r[k]
        t0 = l00 * b0 + l10 * b1
        t1 = l11 * b1
        u0 = i00 * t0 + i10 * t1
        u1 = i10 * t0 + i11 * t1
        e0 = b0 - (W00 * u0 + W01 * u1)
        e1 = b1 - (W10 * u0 + W11 * u1)
        wj = w[j]
        E[0, 0] += wj * e0 * u0
        E[0, 1] += wj * e0 * u1
        E[1, 0] += wj * e1 * u0
        E[1, 1] += wj * e1 * u1
        G[0, 0] += wj * (i00 * W00 + i10 * W01)
        G[0, 1] += wj * (i00 * W10 + i10 * W11)
        G[1, 0] += wj * (i10 * W00 + i11 * W01)
        G[1, 1] += wj * (i10 * W10 + i11 * W11)
    return E, G


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


@numba.njit(cache=True, nogil=True)
def weighted_checked_sums(cols, codes: np.ndarray, w1: np.ndarray, w2: np.ndarray,
                          n_groups: int, conditional: bool, rtol: float):
    """The weighted statistics of the rows in ONE pass, with the weight checks fused in.

    Per row i of school g: the school weight w_g is the level-2 value of the school's first
    row; a_i = w1_i (``conditional``) or w1_i / w_g; S[g, k, l] += a_i c_ik c_il with c_i0 = 1
    and c_ik = ``cols[k − 1][i]`` (``cols`` a tuple of (n,) columns); ssq[g] += a_i².

    Returns (S, ssq, w, a, flags): flags is 0 when every weight is finite, w1 ≥ 0, w2 ≥ 0,
    a level-2 value within ``rtol`` of its school's w_g and every a_i > 0; otherwise a bit set
    (1: level 1 missing/infinite/negative, 2: level 2 likewise, 4: w2 varies within a school,
    8: a zero weight) and the caller redoes the checks with their messages
    (:mod:`twolevel.models.survey.weights`)."""
    n = codes.shape[0]
    d = len(cols)
    S = np.zeros((n_groups, d + 1, d + 1))
    ssq = np.zeros(n_groups)
    w = np.zeros(n_groups)
    seen = np.zeros(n_groups, dtype=np.bool_)
    a = np.empty(n)
    c = np.empty(d + 1)
    c[0] = 1.0
    flags = 0
    for i in range(n):
        g = codes[i]
        v1 = w1[i]
        v2 = w2[i]
        if not (v1 >= 0.0 and v1 < np.inf):
            flags |= 1
        if not (v2 >= 0.0 and v2 < np.inf):
            flags |= 2
        if not seen[g]:
            seen[g] = True
            w[g] = v2
        elif abs(v2 - w[g]) > rtol * max(abs(w[g]), 1e-300):
            flags |= 4
        wg = w[g]
        if conditional:
            ai = v1
        elif wg > 0.0:
            ai = v1 / wg
        else:
            ai = 0.0
        if not ai > 0.0:
            flags |= 8
        a[i] = ai
        ssq[g] += ai * ai
        k = 1
        for col in cols:
            c[k] = col[i]
            k += 1
        for k in range(d + 1):
            ak = ai * c[k]
            for ll in range(k, d + 1):
                S[g, k, ll] += ak * c[ll]
    for g in range(n_groups):
        for k in range(d + 1):
            for ll in range(k):
                S[g, k, ll] = S[g, ll, k]
    return S, ssq, w, a, flags
