"""Satterthwaite denominator degrees of freedom, exactly as lmerTest 3.1 computes them.

Recipe (§3 of the lme4 algorithm notes; lmerTest ``as_lmerModLT``, ``contest1D``, ``contestMD``):

1. Variance parameters ``varpar = (θ, σ)`` — lme4's θ̂ and σ̂ (REML σ for REML fits), σ not σ².
2. ``D(θ, σ)`` = −2 log-likelihood (ML) or −2 restricted log-likelihood (REML), *not* profiled
   over σ (:func:`devfun_vp`).
3. ``A = vcov(varpar) = 2 H⁺`` with H the numDeriv Richardson Hessian of D (d = 0.1, r = 4,
   v = 2, eps = 1e-4, zero.tol ≈ 1.78e-5; :func:`numderiv_hessian`) and H⁺ its pseudo-inverse
   over eigenvalues > 1e-8.
4. ``J_k = ∂C/∂varpar_k`` with C(θ, σ) = σ²(R_XᵀR_X)⁻¹ = vcov(β̂): analytic (default; agrees with
   numDeriv's Jacobian to ~1e-9) or numDeriv's Richardson Jacobian (d = 1e-4).
5. For a contrast L: ν = 2 (LᵀCL)² / (gᵀAg) with g_k = LᵀJ_kL; t = Lᵀβ̂ / sqrt(LᵀCL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from twolevel.models.lmm.deviance import (
    _gradient_sums,
    _pls_parts,
    _pls_parts_batch,
    pls_state,
    unscaled_vcov,
)
from twolevel.models.pvalues import f_sf, t_sf2

__all__ = [
    "VarparInfo",
    "contest1d",
    "contest_md",
    "ddf_satterthwaite",
    "devfun_vp",
    "fstat_ddf",
    "numderiv_hessian",
    "numderiv_jacobian",
    "varpar_info",
]

_LOG_2PI = float(np.log(2.0 * np.pi))
ZERO_TOL = float(np.sqrt(np.finfo(float).eps / 7e-7))
EIGEN_TOL = 1e-8


# ----------------------------------------------------------------------- numDeriv replicas


def numderiv_hessian(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    d: float = 0.1,
    eps: float = 1e-4,
    zero_tol: float = ZERO_TOL,
    r: int = 4,
    v: float = 2.0,
) -> np.ndarray:
    """numDeriv's ``hessian(f, x)`` (``genD`` with method "Richardson"; note d = 0.1).

    h0_i = |d·x_i| + eps·[|x_i| < zero.tol]; second differences with steps h0, h0/2, h0/4, h0/8,
    combined by Richardson extrapolation H_k ← (4^m H_{k+1} − H_k)/(4^m − 1).
    """
    x = np.asarray(x, dtype=float)
    batch = getattr(f, "batch", None)
    if batch is not None:
        # the evaluation points do not depend on the values: record them, evaluate them all at
        # once (f.batch), then replay the same arithmetic with the values
        points: list[np.ndarray] = []

        def record(z: np.ndarray) -> float:
            points.append(np.array(z, dtype=float))
            return 0.0

        numderiv_hessian(record, x, d=d, eps=eps, zero_tol=zero_tol, r=r, v=v)
        values = iter(np.asarray(batch(np.array(points)), dtype=float).tolist())
        return numderiv_hessian(lambda z: next(values), x, d=d, eps=eps, zero_tol=zero_tol,
                                r=r, v=v)
    n = x.shape[0]
    f0 = f(x)
    h0 = np.abs(d * x) + eps * (np.abs(x) < zero_tol)
    hdiag = np.empty(n)

    def richardson(a: np.ndarray) -> float:
        a = a.copy()
        for m in range(1, r):
            for k in range(r - m):
                a[k] = (a[k + 1] * 4.0**m - a[k]) / (4.0**m - 1.0)
        return float(a[0])

    for i in range(n):
        h = h0.copy()
        happrox = np.empty(r)
        for k in range(r):
            e = np.zeros(n)
            e[i] = h[i]
            happrox[k] = (f(x + e) - 2.0 * f0 + f(x - e)) / h[i] ** 2
            h = h / v
        hdiag[i] = richardson(happrox)
    H = np.diag(hdiag)
    for i in range(n):
        for j in range(i):
            h = h0.copy()
            dapprox = np.empty(r)
            for k in range(r):
                e = np.zeros(n)
                e[i] += h[i]
                e[j] += h[j]
                dapprox[k] = (
                    f(x + e) - 2.0 * f0 + f(x - e) - hdiag[i] * h[i] ** 2 - hdiag[j] * h[j] ** 2
                ) / (2.0 * h[i] * h[j])
                h = h / v
            H[i, j] = H[j, i] = richardson(dapprox)
    return H


def numderiv_jacobian(
    f: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    d: float = 1e-4,
    eps: float = 1e-4,
    zero_tol: float = ZERO_TOL,
    r: int = 4,
    v: float = 2.0,
) -> np.ndarray:
    """numDeriv's ``jacobian(f, x)`` (Richardson): (len(f), len(x))."""
    x = np.asarray(x, dtype=float)
    n = x.shape[0]
    f0 = np.ravel(f(x))
    h0 = np.abs(d * x) + eps * (np.abs(x) < zero_tol)
    a = np.empty((f0.shape[0], r, n))
    for k in range(r):
        for i in range(n):
            e = np.zeros(n)
            e[i] = h0[i]
            a[:, k, i] = (np.ravel(f(x + e)) - np.ravel(f(x - e))) / (2.0 * h0[i])
        h0 = h0 / v
    for m in range(1, r):
        a = (a[:, 1 : r + 1 - m, :] * 4.0**m - a[:, : r - m, :]) / (4.0**m - 1.0)
    return a[:, 0, :]


