"""Compiled loop over the schools for the profiled log pseudo-likelihood (numba,
``cache=True``): the same sums as :func:`twolevel.models.survey.pml.profile_theta`'s NumPy
path, which is kept as the independent check (``tests/test_survey.py``)."""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["weighted_schur_sums"]


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
