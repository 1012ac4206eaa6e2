"""numba kernel of one PIRLS sweep for several nested grouping factors (``cache=True``).

One pass over the rows at a linear predictor η: per row μ, μ'(η), V(μ) with lme4's clamps and the
unit deviance d_i (:mod:`twolevel.models.glmm.kernels`' row functions), and, when asked, the
working weight W_i = μ'² w_i / V and working response ž_i = η_i − o_i + (y_i − μ_i)/μ' added into
the innermost group's cross-products C_c += W_i v_i v_iᵀ of v_i = [z_{1,i} … z_{K,i} (x_i) ž_i].
The NumPy functions :func:`twolevel.models.glmm.multi.family_rows`,
:func:`~twolevel.models.glmm.multi.unit_deviance` and
:func:`~twolevel.models.glmm.multi.weighted_crossprods` are its reference (a test).
"""

from __future__ import annotations

import numba
import numpy as np

from twolevel.models.glmm.kernels import _family_row, _unit_dev

__all__ = ["eliminate_scalar_kernel", "modes_scalar_kernel", "sweep_kernel"]


@numba.njit(cache=True)
def sweep_kernel(fam, eta, offset, y, w, V, codes, C, want_c):
    """Σ d_i at η; with ``want_c`` also C (G, m+1, m+1) ← Σ_{i∈c} W_i v_i v_iᵀ with
    v_i = [V_i, ž_i] (C is overwritten, both triangles filled)."""
    n, m = V.shape
    dev = 0.0
    if want_c:
        C[:] = 0.0
    for i in range(n):
        mu, dmu, var = _family_row(fam, eta[i])
        dev += _unit_dev(fam, y[i], mu, w[i])
        if want_c:
            Wi = dmu * dmu * w[i] / var
            zi = eta[i] - offset[i] + (y[i] - mu) / dmu
            g = codes[i]
            for a in range(m):
                va = V[i, a] * Wi
                for b in range(a, m):
                    C[g, a, b] += va * V[i, b]
                C[g, a, m] += va * zi
            C[g, m, m] += Wi * zi * zi
    if want_c:
        G = C.shape[0]
        for g in range(G):
            for a in range(m + 1):
                for b in range(a):
                    C[g, a, b] = C[g, b, a]
    return dev


@numba.njit(cache=True)
def eliminate_scalar_kernel(C, t, par_all, poff, n_levels, l_all, R_all):
    """Block elimination when every factor has one random effect (scalar T_k = t_k): level by
    level, innermost first, G_g[0, 0] += 1, l_g = √G_g[0, 0], r_g = G_g[0, 1:]/l_g and
    F_g = G_g[1:, 1:] − r_g r_gᵀ summed into the parent (the top level into one block). G at
    the first level is C scaled by t t ᵀ. Fills l_all (Σℓ_k) and R_all (Σℓ_k, d − 1) level after
    level; returns (2 Σ log l_g, the top (p+1) × (p+1) block), log-determinant NaN when a pivot
    is not positive."""
    n1, d, _ = C.shape
    K = n_levels.shape[0]
    G = np.empty((n1, d, d))
    for g in range(n1):
        for a in range(d):
            for b in range(d):
                G[g, a, b] = C[g, a, b] * t[a] * t[b]
    ld = 0.0
    start = 0
    for k in range(K):
        nk = n_levels[k]
        m = d - k
        n_out = n_levels[k + 1] if k < K - 1 else 1
        out = np.zeros((n_out, m - 1, m - 1))
        for g in range(nk):
            g00 = G[g, 0, 0] + 1.0
            if not (g00 > 0.0):
                return np.nan, out[0]
            lv = np.sqrt(g00)
            ld += 2.0 * np.log(lv)
            l_all[start + g] = lv
            for a in range(1, m):
                R_all[start + g, a - 1] = G[g, 0, a] / lv
            par = par_all[poff[k] + g] if k < K - 1 else 0
            for a in range(1, m):
                ra = R_all[start + g, a - 1]
                for b in range(1, m):
                    out[par, a - 1, b - 1] += G[g, a, b] - ra * R_all[start + g, b - 1]
        G = out
        start += nk
    return ld, G[0]


@numba.njit(cache=True)
def modes_scalar_kernel(l_all, R_all, par_all, poff, n_levels, beta, u_all):
    """The modes of :func:`eliminate_scalar_kernel` top-down: u_g = (r_g,ž − Σ_j r_g,j v_j)/l_g
    over the group's ancestors' modes and β (β = 0 in the u-only mode). Fills u_all."""
    K = n_levels.shape[0]
    p = beta.shape[0]
    loff = np.zeros(K + 1, dtype=np.int64)
    for k in range(K):
        loff[k + 1] = loff[k] + n_levels[k]
    for k in range(K - 1, -1, -1):
        na = K - 1 - k  # ancestor levels
        m = na + p + 1
        for g in range(n_levels[k]):
            row = loff[k] + g
            s = R_all[row, m - 1]
            a = g
            for j in range(na):
                a = par_all[poff[k + j] + a]  # the level-(k+j+1) ancestor
                s -= R_all[row, j] * u_all[loff[k + j + 1] + a]
            for c in range(p):
                s -= R_all[row, na + c] * beta[c]
            u_all[row] = s / l_all[row]
