"""The two-level log pseudo-likelihood in closed form per school, its profile over β and σ², and
the cluster-robust (sandwich) covariances (``docs/survey.md``; Pfeffermann et al. 1998,
Rabe-Hesketh & Skrondal 2006, WeMix's ``analyticSolve``).

Notation: Σ = σ² ΛΛᵀ with Λ the lower-triangular relative factor built from θ (lme4's layout);
for school j, L_j = I_q + ΛᵀS_zzΛ, and with P_j = [S_zx S_zy] and Q_j the (x, y) block of M_j,

    C_j = Q_j − (ΛᵀP_j)ᵀ L_j⁻¹ (ΛᵀP_j)          ((p+1) × (p+1), the school's Schur complement).

Every function here is pure: arrays in, arrays out.
"""

from __future__ import annotations

import math

import numpy as np

from twolevel.models.survey.crossprods import WeightedCrossprods

__all__ = [
    "school_schur",
    "profile_theta",
    "profiled_pseudo_loglik",
    "school_pseudo_loglik",
    "pseudo_loglik",
    "beta_sandwich",
    "conditional_modes",
]

LOG2PI = math.log(2.0 * math.pi)


def _school_factors(cp: WeightedCrossprods, Lam: np.ndarray
                    ) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Component-wise over the J schools (length-J vectors, q and p small): the Cholesky factor
    R_j of L_j = I + ΛᵀS_zzΛ, V_j = R_j⁻¹ΛᵀP_j (rows a, columns k) and log|L_j|."""
    q, p = cp.q, cp.p
    szz, pp, _ = cp.columns
    J = cp.n_groups
    nz = [(c, b, float(Lam[c, b])) for c in range(q) for b in range(q) if Lam[c, b] != 0.0]
    W = [[np.zeros(J) for _ in range(q)] for _ in range(q)]  # W = S_zz Λ
    for d, b, v in nz:
        for c in range(q):
            W[c][b] = W[c][b] + v * szz[c][d]
    Lm = [[None] * q for _ in range(q)]
    for a in range(q):
        for b in range(a + 1):
            acc = np.full(J, 1.0 if a == b else 0.0)
            for c, aa, v in nz:
                if aa == a:
                    acc = acc + v * W[c][b]
            Lm[a][b] = acc
    R = [[None] * q for _ in range(q)]
    logdet = np.zeros(J)
    for j in range(q):
        dj = Lm[j][j] - sum((R[j][k] ** 2 for k in range(j)), np.zeros(J))
        R[j][j] = np.sqrt(dj)
        logdet += np.log(dj)
        for i in range(j + 1, q):
            R[i][j] = (Lm[i][j] - sum((R[i][k] * R[j][k] for k in range(j)), np.zeros(J))
                       ) / R[j][j]
    V = [[None] * (p + 1) for _ in range(q)]
    for k in range(p + 1):
        for a in range(q):
            acc = np.zeros(J)
            for c, aa, v in nz:
                if aa == a:
                    acc = acc + v * pp[c][k]
            for b in range(a):
                acc = acc - R[a][b] * V[b][k]
            V[a][k] = acc / R[a][a]
    return V, logdet


def school_schur(cp: WeightedCrossprods, Lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C_j (J, p+1, p+1) and log|L_j| = log|I + ΛᵀS_zzΛ| (J,) of every school (module
    docstring): C_j = Q_j − V_jᵀV_j with V_j = R_j⁻¹ΛᵀP_j, R_jR_jᵀ = L_j.

    Parameters
    ----------
    cp : the weighted statistics.  Lam : Λ (q × q).

    Returns
    -------
    (C, logdet) : (J, p+1, p+1) and (J,) arrays.

    Examples
    --------
    >>> # C, logdet = school_schur(fit.crossprods, fit.design.theta_to_T(fit.theta))
    """
    V, logdet = _school_factors(cp, Lam)
    _, _, qq = cp.columns
    m = cp.p + 1
    C = np.empty((cp.n_groups, m, m))
    for k in range(m):
        for ll in range(k, m):
            C[:, k, ll] = C[:, ll, k] = qq[k][ll] - sum(
                (V[a][k] * V[a][ll] for a in range(cp.q)), np.zeros(cp.n_groups))
    return C, logdet


