"""The profiled (RE)ML criterion of a nested design by block elimination over the levels.

Model: y = Xβ + Σ_k Z_k Λ_k u_k + ε, u ~ N(0, σ²I), ε ~ N(0, σ²I); the factors are nested
innermost first (classes ⊂ schools, occasions ⊂ children ⊂ schools). With
T = diag(Λ_1, …, Λ_K, I_{p+1}) and the per-innermost-group cross-products C_c of
[Z_1 … Z_K X y] (:mod:`twolevel.models.design.multi_stats`):

1. innermost groups: G_c = TᵀC_cT + (I_{q_1} ⊕ 0); G_c,11 = L_c L_cᵀ; R_cᵀ = L_c⁻¹G_c,12;
   F_c = G_c,22 − R_c R_cᵀ (the Schur complement on [Z_2 … Z_K X y]); log|L|² += 2Σ log diag L_c;
2. each next level: G_s = Σ_{c ∈ s} F_c + (I_{q_k} ⊕ 0), eliminated in the same way;
3. F = Σ over the top-level groups is the (p+1)² Schur complement [[XᵀV⁻¹X, XᵀV⁻¹y], [·, yᵀV⁻¹y]]
   with V = I + ZΛΛᵀZᵀ: F = [[L_X, 0], [ℓᵀ, r]][[L_X, 0], [ℓᵀ, r]]ᵀ, r² the penalised residual
   sum of squares, β̂ = L_X⁻ᵀℓ;
4. d_ML = log|L|² + n(1 + log(2πr²/n)), d_REML = log|L|² + log|L_X|² + (n−p)(1 + log(2πr²/(n−p))).

This is lme4's sparse Cholesky of ΛᵀZᵀZΛ + I under the "each class, then its school" ordering
(no fill-in) and MixedModels.jl's blocked Cholesky; the cost per evaluation is linear in the
number of groups and independent of N. The conditional modes come back top-down:
u_k = L⁻ᵀ(R_yᵀ − R_outerᵀ v_outer) with v_outer the ancestors' modes and β̂.

The criterion (steps 1–4, no modes) runs in one C call per evaluation
(:mod:`twolevel.models.lmm.cnested`); the NumPy code of the ``modes=True`` path is its reference
in the tests, and numba's loop (:mod:`twolevel.models.lmm.nested_kernels`) the fallback without
the compiled library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from twolevel.models.design.multi import MultiDesign
from twolevel.models.design.multi_stats import NestedStats
from twolevel.models.lmm import cnested

__all__ = ["MultiState", "criterion_from_parts", "nested_deviance", "nested_group_sums",
           "nested_state"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class MultiState:
    """The penalised least-squares solution at θ for several factors.

    Fields
    ------
    ldL2 : log|L|² of the random-effects block.  ldRX2 : log|L_X|².  r2 : PWRSS.
    LX : (p, p) lower Cholesky factor of XᵀV⁻¹X.  beta : β̂(θ).
    u : per factor (ℓ_f, q_f) spherical conditional modes ũ (b = Λũ), or None when not computed.
    cond_var_u : per factor (ℓ_f, q_f, q_f) conditional covariance of ũ (β fixed) divided by σ²,
        or None.
    """

    ldL2: float
    ldRX2: float
    r2: float
    LX: np.ndarray
    beta: np.ndarray
    u: tuple[np.ndarray, ...] | None = None
    cond_var_u: tuple[np.ndarray, ...] | None = None


def criterion_from_parts(ldL2: float, ldRX2: float, r2: float, n: int, p: int,
                         reml: bool) -> float:
    """The profiled criterion: ML ``ldL2 + n(1 + log(2πr²/n))``; REML
    ``ldL2 + ldRX2 + (n−p)(1 + log(2πr²/(n−p)))`` (lme4's ``lmerResp::Laplace``)."""
    if reml:
        nmp = n - p
        return float(ldL2 + ldRX2 + nmp * (1.0 + _LOG_2PI + np.log(r2 / nmp)))
    return float(ldL2 + n * (1.0 + _LOG_2PI + np.log(r2 / n)))


def _eliminate(G: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Block Cholesky step on a stack G (n, m, m) whose first q rows/columns are eliminated:
    (L (n,q,q), Rᵀ = L⁻¹G_12 (n,q,m−q), F = G_22 − RRᵀ, 2Σ log diag L)."""
    if q == 1:
        g = G[:, 0, 0]
        if np.any(g <= 0):
            raise np.linalg.LinAlgError("not positive definite")
        lv = np.sqrt(g)
        L = lv[:, None, None]
        Rt = G[:, :1, 1:] / L
        ld = 2.0 * float(np.sum(np.log(lv)))
    else:
        L = np.linalg.cholesky(G[:, :q, :q])
        Rt = np.linalg.solve(L, G[:, :q, q:])
        ld = 2.0 * float(np.sum(np.log(np.diagonal(L, axis1=1, axis2=2))))
    F = G[:, q:, q:] - np.einsum("nqa,nqb->nab", Rt, Rt)
    return L, Rt, F, ld


def _sum_to_parents(F: np.ndarray, parent: np.ndarray, n_parent: int) -> np.ndarray:
    """Σ over children of each parent: a sparse one-hot (n_parent × n_child) product."""
    n, m, _ = F.shape
    P = sp.csr_matrix((np.ones(n), (parent, np.arange(n))), shape=(n_parent, n))
    return np.asarray(P @ F.reshape(n, m * m)).reshape(n_parent, m, m)


def _T_full(design: MultiDesign, theta: np.ndarray) -> np.ndarray:
    blocks = [design.factor_T(theta, k) for k in range(len(design.factors))]
    d = sum(b.shape[0] for b in blocks) + design.p + 1
    T = np.eye(d)
    o = 0
    for b in blocks:
        T[o:o + b.shape[0], o:o + b.shape[0]] = b
        o += b.shape[0]
    return T


def _scale(C: np.ndarray, T: np.ndarray) -> np.ndarray:
    """TᵀC_cT for every c, as two BLAS products on the stacked (n·d × d) matrix."""
    n, d, _ = C.shape
    if np.array_equal(T, np.diag(np.diag(T))):  # diagonal T (scalar terms): an outer product
        t = np.diag(T)
        return C * (t[:, None] * t[None, :])
    CT = (C.reshape(n * d, d) @ T).reshape(n, d, d)  # C_c T
    return (np.swapaxes(CT, 1, 2).reshape(n * d, d) @ T).reshape(n, d, d).swapaxes(1, 2)


def nested_group_sums(design: MultiDesign, stats: NestedStats
                      ) -> tuple[tuple[np.ndarray, np.ndarray], ...] | None:
    """Per factor (rows, Σy) of every level, from the innermost groups' cross-products
    (C_c[0, 0] = n_c and C_c[0, −1] = Σ_c y when the first column is an intercept) summed up the
    levels; None unless every term is a random intercept of its own factor (the case in which
    :meth:`MultiDesign.theta_start` uses them)."""
    if not (all(t.names == ("(Intercept)",) for t in design.terms)
            and len(design.terms) == len(design.factors)):
        return None
    counts, sums = stats.C[:, 0, 0].copy(), stats.C[:, 0, -1].copy()
    out = [(counts, sums)]
    for k, par in enumerate(stats.parents):
        n_up = design.factors[k + 1].n_levels
        counts = np.bincount(par, weights=counts, minlength=n_up)
        sums = np.bincount(par, weights=sums, minlength=n_up)
        out.append((counts, sums))
    return tuple(out)


def _kernel(design: MultiDesign, stats: NestedStats) -> cnested.NestedKernel:
    """The compiled elimination's arrays for ``stats``."""
    return cnested.NestedKernel.from_stats(stats.C, stats.q,
                                           tuple(f.n_levels for f in design.factors),
                                           stats.parents)


def nested_state(design: MultiDesign, stats: NestedStats, theta: np.ndarray,
                 modes: bool = False) -> MultiState:
    """Block elimination at θ (module docstring); with ``modes`` also the conditional modes and
    conditional variances of every level.

    Raises
    ------
    numpy.linalg.LinAlgError
        When a block is not positive definite (the criterion is then +∞).
    """
    theta = np.asarray(theta, dtype=float)
    T = _T_full(design, theta)
    K = len(stats.q)
    ld = 0.0
    steps = []
    diagonal = not modes and not np.any(T - np.diag(np.diag(T)))
    if not modes and cnested.compiled(stats.C.shape[1]):  # the criterion only: one C call
        ld, G = _kernel(design, stats).eliminate(T, diagonal)
    elif not modes:  # numba: one compiled pass per level, no per-group factors kept
        from twolevel.models.lmm.nested_kernels import eliminate_level

        G = stats.C if diagonal else _scale(stats.C, T)
        for k in range(K):
            t = np.diag(T) if diagonal and k == 0 else np.ones(G.shape[1])
            q = stats.q[k]
            last = k == K - 1
            par = np.zeros(G.shape[0], dtype=np.intp) if last else stats.parents[k]
            n_par = 1 if last else design.factors[k + 1].n_levels
            m = G.shape[1] - q
            out = np.zeros((n_par, m, m))
            ldk = eliminate_level(G, np.ascontiguousarray(t), q, par, out)
            if not np.isfinite(ldk):
                raise np.linalg.LinAlgError("not positive definite")
            ld += ldk
            G = out
        G = G[0]
    else:
        G = _scale(stats.C, T)
    for k in range(K if modes else 0):  # with the modes: keep every level's factors
        q = stats.q[k]
        idx = np.arange(q)
        G[:, idx, idx] += 1.0
        L, Rt, F, ldk = _eliminate(G, q)
        ld += ldk
        steps.append((L, Rt))
        if k < K - 1:
            G = _sum_to_parents(F, stats.parents[k], design.factors[k + 1].n_levels)
        else:
            G = F.sum(axis=0)
    p = stats.p
    Lf = np.linalg.cholesky(G)
    LX = Lf[:p, :p]
    r = Lf[p, p]
    ldRX2 = 2.0 * float(np.sum(np.log(np.diag(LX)))) if p else 0.0
    beta = np.linalg.solve(LX.T, Lf[p, :p]) if p else np.zeros(0)
    if not modes:
        return MultiState(ldL2=ld, ldRX2=ldRX2, r2=float(r * r), LX=LX, beta=beta)
    us: list[np.ndarray] = [np.empty(0)] * K
    cvs: list[np.ndarray] = [np.empty(0)] * K
    outer = np.broadcast_to(beta, (design.factors[K - 1].n_levels, p))
    J = None  # joint covariance of (u_{k+1}, …, u_K) of each level-(k+1) group
    for k in range(K - 1, -1, -1):
        L, Rt = steps[k]
        if k < K - 1:
            par = stats.parents[k]
            outer = outer[par]
            J = J[par]
        rhs = Rt[:, :, -1] - np.einsum("nqa,na->nq", Rt[:, :, :-1], outer)
        Linv = 1.0 / L if L.shape[1] == 1 else np.linalg.inv(L)
        u = np.einsum("nqa,nq->na", Linv, rhs)  # L⁻ᵀ(L⁻¹(g_y − G_outer v)); rhs has L⁻¹
        us[k] = u
        own = np.einsum("nqa,nqb->nab", Linv, Linv)
        if J is None:
            Jk = own
        else:
            Qo = J.shape[1]
            M = Rt[:, :, :Qo]
            LiM = np.einsum("nqa,nqb->nab", Linv, M)  # L⁻ᵀM
            cross = -np.einsum("nab,nbc->nac", LiM, J)
            own = own + np.einsum("nab,nbc,ndc->nad", LiM, J, LiM)
            Jk = np.concatenate([np.concatenate([own, cross], axis=2),
                                 np.concatenate([np.transpose(cross, (0, 2, 1)), J], axis=2)],
                                axis=1)
        cvs[k] = own
        J = Jk
        outer = np.concatenate([u, outer], axis=1)
    return MultiState(ldL2=ld, ldRX2=ldRX2, r2=float(r * r), LX=LX, beta=beta, u=tuple(us),
                      cond_var_u=tuple(cvs))


def nested_deviance(design: MultiDesign, stats: NestedStats,
                    reml: bool = True) -> Callable[[np.ndarray], float]:
    """The profiled REML (default) or ML criterion of a nested design as a pure function of θ
    (lme4's ``devfun``); +∞ where a block is not positive definite.

    Parameters
    ----------
    design : the :class:`~twolevel.models.design.multi.MultiDesign` (nested chain).
    stats : its :class:`~twolevel.models.design.multi_stats.NestedStats`.
    reml : REML (True) or ML.

    Returns
    -------
    callable
        θ ↦ criterion.

    Examples
    --------
    >>> f = nested_deviance(design, nested_stats(design))   # doctest: +SKIP
    >>> f(design.theta_start())                               # doctest: +SKIP
    """

    def fn(theta: np.ndarray) -> float:
        try:
            st = nested_state(design, stats, theta)
        except np.linalg.LinAlgError:
            return float("inf")
        return criterion_from_parts(st.ldL2, st.ldRX2, st.r2, stats.n, stats.p, reml)

    if not cnested.compiled(stats.C.shape[1]):
        return fn
    kern = _kernel(design, stats)
    # T's entries that θ fills, once: T.flat[pos] = θ[which]; structurally diagonal T (scalar
    # terms only) takes the kernel's diagonal scaling
    d = stats.C.shape[1]
    T, pos, which, o = np.eye(d), [], [], 0
    for tm in design.templates:
        r, c = np.nonzero(tm >= 0)
        pos.append((o + r) * d + o + c)
        which.append(tm[r, c])
        o += tm.shape[0]
    pos, which = np.concatenate(pos), np.concatenate(which)
    diagonal = bool(np.all(pos // d == pos % d))
    n, p = stats.n, stats.p

    def fn_c(theta: np.ndarray) -> float:
        T.flat[pos] = np.asarray(theta, dtype=float)[which]
        parts = kern.parts_into(T, diagonal)
        if parts is None:
            return float("inf")
        return criterion_from_parts(*parts, n, p, reml)

    return fn_c