# ---------------------------------------------------------------- deviance of (θ, σ) and C


def devfun_vp(fit) -> Callable[[np.ndarray], float]:
    """D(θ, σ), lmerTest's ``devfun_vp``, from the PLS state at θ (with s² = σ²):

    * ML:   D = log|L|² + r²(θ)/s² + n·log(2π s²)
    * REML: D = log|L|² + log|R_X|² + r²(θ)/s² + (n − p)·log(2π s²)
    """
    design, cp, reml = fit.design, fit.crossprods, fit.reml
    n, p = cp.n, cp.p

    def combine(r2: float, ldL2: float, ldRX2: float, sigma: float) -> float:
        s2 = sigma * sigma
        dev = ldL2 + r2 / s2 + n * (_LOG_2PI + np.log(s2))
        if reml:
            dev += ldRX2 - p * (_LOG_2PI + np.log(s2))
        return float(dev)

    def D(varpar: np.ndarray) -> float:
        theta, sigma = varpar[:-1], varpar[-1]
        st = _pls_parts(cp, design.theta_to_T(theta))  # r², log|L|², log|R_X|² only
        return combine(st.r2, st.ldL2, st.ldRX2, sigma)

    def batch(varpars: np.ndarray) -> np.ndarray:
        """D at each row of ``varpars``; the PLS parts depend on θ only, so each distinct θ is
        solved once and all of them in one batched evaluation (:func:`_pls_parts_batch`)."""
        varpars = np.asarray(varpars, dtype=float)
        keys: dict[bytes, int] = {}
        rows = []
        for th in varpars[:, :-1]:
            key = th.tobytes()
            if key not in keys:
                keys[key] = len(keys)
                rows.append(th)
        Ts = np.array([design.theta_to_T(th) for th in rows])
        r2, ldL2, ldRX2 = _pls_parts_batch(cp, Ts)
        out = np.empty(varpars.shape[0])
        for i, vp in enumerate(varpars):
            k = keys[vp[:-1].tobytes()]
            out[i] = combine(float(r2[k]), float(ldL2[k]), float(ldRX2[k]), float(vp[-1]))
        return out

    D.batch = batch
    return D