def profile_theta(cp: WeightedCrossprods, Lam: np.ndarray, compiled: bool = True
                  ) -> tuple[np.ndarray, float, float]:
    """β̂(θ), σ̂²(θ) and the profiled log pseudo-likelihood ℓ_p(θ) (``compiled``: the numba
    loop of :mod:`.kernels`; otherwise component-wise NumPy).

    G = Σ_j w_j C_j[x,x], c = Σ_j w_j C_j[x,y], β̂ = G⁻¹c,
    σ̂² = (Σ_j w_j C_j[y,y] − cᵀβ̂) / N_w,
    ℓ_p = −½ N_w (log(2πσ̂²) + 1) − ½ Σ_j w_j log|L_j|.
    """
    if compiled:
        from twolevel.models.survey.kernels import weighted_schur_sums, weighted_schur_sums_q2

        Lc = np.ascontiguousarray(Lam, dtype=float)
        if cp.q == 2 and Lc[0, 1] == 0.0:
            Cs, wlogdet = weighted_schur_sums_q2(cp.M, cp.w, Lc)
        else:
            Cs, wlogdet = weighted_schur_sums(cp.M, cp.w, Lc, cp.q)
    else:
        V, logdet = _school_factors(cp, Lam)
        _, _, qq = cp.columns
        w = cp.w
        m = cp.p + 1
        Cs = np.empty((m, m))
        for k in range(m):
            for ll in range(k, m):
                Cs[k, ll] = Cs[ll, k] = float(w @ qq[k][ll]) - sum(
                    float((w * V[a][k]) @ V[a][ll]) for a in range(cp.q))
        wlogdet = float(w @ logdet)
    p = cp.p
    beta = np.linalg.solve(Cs[:p, :p], Cs[:p, p]) if p else np.zeros(0)
    r2 = float(Cs[p, p] - Cs[:p, p] @ beta)
    nw = cp.n_weighted
    sigma2 = r2 / nw
    if not sigma2 > 0:
        return beta, sigma2, -math.inf
    ll = -0.5 * nw * (LOG2PI + math.log(sigma2) + 1.0) - 0.5 * wlogdet
    return beta, sigma2, ll


def profiled_pseudo_loglik(theta: np.ndarray, cp: WeightedCrossprods, theta_to_T) -> float:
    """ℓ_p(θ), the log pseudo-likelihood maximised over β and σ² (a pure function of θ).

    Parameters
    ----------
    theta : lme4's θ.  cp : the weighted per-school statistics.
    theta_to_T : maps θ to the q × q relative factor Λ (``Design.theta_to_T``).

    Returns
    -------
    float
        −½ N_w (log(2πσ̂²) + 1) − ½ Σ_j w_j log|I + ΛᵀS_zzΛ| (−inf where σ̂² ≤ 0).

    Examples
    --------
    >>> # fit = tl.lmer("y ~ x + (1 | g)", d, weights=("w1", "w2"), REML=False)
    >>> # profiled_pseudo_loglik(fit.theta, fit.crossprods, fit.design.theta_to_T) == fit.loglik
    """
    try:
        _, s2, ll = profile_theta(cp, theta_to_T(theta))
    except np.linalg.LinAlgError:
        return -math.inf
    return ll if s2 > 0 and math.isfinite(ll) else -math.inf


def profiled_pseudo_loglik_gradient(theta: np.ndarray, cp: WeightedCrossprods,
                                    theta_to_T) -> np.ndarray:
    """∂ℓ_p/∂θ in closed form, from the per-school statistics (O(J)).

    With r = (−β̂, 1), b_j = P_j r = S_zy − S_zxβ̂, u_j = L_j⁻¹Λᵀb_j, e_j = b_j − S_zzΛu_j and
    dΛ_k = ∂Λ/∂θ_k (Λ is linear in θ), the envelope theorem (β̂ and σ̂² are optimal) gives

        ∂ℓ_p/∂θ_k = (1/σ̂²) Σ_j w_j e_jᵀ dΛ_k u_j − Σ_j w_j tr(L_j⁻¹ΛᵀS_zz dΛ_k).

    Each term is a sum over schools, without the cancellation of ℓ_p itself (whose size Σw
    hides its last digits), so the gradient locates θ̂ to ~1e-10 where differences of ℓ_p
    cannot.

    Parameters
    ----------
    theta : lme4's θ.  cp : the weighted statistics.  theta_to_T : θ → Λ (linear).

    Returns
    -------
    numpy.ndarray
        The gradient (length of θ); NaN where σ̂² ≤ 0.

    Examples
    --------
    >>> # g = profiled_pseudo_loglik_gradient(fit.theta, fit.crossprods, fit.design.theta_to_T)
    """
    theta = np.asarray(theta, dtype=float)
    Lam = theta_to_T(theta)
    beta, s2, _ = profile_theta(cp, Lam)
    if not s2 > 0:
        return np.full(theta.size, np.nan)
    from twolevel.models.survey.kernels import weighted_score_sums, weighted_score_sums_q2

    Lc = np.ascontiguousarray(Lam, dtype=float)
    r = np.append(-np.asarray(beta, dtype=float), 1.0)
    if cp.q == 2 and Lc[0, 1] == 0.0:
        E, G = weighted_score_sums_q2(cp.M, cp.w, Lc, r)
    else:
        E, G = weighted_score_sums(cp.M, cp.w, Lc, r, cp.q)
    g = np.empty(theta.size)
    for k in range(theta.size):
        dL = theta_to_T(np.eye(theta.size)[k])
        g[k] = float(np.sum(dL * E)) / s2 - float(np.sum(dL.T * G))
    return g


