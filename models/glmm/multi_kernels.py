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

from twolevel.models.glmm.kernels import _family_row, _unit_dev

__all__ = ["sweep_kernel"]


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
