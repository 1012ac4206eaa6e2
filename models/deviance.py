"""Profiled (RE)ML deviance of a two-level linear mixed model as a pure function of θ.

This is lme4's ``mkLmerDevfun`` / ``devFunOnly`` for one grouping factor, computed from the
per-group cross-products of :class:`models.design.GroupCrossprods` (§7 of the lme4 algorithm
notes): one penalised least squares (PLS) solve costs O(J·(q³ + q²p) + p³), vectorised over the J
groups with batched NumPy linear algebra (the loops below run over the q ≤ a few random effects,
never over groups).

Notation (lme4's): T is the q × q lower-triangular relative covariance factor built from θ
(Σ_b = σ² T Tᵀ); for group j, A_j = Z_jᵀZ_j, B_j = Z_jᵀX_j, c_j = Z_jᵀy_j and
M_j = TᵀA_jT + I_q = L_j L_jᵀ. Negative diagonal θ and a singular T are accepted (M_j ≥ I is
always positive definite); numDeriv's Hessian steps go there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from data.errors import TwolevelError
from models.design import Design, GroupCrossprods, group_crossprods

__all__ = [
    "PLSState",
    "deviance_gradient",
    "log_det_L2",
    "log_det_RX2",
    "make_deviance",
    "ml_deviance",
    "pls_state",
    "pwrss",
    "reml_criterion",
    "sigma_hat",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


# ------------------------------------------------------------------------ small triangular


def _solve_upper(R: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve R x = b for a small upper-triangular R (p × p, b (p,) or (p, k)) by back
    substitution in NumPy; SciPy's LAPACK call is used for large p. (A LAPACK call on a 2 × 2
    matrix can stall for milliseconds on a busy machine when OpenBLAS wakes its threads.)"""
    p = R.shape[0]
    if p > 16:
        return solve_triangular(R, b, lower=False)
    x = np.array(b, dtype=float, copy=True)
    for i in range(p - 1, -1, -1):
        if i < p - 1:
            x[i] -= R[i, i + 1 :] @ x[i + 1 :]
        x[i] /= R[i, i]
    return x