def school_pseudo_loglik(Lam: np.ndarray, beta: np.ndarray, sigma2: float,
                         cp: WeightedCrossprods) -> np.ndarray:
    """ℓ_j per school (J,) at (β, Λ, σ²):

    ℓ_j = −½ n*_j log(2πσ²) − ½ log|L_j| − (1/(2σ²)) [S_rr − (ΛᵀS_zr)ᵀ L_j⁻¹ (ΛᵀS_zr)],

    which is C_j's quadratic form in (−β, 1): S_rr − … = (−β, 1)ᵀ C_j (−β, 1)."""
    C, logdet = school_schur(cp, Lam)
    v = np.append(-np.asarray(beta, dtype=float), 1.0)
    quad = np.einsum("k,jkl,l->j", v, C, v)
    return -0.5 * cp.n_star * (LOG2PI + math.log(sigma2)) - 0.5 * logdet - 0.5 * quad / sigma2


def pseudo_loglik(theta: np.ndarray, beta: np.ndarray, sigma2: float, cp: WeightedCrossprods,
                  theta_to_T) -> float:
    """ℓ_PL(β, θ, σ²) = Σ_j w_j ℓ_j (:func:`school_pseudo_loglik`).

    Parameters
    ----------
    theta, beta, sigma2 : the parameters.  cp : the statistics.  theta_to_T : θ → Λ.

    Returns
    -------
    float
        The log pseudo-likelihood.

    Examples
    --------
    >>> # pseudo_loglik(fit.theta, fit.beta, fit.sigma**2, fit.crossprods, fit.design.theta_to_T)
    """
    return float(cp.w @ school_pseudo_loglik(theta_to_T(theta), beta, sigma2, cp))


def beta_sandwich(cp: WeightedCrossprods, Lam: np.ndarray, beta: np.ndarray,
                  sigma2: float) -> tuple[np.ndarray, np.ndarray]:
    """Robust covariance of β̂ (WeMix's CR-0, ≈ Stata's) and the model-based one.

    A = Σ_j w_j C_j[x,x] / σ²  (bread), s_j = w_j (C_j[x,y] − C_j[x,x]β) / σ² (school score),
    B = J/(J−1) Σ_j s_j s_jᵀ (meat), V = A⁻¹ B A⁻¹.

    Parameters
    ----------
    cp : statistics.  Lam : Λ.  beta : β̂ (of the statistics' response).  sigma2 : σ̂².

    Returns
    -------
    (V, A⁻¹) : the robust and the model-based covariance of β̂.

    Examples
    --------
    >>> # V, V_model = beta_sandwich(cp, Lam, beta, sigma2)
    """
    C, _ = school_schur(cp, Lam)
    p = cp.p
    A = np.einsum("j,jkl->kl", cp.w, C[:, :p, :p]) / sigma2
    s = cp.w[:, None] * (C[:, :p, p] - C[:, :p, :p] @ beta) / sigma2
    J = cp.n_groups
    B = J / (J - 1) * (s.T @ s)
    Ai = np.linalg.inv(A)
    return Ai @ B @ Ai, Ai


def conditional_modes(cp: WeightedCrossprods, Lam: np.ndarray, beta: np.ndarray,
                      sigma2: float) -> tuple[np.ndarray, np.ndarray]:
    """Conditional modes of the school effects and their conditional covariances:

    û_j = Λ L_j⁻¹ Λᵀ (S_zy − S_zxβ),  Var(u_j | y) = σ² Λ L_j⁻¹ Λᵀ (a-weighted data).

    Parameters
    ----------
    cp : statistics.  Lam : Λ.  beta : β̂.  sigma2 : σ̂².

    Returns
    -------
    (u, V) : (J, q) modes and (J, q, q) conditional covariances.

    Examples
    --------
    >>> # u, V = conditional_modes(cp, Lam, beta, sigma2)
    """
    q, p = cp.q, cp.p
    Szz = cp.M[:, :q, :q]
    Lmat = np.einsum("ab,jbc,cd->jad", Lam.T, Szz, Lam) + np.eye(q)
    Szr = cp.M[:, :q, -1] - cp.M[:, :q, q:q + p] @ beta
    inner = np.linalg.solve(Lmat, np.einsum("ab,jb->ja", Lam.T, Szr)[..., None])[..., 0]
    u = inner @ Lam.T
    Linv = np.linalg.inv(Lmat)
    V = sigma2 * np.einsum("ab,jbc,dc->jad", Lam, Linv, Lam)
    return u, V


