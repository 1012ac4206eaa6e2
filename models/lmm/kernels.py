"""Compiled loops over rows and groups for the profiled criterion (numba).

Numerical kernels only: plain arrays in, arrays or numbers out; nothing here knows about formulas
or data frames. Each group's work is a q × q LDLᵀ factorisation and a few q × (p+1) products held
in small work arrays, so one pass costs O(J·(q³ + q²p)) flops and O(1) extra memory. Compiled on
first use (``cache=True``: later processes load the machine code from ``__pycache__``).

Notation as in :mod:`twolevel.models.lmm.deviance`: T (q × q, lower triangular), A_j = Z_jᵀZ_j,
[B_j c_j] = Z_jᵀ[X_j y_j], M_j = TᵀA_jT + I_q = L_jL_jᵀ.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["pls_parts_batch_kernel", "pls_parts_kernel", "theta_grad_kernel"]

# status codes of the criterion kernels
OK = 0
X_NOT_PD = 1  # the down-dated XᵀX (p × p block) is not positive definite

_REASSOC = {"reassoc", "contract"}  # fastmath flags of the block sums: reorder and fuse, no more
_BLOCK = 512  # groups per block of the q = 2 kernel (its work arrays stay in the L1/L2 cache)
_LOG_FLUSH = 1e100  # the running product of det M_j is folded into its logarithm above this
_LOG_DIRECT = 1e200  # a det M_j above this goes to the logarithm directly


@numba.njit(cache=True, nogil=True, inline="always")
def _group_ldl(T, A, j, AT, L, dinv):
    """M_j = TᵀA_jT + I = L D Lᵀ with L unit lower triangular (strictly lower part stored in
    ``L``) and ``dinv`` ← 1 / diag(D); AT is work space. Returns det M_j = Π D_ii. No square
    roots, and q divisions per group."""
    q = T.shape[0]
    for a in range(q):
        for c in range(q):
            s = 0.0
            for b in range(c, q):
                s += A[j, a, b] * T[b, c]
            AT[a, c] = s
    for a in range(q):
        for c in range(a + 1):
            s = 1.0 if a == c else 0.0
            for b in range(a, q):
                s += T[b, a] * AT[b, c]
            L[a, c] = s
    det = 1.0
    for i in range(q):
        # L[i, k] holds (L D)[i, k] = L[i, k]·D_k until scaled below
        d = L[i, i]
        for k in range(i):
            d -= L[i, k] * L[i, k] * dinv[k]
        det *= d
        di = 1.0 / d
        dinv[i] = di
        for r in range(i + 1, q):
            s = L[r, i]
            for k in range(i):
                s -= L[r, k] * L[i, k] * dinv[k]
            L[r, i] = s
    # scale the columns: L[r, i] ← (L D)[r, i] / D_i
    for i in range(q):
        for r in range(i + 1, q):
            L[r, i] *= dinv[i]
    return det


@numba.njit(cache=True, nogil=True, inline="always")
def _group_r(T, BC, j, L, R):
    """R ← L_j⁻¹Tᵀ[B_j c_j] (q × (p+1), L unit lower triangular) by forward substitution; then
    R_jᵀR_j of the Cholesky form is Σ_a R[a]ᵀR[a]/D_a."""
    q, m = R.shape
    for a in range(q):
        for k in range(m):
            s = 0.0
            for b in range(a, q):
                s += T[b, a] * BC[j, b, k]
            for b in range(a):
                s -= L[a, b] * R[b, k]
            R[a, k] = s


@numba.njit(cache=True, nogil=True, inline="always")
def _fold_log(det, prod, logsum):
    """Σ log det M_j kept as a running product (det M_j ≥ 1) folded into a sum of logarithms
    before it could overflow; returns the new (prod, logsum)."""
    if det > _LOG_DIRECT:
        return prod, logsum + math.log(det)
    prod *= det
    if prod > _LOG_FLUSH:
        return 1.0, logsum + math.log(prod)
    return prod, logsum


@numba.njit(cache=True, nogil=True, inline="always")
def _downdated_cholesky(aug):
    """In-place upper Cholesky of the (p+1) × (p+1) down-dated ``aug`` (UᵀU = aug, upper triangle
    read and written). r² = U[p, p]² is clamped at 0 when only that pivot is ≤ 0 through rounding
    (an exact fit). Returns (r², log|R_X|², status)."""
    m = aug.shape[0]
    p = m - 1
    ldrx2 = 0.0
    for i in range(m):
        d = aug[i, i]
        for k in range(i):
            d -= aug[k, i] * aug[k, i]
        if i == p:
            return max(d, 0.0), ldrx2, OK
        if not d > 0.0:
            return math.nan, math.nan, X_NOT_PD
        uii = math.sqrt(d)
        aug[i, i] = uii
        ldrx2 += 2.0 * math.log(uii)
        for c in range(i + 1, m):
            s = aug[i, c]
            for k in range(i):
                s -= aug[k, i] * aug[k, c]
            aug[i, c] = s / uii
    return math.nan, math.nan, X_NOT_PD  # not reached (m ≥ 1)


@numba.njit(cache=True, nogil=True)
def _downdate_general(T, A, BC, aug):
    """aug ← aug − Σ_j R_jᵀR_j for any q; returns Σ_j log det M_j."""
    J, q, m = BC.shape
    AT = np.empty((q, q))
    L = np.empty((q, q))
    dinv = np.empty(q)
    R = np.empty((q, m))
    prod, logsum = 1.0, 0.0
    for j in range(J):
        det = _group_ldl(T, A, j, AT, L, dinv)
        prod, logsum = _fold_log(det, prod, logsum)
        _group_r(T, BC, j, L, R)
        for a in range(q):
            da = dinv[a]
            for k in range(m):
                rk = R[a, k] * da
                for c in range(k, m):
                    aug[k, c] -= rk * R[a, c]
    return logsum + math.log(prod)


@numba.njit(cache=True, nogil=True, fastmath=_REASSOC)
def _weighted_dot(w, x, y, n):
    """Σ_{i<n} w_i x_i y_i (reassociated, so the compiler vectorises it)."""
    s = 0.0
    for i in range(n):
        s += w[i] * x[i] * y[i]
    return s


@numba.njit(cache=True, nogil=True)
def _downdate_q2(T, A, BC, aug):
    """:func:`_downdate_general` for q = 2 (a random intercept and one slope), organised for the
    compiler: per block of groups, first the LDLᵀ factors of every M_j (a loop without branches),
    then R̃_j = L_j⁻¹Tᵀ[B_j c_j] row by row, then each entry of Σ_j R̃_jᵀD_j⁻¹R̃_j as a weighted
    dot product over the block (same arithmetic; small loops with varying trip counts cost more
    than the flops)."""
    J, _, m = BC.shape
    t00, t10, t11 = T[0, 0], T[1, 0], T[1, 1]
    det = np.empty(_BLOCK)
    d0inv = np.empty(_BLOCK)
    d1inv = np.empty(_BLOCK)
    l10 = np.empty(_BLOCK)
    r0 = np.empty((m, _BLOCK))
    r1 = np.empty((m, _BLOCK))
    prod, logsum = 1.0, 0.0
    for start in range(0, J, _BLOCK):
        n = min(_BLOCK, J - start)
        for i in range(n):
            j = start + i
            a00, a01, a11 = A[j, 0, 0], A[j, 0, 1], A[j, 1, 1]
            at00 = a00 * t00 + a01 * t10  # (A_jT)[0, 0]
            at10 = a01 * t00 + a11 * t10  # (A_jT)[1, 0]
            m00 = 1.0 + t00 * at00 + t10 * at10
            m10 = t11 * at10
            m11 = 1.0 + t11 * (a11 * t11)
            d0i = 1.0 / m00
            lo = m10 * d0i  # L_j[1, 0]
            d1 = m11 - lo * m10
            d0inv[i], d1inv[i], l10[i], det[i] = d0i, 1.0 / d1, lo, m00 * d1
        for i in range(n):
            prod, logsum = _fold_log(det[i], prod, logsum)
        for k in range(m):
            for i in range(n):
                b0, b1 = BC[start + i, 0, k], BC[start + i, 1, k]
                v = t00 * b0 + t10 * b1
                r0[k, i] = v
                r1[k, i] = t11 * b1 - l10[i] * v
        for k in range(m):
            for c in range(k, m):
                aug[k, c] -= (_weighted_dot(d0inv, r0[k], r0[c], n)
                              + _weighted_dot(d1inv, r1[k], r1[c], n))
    return logsum + math.log(prod)


@numba.njit(cache=True, nogil=True)
def pls_parts_kernel(T, A, BC, aug0):
    """(r², log|L|², log|R_X|², status) at T without the conditional modes (the optimizer's path).

    ``BC`` (J, q, p+1) holds [B_j c_j] and ``aug0`` is [[XᵀX, Xᵀy], [yᵀX, yᵀy]]; r² and log|R_X|²
    come from the Cholesky factor of aug0 − Σ_j R_jᵀR_j with R_j = L_j⁻¹Tᵀ[B_j c_j]
    (MixedModels.jl's ``pwrss``), here as Σ_a R̃_j[a]ᵀR̃_j[a]/D_a from M_j = LDLᵀ, and
    log|L|² = Σ_j log det M_j."""
    aug = aug0.copy()
    if T.shape[0] == 2:
        ldl2 = _downdate_q2(T, A, BC, aug)
    else:
        ldl2 = _downdate_general(T, A, BC, aug)
    r2, ldrx2, status = _downdated_cholesky(aug)
    return r2, ldl2, ldrx2, status


@numba.njit(cache=True, nogil=True)
def pls_parts_batch_kernel(Ts, A, BC, aug0):
    """:func:`pls_parts_kernel` at each of the K factors ``Ts`` (K, q, q): four (K,) arrays."""
    K = Ts.shape[0]
    r2 = np.empty(K)
    ldl2 = np.empty(K)
    ldrx2 = np.empty(K)
    status = np.empty(K, dtype=np.int64)
    for k in range(K):
        r2[k], ldl2[k], ldrx2[k], status[k] = pls_parts_kernel(Ts[k], A, BC, aug0)
    return r2, ldl2, ldrx2, status


@numba.njit(cache=True, nogil=True)
def theta_grad_kernel(T, A, BC, beta, with_w):
    """Per-group sums behind the analytic gradient (§7.3 of the lme4 notes) at T and β̂:

    * ``dld[r, c]`` = Σ_j [A_jT M_j⁻¹]_{rc}
    * ``dr2[r, c]`` = Σ_j ũ_j[c]·[c_j − B_jβ̂ − A_jTũ_j]_r, with ũ_j = M_j⁻¹Tᵀ(c_j − B_jβ̂)
    * ``S[r, c]`` (p × p) = Σ_j W_j[r]ᵀ(TᵀW_j)[c] with W_j = B_j − A_jT M_j⁻¹TᵀB_j (``with_w``)

    ``BC`` is [B_j c_j] for the response of β̂ (J, q, p+1)."""
    J, q, m = BC.shape
    p = m - 1
    AT = np.empty((q, q))
    L = np.empty((q, q))
    Li = np.zeros((q, q))
    dinv = np.empty(q)
    Minv = np.empty((q, q))
    ATMi = np.empty((q, q))
    w = np.empty(q)
    u = np.empty(q)
    W = np.empty((q, p))
    TW = np.empty((q, p))
    dld = np.zeros((q, q))
    dr2 = np.zeros((q, q))
    S = np.zeros((q, q, p, p))
    for j in range(J):
        _group_ldl(T, A, j, AT, L, dinv)
        # L⁻¹ (unit lower), then M⁻¹ = L⁻ᵀD⁻¹L⁻¹
        for i in range(q):
            Li[i, i] = 1.0
            for k in range(i):
                s = L[i, k]
                for t in range(k + 1, i):
                    s += L[i, t] * Li[t, k]
                Li[i, k] = -s
        for a in range(q):
            for b in range(a + 1):
                s = 0.0
                for i in range(a, q):
                    s += Li[i, a] * Li[i, b] * dinv[i]
                Minv[a, b] = s
                Minv[b, a] = s
        # A_jT M_j⁻¹
        for r in range(q):
            for c in range(q):
                s = 0.0
                for k in range(q):
                    s += AT[r, k] * Minv[k, c]
                ATMi[r, c] = s
                dld[r, c] += s
        # ũ_j = M⁻¹Tᵀ(c_j − B_jβ̂)
        for a in range(q):
            s = BC[j, a, p]
            for k in range(p):
                s -= BC[j, a, k] * beta[k]
            w[a] = s
        for a in range(q):
            s = 0.0
            for b in range(q):
                tw = 0.0
                for k in range(b, q):
                    tw += T[k, b] * w[k]
                s += Minv[a, b] * tw
            u[a] = s
        for r in range(q):
            res = w[r]
            for k in range(q):
                res -= AT[r, k] * u[k]
            for c in range(q):
                dr2[r, c] += u[c] * res
        if not with_w:
            continue
        # W_j = B_j − (A_jT M⁻¹)TᵀB_j, then TᵀW_j
        for a in range(q):
            for k in range(p):
                s = BC[j, a, k]
                for b in range(q):
                    coef = 0.0
                    for t in range(b + 1):
                        coef += ATMi[a, t] * T[b, t]
                    s -= coef * BC[j, b, k]
                W[a, k] = s
        for c in range(q):
            for k in range(p):
                s = 0.0
                for a in range(c, q):
                    s += T[a, c] * W[a, k]
                TW[c, k] = s
        for r in range(q):
            for c in range(q):
                for a in range(p):
                    wa = W[r, a]
                    for b in range(p):
                        S[r, c, a, b] += wa * TW[c, b]
    return dld, dr2, S