def _solve_upper_t(R: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve Rᵀ x = b for a small upper-triangular R (forward substitution; see
    :func:`_solve_upper`)."""
    p = R.shape[0]
    if p > 16:
        return solve_triangular(R, b, trans="T", lower=False)
    x = np.array(b, dtype=float, copy=True)
    for i in range(p):
        if i:
            x[i] -= R[:i, i] @ x[:i]
        x[i] /= R[i, i]
    return x


# ------------------------------------------------------------------------ batched triangular


def _forward_solve(L: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Solve L_j X_j = Y_j for all groups: L (J, q, q) lower triangular, Y (J, q, k)."""
    q = L.shape[1]
    X = np.empty_like(Y)
    for i in range(q):
        acc = Y[:, i, :]
        if i:
            acc = acc - np.einsum("jm,jmk->jk", L[:, i, :i], X[:, :i, :])
        X[:, i, :] = acc / L[:, i, i, None]
    return X


def _backward_solve_t(L: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Solve L_jᵀ X_j = Y_j for all groups: L (J, q, q) lower triangular, Y (J, q, k)."""
    q = L.shape[1]
    X = np.empty_like(Y)
    for i in range(q - 1, -1, -1):
        acc = Y[:, i, :]
        if i < q - 1:
            acc = acc - np.einsum("jm,jmk->jk", L[:, i + 1 :, i], X[:, i + 1 :, :])
        X[:, i, :] = acc / L[:, i, i, None]
    return X


def _batched_cholesky(M: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of every M_j (J, q, q); closed form for q = 1 and q = 2."""
    q = M.shape[1]
    if q == 1:
        return np.sqrt(M)
    if q == 2:
        L = np.zeros_like(M)
        l11 = np.sqrt(M[:, 0, 0])
        l21 = M[:, 1, 0] / l11
        L[:, 0, 0] = l11
        L[:, 1, 0] = l21
        L[:, 1, 1] = np.sqrt(M[:, 1, 1] - l21 * l21)
        return L
    return np.linalg.cholesky(M)


# ------------------------------------------------------------------------------- PLS state


@dataclass(frozen=True)
class PLSState:
    """Solution of the penalised least squares problem at one θ (lme4's ``merPredD`` state).

    Fields
    ------
    T : (q, q) relative covariance factor.
    L : (J, q, q) lower Cholesky factors of M_j = TᵀA_jT + I_q.
    R : (J, q, p) blocks of R_ZX: R_j = L_j⁻¹ TᵀB_j.
    cu : (J, q) blocks of c_u: cu_j = L_j⁻¹ Tᵀc_j.
    RX : (p, p) upper-triangular R_X with R_XᵀR_X = XᵀX − Σ_j R_jᵀR_j.
    cbeta : (p,) c_β = R_X⁻ᵀ(Xᵀy − Σ_j R_jᵀcu_j).
    beta : (p,) β̂(θ) = R_X⁻¹ c_β.
    u : (J, q) spherical conditional modes ũ_j = L_j⁻ᵀ(cu_j − R_jβ̂).
    b : (J, q) conditional modes on the original scale, b̃_j = T ũ_j.
    r2 : penalised weighted residual sum of squares r²(θ) (lme4's ``pwrss``).
    ldL2 : log|L|² = 2 Σ_j Σ_i log L_j[i, i].
    ldRX2 : log|R_X|² = 2 Σ_i log |R_X[i, i]|.
    n, p : number of observations and of fixed effects.
    """

    T: np.ndarray
    L: np.ndarray
    R: np.ndarray
    cu: np.ndarray
    RX: np.ndarray
    cbeta: np.ndarray
    beta: np.ndarray
    u: np.ndarray
    b: np.ndarray
    r2: float
    ldL2: float
    ldRX2: float
    n: int
    p: int


def pls_state(cp: GroupCrossprods, T: np.ndarray) -> PLSState:
    """Solve the PLS problem at ``T`` and return the full :class:`PLSState` (see :func:`_pls`)."""
    return _pls(cp, T, full=True)


@dataclass(frozen=True)
class _Parts:
    """The three pieces of the profiled criterion (the cheap path of :func:`_pls`)."""

    r2: float
    ldL2: float
    ldRX2: float
    n: int
    p: int


def _cholesky_components(cp: GroupCrossprods, T: np.ndarray) -> list[list[np.ndarray | None]]:
    """Lower Cholesky factors of M_j = TᵀA_jT + I_q, as a q × q list of length-J vectors (entry
    [r][c] for r ≥ c; None above the diagonal)."""
    J, q = cp.A.shape[0], cp.A.shape[1]
    a_cols, _ = cp.columns

    def A(a: int, b: int) -> np.ndarray:
        return a_cols[(a, b) if a <= b else (b, a)]

    # A_j T, then M_j = Tᵀ(A_j T) + I, as q × q lists of length-J vectors (T is lower triangular)
    AT = [[_lincomb([(T[b, c], A(a, b)) for b in range(c, q)]) for c in range(q)]
          for a in range(q)]
    M = [[None] * q for _ in range(q)]
    for a in range(q):
        for c in range(a + 1):
            v = _lincomb([(T[b, a], AT[b][c]) for b in range(a, q)])
            v = np.zeros(J) + v  # a scalar 0 when T's column a is 0
            if a == c:
                v = v + 1.0
            M[a][c] = M[c][a] = v
    Lc: list[list[np.ndarray | None]] = [[None] * q for _ in range(q)]
    for i in range(q):
        d = M[i][i] - sum(Lc[i][k] ** 2 for k in range(i)) if i else M[i][i]
        Lc[i][i] = np.sqrt(d)
        for r in range(i + 1, q):
            off = M[r][i] - sum(Lc[r][k] * Lc[i][k] for k in range(i)) if i else M[r][i]
            Lc[r][i] = off / Lc[i][i]
    return Lc


def _lincomb(terms):
    """Σ coef·vec over the terms with a non-zero scalar coefficient (0.0 when there is none)."""
    out = 0.0
    for coef, vec in terms:
        if coef != 0.0:
            out = out + (vec if coef == 1.0 else coef * vec)
    return out


def _pls_cheap(cp: GroupCrossprods, T: np.ndarray) -> _Parts:
    """r², log|L|² and log|R_X|² at T without the conditional modes (the optimizer's path).

    With W_j = L_j⁻¹Tᵀ (q × q, from the component-wise Cholesky), R_j = W_j[B_j c_j] and
    Σ_j R_jᵀR_j is down-dated from [[XᵀX, Xᵀy], [yᵀX, yᵀy]] as in :func:`_pls`."""
    J, q, p = cp.B.shape
    bc, xty, yty = cp.shifted  # y − Xγ: same r², less cancellation
    bct = cp.__dict__.get("_shifted_t")
    if bct is None:  # (p+1, J) rows: contiguous along the groups, for fast products and sums
        bct = cp.__dict__["_shifted_t"] = tuple(np.ascontiguousarray(b.T) for b in bc)
    Lc = _cholesky_components(cp, T)
    # L_j⁻¹ (lower triangular), component-wise
    Li: list[list[np.ndarray | None]] = [[None] * q for _ in range(q)]
    for i in range(q):
        Li[i][i] = 1.0 / Lc[i][i]
        for k in range(i):
            acc = sum(Lc[i][m] * Li[m][k] for m in range(k, i))
            Li[i][k] = -acc * Li[i][i]
    aug = np.empty((p + 1, p + 1))
    aug[:p, :p] = cp.XtX
    aug[:p, p] = aug[p, :p] = xty
    aug[p, p] = yty
    for i in range(q):
        # R_j[i] = Σ_c (L_j⁻¹Tᵀ)[i, c]·[B_j c_j][c] with (L⁻¹Tᵀ)[i, c] = Σ_{k ≤ min(i, c)} L⁻¹[i, k]·T[c, k]
        Ri = 0.0
        for c in range(q):
            w = _lincomb([(T[c, k], Li[i][k]) for k in range(min(i, c) + 1)])
            if isinstance(w, np.ndarray):
                Ri = Ri + w * bct[c]  # (p+1, J)
        if isinstance(Ri, np.ndarray):
            aug -= np.einsum("aj,bj->ab", Ri, Ri)  # not BLAS: threaded GEMM stalls under load
    try:
        U = np.linalg.cholesky(aug).T
    except np.linalg.LinAlgError:
        U = _cholesky_upper_with_zero_tail(aug)
    r2 = float(U[p, p] ** 2)
    ldL2 = float(2.0 * sum(np.sum(np.log(Lc[i][i])) for i in range(q)))
    ldRX2 = float(2.0 * np.sum(np.log(np.abs(np.diag(U)[:p])))) if p else 0.0
    return _Parts(r2=r2, ldL2=ldL2, ldRX2=ldRX2, n=cp.n, p=p)


_BATCH_ELEMENTS = 200_000  # (points × pairs × groups) per chunk of a batched evaluation
_K_ELEMENTS_MAX = 300_000  # per-group outer products kept only up to this many numbers; above,
# (many groups) reading them costs more than the component-wise R_j of _pls_cheap


def _pair_coefs(U: np.ndarray, out_pairs: np.ndarray, in_pairs: np.ndarray) -> np.ndarray:
    """(K, n_pairs, n_pairs) coefficients of the symmetric product UᵀSU in the pairs basis:
    (UᵀSU)[a, c] = Σ_{b ≤ d} S_bd·(U[b, a]U[d, c] + [b ≠ d]·U[d, a]U[b, c]) for U (K, q, q)."""
    a, c = out_pairs[:, 0][:, None], out_pairs[:, 1][:, None]
    b, d = in_pairs[:, 0][None, :], in_pairs[:, 1][None, :]
    off = (in_pairs[:, 0] != in_pairs[:, 1]).astype(float)[None, :]
    return U[:, b, a] * U[:, d, c] + off * U[:, d, a] * U[:, b, c]


def _batch_workspace(cp: GroupCrossprods):
    """Arrays for :func:`_pls_batch`, built once per cross-products object (None when the
    per-group outer products would exceed ``_K_ELEMENTS_MAX`` numbers)."""
    ws = cp.__dict__.get("_pls_batch_ws", False)
    if ws is not False:
        return ws
    J, q, p = cp.B.shape
    pairs = np.array([(a, b) for a in range(q) for b in range(a, q)], dtype=int)
    n_pairs, m = pairs.shape[0], (p + 1) ** 2
    if n_pairs * J * m > _K_ELEMENTS_MAX:
        ws = None
    else:
        a_cols, _ = cp.columns
        bc, xty, yty = cp.shifted
        astack = np.stack([a_cols[(a, b)] for a, b in pairs])  # (n_pairs, J)
        kmat = np.empty((n_pairs, J, p + 1, p + 1))
        for k, (c, d) in enumerate(pairs):
            kmat[k] = np.einsum("jm,jn->jmn", bc[c], bc[d])
            if c != d:
                kmat[k] += np.swapaxes(kmat[k], 1, 2)
        aug0 = np.empty((p + 1, p + 1))
        aug0[:p, :p] = cp.XtX
        aug0[:p, p] = aug0[p, :p] = xty
        aug0[p, p] = yty
        index = {(int(a), int(b)): k for k, (a, b) in enumerate(pairs)}
        diag = np.array([index[(i, i)] for i in range(q)])
        # flat positions in T of the factors of _pair_coefs, for UᵀSU with U = T and U = Tᵀ
        terms = []
        for a, c in pairs:
            row_m, row_g = [], []
            for b, d in pairs:
                off = b != d
                row_m.append((b * q + a, d * q + c, d * q + a, b * q + c, off))
                row_g.append((a * q + b, c * q + d, a * q + d, c * q + b, off))
            terms.append((row_m, row_g))
        kmat_t = np.ascontiguousarray(kmat.reshape(n_pairs * J, m).T)  # (m, n_pairs·J)
        ws = (pairs, astack, kmat_t, aug0, index, diag, terms)
    cp.__dict__["_pls_batch_ws"] = ws  # cached like a cached_property (the dataclass is frozen)
    return ws


def _pls_batch(cp: GroupCrossprods, Ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r², log|L|², log|R_X|²) at K relative covariance factors ``Ts`` (K, q, q) at once.

    Same quantities as :func:`_pls_cheap`, organised for few NumPy calls: M_j = TᵀA_jT + I is a
    linear map of the q(q+1)/2 distinct A_j entries, the component-wise Cholesky gives L_j⁻¹ and
    M_j⁻¹ = L_j⁻ᵀL_j⁻¹, and Σ_j R_jᵀR_j = Σ_j [B_j c_j]ᵀ(T M_j⁻¹ Tᵀ)[B_j c_j] is one product of the
    entries of T M_j⁻¹ Tᵀ with the precomputed per-group outer products of [B_j c_j] (for
    y − Xγ, see :attr:`GroupCrossprods.shifted`)."""
    Ts = np.asarray(Ts, dtype=float)
    K = Ts.shape[0]
    J, q, p = cp.B.shape
    ws = _batch_workspace(cp)
    if ws is None:
        parts = [_pls_cheap(cp, T) for T in Ts]
        return (np.array([x.r2 for x in parts]), np.array([x.ldL2 for x in parts]),
                np.array([x.ldRX2 for x in parts]))
    pairs, astack, kmat_t, aug0, index, diag, terms = ws
    n_pairs = pairs.shape[0]
    chunk = max(1, _BATCH_ELEMENTS // (n_pairs * J))
    if K > chunk:
        outs = [_pls_batch(cp, Ts[i : i + chunk]) for i in range(0, K, chunk)]
        return tuple(np.concatenate([o[k] for o in outs]) for k in range(3))
    if K == 1:  # the optimizer's case: the small coefficient matrices in plain Python
        t = Ts[0].ravel().tolist()
        cm = np.array([[[t[i] * t[j] + (t[k] * t[l] if off else 0.0)
                         for i, j, k, l, off in row_m] for row_m, _ in terms]])
        cg = np.array([[[t[i] * t[j] + (t[k] * t[l] if off else 0.0)
                         for i, j, k, l, off in row_g] for _, row_g in terms]])
    else:
        cm = _pair_coefs(Ts, pairs, pairs)
        cg = _pair_coefs(np.swapaxes(Ts, 1, 2), pairs, pairs)
    M = np.matmul(cm, astack)  # (K, n_pairs, J)
    M[:, diag, :] += 1.0

    def Mc(a: int, b: int) -> np.ndarray:
        return M[:, index[(a, b) if a <= b else (b, a)], :]

    Minv = np.empty((K, n_pairs, J))
    if q == 1:  # the general code below, written out (same arithmetic)
        l00 = np.sqrt(M[:, 0, :])
        i00 = 1.0 / l00
        np.multiply(i00, i00, out=Minv[:, 0, :])
        logdiag = [l00]
    elif q == 2:
        l00 = np.sqrt(M[:, 0, :])
        l10 = M[:, 1, :] / l00
        l11 = np.sqrt(M[:, 2, :] - l10**2)
        i00 = 1.0 / l00
        i11 = 1.0 / l11
        i10 = -(l10 * i00) * i11
        Minv[:, 0, :] = i00 * i00 + i10 * i10
        np.multiply(i10, i11, out=Minv[:, 1, :])
        np.multiply(i11, i11, out=Minv[:, 2, :])
        logdiag = [l00, l11]
    else:
        # Cholesky and L⁻¹, component-wise on (K, J) arrays
        Lc: list[list] = [[None] * q for _ in range(q)]
        for i in range(q):
            d = Mc(i, i) - sum(Lc[i][k] ** 2 for k in range(i)) if i else Mc(i, i)
            Lc[i][i] = np.sqrt(d)
            for r in range(i + 1, q):
                off = Mc(r, i) - sum(Lc[r][k] * Lc[i][k] for k in range(i)) if i else Mc(r, i)
                Lc[r][i] = off / Lc[i][i]
        Li: list[list] = [[None] * q for _ in range(q)]
        for i in range(q):
            Li[i][i] = 1.0 / Lc[i][i]
            for k in range(i):
                Li[i][k] = -sum(Lc[i][m] * Li[m][k] for m in range(k, i)) * Li[i][i]
        for k, (a, b) in enumerate(pairs):
            Minv[:, k, :] = sum(Li[i][a] * Li[i][b] for i in range(b, q))  # a ≤ b
        logdiag = [Lc[i][i] for i in range(q)]
    G = np.matmul(cg, Minv)  # T M⁻¹ Tᵀ
    # einsum, not BLAS: a threaded GEMM/GEMV of this shape stalls when the other cores are busy
    S = np.einsum("kn,mn->km", G.reshape(K, n_pairs * J), kmat_t).reshape(K, p + 1, p + 1)
    aug = aug0[None, :, :] - S
    ldL2 = 2.0 * sum(np.sum(np.log(v), axis=1) for v in logdiag)
    if K == 1:
        U = _small_cholesky_upper(aug[0])
        if U is not None:
            r2 = U[p][p] ** 2
            ldRX2 = 2.0 * sum(np.log(abs(U[i][i])) for i in range(p)) if p else 0.0
            return np.array([r2]), np.asarray(ldL2, dtype=float), np.array([ldRX2])
    try:
        Lx = np.linalg.cholesky(aug)
        r2 = Lx[:, p, p] ** 2
        dg = np.abs(np.diagonal(Lx, axis1=1, axis2=2)[:, :p])
    except np.linalg.LinAlgError:
        Us = [_cholesky_upper_with_zero_tail(a) if not _is_pd(a) else np.linalg.cholesky(a).T
              for a in aug]
        r2 = np.array([U[p, p] ** 2 for U in Us])
        dg = np.abs(np.array([np.diag(U)[:p] for U in Us]).reshape(K, p))
    ldRX2 = 2.0 * np.sum(np.log(dg), axis=1) if p else np.zeros(K)
    return r2, np.asarray(ldL2, dtype=float), ldRX2


def _small_cholesky_upper(a: np.ndarray) -> list[list[float]] | None:
    """Upper Cholesky factor of a small symmetric matrix in plain Python (rows of U with
    UᵀU = a), or None when a pivot is not positive (the caller then uses LAPACK's answer)."""
    n = a.shape[0]
    if n > 6:
        return None
    A = a.tolist()
    U = [[0.0] * n for _ in range(n)]
    for i in range(n):
        d = A[i][i] - sum(U[k][i] * U[k][i] for k in range(i))
        if not d > 0.0:
            return None
        uii = d**0.5
        U[i][i] = uii
        for j in range(i + 1, n):
            U[i][j] = (A[i][j] - sum(U[k][i] * U[k][j] for k in range(i))) / uii
    return U


def _is_pd(a: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return False
    return True


def _pls_fast(cp: GroupCrossprods, T: np.ndarray) -> _Parts:
    """:func:`_pls_batch` at one T, as :class:`_Parts`."""
    r2, ldL2, ldRX2 = _pls_batch(cp, np.asarray(T, dtype=float)[None, :, :])
    return _Parts(r2=float(r2[0]), ldL2=float(ldL2[0]), ldRX2=float(ldRX2[0]), n=cp.n,
                  p=cp.B.shape[2])


def _pls(cp: GroupCrossprods, T: np.ndarray, full: bool):
    """Solve the PLS problem at relative covariance factor ``T`` (§7.2 of the lme4 notes).

    All per-group work is done component by component on length-J vectors (q is small), so one
    evaluation is O(J·(q³ + q²p)) vectorised flops and two (J·q) × (p+1) matrix products.

    r² is the square of the last diagonal element of the Cholesky factor of the (p+1) × (p+1)
    matrix ``[[XᵀX, Xᵀy], [yᵀX, yᵀy]] − Σ_j [R_j cu_j]ᵀ[R_j cu_j]`` (MixedModels.jl's ``pwrss``),
    which is lme4's ``yᵀy − ‖c_u‖² − ‖c_β‖²`` without a separate subtraction.

    Raises
    ------
    TwolevelError
        If the down-dated XᵀX is not positive definite (lme4: "Downdated VtV is not positive
        definite"), i.e. the fixed effects are not identifiable given the random effects.
    """
    T = np.asarray(T, dtype=float)
    J, q, p = cp.B.shape
    if not full:
        return _pls_fast(cp, T)
    Lc = _cholesky_components(cp, T)
    # right-hand sides Tᵀ[B_j c_j] (q vectors of shape (J, p+1)), then forward substitution
    _, bc = cp.columns
    rhs = [_lincomb([(T[b, a], bc[b]) for b in range(a, q)]) for a in range(q)]
    rhs = [np.zeros((J, p + 1)) + r for r in rhs]
    Rc = []
    for i in range(q):
        acc = rhs[i]
        for k in range(i):
            acc = acc - Lc[i][k][:, None] * Rc[k]
        Rc.append(acc / Lc[i][i][:, None])
    aug = np.empty((p + 1, p + 1))
    aug[:p, :p] = cp.XtX
    aug[:p, p] = aug[p, :p] = cp.Xty
    aug[p, p] = cp.yty
    for i in range(q):
        aug -= Rc[i].T @ Rc[i]
    try:
        U = np.linalg.cholesky(aug).T  # upper: UᵀU = aug
    except np.linalg.LinAlgError:
        U = _cholesky_upper_with_zero_tail(aug)
    RX = U[:p, :p]
    cbeta = U[:p, p]
    r2 = float(U[p, p] ** 2)
    ldL2 = float(2.0 * sum(np.sum(np.log(Lc[i][i])) for i in range(q)))
    ldRX2 = float(2.0 * np.sum(np.log(np.abs(np.diag(RX))))) if p else 0.0
    if not full:
        return _Parts(r2=r2, ldL2=ldL2, ldRX2=ldRX2, n=cp.n, p=p)
    beta = _solve_upper(RX, cbeta) if p else np.zeros(0)
    # ũ_j = L_j⁻ᵀ(cu_j − R_jβ̂), backward substitution per component
    w = [Rc[i][:, p] - np.einsum("jk,k->j", Rc[i][:, :p], beta) for i in range(q)]
    uc: list[np.ndarray | None] = [None] * q
    for i in range(q - 1, -1, -1):
        acc = w[i]
        for k in range(i + 1, q):
            acc = acc - Lc[k][i] * uc[k]
        uc[i] = acc / Lc[i][i]
    L = np.zeros((J, q, q))
    for i in range(q):
        for k in range(i + 1):
            L[:, i, k] = Lc[i][k]
    Rcs = np.stack(Rc, axis=1)  # (J, q, p+1)
    u = np.stack(uc, axis=1)
    b = u @ T.T
    return PLSState(
        T=T, L=L, R=Rcs[:, :, :p], cu=Rcs[:, :, p], RX=RX, cbeta=cbeta, beta=beta, u=u, b=b,
        r2=r2, ldL2=ldL2, ldRX2=ldRX2, n=cp.n, p=p,
    )


def _cholesky_upper_with_zero_tail(aug: np.ndarray) -> np.ndarray:
    """Upper Cholesky of ``aug`` when only its last pivot (r²) is ≤ 0 through rounding (an exact
    fit); otherwise the fixed effects are not estimable and a :class:`TwolevelError` is raised."""
    p = aug.shape[0] - 1
    try:
        Ux = np.linalg.cholesky(aug[:p, :p]).T
    except np.linalg.LinAlgError as exc:
        raise TwolevelError(
            "downdated XᵀX is not positive definite (lme4: 'Downdated VtV is not positive "
            "definite'): the fixed effects cannot be separated from the random effects; remove "
            "fixed-effect columns that are constant within every group or rescale predictors"
        ) from exc
    U = np.zeros_like(aug)
    U[:p, :p] = Ux
    U[:p, p] = _solve_upper_t(Ux, aug[:p, p])
    U[p, p] = np.sqrt(max(aug[p, p] - U[:p, p] @ U[:p, p], 0.0))
    return U


# --------------------------------------------------------------------- the named quantities


def pwrss(state: PLSState) -> float:
    """Penalised weighted residual sum of squares r²(θ) = ‖y − Xβ̂ − ZTũ‖² + ‖ũ‖²."""
    return state.r2


def log_det_L2(state: PLSState) -> float:
    """log|L_θ|² = Σ_j log det(TᵀA_jT + I_q) = 2 Σ_j Σ_i log L_j[i, i]."""
    return state.ldL2


def log_det_RX2(state: PLSState) -> float:
    """log|R_X|² = log det(XᵀV_θ⁻¹X) with V_θ = I + ZTTᵀZᵀ (unscaled) = 2 Σ_i log|R_X[i, i]|."""
    return state.ldRX2


def ml_deviance(state: PLSState | _Parts) -> float:
    """Profiled ML deviance: d_ML(θ) = log|L|² + n·[1 + log(2π r²(θ) / n)]."""
    n = state.n
    return state.ldL2 + n * (1.0 + _LOG_2PI + np.log(state.r2 / n))


def reml_criterion(state: PLSState | _Parts) -> float:
    """Profiled REML criterion (−2 × restricted log-likelihood):
    d_REML(θ) = log|L|² + log|R_X|² + (n − p)·[1 + log(2π r²(θ) / (n − p))]."""
    dof = state.n - state.p
    return state.ldL2 + state.ldRX2 + dof * (1.0 + _LOG_2PI + np.log(state.r2 / dof))


def criterion(state: PLSState | _Parts, reml: bool) -> float:
    """:func:`reml_criterion` if ``reml`` else :func:`ml_deviance`."""
    return reml_criterion(state) if reml else ml_deviance(state)


def sigma_hat(state: PLSState, reml: bool) -> float:
    """Residual SD at θ: σ̂ = sqrt(r² / (n − p)) for REML, sqrt(r² / n) for ML (lme4's
    ``sigmaREML`` / ``sigmaML``)."""
    dof = state.n - state.p if reml else state.n
    return float(np.sqrt(state.r2 / dof))


def unscaled_vcov(state: PLSState) -> np.ndarray:
    """(R_XᵀR_X)⁻¹ = R_X⁻¹R_X⁻ᵀ; vcov(β̂) = σ̂²·(R_XᵀR_X)⁻¹."""
    RXinv = _solve_upper(state.RX, np.eye(state.p))
    return RXinv @ RXinv.T


def cond_var_unscaled(state: PLSState) -> np.ndarray:
    """(J, q, q) T M_j⁻¹ Tᵀ; the conditional variance of b_j is σ̂²·T M_j⁻¹ Tᵀ (lme4 postVar)."""
    J, q, _ = state.L.shape
    eye = np.broadcast_to(np.eye(q), (J, q, q))
    Linv = _forward_solve(state.L, np.ascontiguousarray(eye))
    G = np.matmul(state.T, np.swapaxes(Linv, 1, 2))  # T L_j⁻ᵀ
    return np.matmul(G, np.swapaxes(G, 1, 2))


# ------------------------------------------------------------------------ analytic gradient


def deviance_gradient(
    design: Design, cp: GroupCrossprods, theta: np.ndarray, reml: bool = True
) -> np.ndarray:
    """Analytic gradient of the profiled criterion with respect to θ (§7.3 of the lme4 notes).

    With E_k the indicator of θ_k's position (r_k, c_k) in T and W_j = B_j − A_jT M_j⁻¹TᵀB_j:

    * ∂log|L|²/∂θ_k = 2 Σ_j [A_j T M_j⁻¹]_{r_k c_k}
    * ∂r²/∂θ_k = −2 Σ_j ũ_j[c_k] · [c_j − B_jβ̂ − A_jTũ_j]_{r_k}
    * ∂log|R_X|²/∂θ_k = −tr((R_XᵀR_X)⁻¹ Σ_j W_jᵀ(E_kTᵀ + TE_kᵀ)W_j)

    and ∇d = ∂log|L|² [+ ∂log|R_X|²] + (dof / r²)·∂r², dof = n − p (REML) or n (ML).
    """
    theta = np.asarray(theta, dtype=float)
    T = design.theta_to_T(theta)
    st = pls_state(cp, T)
    J, q, p = cp.B.shape
    AT, ATMinv, W, TW = _gradient_blocks(cp, T, st, with_w=reml)
    u = [np.ascontiguousarray(st.u[:, a]) for a in range(q)]
    _, bc = cp.columns
    # resid_j = c_j − B_jβ̂ − A_jTũ_j, component-wise
    resid = []
    for a in range(q):
        v = bc[a][:, p] - np.einsum("jk,k->j", bc[a][:, :p], st.beta)
        for k in range(q):
            if isinstance(AT[a][k], np.ndarray):
                v = v - AT[a][k] * u[k]
        resid.append(v)
    tmpl = design.theta_template
    grad = np.empty(theta.shape[0])
    rows, cols = np.nonzero(tmpl >= 0)
    if reml:
        Cu = unscaled_vcov(st)
        dof = st.n - st.p
    else:
        dof = st.n
    for r, c in zip(rows, cols, strict=True):
        k = tmpl[r, c]
        dld = 2.0 * float(np.sum(ATMinv[r][c]))
        dr2 = -2.0 * float(np.einsum("j,j->", u[c], resid[r]))
        g = dld + dof / st.r2 * dr2
        if reml:
            # Σ_j W_jᵀ(E_kTᵀ + TE_kᵀ)W_j = Σ_j (W_j[r]ᵀ(TᵀW_j)[c] + its transpose)
            S = np.einsum("ja,jb->ab", W[r], TW[c])
            g -= float(np.sum(Cu * (S + S.T)))
        grad[k] = g
    return grad


def _gradient_blocks(cp: GroupCrossprods, T: np.ndarray, st: PLSState, with_w: bool = True):
    """Component-wise pieces of the analytic derivatives at T (q × q lists of length-J vectors,
    or 0.0 where structurally zero): A_jT, A_jT M_j⁻¹, and (with ``with_w``) the q blocks (J, p)
    of W_j = B_j − A_jT M_j⁻¹TᵀB_j and of TᵀW_j."""
    J, q, p = cp.B.shape
    a_cols, bc = cp.columns

    def A(a: int, b: int) -> np.ndarray:
        return a_cols[(a, b) if a <= b else (b, a)]

    Lc = [[np.ascontiguousarray(st.L[:, i, k]) if k <= i else None for k in range(q)]
          for i in range(q)]
    Li: list[list] = [[None] * q for _ in range(q)]
    for i in range(q):
        Li[i][i] = 1.0 / Lc[i][i]
        for k in range(i):
            Li[i][k] = -sum(Lc[i][m] * Li[m][k] for m in range(k, i)) * Li[i][i]
    # M⁻¹ = L⁻ᵀL⁻¹: M⁻¹[a][b] = Σ_{i ≥ max(a, b)} L⁻¹[i][a]·L⁻¹[i][b]
    Minv = [[None] * q for _ in range(q)]
    for a in range(q):
        for b in range(a + 1):
            Minv[a][b] = Minv[b][a] = sum(Li[i][a] * Li[i][b] for i in range(a, q))
    AT = [[_lincomb([(T[b, c], A(a, b)) for b in range(c, q)]) for c in range(q)]
          for a in range(q)]
    ATMinv = [[_lincomb([(1.0, AT[r][k] * Minv[k][c]) for k in range(q)
                         if isinstance(AT[r][k], np.ndarray)]) for c in range(q)]
              for r in range(q)]
    ATMinv = [[v if isinstance(v, np.ndarray) else np.zeros(J) for v in row] for row in ATMinv]
    if not with_w:
        return AT, ATMinv, None, None
    # (A T M⁻¹ Tᵀ)[a][k] = Σ_m ATMinv[a][m]·T[k, m]
    W = []
    for a in range(q):
        v = bc[a][:, :p]
        for k in range(q):
            coef = _lincomb([(T[k, m], ATMinv[a][m]) for m in range(k + 1)])
            if isinstance(coef, np.ndarray):
                v = v - coef[:, None] * bc[k][:, :p]
        W.append(np.ascontiguousarray(v))
    TW = []
    for c in range(q):
        v = _lincomb([(T[a, c], W[a]) for a in range(c, q)])
        TW.append(v if isinstance(v, np.ndarray) else np.zeros((J, p)))
    return AT, ATMinv, W, TW


# ------------------------------------------------------------------------ the deviance function


def make_deviance(
    design: Design, reml: bool = True, crossprods: GroupCrossprods | None = None
) -> Callable[[np.ndarray], float]:
    """The profiled REML criterion (``reml=True``) or ML deviance as a pure function of θ
    (lme4's ``lmer(..., devFunOnly = TRUE)``).

    Parameters
    ----------
    design : the :class:`~models.design.Design` (gives the θ → T layout).
    reml : REML criterion if True, else ML deviance.
    crossprods : per-group cross-products; computed from ``design`` when not given.

    Returns
    -------
    ``devfun(theta) -> float``, with no hidden state: each call solves the PLS problem afresh.
    """
    cp = crossprods if crossprods is not None else group_crossprods(design)
    to_T = design.theta_to_T

    def devfun(theta: np.ndarray) -> float:
        return float(criterion(_pls(cp, to_T(theta), full=False), reml))

    devfun.__doc__ = (
        f"{'REML criterion' if reml else 'ML deviance'} of '{design.formula}' at θ "
        f"(length {design.n_theta}: {', '.join(design.theta_names)})."
    )
    return devfun