def vc_vector(theta: np.ndarray, sigma: float, theta_to_T, pairs: list[tuple[int, int]]
              ) -> np.ndarray:
    """(variances of the random effects, their covariances at ``pairs``, σ²) from (θ, σ):
    Σ = σ²ΛΛᵀ.

    Parameters
    ----------
    theta, sigma : θ and σ.  theta_to_T : θ → Λ.  pairs : (i, j) of the covariances.

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> import numpy as np
    >>> vc_vector(np.array([2.0]), 3.0, lambda t: t.reshape(1, 1), [])
    array([36.,  9.])
    """
    Lam = theta_to_T(theta)
    S = sigma**2 * (Lam @ Lam.T)
    return np.concatenate([np.diag(S), [S[i, j] for i, j in pairs], [sigma**2]])


def _steps(phi: np.ndarray) -> np.ndarray:
    """Difference steps for φ = (θ, σ): 1e-4·max(|θ_k|, 1) (θ is relative to σ, so O(1)) and
    1e-4·σ; steps relative to a small θ_k drown in rounding."""
    h = 1e-4 * np.maximum(np.abs(phi), 1.0)
    h[-1] = 1e-4 * abs(phi[-1])
    return h


def varcomp_sandwich(cp: WeightedCrossprods, theta: np.ndarray, beta: np.ndarray, sigma2: float,
                     theta_to_T, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Robust covariance of the variance components (WeMix's way), β held at β̂.

    φ = (θ, σ); g_j = w_j ∂ℓ_j/∂φ, H = ∂²ℓ_PL/∂φ² (central differences of the closed-form
    ℓ_j); V_φ = H⁻¹ [J/(J−1) Σ_j g_j g_jᵀ] H⁻¹; then the delta method to
    (variances, covariances, σ²) of :func:`vc_vector`. The result does not depend on how φ
    is parametrised (the score is zero at the optimum).

    Parameters
    ----------
    cp : statistics.  theta, beta, sigma2 : the estimates.  theta_to_T : θ → Λ.
    pairs : (i, j) of the covariances (``VarCorr.pairs`` order).

    Returns
    -------
    numpy.ndarray
        The covariance of (variances, covariances, σ²).

    Examples
    --------
    >>> # V = varcomp_sandwich(cp, theta, beta, sigma2, design.theta_to_T, pairs)
    """
    phi = np.append(np.asarray(theta, dtype=float), math.sqrt(sigma2))
    k = phi.size
    h = _steps(phi)

    def lj(ph: np.ndarray) -> np.ndarray:
        return cp.w * school_pseudo_loglik(theta_to_T(ph[:-1]), beta, ph[-1] ** 2, cp)

    E = np.eye(k)
    G = np.empty((cp.n_groups, k))
    H = np.empty((k, k))
    f0 = float(lj(phi).sum())
    for a in range(k):
        fp, fm = lj(phi + h[a] * E[a]), lj(phi - h[a] * E[a])
        G[:, a] = (fp - fm) / (2 * h[a])
        H[a, a] = (float(fp.sum()) - 2 * f0 + float(fm.sum())) / h[a] ** 2
        for b in range(a):
            f = [float(lj(phi + sa * h[a] * E[a] + sb * h[b] * E[b]).sum())
                 for sa, sb in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
            H[a, b] = H[b, a] = (f[0] - f[1] - f[2] + f[3]) / (4 * h[a] * h[b])
    J = cp.n_groups
    meat = J / (J - 1) * (G.T @ G)
    Hi = np.linalg.inv(H)
    V_phi = Hi @ meat @ Hi
    D = np.empty((2 + len(pairs) + cp.q - 1, k))
    for a in range(k):
        vp = vc_vector(phi[:-1] + h[a] * E[a, :-1], phi[-1] + h[a] * E[a, -1], theta_to_T, pairs)
        vm = vc_vector(phi[:-1] - h[a] * E[a, :-1], phi[-1] - h[a] * E[a, -1], theta_to_T, pairs)
        D[:, a] = (vp - vm) / (2 * h[a])
    return D @ V_phi @ D.T