def covbeta(fit, varpar: np.ndarray) -> np.ndarray:
    """C(θ, σ) = σ²·(R_X(θ)ᵀR_X(θ))⁻¹, lmerTest's ``get_covbeta``."""
    theta = np.asarray(varpar[:-1], dtype=float)
    if np.array_equal(theta, np.asarray(fit.theta, dtype=float)):
        st = fit.state  # the fit's own PLS solution
    else:
        st = pls_state(fit.crossprods, fit.design.theta_to_T(theta))
    return varpar[-1] ** 2 * unscaled_vcov(st)


def covbeta_jacobian_analytic(fit) -> np.ndarray:
    """(k, p, p) ∂C/∂varpar_k at the fit (§3.3 of the notes).

    ∂C/∂σ = 2σ·C_u and ∂C/∂θ_k = −σ²·C_u·[∂(R_XᵀR_X)/∂θ_k]·C_u with C_u = (R_XᵀR_X)⁻¹,
    ∂(R_XᵀR_X)/∂θ_k = −Σ_j W_jᵀ(E_kTᵀ + TE_kᵀ)W_j and W_j = B_j − A_jT M_j⁻¹TᵀB_j.
    """
    design, cp = fit.design, fit.crossprods
    theta, sigma = np.asarray(fit.theta, dtype=float), float(fit.sigma)
    T = design.theta_to_T(theta)
    st = fit.state if np.array_equal(fit.state.T, T) else pls_state(cp, T)
    p = cp.B.shape[2]
    _, _, S = _gradient_sums(cp, T, st, with_w=True)
    Cu = unscaled_vcov(st)
    tmpl = design.theta_template
    out = np.empty((design.n_theta + 1, p, p))
    for r, c in zip(*np.nonzero(tmpl >= 0), strict=True):
        dRtR = -(S[r, c] + S[r, c].T)
        out[tmpl[r, c]] = -(sigma**2) * Cu @ dRtR @ Cu
    out[-1] = 2.0 * sigma * Cu
    return out


@dataclass(frozen=True)
class VarparInfo:
    """What lmerTest stores on an ``lmerModLmerTest``: varpar, Hessian, vcov(varpar), Jacobian.

    Fields
    ------
    varpar : (θ̂, σ̂).  hessian : numDeriv Hessian of D at varpar.
    vcov_varpar : 2·H⁺ (pseudo-inverse over eigenvalues > 1e-8).
    jacobian : (k, p, p) ∂vcov(β̂)/∂varpar_k.  vcov_beta : vcov(β̂) at the fit.
    warnings : lmerTest's convergence warnings from the Hessian's eigenvalues.
    """

    varpar: np.ndarray
    hessian: np.ndarray
    vcov_varpar: np.ndarray
    jacobian: np.ndarray
    vcov_beta: np.ndarray
    warnings: tuple[str, ...] = field(default=())


