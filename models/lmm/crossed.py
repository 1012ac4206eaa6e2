"""The profiled (RE)ML criterion of crossed (or partially crossed) factors: per-level blocks for
the factor with most levels, one dense block for the rest.

With the cross-products of :class:`~twolevel.models.design.multi_stats.CrossedStats`
(A_11 per level ℓ of the first factor, A_r1 = [Z_rest X y]ᵀZ_1 sparse, A_rr dense) and
T_r = diag(I ⊗ Λ_2, …, I ⊗ Λ_K, I_{p+1}):

1. per level ℓ of the first factor: M_ℓ = Λ_1ᵀA_11,ℓΛ_1 + I = L_ℓL_ℓᵀ;
2. R = T_rᵀ A_r1 blockdiag(Λ_1 L_ℓ⁻ᵀ) (sparse, one block per occupied cell);
3. S = T_rᵀA_rrT_r + (I ⊕ 0) − RRᵀ, a dense Cholesky S = L_S L_Sᵀ; its leading block belongs to
   the other factors' effects, the next p rows to X (L_X) and the last diagonal entry is r.

Eliminating the factor with most levels first is what MixedModels.jl does (its ``L[1,1]`` is
diagonal or block-diagonal, the later blocks dense). The dense block has Σ_{k≥2} ℓ_k q_k + p + 1
rows, so this path suits designs whose other factors have up to a few thousand levels (InstEval's
1128 lecturers: one evaluation ≈ 0.1 s).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController, threadpool_limits

from twolevel.models.design.multi import MultiDesign
from twolevel.models.design.multi_stats import CrossedStats
from twolevel.models.lmm import cnested
from twolevel.models.lmm.nested import MultiState, criterion_from_parts

__all__ = ["crossed_deviance", "crossed_parts", "crossed_state"]


def _block_diag_sparse(blocks: np.ndarray) -> sp.csr_matrix:
    """blockdiag of a stack (ℓ, a, b) as a sparse (ℓa × ℓb) matrix."""
    n, a, b = blocks.shape
    return sp.bsr_matrix((blocks, np.arange(n), np.arange(n + 1)), shape=(n * a, n * b)).tocsr()


def _T_rest(design: MultiDesign, theta: np.ndarray) -> sp.csr_matrix:
    mats = [sp.kron(sp.identity(f.n_levels), sp.csr_matrix(design.factor_T(theta, k)))
            for k, f in enumerate(design.factors) if k > 0]
    mats.append(sp.identity(design.p + 1))
    return sp.block_diag(mats, format="csr")


def crossed_state(design: MultiDesign, stats: CrossedStats, theta: np.ndarray,
                  modes: bool = False) -> MultiState:
    """Steps 1–3 of the module docstring at θ; with ``modes`` the conditional modes of every
    factor and their conditional covariances (β fixed).

    Raises
    ------
    numpy.linalg.LinAlgError
        When a block is not positive definite.
    """
    theta = np.asarray(theta, dtype=float)
    f1 = design.factors[0]
    q1 = f1.q
    L1T = design.factor_T(theta, 0)
    M = np.matmul(np.matmul(L1T.T, stats.A11), L1T)
    M[:, np.arange(q1), np.arange(q1)] += 1.0
    if q1 == 1:  # scalar blocks: no batched LAPACK calls
        if np.any(M[:, 0, 0] <= 0):
            raise np.linalg.LinAlgError("not positive definite")
        L = np.sqrt(M)
        Linv = 1.0 / L
    else:
        L = np.linalg.cholesky(M)
        Linv = np.linalg.inv(L)
    K = _block_diag_sparse(np.matmul(L1T, np.transpose(Linv, (0, 2, 1))))  # Λ_1 L⁻ᵀ
    Tr = _T_rest(design, theta)
    R = (Tr.T @ stats.Ar1 @ K).tocsr()
    S = np.asarray(Tr.T @ (Tr.T @ stats.Arr).T)
    Qr = sum(stats.q_rest)
    S[np.arange(Qr), np.arange(Qr)] += 1.0
    S -= (R @ R.T).toarray()
    with threadpool_limits(1):  # one BLAS thread: threads stall on a busy machine (15× here)
        LS, info = sla.lapack.dpotrf(S, lower=1, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError("not positive definite")
    p = stats.p
    dg = np.diag(LS)
    ldL2 = 2.0 * float(np.sum(np.log(np.diagonal(L, axis1=1, axis2=2)))) + 2.0 * float(
        np.sum(np.log(dg[:Qr])))
    ldRX2 = 2.0 * float(np.sum(np.log(dg[Qr:Qr + p])))
    r = dg[-1]
    LX = LS[Qr:Qr + p, Qr:Qr + p]
    top = LS[:-1, :-1]
    v = sla.solve_triangular(top.T, LS[-1, :-1], lower=False)  # [ũ_rest, β̂]
    beta = v[Qr:]
    if not modes:
        return MultiState(ldL2=ldL2, ldRX2=ldRX2, r2=float(r * r), LX=LX, beta=beta)
    # first factor: ũ_ℓ = L_ℓ⁻ᵀ(L_ℓ⁻¹ Λ_1ᵀ(a_y − A_r v)) with R = B K: Rᵀ[−v; 1] per level
    w = R.T @ np.append(-v, 1.0)  # (ℓ_1 q_1,): blocks L_ℓ⁻¹(…)
    u1 = np.einsum("nqa,nq->na", Linv, w.reshape(f1.n_levels, q1))
    us = [u1]
    o = 0
    for f in design.factors[1:]:
        us.append(v[o:o + f.n_levels * f.q].reshape(f.n_levels, f.q))
        o += f.n_levels * f.q
    # conditional covariances: the rest from (L_rr L_rrᵀ)⁻¹, the first factor by its Schur term
    Lrr = LS[:Qr, :Qr]
    Pinv = np.zeros((0, 0))
    if Qr:  # (L_rr L_rrᵀ)⁻¹ from the factor (LAPACK dpotri: a third of cho_solve's work)
        Pinv, _ = sla.lapack.dpotri(Lrr, lower=1)
        Pinv = np.tril(Pinv) + np.tril(Pinv, -1).T
    cvs = []
    Y = R[:Qr].T.tocsr()  # (ℓ_1 q_1, Qr): rows L_ℓ⁻¹ blocks of the coupling
    YP = np.asarray(Y @ Pinv)
    if q1 == 1:  # 1 + y_ℓᵀP⁻¹y_ℓ: the sparse rows times YP's, without Y as a dense matrix
        rows = np.repeat(np.arange(Y.shape[0]), np.diff(Y.indptr))
        inner = 1.0 + np.bincount(rows, weights=Y.data * YP[rows, Y.indices],
                                  minlength=Y.shape[0]).reshape(f1.n_levels, 1, 1)
    else:
        YP = YP.reshape(f1.n_levels, q1, Qr)
        Yd = Y.toarray().reshape(f1.n_levels, q1, Qr)
        inner = np.eye(q1)[None] + np.einsum("nar,nbr->nab", YP, Yd)
    cvs.append(np.einsum("nqa,nqb,nbc->nac", Linv, inner, Linv))
    o = 0
    for f in design.factors[1:]:
        k = f.n_levels * f.q
        blk = Pinv[o:o + k, o:o + k]
        cvs.append(np.stack([blk[i * f.q:(i + 1) * f.q, i * f.q:(i + 1) * f.q]
                             for i in range(f.n_levels)]))
        o += k
    return MultiState(ldL2=ldL2, ldRX2=ldRX2, r2=float(r * r), LX=LX, beta=beta, u=tuple(us),
                      cond_var_u=tuple(cvs))


def crossed_deviance(design: MultiDesign, stats: CrossedStats,
                     reml: bool = True) -> Callable[[np.ndarray], float]:
    """The profiled REML (default) or ML criterion of a crossed design as a pure function of θ;
    +∞ where a block is not positive definite.

    Parameters
    ----------
    design : the :class:`~twolevel.models.design.multi.MultiDesign`.
    stats : its :class:`~twolevel.models.design.multi_stats.CrossedStats`.
    reml : REML (True) or ML.

    Returns
    -------
    callable
        θ ↦ criterion.

    Examples
    --------
    >>> f = crossed_deviance(design, crossed_stats(design))   # doctest: +SKIP
    """

    def fn(theta: np.ndarray) -> float:
        try:
            st = crossed_state(design, stats, theta)
        except np.linalg.LinAlgError:
            return float("inf")
        return criterion_from_parts(st.ldL2, st.ldRX2, st.r2, stats.n, stats.p, reml)

    if design.factors[0].q != 1 or not cnested.compiled(2):
        return fn
    gram = cnested.ScaledGram(stats.Ar1)
    blas = ThreadpoolController()  # found once: each limit() is then cheap

    def fn_c(theta: np.ndarray) -> float:
        with blas.limit(limits=1, user_api="blas"):  # one BLAS thread, as crossed_state
            parts = crossed_parts(design, stats, theta, gram)
        if parts is None:
            return float("inf")
        return criterion_from_parts(*parts, stats.n, stats.p, reml)

    return fn_c


def crossed_parts(design: MultiDesign, stats: CrossedStats, theta: np.ndarray,
                  gram: cnested.ScaledGram) -> tuple[float, float, float] | None:
    """(log|L|², log|L_X|², r²) of :func:`crossed_state` (its reference) when the first factor is
    scalar; the caller limits BLAS to one thread. K = blockdiag(Λ_1L_ℓ⁻ᵀ) is then the diagonal
    k_ℓ = λ_1/L_ℓ, so RRᵀ = T_rᵀA_r1 diag(k²)A_r1ᵀT_r and
    S = T_rᵀ(A_rr − A_r1 diag(k²)A_r1ᵀ)T_r + (I ⊕ 0); the sparse product runs in C over A_r1's
    fixed structure (``gram``, built once per design). None where a block is not positive
    definite."""
    theta = np.asarray(theta, dtype=float)
    lam = float(design.factor_T(theta, 0)[0, 0])
    M = lam * lam * stats.A11[:, 0, 0] + 1.0  # L_ℓ² (> 0: λ² A_ℓ ≥ 0)
    rest = design.factors[1:]
    Qr = sum(stats.q_rest)
    if all(f.q == 1 for f in rest):  # scalar terms: T_r = diag(t), S in one C pass
        t = np.concatenate([np.full(f.n_levels, design.factor_T(theta, k + 1)[0, 0])
                            for k, f in enumerate(rest)] + [np.ones(stats.p + 1)])
        S = gram.schur(np.ascontiguousarray(stats.Arr), t, Qr, lam * lam / M)
    else:  # vector-valued terms: T_r is block diagonal
        S = np.array(stats.Arr, dtype=float, order="C")
        gram.subtract_from(S, lam * lam / M)  # the lower triangle
        Tr = _T_rest(design, theta)
        S = np.tril(S) + np.tril(S, -1).T
        S = np.ascontiguousarray(Tr.T @ (Tr.T @ S).T)
        S[np.arange(Qr), np.arange(Qr)] += 1.0
    # S's lower triangle is the upper one of the Fortran-ordered view S.T (no copy)
    LS, info = sla.lapack.dpotrf(S.T, lower=0, clean=0, overwrite_a=1)
    if info != 0:
        return None
    dg = np.diag(LS)
    p = stats.p
    ldL2 = float(np.sum(np.log(M))) + 2.0 * float(np.sum(np.log(dg[:Qr])))
    return ldL2, 2.0 * float(np.sum(np.log(dg[Qr:Qr + p]))), float(dg[-1] ** 2)
