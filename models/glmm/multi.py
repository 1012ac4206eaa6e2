"""``glmer`` with several nested grouping factors (students in classes in schools): lme4's
Laplace objective (nAGQ = 1) and its two optimisation stages, with PIRLS solved by block
elimination over the levels.

Model: η = o + Xβ + Σ_k Z_k Λ_k u_k, u ~ N(0, I), y | u from a binomial or Poisson family; the
factors form a nesting chain, innermost first (``(1 | school/class)`` = ``(1 | class:school) +
(1 | school)``). One PIRLS iteration (glmer-algorithms §2.2) at the current η takes the working
weights W_i = μ'(η_i)² w_i / V(μ_i) and the working response ž_i = η_i − o_i + (y_i − μ_i)/μ'(η_i)
(Xβ in o in the u-only mode) and solves the penalised weighted least squares

    (ΛᵀZᵀWZΛ + I) u = ΛᵀZᵀWž            (u-only, nAGQ = 1)
    [[ΛᵀZᵀWZΛ + I, ΛᵀZᵀWX], [XᵀWZΛ, XᵀWX]] (u, β) = (ΛᵀZᵀWž, XᵀWž)    (joint, nAGQ = 0)

from the per-innermost-group weighted cross-products C_c = Σ_{i∈c} W_i v_i v_iᵀ of
v_i = [z_{1,i} … z_{K,i} x_i ž_i] by the block elimination of
:mod:`twolevel.models.lmm.nested` (a Cholesky per class, its Schur complement summed into the
school, and so on; then the fixed-effects block): O(N) per iteration, no fill-in. The Laplace
value is lme4's ``glmerLaplace``: ldL2 + ‖ũ‖² + a(μ̃), with ldL2 from the weights at the start of
the last iteration (§2.5), the loop, convergence test and step-halving those of ``pwrssUpdate``
(§2.3), and the warm start lp0 of ``updateGlmerDevfun`` (§2.4).

Random slopes at any level work the same way (q_k × q_k blocks per group). The deviance and the
cross-products of a sweep come from one numba pass over the rows
(:mod:`twolevel.models.glmm.multi_kernels`); the NumPy functions here are its reference.
Crossed factors and nAGQ > 1 are refused (lme4 refuses nAGQ > 1 for several terms too).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import special

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.design.multi import MultiDesign
from twolevel.models.design.multi_stats import nested_chain
from twolevel.models.glmm.family import CLOGLOG, EPS, LOGIT, PROBIT, Family
from twolevel.models.glmm.response import GlmResponse

__all__ = ["MultiGlmmProblem", "MultiPirlsState", "NAGQ_MULTI_MESSAGE", "eliminate",
           "family_rows", "unit_deviance", "weighted_crossprods"]

TOL_PWRSS = 1e-7  # glmerControl(tolPwrss)
MAXIT = 100
MAX_HALF = 20
TOL_EXACT = 1e-13
_SQRT_2PI = math.sqrt(2.0 * math.pi)

NAGQ_MULTI_MESSAGE = ("nAGQ > 1 is only available for models with a single, scalar random-effects "
                      "term")


class MultiPirlsError(TwolevelError):
    """PIRLS failed for a several-factors GLMM (lme4's messages)."""


def family_rows(code: int, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(μ, dμ/dη, V(μ)) at every η with lme4's clamps (:mod:`twolevel.models.glmm.family`):
    logit μ = clamp(plogis η, ε, 1−ε), μ' = max(dlogis η, ε); probit μ = min(Φ(η), 1−ε),
    μ' = φ(η); cloglog μ = clamp(−expm1(−e^η), ε, 1−ε), μ' = max(e^{η−e^η}, ε); log
    μ = μ' = max(e^η, ε); V = max(μ(1−μ), ε) for binomial, μ for Poisson."""
    with np.errstate(over="ignore", under="ignore"):
        if code == LOGIT:
            m0 = special.expit(eta)
            mu = np.clip(m0, EPS, 1.0 - EPS)
            dmu = np.maximum(m0 * (1.0 - m0), EPS)
        elif code == PROBIT:
            mu = np.minimum(special.ndtr(eta), 1.0 - EPS)
            dmu = np.exp(-0.5 * eta * eta) / _SQRT_2PI
        elif code == CLOGLOG:
            e = np.exp(np.minimum(eta, 700.0))
            mu = np.clip(-np.expm1(-e), EPS, 1.0 - EPS)
            dmu = np.maximum(e * np.exp(-e), EPS)
        else:
            mu = np.maximum(np.exp(eta), EPS)
            return mu, mu, mu
    return mu, dmu, np.maximum(mu * (1.0 - mu), EPS)


def unit_deviance(code: int, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
    """d_i = 2w[y log(y/μ) + (1−y) log((1−y)/(1−μ))] (binomial) or 2w[y log(y/μ) − (y−μ)]
    (Poisson), 0·log 0 = 0."""
    if code in (LOGIT, PROBIT, CLOGLOG):
        return 2.0 * w * (special.xlogy(y, y / mu) + special.xlogy(1.0 - y, (1.0 - y) / (1.0 - mu)))
    return 2.0 * w * (special.xlogy(y, y / mu) - (y - mu))


def weighted_crossprods(codes: np.ndarray, V: np.ndarray, W: np.ndarray,
                        n_groups: int) -> np.ndarray:
    """C_c = Σ_{i∈c} W_i v_i v_iᵀ (n_groups, d, d) of the rows v_i of V (n, d): one pass in C
    (:func:`twolevel.models.lmm.cnested.group_crossprods` with row weights W), or one
    ``numpy.bincount`` per entry of the upper triangle (the reference) without the compiled
    library."""
    from twolevel.models.lmm import cnested

    n, d = V.shape
    cols = [V[:, a] for a in range(d)]
    if cnested.compiled(d):
        return cnested.group_crossprods(codes, cols, n_groups, weights=W)
    C = np.empty((n_groups, d, d))
    for a in range(d):
        wa = cols[a] * W
        for b in range(a, d):
            C[:, a, b] = np.bincount(codes, weights=wa * cols[b], minlength=n_groups)
            C[:, b, a] = C[:, a, b]
    return C


def _sum_to_parents(F: np.ndarray, parent: np.ndarray, n_parent: int) -> np.ndarray:
    """Σ over the children of every parent of the symmetric stack F (n, m, m): one
    ``numpy.bincount`` per entry of the upper triangle."""
    m = F.shape[1]
    out = np.empty((n_parent, m, m))
    for a in range(m):
        for b in range(a, m):
            out[:, a, b] = np.bincount(parent, weights=F[:, a, b], minlength=n_parent)
            out[:, b, a] = out[:, a, b]
    return out


def _eliminate_block(G: np.ndarray, q: int):
    """Block Cholesky step on a stack G (n, m, m): L (n,q,q) of the leading block, Rᵀ =
    L⁻¹G_12, the Schur complement F = G_22 − RRᵀ and 2Σ log diag L."""
    if q == 1:
        g = G[:, 0, 0]
        if not np.all(g > 0):
            raise np.linalg.LinAlgError("not positive definite")
        lv = np.sqrt(g)
        L = lv[:, None, None]
        r = G[:, 0, 1:] / lv[:, None]
        F = G[:, 1:, 1:] - r[:, :, None] * r[:, None, :]
        return L, r[:, None, :], F, 2.0 * float(np.sum(np.log(lv)))
    else:
        L = np.linalg.cholesky(G[:, :q, :q])
        Rt = np.linalg.solve(L, G[:, :q, q:])
        ld = 2.0 * float(np.sum(np.log(np.diagonal(L, axis1=1, axis2=2))))
    F = G[:, q:, q:] - np.einsum("nqa,nqb->nab", Rt, Rt)
    return L, Rt, F, ld


def eliminate(C: np.ndarray, parents: tuple[np.ndarray, ...], q: tuple[int, ...],
              n_levels: tuple[int, ...], T_blocks: tuple[np.ndarray, ...], p: int,
              joint: bool, compiled: bool = True
              ) -> tuple[float, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Penalised weighted least squares of one PIRLS iteration by block elimination.

    With T = diag(T_1, …, T_K, I_{p+1}) and G_c = TᵀC_cT: at each level k (innermost first)
    G[:q_k, :q_k] += I, G_11 = L L ᵀ, Rᵀ = L⁻¹G_12, F = G_22 − RRᵀ summed into the parent
    groups; at the top the (p+1)² block [[XᵀV⁻¹X, ·], [·, ·]] gives RX = chol(its X block)
    and, in the joint mode, β = RX⁻ᵀRX⁻¹(its Xž column). The modes come back top-down,
    u_k = L⁻ᵀ(Rᵀ_ž − Rᵀ_outer v_outer) with v_outer the ancestors' modes and β (β = 0 in the
    u-only mode, where Xβ is in the offset).

    With ``compiled`` and a scalar random effect for every factor the loops run in numba
    (:func:`twolevel.models.glmm.multi_kernels.eliminate_scalar_kernel`); this NumPy code is
    their reference.

    Returns
    -------
    (ldL2, RX, beta, u) : log|ΛᵀZᵀWZΛ + I|, the (p, p) lower factor RX, β (zeros unless
        ``joint``) and the spherical modes per level (ℓ_k, q_k).

    Raises
    ------
    numpy.linalg.LinAlgError
        When a block is not positive definite (non-finite weights).
    """
    K = len(q)
    d = C.shape[1]
    t = np.ones(d)
    diagonal = all(b.shape == (1, 1) for b in T_blocks)
    if compiled and diagonal:  # every factor a scalar random effect: numba's loops
        return _eliminate_scalar(C, parents, n_levels, T_blocks, p, joint)
    if diagonal:
        t[:K] = [float(b[0, 0]) for b in T_blocks]
        G = C * (t[:, None] * t[None, :])
    else:
        T = np.eye(d)
        o = 0
        for b in T_blocks:
            T[o:o + b.shape[0], o:o + b.shape[0]] = b
            o += b.shape[0]
        n1 = C.shape[0]
        CT = (C.reshape(n1 * d, d) @ T).reshape(n1, d, d)
        G = (np.swapaxes(CT, 1, 2).reshape(n1 * d, d) @ T).reshape(n1, d, d).swapaxes(1, 2)
        G = np.ascontiguousarray(G)
    ld = 0.0
    steps = []
    for k in range(K):
        idx = np.arange(q[k])
        G[:, idx, idx] += 1.0
        L, Rt, F, ldk = _eliminate_block(G, q[k])
        ld += ldk
        steps.append((L, Rt))
        if k < K - 1:
            G = _sum_to_parents(F, parents[k], n_levels[k + 1])
        else:
            G = F.sum(axis=0)
    RX, beta = _fixed_block(G, p, joint)
    us: list[np.ndarray] = [np.empty(0)] * K
    outer = np.broadcast_to(beta, (n_levels[K - 1], p))
    for k in range(K - 1, -1, -1):
        L, Rt = steps[k]
        if k < K - 1:
            outer = outer[parents[k]]
        if L.shape[1] == 1:
            rhs = Rt[:, 0, -1] - np.sum(Rt[:, 0, :-1] * outer, axis=1)
            u = (rhs / L[:, 0, 0])[:, None]
        else:
            rhs = Rt[:, :, -1] - np.einsum("nqa,na->nq", Rt[:, :, :-1], outer)
            u = np.linalg.solve(np.swapaxes(L, 1, 2), rhs[:, :, None])[:, :, 0]
        us[k] = u
        outer = np.concatenate([u, outer], axis=1)
    return ld, RX, beta, tuple(us)


def _fixed_block(G: np.ndarray, p: int, joint: bool) -> tuple[np.ndarray, np.ndarray]:
    """RX = chol(G[:p, :p]) of the top block and, in the joint mode, β = RX⁻ᵀRX⁻¹G[:p, p]
    (zeros otherwise)."""
    if not p:
        return np.zeros((0, 0)), np.zeros(0)
    RX = np.linalg.cholesky(G[:p, :p])
    beta = (np.linalg.solve(RX.T, np.linalg.solve(RX, G[:p, p])) if joint else np.zeros(p))
    return RX, beta


def _eliminate_scalar(C, parents, n_levels, T_blocks, p, joint):
    """:func:`eliminate` for scalar random effects at every level, in numba."""
    from twolevel.models.glmm.multi_kernels import eliminate_scalar_kernel, modes_scalar_kernel

    K = len(n_levels)
    d = C.shape[1]
    t = np.ones(d)
    t[:K] = [float(b[0, 0]) for b in T_blocks]
    n_lv = np.asarray(n_levels, dtype=np.int64)
    par_all = (np.concatenate(parents).astype(np.int64) if parents
               else np.zeros(1, dtype=np.int64))
    poff = np.zeros(K, dtype=np.int64)
    for k in range(1, K):
        poff[k] = poff[k - 1] + n_levels[k - 1]
    total = int(n_lv.sum())
    l_all, R_all = np.empty(total), np.empty((total, d - 1))
    ld, top = eliminate_scalar_kernel(np.ascontiguousarray(C), t, par_all, poff, n_lv, l_all,
                                      R_all)
    if not np.isfinite(ld):
        raise np.linalg.LinAlgError("not positive definite")
    RX, beta = _fixed_block(top, p, joint)
    u_all = np.empty(total)
    modes_scalar_kernel(l_all, R_all, par_all, poff, n_lv, beta, u_all)
    bounds = np.cumsum([0, *n_levels])
    return ld, RX, beta, tuple(u_all[bounds[k]:bounds[k + 1], None] for k in range(K))


@dataclass
class MultiPirlsState:
    """The state left by one objective evaluation.

    Fields
    ------
    value : the objective (Laplace, lme4's).  u : per level (ℓ_k, q_k) spherical modes ũ.
    beta : β.  eta : (n,) η.  RX : (p, p) lower factor (joint mode or ``want_rx``).
    ldL2, aic, devsum, usq : the pieces of the value.  iterations : PIRLS iterations.
    theta : θ.  eta_fac : (n,) the η whose working weights the last factorisation used (lme4's
    lagged weights; η itself with ``exact``).
    """

    value: float
    u: tuple[np.ndarray, ...]
    beta: np.ndarray
    eta: np.ndarray
    RX: np.ndarray
    ldL2: float
    aic: float
    devsum: float
    usq: float
    iterations: int
    theta: np.ndarray
    eta_fac: np.ndarray


class MultiGlmmProblem:
    """Arrays of one GLMM with nested grouping factors and its objectives (module docstring).

    Raises
    ------
    FormulaError
        When the grouping factors are not nested in one another (crossed factors).
    """

    def __init__(self, design: MultiDesign, resp: GlmResponse, family: Family):
        if not nested_chain(design):
            names = ", ".join(f"'{f.name}'" for f in design.factors)
            raise FormulaError(
                f"glmer with several grouping factors needs them nested (each level of one "
                f"inside one level of the next); {names} in '{design.formula}' are crossed or "
                "partially crossed: only nested designs such as '(1 | school/class)' are "
                "supported for binomial and Poisson models; for crossed factors use lmer "
                "(Gaussian) or fit_bayes")
        self.design, self.resp, self.family = design, resp, family
        fs = design.factors
        self.K = len(fs)
        self.q = tuple(f.q for f in fs)
        self.n_levels = tuple(f.n_levels for f in fs)
        self.codes = fs[0].codes
        parents = []
        for k in range(self.K - 1):
            par = np.zeros(fs[k].n_levels, dtype=np.intp)
            par[fs[k].codes] = fs[k + 1].codes
            parents.append(par)
        self.parents = tuple(parents)
        self.Zall = np.column_stack([f.Z for f in fs]).astype(float)
        self.Qz = self.Zall.shape[1]
        self.X = np.asarray(design.X, dtype=float)
        self.VZ = np.ascontiguousarray(self.Zall)
        self.VZX = np.ascontiguousarray(np.column_stack([self.Zall, self.X]))
        self.codes64 = np.ascontiguousarray(self.codes, dtype=np.int64)
        self.p = design.p
        self.n_theta = design.n_theta
        self.csat = resp.saturated_constant(family)
        self.code = family.code
        eta0 = resp.offset + family.linkfun(resp.mustart(family))
        st = self._pirls(self.theta0, resp.offset, eta0, joint=True)
        self.initial = st
        self.set_warm_start(st)

    @property
    def theta0(self) -> np.ndarray:
        """lme4's θ0 for glmer: 1 on each T's diagonal, 0 off it."""
        th = np.zeros(self.n_theta)
        for tm in self.design.templates:
            dg = np.diag(tm)
            th[dg[dg >= 0]] = 1.0
        return th

    def T_blocks(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        """T_k of every factor from θ."""
        return tuple(self.design.factor_T(theta, k) for k in range(self.K))

    def linear_re(self, T_blocks, u: tuple[np.ndarray, ...]) -> np.ndarray:
        """Σ_k z_{k,i}ᵀ T_k u_{k, g_k(i)} for every row (ZΛu)."""
        out = np.zeros(self.design.n)
        for k, f in enumerate(self.design.factors):
            b = u[k] @ T_blocks[k].T
            if f.q == 1:
                out += f.Z[:, 0] * b[f.codes, 0]
            else:
                out += np.einsum("nq,nq->n", f.Z, b[f.codes])
        return out

    def _crossprods(self, W, z, with_x: bool) -> np.ndarray:
        V = np.column_stack([self.Zall, self.X, z] if with_x else [self.Zall, z])
        return weighted_crossprods(self.codes, V, W, self.n_levels[0])

    def _sweep(self, eta: np.ndarray, offset: np.ndarray, with_x: bool
               ) -> tuple[float, np.ndarray]:
        """(Σ d_i, C) at η: the unit deviances and the weighted cross-products of
        [Z (X) ž] per innermost group (:func:`~twolevel.models.glmm.multi_kernels.sweep_kernel`)."""
        from twolevel.models.glmm.multi_kernels import sweep_kernel

        V = self.VZX if with_x else self.VZ
        d = V.shape[1] + 1
        C = np.empty((self.n_levels[0], d, d))
        dev = sweep_kernel(self.code, eta, np.ascontiguousarray(offset), self.resp.y,
                           self.resp.w, V, self.codes64, C, True)
        return float(dev), C

    def _pirls(self, theta, offset, eta, *, joint: bool, beta=None, want_rx: bool = False,
               exact: bool = False, C0: np.ndarray | None = None) -> MultiPirlsState:
        """lme4's ``pwrssUpdate`` loop (glmer-algorithms §2.3) from η with u = 0 (and β = 0
        in the joint mode; β given, in the offset, in the u-only mode). ``C0``: the first
        iteration's cross-products (the warm start's, :meth:`set_warm_start`)."""
        theta = np.asarray(theta, dtype=float)
        Tb = self.T_blocks(theta)
        p = self.p
        with_x = joint or want_rx
        b = np.zeros(p) if beta is None else np.array(beta, dtype=float)
        off = np.asarray(offset, dtype=float)
        u = tuple(np.zeros((n, q)) for n, q in zip(self.n_levels, self.q, strict=True))
        tol, maxit = (TOL_EXACT, 4 * MAXIT) if exact else (TOL_PWRSS, MAXIT)
        oldpdev = np.finfo(float).max
        C = C0 if C0 is not None else self._sweep(eta, off, with_x)[1]
        status, it, ldL2, RX = "maxit", 0, np.nan, np.zeros((p, p))
        eta_fac = eta
        pdev = dev = np.nan
        for _ in range(maxit):
            it += 1
            u_old, b_old = u, b
            try:
                ldL2, RX, bnew, u = eliminate(C, self.parents, self.q, self.n_levels, Tb,
                                              p if with_x else 0, joint)
            except np.linalg.LinAlgError:
                status = "notpd"
                break
            eta_fac = eta
            if joint:
                b = bnew
            lin = off + self.linear_re(Tb, u) + (self.X @ b if joint else 0.0)
            dev, C = self._sweep(lin, off, with_x)
            pdev = dev + sum(float(np.sum(x * x)) for x in u)
            if abs((oldpdev - pdev) / pdev) < tol:
                status = "ok"
                eta = lin
                break
            if math.isnan(pdev) or pdev > oldpdev:
                k = 0
                while k < MAX_HALF and (math.isnan(pdev) or pdev > oldpdev):
                    u = tuple(0.5 * (a + c) for a, c in zip(u_old, u, strict=True))
                    if joint:
                        b = 0.5 * (b_old + b)
                    lin = off + self.linear_re(Tb, u) + (self.X @ b if joint else 0.0)
                    dev, C = self._sweep(lin, off, with_x)
                    pdev = dev + sum(float(np.sum(x * x)) for x in u)
                    k += 1
                if math.isnan(pdev):
                    status = "nan"
                    break
                if pdev - oldpdev > tol:
                    status = "halving"
                    break
            eta = lin
            oldpdev = pdev
        if status != "ok":
            raise MultiPirlsError({
                "maxit": "pwrssUpdate did not converge in (maxit) iterations",
                "notpd": "PIRLS: a Cholesky factor is not positive definite (non-finite "
                         "working weights; the linear predictor has overflowed)",
                "nan": "PIRLS loop resulted in NaN value",
                "halving": "(maxstephalfit) PIRLS step-halvings failed to reduce deviance in "
                           "pwrssUpdate"}[status])
        if exact:  # L (and RX) at the final weights: C was left by the last sweep
            ldL2, RX, _, _ = eliminate(C, self.parents, self.q, self.n_levels, Tb,
                                       p if with_x else 0, False)
            eta_fac = eta
        usq = sum(float(np.sum(x * x)) for x in u)
        aic = dev + self.csat
        return MultiPirlsState(ldL2 + usq + aic, u, b, eta, RX, ldL2, aic, dev, usq, it, theta,
                               eta_fac)

    def set_warm_start(self, state: MultiPirlsState) -> None:
        """``updateGlmerDevfun``: lp0 ← Xβ + ZΛu of ``state``; the weights and the joint
        cross-products of [Z X ž] at η = o + lp0 (independent of θ) are computed once."""
        self.lp0 = state.eta - self.resp.offset
        self.eta0 = self.resp.offset + self.lp0
        self.C0 = self._sweep(self.eta0, self.resp.offset, True)[1]

    def _start_u_only(self, beta: np.ndarray, with_x: bool) -> np.ndarray:
        """The warm start's cross-products with Xβ moved into the offset: ž' = ž − Xβ, so
        C' = MᵀC0M with M the identity but for −β in the X rows of the ž column."""
        C0 = self.C0
        d = C0.shape[1]
        xs = slice(self.Qz, self.Qz + self.p)
        v = C0[:, :, xs] @ beta  # (n, d): C0[:, a, X] β
        C = C0.copy()
        C[:, :, d - 1] -= v
        C[:, d - 1, :] -= v
        C[:, d - 1, d - 1] = C0[:, d - 1, d - 1] - 2.0 * v[:, d - 1] + v[:, xs] @ beta
        if with_x:
            return C
        keep = np.r_[np.arange(self.Qz), d - 1]
        return np.ascontiguousarray(C[:, keep][:, :, keep])

    def stage1_state(self, theta: np.ndarray) -> MultiPirlsState:
        """Joint PIRLS at θ from η = o + lp0 (glmer's stage-1 / nAGQ = 0 objective)."""
        return self._pirls(theta, self.resp.offset, self.eta0, joint=True, C0=self.C0)

    def stage1(self, theta: np.ndarray) -> float:
        """Stage-1 objective value at θ."""
        try:
            return self.stage1_state(theta).value
        except MultiPirlsError:
            return np.inf

    def stage2_state(self, par: np.ndarray, *, exact: bool = False,
                     want_rx: bool = False) -> MultiPirlsState:
        """u-only PIRLS at par = (θ, β) from η = o + lp0 with Xβ in the offset; the value is
        lme4's Laplace deviance."""
        par = np.asarray(par, dtype=float)
        theta, beta = par[:self.n_theta], par[self.n_theta:]
        off = self.resp.offset + self.X @ beta
        C0 = self._start_u_only(beta, want_rx)
        return self._pirls(theta, off, self.eta0, joint=False, beta=beta, want_rx=want_rx,
                           exact=exact, C0=C0)

    def stage2(self, par: np.ndarray, exact: bool = False) -> float:
        """Stage-2 objective value at (θ, β)."""
        return self.stage2_state(par, exact=exact).value

    def working_weights(self, state: MultiPirlsState) -> np.ndarray:
        """W = μ'² w / V at the η of the state's last factorisation."""
        mu, dmu, V = family_rows(self.code, state.eta_fac)
        return dmu * dmu * self.resp.w / V

    def cond_var_u(self, state: MultiPirlsState) -> tuple[np.ndarray, ...]:
        """Per level (ℓ_k, q_k, q_k) the blocks of (ΛᵀZᵀWZΛ + I)⁻¹ at the weights of the last
        factorisation (lme4's ``condVar``, β fixed), by the nested engine's top-down pass."""
        from twolevel.models.design.multi_stats import NestedStats
        from twolevel.models.lmm.nested import nested_state

        W = self.working_weights(state)
        z = np.ones(self.design.n)
        C = self._crossprods(W, z, False)
        stats = NestedStats(C=C, parents=self.parents, q=self.q, n=self.design.n, p=0)
        d0 = _no_x(self.design)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = nested_state(d0, stats, state.theta, modes=True)
        return st.cond_var_u


def _no_x(design: MultiDesign) -> MultiDesign:
    """The design without fixed effects (p = 0) for the nested engine's modes."""
    import dataclasses

    return dataclasses.replace(design, X=np.zeros((design.n, 0)), x_names=())
