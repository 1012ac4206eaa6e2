"""The REML refit and lmerTest's Satterthwaite t test of a one-random-effect model
(``y ~ x + (1 | school)``, or one random slope without intercept), for the many refits of a power
simulation: the same draws, criterion, optimizer path and test as the general route
(:func:`~twolevel.models.inference.simulate.simulate_crossprods`,
:func:`~twolevel.models.lmm.deviance.make_deviance`,
:func:`~twolevel.models.lmm.optimize.optimize_theta`,
:func:`~twolevel.models.power.satterthwaite.satterthwaite_p`), computed from a few
(p+1) × (p+1) sums in scalar arithmetic instead of J per-school blocks in array calls.

With one random effect (q = 1) every per-school quantity of the PLS problem is a scalar: with
a_j = z_jᵀz_j, g_j = [z_jᵀX_j, z_jᵀy_j] (p + 1) and T = θ, M_j = 1 + θ²a_j and

    [[R_XᵀR_X, R_Xᵀc_β], [·, c_βᵀc_β + r²]] = S − Σ_j w_j(θ) g_j g_jᵀ,  w_j(θ) = θ²/(1 + θ²a_j),

S = [[XᵀX, Xᵀy], [yᵀX, yᵀy]]. Schools with the same a_j (the same size, for a random intercept)
share w_j, so with K distinct a_k the sums G_k = Σ_{a_j = a_k} g_j g_jᵀ are formed once per
simulated response, and every evaluation of the criterion is one (p+1) × (p+1) Cholesky
factorisation, whatever J. As :attr:`GroupCrossprods.shifted`, the response is first shifted by
its OLS fit Xγ (less cancellation in r²; β̂ absorbs γ).

The refit is lme4's: NLopt's BOBYQA on the profiled REML criterion
d(θ) = log|L|² + log|R_X|² + (n − p)[1 + log(2πr²/(n − p))], log|L|² = Σ_k m_k log(1 + θ²a_k),
from the true θ (as the general route), with lme4's boundary checks
(:func:`~twolevel.models.lmm.optimize.optimize_theta`). The test is lmerTest's ``contest1D``:
numDeriv's Richardson Hessian H of D(θ, σ) (:func:`hessian2`, numDeriv's points and arithmetic),
A = 2H⁺, C = σ²C_u with C_u = (R_XᵀR_X)⁻¹, and the analytic Jacobian
∂C/∂θ = −σ²C_u(∂R_XᵀR_X/∂θ)C_u with ∂R_XᵀR_X/∂θ = −Σ_j 2θ/(1 + θ²a_j)²·B_jB_jᵀ (the general
formula −Σ_j W_jᵀ(E Tᵀ + T Eᵀ)W_j with W_j = B_j/(1 + θ²a_j)), ∂C/∂σ = 2σC_u.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from twolevel.data.errors import TwolevelError
from twolevel.models.design import GroupCrossprods
from twolevel.models.lmm.deviance import _not_estimable
from twolevel.models.lmm.optimize import optimize_theta
from twolevel.models.lmm.satterthwaite import EIGEN_TOL, ZERO_TOL

__all__ = ["InterceptModel", "InterceptProfile", "cholesky_small", "hessian2", "vcov_varpar"]

_LOG_2PI = float(np.log(2.0 * np.pi))
_LOWER = np.zeros(1)  # lme4's lower bound of θ (T's one, diagonal, element)
_SCALAR_K = 8  # up to this many distinct a_k, Σ_k w_k G_k in scalar arithmetic


def cholesky_small(a: list[float], m: int) -> list[float]:
    """Lower Cholesky factor L (row-major, m × m) of the symmetric matrix ``a`` (row-major list)
    in scalar arithmetic: L_jj = √(a_jj − Σ_{k<j} L_jk²), L_ij = (a_ij − Σ_{k<j} L_ikL_jk)/L_jj.
    The last pivot (r²) ≤ 0 through rounding (an exact fit) gives L_mm = 0.

    Parameters
    ----------
    a : list of float
        The m × m matrix, row-major (only its lower triangle is read).
    m : int
        Its order.

    Returns
    -------
    list of float
        L, row-major, zeros above the diagonal.

    Raises
    ------
    TwolevelError
        If a leading pivot is ≤ 0: the down-dated XᵀX is not positive definite (lme4's
        "Downdated VtV is not positive definite").
    """
    L = [0.0] * (m * m)
    for j in range(m):
        rj = j * m
        s = a[rj + j]
        for k in range(j):
            s -= L[rj + k] * L[rj + k]
        if s <= 0.0:
            if j < m - 1 or not s == s:
                raise _not_estimable()
            s = 0.0
        d = math.sqrt(s)
        L[rj + j] = d
        for i in range(j + 1, m):
            ri = i * m
            t = a[ri + j]
            for k in range(j):
                t -= L[ri + k] * L[rj + k]
            L[ri + j] = t / d
    return L


def hessian2(f, x0: float, x1: float, d: float = 0.1, eps: float = 1e-4,
             zero_tol: float = ZERO_TOL, r: int = 4, v: float = 2.0) -> list[list[float]]:
    """numDeriv's Richardson Hessian of f(x0, x1)
    (:func:`~twolevel.models.lmm.satterthwaite.numderiv_hessian`: the same points and arithmetic)
    in scalar arithmetic: h_i = |d·x_i| + eps·[|x_i| < zero_tol], halved r − 1 times; diagonal
    (f(x + h e_i) − 2f(x) + f(x − h e_i))/h², off-diagonal (f(x + h_0e_0 + h_1e_1) − 2f(x) +
    f(x − h_0e_0 − h_1e_1) − H_11h_1² − H_00h_0²)/(2h_1h_0) (numDeriv's order of operations);
    A_k ← (4^m A_{k+1} − A_k)/(4^m − 1).

    Parameters
    ----------
    f : callable
        f(x0, x1) → float.
    x0, x1 : float
        The point.
    d, eps, zero_tol, r, v : float, int
        numDeriv's ``method.args`` (its defaults for ``hessian``).

    Returns
    -------
    list of list of float
        The 2 × 2 Hessian.

    Examples
    --------
    >>> H = hessian2(lambda a, b: a**3 + a * b**2, 1.0, 2.0)
    >>> [[round(v, 8) for v in row] for row in H]
    [[6.0, 4.0], [4.0, 2.0]]
    """
    x = (x0, x1)
    f0 = f(x0, x1)
    h0 = [abs(d * xi) + eps * (abs(xi) < zero_tol) for xi in x]

    def richardson(a: list[float]) -> float:
        for m in range(1, r):
            c = 4.0**m
            for k in range(r - m):
                a[k] = (a[k + 1] * c - a[k]) / (c - 1.0)
        return a[0]

    hd = []
    for i in range(2):
        h = h0[i]
        approx = []
        for _ in range(r):
            if i == 0:
                up, dn = f(x0 + h, x1), f(x0 - h, x1)
            else:
                up, dn = f(x0, x1 + h), f(x0, x1 - h)
            approx.append((up - 2.0 * f0 + dn) / h**2)
            h = h / v
        hd.append(richardson(approx))
    ha, hb = h0
    approx = []
    for _ in range(r):
        approx.append((f(x0 + ha, x1 + hb) - 2.0 * f0 + f(x0 - ha, x1 - hb)
                       - hd[1] * hb**2 - hd[0] * ha**2) / (2.0 * hb * ha))
        ha, hb = ha / v, hb / v
    off = richardson(approx)
    return [[hd[0], off], [off, hd[1]]]


def vcov_varpar(H: list[list[float]]) -> np.ndarray:
    """lmerTest's vcov of (θ, σ): A = 2H⁺, the pseudo-inverse over eigenvalues > 1e-8
    (:func:`~twolevel.models.lmm.satterthwaite.varpar_info`). For a 2 × 2 H with both
    eigenvalues λ = tr/2 ± √((h₀₀ − h₁₁)²/4 + h₀₁²) above the tolerance H⁺ = H⁻¹ =
    [[h₁₁, −h₀₁], [−h₀₁, h₀₀]]/det; otherwise through the eigen-decomposition.

    Parameters
    ----------
    H : list of list of float
        The 2 × 2 Hessian of D(θ, σ) (:func:`hessian2`).

    Returns
    -------
    numpy.ndarray
        A (2, 2).
    """
    (a, b), (_, d) = H
    half = 0.5 * (a + d)
    rad = math.sqrt(0.25 * (a - d) ** 2 + b * b)
    if half - rad > EIGEN_TOL:
        det = a * d - b * b
        return np.array([[d, -b], [-b, a]]) * (2.0 / det)
    lam, U = np.linalg.eigh(np.array(H))
    pos = lam > EIGEN_TOL
    return 2.0 * (U[:, pos] / lam[pos]) @ U[:, pos].T


def _unscaled_column(L: list[float], m: int, k: int) -> list[float]:
    """Column k of C_u = (R_XᵀR_X)⁻¹ from the lower Cholesky factor L (m × m, row-major; its
    leading p = m − 1 block is R_Xᵀ): C_u e_k = R_X⁻¹(R_X⁻ᵀe_k), a forward then a backward
    substitution."""
    p = m - 1
    z = [0.0] * p
    for i in range(p):
        t = 1.0 if i == k else 0.0
        for j in range(i):
            t -= L[i * m + j] * z[j]
        z[i] = t / L[i * m + i]
    x = [0.0] * p
    for i in range(p - 1, -1, -1):
        t = z[i]
        for j in range(i + 1, p):
            t -= L[j * m + i] * x[j]
        x[i] = t / L[i * m + i]
    return x


@dataclass(frozen=True)
class InterceptModel:
    """What does not depend on the simulated response: the distinct a_k = z_jᵀz_j (K,) and
    their counts m_k, the schools sorted by k and where each k starts (for the sums G_k), a_j,
    B (J, p) = z_jᵀX_j, XᵀX and its inverse (the shift γ = (XᵀX)⁻¹Xᵀy), n, p; and for drawing
    responses (:meth:`draw`) the noise basis (F, the dropped directions and Σ rank W_j) and the
    true θ, σ, β with XᵀXβ, βᵀXᵀXβ, Bβ.

    Examples
    --------
    >>> import numpy as np
    >>> import twolevel as tl
    >>> from twolevel.models.power.simulation import SimulationJob, design_population
    >>> sd = tl.study_design("cra2", schools=10, students=5, icc=0.2)
    >>> model = SimulationJob(*design_population(sd, 0.5, np.random.default_rng(0))).prepare().fast
    >>> model.a, model.p                  # one school size (5 students), p = 2 fixed effects
    (array([5.]), 2)
    >>> p = model.p_value(np.random.default_rng(1), column=1)
    >>> bool(0.0 <= p <= 1.0)
    True
    """

    a: np.ndarray
    counts: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    a_j: np.ndarray
    B: np.ndarray
    XtX: np.ndarray
    XtX_inv: np.ndarray
    n: int
    p: int
    F: np.ndarray
    drop: np.ndarray
    rank: int
    ones: np.ndarray
    theta: float
    sigma: float
    beta: np.ndarray
    XtXbeta: np.ndarray
    bXtXb: float
    Bbeta: np.ndarray

    @classmethod
    def for_job(cls, job, cp: GroupCrossprods, basis) -> InterceptModel | None:
        """The model of a :class:`~twolevel.models.power.simulation.SimulationJob` when this
        route applies — ``job.fast``, the Satterthwaite test, one random effect, XᵀX of full
        rank — else None (the general route, which reports each failed refit)."""
        if not (job.fast and job.test == "satterthwaite" and cp.A.shape[1] == 1):
            return None
        try:
            return cls.of(cp, basis, job.theta, job.sigma, job.beta)
        except TwolevelError:
            return None

    @classmethod
    def of(cls, cp: GroupCrossprods, basis, theta: np.ndarray, sigma: float, beta: np.ndarray
           ) -> InterceptModel:
        """From the design's cross-products (A (J, 1, 1), B, XᵀX; the response is not used), its
        noise basis (:class:`~twolevel.models.inference.simulate._NoiseBasis`) and the true
        (θ, σ, β).

        Raises
        ------
        TwolevelError
            If the model has more than one random effect, or XᵀX is singular.
        """
        if cp.A.shape[1] != 1:
            raise TwolevelError(f"the one-random-effect refit needs q = 1, this model has "
                                f"q = {cp.A.shape[1]} random effects; use the general route")
        a_j = np.ascontiguousarray(cp.A[:, 0, 0])
        a, inverse, counts = np.unique(a_j, return_inverse=True, return_counts=True)
        order = np.argsort(inverse.ravel(), kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        try:
            XtX_inv = np.linalg.inv(cp.XtX)
        except np.linalg.LinAlgError as exc:
            raise _not_estimable() from exc
        B = np.ascontiguousarray(cp.B[:, 0, :])
        beta = np.asarray(beta, float)
        return cls(a=a, counts=counts.astype(float), order=order, starts=starts, a_j=a_j, B=B,
                   XtX=np.array(cp.XtX, float), XtX_inv=XtX_inv, n=int(cp.n), p=int(cp.p),
                   F=basis.F, drop=~basis.keep, rank=int(basis.keep.sum()),
                   ones=np.ones(a_j.shape[0]), theta=float(np.ravel(theta)[0]),
                   sigma=float(sigma), beta=beta, XtXbeta=cp.XtX @ beta,
                   bXtXb=float(beta @ cp.XtX @ beta), Bbeta=B @ beta)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """(c (J,), Xᵀy, yᵀy) of one response y* = Xβ + zb + σε, b_j = σθ·N(0, 1), with the same
        draws, in the same order, as the general route (:func:`~twolevel.models.inference.
        simulate.simulate_crossprods`: W_jᵀε_j = F_jξ_j, εᵀε = Σ‖ξ_j‖² + χ²(n − Σ rank W_j)):
        c_j = B_jβ + a_jb_j + σz_jᵀε_j, Xᵀy = XᵀXβ + Σ_j B_jᵀb_j + σXᵀε,
        yᵀy = βᵀXᵀXβ + 2Σ_j b_jB_jβ + Σ_j a_jb_j² + 2σ(βᵀXᵀε + Σ_j b_jz_jᵀε_j) + σ²εᵀε."""
        J, sigma = self.a_j.shape[0], self.sigma
        b = (sigma * rng.standard_normal(J)) * self.theta
        xi = rng.standard_normal(self.F.shape[:2])
        xi[self.drop] = 0.0
        w = np.einsum("jab,jb->ja", self.F, xi)
        ze, xe = w[:, 0], self.ones @ w[:, 1:]
        Ab = self.a_j * b
        c = self.Bbeta + Ab + sigma * ze
        Xty = self.XtXbeta + b @ self.B + sigma * xe
        dof = self.n - self.rank
        chi = rng.chisquare(dof) if dof > 0 else 0.0
        xf = xi.ravel()
        ete = float(xf @ xf) + chi
        mm = self.bXtXb + 2.0 * float(b @ self.Bbeta) + float(b @ Ab)
        cross = float(self.beta @ xe + b @ ze)
        return c, Xty, mm + 2.0 * sigma * cross + sigma**2 * ete

    def profile(self, c: np.ndarray, Xty: np.ndarray, yty: float) -> InterceptProfile:
        """The criterion's sums for one response (c (J,) = z_jᵀy_j, Xᵀy, yᵀy), shifted by
        γ = (XᵀX)⁻¹Xᵀy: S = [[XᵀX, Xᵀy − XᵀXγ], [·, yᵀy − 2γᵀXᵀy + γᵀXᵀXγ]],
        g_j = [B_j, c_j − B_jγ], G_k = Σ_{a_j = a_k} g_j g_jᵀ."""
        p = self.p
        gamma = self.XtX_inv @ Xty
        g = np.empty((c.shape[0], p + 1))
        g[:, :p] = self.B
        g[:, p] = c - self.B @ gamma
        S = np.empty((p + 1, p + 1))
        S[:p, :p] = self.XtX
        S[:p, p] = S[p, :p] = Xty - self.XtX @ gamma
        S[p, p] = float(yty - 2.0 * gamma @ Xty + gamma @ self.XtX @ gamma)
        if self.a.shape[0] == 1:
            G = (g.T @ g)[None]
        else:
            gs = g[self.order]
            G = np.add.reduceat(gs[:, :, None] * gs[:, None, :], self.starts, axis=0)
        return InterceptProfile(self, S, G, gamma)

    def p_value(self, rng: np.random.Generator, column: int) -> float:
        """Draw one response (:meth:`draw`), refit it by REML from the true θ (lower bound 0) and
        return lmerTest's Satterthwaite p-value of coefficient ``column`` (NaN when the refit
        fails, as the general route)."""
        prof = self.profile(*self.draw(rng))
        try:
            theta, beta, sigma = prof.fit(np.array([self.theta]), _LOWER)
            return prof.satterthwaite(theta, beta, sigma, column)[2]
        except (TwolevelError, np.linalg.LinAlgError, FloatingPointError, ValueError,
                ZeroDivisionError):
            return math.nan


class InterceptProfile:
    """The profiled criterion, the refit and the Satterthwaite test for one response (see the
    module docstring); built by :meth:`InterceptModel.profile`."""

    def __init__(self, model: InterceptModel, S: np.ndarray, G: np.ndarray, gamma: np.ndarray):
        self.model, self.S, self.G, self.gamma = model, S, G, gamma
        self._m = S.shape[0]
        self._Gflat = G.reshape(G.shape[0], -1)
        self._scalar = G.shape[0] <= _SCALAR_K
        self._K1 = G.shape[0] == 1
        self._S = S.ravel().tolist()
        self._G = self._Gflat.tolist()
        self._a = model.a.tolist()
        self._counts = model.counts.tolist()

    def down_dated(self, theta: float) -> list[float]:
        """S − Σ_k w_k(θ)G_k, w_k(θ) = θ²/(1 + θ²a_k) (row-major, (p+1)²)."""
        t2 = theta * theta
        if self._K1:
            w = t2 / (1.0 + t2 * self._a[0])
            return [s - w * g for s, g in zip(self._S, self._G[0], strict=True)]
        if self._scalar:
            out = self._S
            for ak, Gk in zip(self._a, self._G, strict=True):
                w = t2 / (1.0 + t2 * ak)
                out = [s - w * g for s, g in zip(out, Gk, strict=True)]
            return out
        w = t2 / (1.0 + t2 * self.model.a)
        return (self.S.ravel() - w @ self._Gflat).tolist()

    def log_det_L2(self, theta: float) -> float:
        """log|L|² = Σ_k m_k log(1 + θ²a_k)."""
        t2 = theta * theta
        if self._scalar:
            return sum(m * math.log1p(t2 * a) for a, m in zip(self._a, self._counts,
                                                            strict=True))
        return float(np.log1p(t2 * self.model.a) @ self.model.counts)

    def parts(self, theta: float) -> tuple[float, float, float]:
        """(r², log|L|², log|R_X|²) at θ: r and R_X's diagonal from the Cholesky factor of
        :meth:`down_dated` (:func:`cholesky_small`; written out for p = 2 and one school size,
        ``y ~ treat + (1 | school)`` in a balanced design, the same operations in the same
        order)."""
        m = self._m
        if m == 3 and self._K1:
            t2 = theta * theta
            w = t2 / (1.0 + t2 * self._a[0])
            S, G = self._S, self._G[0]
            s = S[0] - w * G[0]
            if s <= 0.0:
                raise _not_estimable()
            l00 = math.sqrt(s)
            l10, l20 = (S[3] - w * G[3]) / l00, (S[6] - w * G[6]) / l00
            s = S[4] - w * G[4] - l10 * l10
            if s <= 0.0:
                raise _not_estimable()
            l11 = math.sqrt(s)
            l21 = (S[7] - w * G[7] - l20 * l10) / l11
            r2 = max(S[8] - w * G[8] - l20 * l20 - l21 * l21, 0.0)
            ldL2 = self._counts[0] * math.log1p(t2 * self._a[0])
            return math.sqrt(r2) ** 2, ldL2, 2.0 * (math.log(l00) + math.log(l11))
        L = cholesky_small(self.down_dated(theta), m)
        ldRX2 = 0.0
        for i in range(0, (m - 1) * (m + 1), m + 1):
            ldRX2 += math.log(abs(L[i]))
        if self._K1:
            ldL2 = self._counts[0] * math.log1p(theta * theta * self._a[0])
        else:
            ldL2 = self.log_det_L2(theta)
        return L[-1] ** 2, ldL2, 2.0 * ldRX2

    def reml(self, theta: np.ndarray) -> float:
        """The profiled REML criterion d(θ) at θ (length 1), as
        :func:`~twolevel.models.lmm.deviance.reml_criterion`."""
        r2, ldL2, ldRX2 = self.parts(float(theta[0]))
        dof = self.model.n - self.model.p
        return ldL2 + ldRX2 + dof * (1.0 + _LOG_2PI + math.log(r2 / dof))

    def devfun_vp(self, theta: float, sigma: float) -> float:
        """lmerTest's REML D(θ, σ) = log|L|² + log|R_X|² + r²/σ² + (n − p)·log(2πσ²)."""
        r2, ldL2, ldRX2 = self.parts(theta)
        s2 = sigma * sigma
        return ldL2 + ldRX2 + r2 / s2 + (self.model.n - self.model.p) * (_LOG_2PI + math.log(s2))

    def fit(self, theta0: np.ndarray, lower: np.ndarray) -> tuple[float, np.ndarray, float]:
        """The REML refit: (θ̂, β̂, σ̂) by lme4's optimizer path from ``theta0``; β̂ = R_X⁻¹c_β + γ,
        σ̂ = √(r²/(n − p))."""
        opt = optimize_theta(self.reml, theta0, lower)
        theta = float(opt.theta[0])
        m, p = self._m, self.model.p
        L = cholesky_small(self.down_dated(theta), m)  # R_X = L[:p, :p]ᵀ, c_β = L[p, :p]
        beta = [0.0] * p
        for i in range(p - 1, -1, -1):
            t = L[p * m + i]
            for j in range(i + 1, p):
                t -= L[j * m + i] * beta[j]
            beta[i] = t / L[i * m + i]
        return theta, np.array(beta) + self.gamma, math.sqrt(L[-1] ** 2 / (self.model.n - p))

    def satterthwaite(self, theta: float, beta: np.ndarray, sigma: float, column: int
                      ) -> tuple[float, float, float]:
        """lmerTest's ``contest1D`` for coefficient ``column`` at the fit: (t, ν, p) with
        C = σ²C_u, A = 2H⁺ (H :func:`hessian2` of :meth:`devfun_vp`, eigenvalues > 1e-8),
        g = (∂C_kk/∂θ, ∂C_kk/∂σ), ν = 2C_kk²/(gᵀAg), t = β̂_k/√C_kk, p = 2F_t(−|t|; ν)."""
        cache: dict[float, tuple[float, float, float]] = {}
        n_p = self.model.n - self.model.p

        def D(th: float, sg: float) -> float:
            pt = cache.get(th)
            if pt is None:
                pt = cache[th] = self.parts(th)
            s2 = sg * sg
            return pt[1] + pt[2] + pt[0] / s2 + n_p * (_LOG_2PI + math.log(s2))

        (a00, a01), (_, a11) = vcov_varpar(hessian2(D, theta, sigma)).tolist()
        m, p = self._m, self.model.p
        t2 = theta * theta
        cu = _unscaled_column(cholesky_small(self.down_dated(theta), m), m, column)
        # −∂R_XᵀR_X/∂θ = Σ_k ∂w_k/∂θ·G_k[:p, :p], ∂w_k/∂θ = 2θ/(1 + θ²a_k)²
        if self._scalar:
            M = [0.0] * (m * m)
            for ak, Gk in zip(self._a, self._G, strict=True):
                dw = 2.0 * theta / (1.0 + t2 * ak) ** 2
                M = [x + dw * g for x, g in zip(M, Gk, strict=True)]
        else:
            M = ((2.0 * theta / (1.0 + t2 * self.model.a) ** 2) @ self._Gflat).tolist()
        quad = 0.0
        for i in range(p):
            for j in range(p):
                quad += cu[i] * M[i * m + j] * cu[j]
        s2 = sigma * sigma
        var = s2 * cu[column]
        g0, g1 = s2 * quad, 2.0 * sigma * cu[column]  # ∂C_kk/∂θ, ∂C_kk/∂σ
        nu = 2.0 * var * var / (a00 * g0 * g0 + 2.0 * a01 * g0 * g1 + a11 * g1 * g1)
        t = float(beta[column]) / math.sqrt(var)
        return t, nu, float(2.0 * special.stdtr(nu, -abs(t)))
