"""Profiled (RE)ML deviance of a two-level linear mixed model as a pure function of θ.

This is lme4's ``mkLmerDevfun`` / ``devFunOnly`` for one grouping factor, computed from the
per-group cross-products of :class:`twolevel.models.design.GroupCrossprods` (§7 of the lme4
algorithm notes): one penalised least squares (PLS) solve costs O(J·(q³ + q²p) + p³). The
optimizer's path (r², log|L|², log|R_X|² only) is a compiled loop over the J groups
(:mod:`twolevel.models.lmm.kernels`); the full solution with the conditional modes
(:func:`pls_state`, once per fit) is NumPy, component by component on length-J vectors, and also
serves as the kernel's independent check in the tests.

Notation (lme4's): T is the q × q lower-triangular relative covariance factor built from θ
(Σ_b = σ² T Tᵀ); for group j, A_j = Z_jᵀZ_j, B_j = Z_jᵀX_j, c_j = Z_jᵀy_j and
M_j = TᵀA_jT + I_q = L_j L_jᵀ. Negative diagonal θ and a singular T are accepted (M_j ≥ I is
always positive definite); numDeriv's Hessian steps go there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from twolevel.data.errors import TwolevelError
from twolevel.models.design import Design, GroupCrossprods, group_crossprods
from twolevel.models.lmm import creml

X_NOT_PD = creml.X_NOT_PD  # the kernels' status code (twolevel.models.lmm.kernels.X_NOT_PD)

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
        from scipy.linalg import solve_triangular  # not at import: SciPy costs the CLI ~0.3 s

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
        from scipy.linalg import solve_triangular

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


class _Parts(NamedTuple):
    """The three pieces of the profiled criterion at one θ (the optimizer's path)."""

    r2: float
    ldL2: float
    ldRX2: float
    n: int
    p: int


def _not_estimable() -> TwolevelError:
    return TwolevelError(
        "downdated XᵀX is not positive definite (lme4: 'Downdated VtV is not positive "
        "definite'): the fixed effects cannot be separated from the random effects; remove "
        "fixed-effect columns that are constant within every group or rescale predictors"
    )


def _pls_parts(cp: GroupCrossprods, T: np.ndarray) -> _Parts:
    """r², log|L|² and log|R_X|² at T without the conditional modes (the optimizer's path):
    :func:`twolevel.models.lmm.kernels.pls_parts_kernel` (in C: :mod:`twolevel.models.lmm.creml`)
    on the blocks of :attr:`GroupCrossprods.shifted`
    (the response y − Xγ: same r², less cancellation).

    Raises
    ------
    TwolevelError
        If the down-dated XᵀX is not positive definite (see :func:`pls_state`).
    """
    BC, aug0, _ = cp.shifted
    r2, ldL2, ldRX2, status = creml.kernels().pls_parts_kernel(T, cp.A, BC, aug0)
    if status == X_NOT_PD:
        raise _not_estimable()
    return _Parts(r2=r2, ldL2=ldL2, ldRX2=ldRX2, n=cp.n, p=cp.p)


def _pls_parts_batch(
    cp: GroupCrossprods, Ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r², log|L|², log|R_X|²) at K relative covariance factors ``Ts`` (K, q, q), each as
    :func:`_pls_parts`, in one compiled call."""
    BC, aug0, _ = cp.shifted
    r2, ldL2, ldRX2, status = creml.kernels().pls_parts_batch_kernel(
        np.ascontiguousarray(Ts, dtype=float), cp.A, BC, aug0
    )
    if np.any(status == X_NOT_PD):
        raise _not_estimable()
    return r2, ldL2, ldRX2


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


def pls_state(cp: GroupCrossprods, T: np.ndarray) -> PLSState:
    """Solve the PLS problem at relative covariance factor ``T`` (§7.2 of the lme4 notes) and
    return the full :class:`PLSState`.

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
        raise _not_estimable() from exc
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
    dld, dr2, S = _gradient_sums(cp, T, st, with_w=reml)
    tmpl = design.theta_template
    grad = np.empty(theta.shape[0])
    if reml:
        Cu = unscaled_vcov(st)
        dof = st.n - st.p
    else:
        dof = st.n
    for r, c in zip(*np.nonzero(tmpl >= 0), strict=True):
        g = 2.0 * dld[r, c] - 2.0 * dof / st.r2 * dr2[r, c]
        if reml:
            g -= float(np.sum(Cu * (S[r, c] + S[r, c].T)))
        grad[tmpl[r, c]] = g
    return grad


def _gradient_sums(
    cp: GroupCrossprods, T: np.ndarray, st: PLSState, with_w: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-group sums of the analytic derivatives at T and the state's β̂
    (:func:`twolevel.models.lmm.kernels.theta_grad_kernel`): Σ_j A_jT M_j⁻¹ (q, q), Σ_j
    ũ_j[c]·resid_j[r] (q, q) and, with ``with_w``, Σ_j W_j[r]ᵀ(TᵀW_j)[c] (q, q, p, p)."""
    BC, _, gamma = cp.shifted  # c_j − B_jβ̂ is the same for y − Xγ and β̂ − γ
    return creml.kernels().theta_grad_kernel(np.asarray(T, dtype=float), cp.A, BC,
                                             st.beta - gamma, with_w)


# ------------------------------------------------------------------------ the deviance function


def make_deviance(
    design: Design, reml: bool = True, crossprods: GroupCrossprods | None = None
) -> Callable[[np.ndarray], float]:
    """The profiled REML criterion (``reml=True``) or ML deviance as a pure function of θ
    (lme4's ``lmer(..., devFunOnly = TRUE)``).

    Parameters
    ----------
    design : the :class:`~twolevel.models.design.Design` (gives the θ → T layout).
    reml : REML criterion if True, else ML deviance.
    crossprods : per-group cross-products; computed from ``design`` when not given.

    Returns
    -------
    ``devfun(theta) -> float``, with no hidden state: each call solves the PLS problem afresh.
    """
    cp = crossprods if crossprods is not None else group_crossprods(design)
    to_T = design.theta_to_T

    def devfun(theta: np.ndarray) -> float:
        return float(criterion(_pls_parts(cp, to_T(theta)), reml))

    devfun.__doc__ = (
        f"{'REML criterion' if reml else 'ML deviance'} of '{design.formula}' at θ "
        f"(length {design.n_theta}: {', '.join(design.theta_names)})."
    )
    return devfun