def varpar_info(fit, jacobian: str = "analytic") -> VarparInfo:
    """Compute :class:`VarparInfo` for a fit (lmerTest's ``as_lmerModLT``)."""
    varpar = np.append(np.asarray(fit.theta, dtype=float), float(fit.sigma))
    H = numderiv_hessian(devfun_vp(fit), varpar)
    evals, evecs = np.linalg.eigh(H)
    warnings = []
    neg = evals < -EIGEN_TOL
    zero = np.abs(evals) < EIGEN_TOL
    if neg.any():
        warnings.append(
            f"Model failed to converge with {int(neg.sum())} negative eigenvalue(s): "
            + " ".join(f"{v:.1e}" for v in evals[neg])
        )
    if zero.any():
        warnings.append(
            f"Model may not have converged with {int(zero.sum())} eigenvalue(s) close to zero: "
            + " ".join(f"{v:.1e}" for v in evals[zero])
        )
    pos = evals > EIGEN_TOL
    Hinv = (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    if jacobian == "analytic":
        Jac = covbeta_jacobian_analytic(fit)
    elif jacobian == "numDeriv":
        p = fit.design.p
        Jm = numderiv_jacobian(lambda vp: covbeta(fit, vp).ravel(order="F"), varpar)
        Jac = np.stack([Jm[:, k].reshape(p, p, order="F") for k in range(Jm.shape[1])])
    else:
        raise ValueError("jacobian must be 'analytic' or 'numDeriv'")
    return VarparInfo(
        varpar=varpar, hessian=H, vcov_varpar=2.0 * Hinv, jacobian=Jac,
        vcov_beta=covbeta(fit, varpar), warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------------- tests


def _info(fit) -> VarparInfo:
    return fit.varpar_info


def contest1d(fit, L: np.ndarray, rhs: float = 0.0) -> dict[str, float]:
    """lmerTest's ``contest1D``: Estimate, Std. Error, df, t value, Pr(>|t|) for Lᵀβ − rhs."""
    info = _info(fit)
    L = np.asarray(L, dtype=float).ravel()
    var_con = float(L @ info.vcov_beta @ L)
    g = np.array([L @ Jk @ L for Jk in info.jacobian])
    ddf = 2.0 * var_con**2 / float(g @ info.vcov_varpar @ g)
    est = float(L @ fit.state.beta) - rhs
    se = np.sqrt(var_con)
    t = est / se
    return {
        "Estimate": est, "Std. Error": float(se), "df": float(ddf), "t value": float(t),
        "Pr(>|t|)": t_sf2(t, ddf),  # 2 stats.t.sf(|t|, ddf)
    }


def fstat_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``: combine per-direction df ν_m into the F test's DenDF."""
    nu = np.asarray(nu, dtype=float)
    q = nu.shape[0]
    if q == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(nu.mean())
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - q)


def contest_md(fit, L: np.ndarray, rhs: np.ndarray | float = 0.0) -> dict[str, float]:
    """lmerTest's ``contestMD``: multi-df F test of Lβ = rhs with Satterthwaite DenDF.

    Returns Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F).
    """
    info = _info(fit)
    L = np.atleast_2d(np.asarray(L, dtype=float))
    beta = fit.state.beta.copy()
    rhs = np.broadcast_to(np.asarray(rhs, dtype=float), (L.shape[0],))
    if np.any(rhs != 0):
        beta = beta - np.linalg.pinv(L) @ rhs
    VL = L @ info.vcov_beta @ L.T
    d, P = np.linalg.eigh(VL)
    order = np.argsort(d)[::-1]
    d, P = d[order], P[:, order]
    tol = max(np.sqrt(np.finfo(float).eps) * d[0], 0.0)
    q = int(np.sum(d > tol))
    PtL = (P.T @ L)[:q]
    sigma2 = float(fit.sigma) ** 2
    if q == 1:
        c = contest1d(fit, PtL[0], float(PtL[0] @ (fit.state.beta - beta)))
        F = c["t value"] ** 2
        ddf = c["df"]
    else:
        t2 = (PtL @ beta) ** 2 / d[:q]
        F = float(np.sum(t2) / q)
        nu = []
        for m in range(q):
            g = np.array([PtL[m] @ Jk @ PtL[m] for Jk in info.jacobian])
            nu.append(2.0 * d[m] ** 2 / float(g @ info.vcov_varpar @ g))
        ddf = fstat_ddf(np.array(nu))
    return {
        "Sum Sq": F * sigma2 * q, "Mean Sq": F * sigma2, "NumDF": float(q), "DenDF": float(ddf),
        "F value": float(F), "Pr(>F)": f_sf(F, q, ddf),
    }


def ddf_satterthwaite(fit, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry of the ``ddf`` dispatch table: (SE, df) for each row of L (one contrast per row)."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    res = [contest1d(fit, row) for row in L]
    return np.array([r["Std. Error"] for r in res]), np.array([r["df"] for r in res])
