"""The collapsed two-level likelihood: school effects integrated out, from per-school
cross-products.

Pure NumPy (no PyMC here). With r_j = y_j − X_jβ, d_j = Z_jᵀr_j = c_j − B_jβ, Σ = LLᵀ,
M_j = I + LᵀA_jL/σ², u_j = Lᵀd_j and h_j = M_j⁻¹u_j (A_j, B_j, c_j from
:func:`twolevel.models.design.group_crossprods`), the marginal log-likelihood of all students is

    ℓ(β, L, σ) = −½ [ n log 2π + 2n log σ + Σ_j log|M_j| + S(β)/σ² − Σ_j u_jᵀh_j / σ⁴ ],
    S(β) = yᵀy − 2βᵀXᵀy + βᵀXᵀXβ,

because V_j = σ²I + Z_jΣZ_jᵀ has log|V_j| = n_j log σ² + log|M_j| and
r_jᵀV_j⁻¹r_j = (r_jᵀr_j − u_jᵀM_j⁻¹u_j/σ²)/σ² (Woodbury). M_j has eigenvalues ≥ 1, so the formula
stays well conditioned when Σ is singular (an SD at 0, a correlation at ±1). The PyMC model's
version of ℓ is :func:`twolevel.models.bayes.pymc_model.collapsed_loglik` (a PyTensor graph,
differentiated by PyTensor); this module holds the NumPy pieces used after sampling, vectorised over
draws.

Given (β, L, σ), school j's effects have the Gaussian conditional posterior
b_j | y, β, L, σ ~ N(L h_j/σ², L M_j⁻¹ Lᵀ) (:func:`draw_school_effects`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["draw_school_effects", "school_marginal_loglik"]

_LOG2PI = float(np.log(2.0 * np.pi))


def _conditional_pieces(A, B, c, beta, L, sigma):
    """The per-draw, per-school pieces of the module docstring, unrolled over the q × q entries
    (each entry an (S, J) array: q is small, S·J is large).

    beta (S, p), L (S, q, q) lower, sigma (S,) → R (lower Cholesky factor of M_j, as a q × q list
    of (S, J) arrays), v = R_j⁻¹u_j (list of q (S, J) arrays) and log|M_j| (S, J). Then
    h_j = R_j⁻ᵀv_j and u_jᵀh_j = ‖v_j‖².
    """
    q = A.shape[1]
    s2 = (sigma**2)[:, None]
    d = c[None] - np.einsum("jkp,sp->sjk", B, beta)  # (S, J, q)
    # AL[k][b] = Σ_m A_km L_mb ; M_ab = δ_ab + Σ_k L_ka AL[k][b] / σ²
    AL = [[sum(A[None, :, k, m] * L[:, m, b, None] for m in range(b, q)) for b in range(q)]
          for k in range(q)]
    M = [[None] * q for _ in range(q)]
    for a in range(q):
        for b in range(a + 1):
            v = sum(L[:, k, a, None] * AL[k][b] for k in range(a, q)) / s2
            M[a][b] = M[b][a] = v + 1.0 if a == b else v
    R = [[None] * q for _ in range(q)]
    for k in range(q):
        t = M[k][k] - sum(R[k][m] ** 2 for m in range(k))
        R[k][k] = np.sqrt(t)
        for i in range(k + 1, q):
            R[i][k] = (M[i][k] - sum(R[i][m] * R[k][m] for m in range(k))) / R[k][k]
    u = [sum(L[:, k, a, None] * d[:, :, k] for k in range(a, q)) for a in range(q)]
    v = []
    for k in range(q):
        v.append((u[k] - sum(R[k][m] * v[m] for m in range(k))) / R[k][k])
    logdet = 2.0 * sum(np.log(R[k][k]) for k in range(q))
    return R, v, logdet


def _back_solve_t(R, w):
    """x = R⁻ᵀw per draw and school (R lower, unrolled lists of (S, J) arrays)."""
    q = len(w)
    x = [None] * q
    for k in range(q - 1, -1, -1):
        x[k] = (w[k] - sum(R[m][k] * x[m] for m in range(k + 1, q))) / R[k][k]
    return x


_CHUNK = 250  # draws per block: keeps the (draws, J) temporaries in cache (4× faster at S = 4000)


def _blocks(S: int):
    """Slices of ``_CHUNK`` draws covering 0..S."""
    return [slice(s0, min(S, s0 + _CHUNK)) for s0 in range(0, S, _CHUNK)]


def draw_school_effects(A, B, c, beta, L, sigma, rng: np.random.Generator) -> np.ndarray:
    """One draw of every school's effects from b_j | y, β, L, σ ~ N(L h_j/σ², L M_j⁻¹ Lᵀ) for
    each of S hyperparameter draws: returns (S, J, q). With M_j = R_jR_jᵀ and v_j = R_j⁻¹u_j,
    b_j = L R_j⁻ᵀ(v_j/σ² + e_j), e_j ~ N(0, I) (mean L R⁻ᵀR⁻¹u/σ² = L h/σ², covariance
    L R⁻ᵀR⁻¹ Lᵀ = L M⁻¹ Lᵀ). Vectorised over schools, in blocks of draws."""
    S, J, q = beta.shape[0], A.shape[0], A.shape[1]
    e = rng.standard_normal((S, J, q))
    out = np.empty((S, J, q))
    for sl in _blocks(S):
        Ls = L[sl]
        R, v, _ = _conditional_pieces(A, B, c, beta[sl], Ls, sigma[sl])
        s2 = (sigma[sl] ** 2)[:, None]
        w = _back_solve_t(R, [v[k] / s2 + e[sl, :, k] for k in range(q)])
        for k in range(q):
            out[sl, :, k] = sum(Ls[:, k, m, None] * w[m] for m in range(k + 1))
    return out


def school_marginal_loglik(A, B, c, rss0, n_j, beta, L, sigma) -> np.ndarray:
    """log p(y_j | β, L, σ) of every school with its effects integrated out, (S, J):

    −½ [ n_j log(2πσ²) + log|M_j| + (r_jᵀr_j − u_jᵀh_j/σ²)/σ² ],   u_jᵀh_j = ‖R_j⁻¹u_j‖²,

    ``rss0`` (S, J) = r_jᵀr_j = ‖y_j − X_jβ‖² per draw and school, ``n_j`` (J,) school sizes.
    In blocks of draws.
    """
    out = np.empty(rss0.shape)
    for sl in _blocks(rss0.shape[0]):
        _, v, logdet = _conditional_pieces(A, B, c, beta[sl], L[sl], sigma[sl])
        s2 = (sigma[sl] ** 2)[:, None]
        uh = sum(vk * vk for vk in v)
        out[sl] = -0.5 * (n_j[None] * (_LOG2PI + np.log(s2)) + logdet + (rss0[sl] - uh / s2) / s2)
    return out
