"""Compiled PIRLS and adaptive Gauss–Hermite kernels over rows and groups (numba, ``cache=True``).

Numerical kernels only: plain arrays in, arrays or numbers out. One PIRLS sweep is one pass over
the rows (accumulating each group's q × q block A_j = Σ W_i z_i z_iᵀ, its q-vector c_j and, in
the joint mode, the q × p block B_j and the p × p XᵀWX) followed by J small Cholesky
factorisations, so a sweep costs O(n·(q + p)² + J·q³) and never forms an n × (J·q) matrix.

The loop is lme4's ``pwrssUpdate`` (glmer-algorithms §2.2–2.3): the working weights and working
response are taken at the η of the start of the iteration; convergence is the *global* relative
change of the penalised deviance pdev = Σ d_i + ‖u‖² below ``tol``, tested before the
step-halving test; at most ``MAX_HALF`` halvings, without refactorising. The factor L_j kept on
exit is the one of the last iteration (the lagged weights of §2.5) unless ``refresh`` is set,
in which case it is rebuilt at the final weights (the converged Laplace of the "tight" mode).

Family codes are those of :mod:`twolevel.models.glmm.family`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["pirls_kernel", "agq_kernel", "row_values_kernel", "start_crossprods"]

EPS = 2.220446049250313e-16
MAX_HALF = 20  # at most 20 step-halvings per iteration (glmer-algorithms §2.3, lme4 1.1-31)
SQRT_2PI = math.sqrt(2.0 * math.pi)

# status codes
OK = 0
NAN_PDEV = 1  # "PIRLS loop resulted in NaN value"
STEP_HALVING = 2  # "(maxstephalfit) PIRLS step-halvings failed to reduce deviance in pwrssUpdate"
NOT_CONVERGED = 3  # "pwrssUpdate did not converge in (maxit) iterations"
NOT_PD = 4  # a Cholesky factor failed (non-finite working weights)


@numba.njit(cache=True, inline="always")
def _family_row(fam, eta):
    """(μ, dμ/dη, V(μ)) at η with lme4's clamps (family.py's table)."""
    if fam == 0:  # binomial / logit; dlogis(η) = plogis(η)(1 − plogis(η))
        m0 = 1.0 / (1.0 + math.exp(-eta))
        mu = min(max(m0, EPS), 1.0 - EPS)
        dmu = max(m0 * (1.0 - m0), EPS)
        return mu, dmu, max(mu * (1.0 - mu), EPS)
    if fam == 1:  # binomial / probit
        mu = min(0.5 * math.erfc(-eta / math.sqrt(2.0)), 1.0 - EPS)
        dmu = math.exp(-0.5 * eta * eta) / SQRT_2PI
        return mu, dmu, max(mu * (1.0 - mu), EPS)
    if fam == 2:  # binomial / cloglog
        e = math.exp(min(eta, 700.0))
        mu = min(max(-math.expm1(-e), EPS), 1.0 - EPS)
        dmu = max(e * math.exp(-e), EPS)
        return mu, dmu, max(mu * (1.0 - mu), EPS)
    mu = max(math.exp(eta), EPS)  # poisson / log (no upper clamp, as lme4)
    return mu, mu, mu


@numba.njit(cache=True, inline="always")
def _unit_dev(fam, y, mu, w):
    """d_i: 2w[y log(y/μ) + (1−y) log((1−y)/(1−μ))] or 2w[y log(y/μ) − (y − μ)]; 0·log 0 = 0."""
    if fam == 3:
        t = y * math.log(y / mu) if y > 0 else 0.0
        return 2.0 * w * (t - (y - mu))
    t = y * math.log(y / mu) if y > 0 else 0.0
    if y < 1:
        t += (1.0 - y) * math.log((1.0 - y) / (1.0 - mu))
    return 2.0 * w * t


@numba.njit(cache=True, inline="always")
def _chol(M, k):
    """In-place lower Cholesky of the leading k × k block of M; False if not positive definite."""
    for i in range(k):
        for c in range(i + 1):
            s = M[i, c]
            for m in range(c):
                s -= M[i, m] * M[c, m]
            if i == c:
                if not (s > 0.0) or not math.isfinite(s):
                    return False
                M[i, i] = math.sqrt(s)
            else:
                M[i, c] = s / M[c, c]
        for c in range(i + 1, k):
            M[i, c] = 0.0
    return True


@numba.njit(cache=True, inline="always")
def _fwd(L, b, k):
    """b ← L⁻¹ b (L lower, k × k)."""
    for i in range(k):
        s = b[i]
        for m in range(i):
            s -= L[i, m] * b[m]
        b[i] = s / L[i, i]


@numba.njit(cache=True, inline="always")
def _bwd(L, b, k):
    """b ← L⁻ᵀ b."""
    for i in range(k - 1, -1, -1):
        s = b[i]
        for m in range(i + 1, k):
            s -= L[m, i] * b[m]
        b[i] = s / L[i, i]


@numba.njit(cache=True)
def _accumulate(y, w, X, Z, g, fam, offset, eta, A, cz, B, XtWX, XtWz, with_x):
    """One pass over the rows at the current η: W_i = μ'(η)² w_i / V(μ), working response
    ž_i = η_i − o_i + (y_i − μ_i)/μ'(η_i); A_j += W z zᵀ, c_j += W z ž (and B_j += W z xᵀ,
    XᵀWX, XᵀWž when ``with_x``)."""
    n = y.shape[0]
    q = Z.shape[1]
    p = X.shape[1]
    A[:] = 0.0
    cz[:] = 0.0
    if with_x:
        B[:] = 0.0
        XtWX[:] = 0.0
        XtWz[:] = 0.0
    for i in range(n):
        mu, dmu, V = _family_row(fam, eta[i])
        Wi = dmu * dmu * w[i] / V
        zi = eta[i] - offset[i] + (y[i] - mu) / dmu
        j = g[i]
        for a in range(q):
            za = Z[i, a] * Wi
            cz[j, a] += za * zi
            for b in range(a + 1):
                A[j, a, b] += za * Z[i, b]
            if with_x:
                for c in range(p):
                    B[j, a, c] += za * X[i, c]
        if with_x:
            for c in range(p):
                xc = X[i, c] * Wi
                XtWz[c] += xc * zi
                for d in range(c + 1):
                    XtWX[c, d] += xc * X[i, d]


@numba.njit(cache=True)
def _factor(T, A, cz, B, XtWX, XtWz, Lfac, RX, with_x, joint, u, beta):
    """Per group M_j = TᵀA_jT + I = L_jL_jᵀ (into Lfac), ldL2 = Σ 2 log diag L_j. u-only mode:
    u_j = M_j⁻¹Tᵀc_j. With X: R_j = L_j⁻¹TᵀB_j, RXᵀRX = XᵀWX − Σ R_jᵀR_j (into RX); joint mode:
    β = (RXᵀRX)⁻¹(XᵀWž − Σ R_jᵀ L_j⁻¹Tᵀc_j), u_j = L_j⁻ᵀ(L_j⁻¹Tᵀc_j − R_jβ).
    Returns (ok, ldL2)."""
    J = A.shape[0]
    q = T.shape[0]
    p = XtWX.shape[0]
    M = np.empty((q, q))
    AT = np.empty((q, q))
    tc = np.empty(q)
    R = np.empty((q, p))
    ldL2 = 0.0
    if with_x:
        for c in range(p):
            for d in range(c + 1):
                RX[c, d] = XtWX[c, d]
    for j in range(J):
        for a in range(q):  # AT = A_j T (A_j symmetric, lower triangle stored)
            for c in range(q):
                s = 0.0
                for b in range(q):
                    ab = A[j, a, b] if b <= a else A[j, b, a]
                    s += ab * T[b, c]
                AT[a, c] = s
        for a in range(q):
            for c in range(q):
                s = 1.0 if a == c else 0.0
                for b in range(q):
                    s += T[b, a] * AT[b, c]
                M[a, c] = s
        if not _chol(M, q):
            return False, np.nan
        for a in range(q):
            for c in range(q):
                Lfac[j, a, c] = M[a, c]
            ldL2 += 2.0 * math.log(M[a, a])
        for a in range(q):
            s = 0.0
            for b in range(q):
                s += T[b, a] * cz[j, b]
            tc[a] = s
        _fwd(M, tc, q)
        if with_x:
            for c in range(p):
                for a in range(q):
                    s = 0.0
                    for b in range(q):
                        s += T[b, a] * B[j, b, c]
                    R[a, c] = s
                for a in range(q):  # column c of L⁻¹ (TᵀB_j)
                    s = R[a, c]
                    for m in range(a):
                        s -= M[a, m] * R[m, c]
                    R[a, c] = s / M[a, a]
            for c in range(p):
                for d in range(c + 1):
                    s = 0.0
                    for a in range(q):
                        s += R[a, c] * R[a, d]
                    RX[c, d] -= s
                if joint:
                    s = 0.0
                    for a in range(q):
                        s += R[a, c] * tc[a]
                    XtWz[c] -= s
            if joint:
                for a in range(q):
                    cz[j, a] = tc[a]
                    for c in range(p):
                        B[j, a, c] = R[a, c]
        if not joint:
            _bwd(M, tc, q)
            for a in range(q):
                u[j, a] = tc[a]
    if with_x:
        if not _chol(RX, p):
            if joint:
                return False, np.nan
    if joint:
        for c in range(p):
            beta[c] = XtWz[c]
        _fwd(RX, beta, p)
        _bwd(RX, beta, p)
        for j in range(J):
            for a in range(q):
                s = cz[j, a]
                for c in range(p):
                    s -= B[j, a, c] * beta[c]
                tc[a] = s
            for a in range(q):
                for c in range(q):
                    M[a, c] = Lfac[j, a, c]
            _bwd(M, tc, q)
            for a in range(q):
                u[j, a] = tc[a]
    return True, ldL2


@numba.njit(cache=True)
def _sweep(y, w, X, Z, g, fam, T, offset, u, beta, joint, eta, bT, A, cz, B, XtWX, XtWz,
           with_x):
    """One pass over the rows: η = o (+ Xβ in the joint mode) + z_iᵀTu_j, μ, the deviance, and
    the next iteration's working weights and cross-products at that η (see ``_accumulate``).
    Returns pdev = Σ d_i(μ) + ‖u‖²."""
    n = y.shape[0]
    J, q = u.shape
    p = X.shape[1]
    usq = 0.0
    for j in range(J):
        for a in range(q):
            s = 0.0
            for b in range(q):
                s += T[a, b] * u[j, b]
            bT[j, a] = s
            usq += u[j, a] * u[j, a]
    A[:] = 0.0
    cz[:] = 0.0
    if with_x:
        B[:] = 0.0
        XtWX[:] = 0.0
        XtWz[:] = 0.0
    dev = 0.0
    for i in range(n):
        e = offset[i]
        if joint:
            for c in range(p):
                e += X[i, c] * beta[c]
        j = g[i]
        if q == 2:  # the common random-slope case, unrolled (same arithmetic as below)
            lin = 0.0
            z0, z1 = Z[i, 0], Z[i, 1]
            lin += z0 * bT[j, 0]
            lin += z1 * bT[j, 1]
            e += lin
            eta[i] = e
            mu, dmu, V = _family_row(fam, e)
            dev += _unit_dev(fam, y[i], mu, w[i])
            Wi = dmu * dmu * w[i] / V
            zi = e - offset[i] + (y[i] - mu) / dmu
            if not with_x:
                za = z0 * Wi
                cz[j, 0] += za * zi
                A[j, 0, 0] += za * z0
                za = z1 * Wi
                cz[j, 1] += za * zi
                A[j, 1, 0] += za * z0
                A[j, 1, 1] += za * z1
                continue
        else:
            lin = 0.0
            for a in range(q):
                lin += Z[i, a] * bT[j, a]
            e += lin
            eta[i] = e
            mu, dmu, V = _family_row(fam, e)
            dev += _unit_dev(fam, y[i], mu, w[i])
            Wi = dmu * dmu * w[i] / V
            zi = e - offset[i] + (y[i] - mu) / dmu
        for a in range(q):
            za = Z[i, a] * Wi
            cz[j, a] += za * zi
            for b in range(a + 1):
                A[j, a, b] += za * Z[i, b]
            if with_x:
                for c in range(p):
                    B[j, a, c] += za * X[i, c]
        if with_x:
            for c in range(p):
                xc = X[i, c] * Wi
                XtWz[c] += xc * zi
                for d in range(c + 1):
                    XtWX[c, d] += xc * X[i, d]
    return dev + usq, dev


@numba.njit(cache=True)
def pirls_kernel(joint, want_rx, refresh, y, w, X, Z, g, fam, T, offset, eta, tol, maxit,
                 csat, u, beta, Lfac, RX, pre, A0, cz0, B0, XtWX0, XtWz0):
    """lme4's PIRLS loop (module docstring). With ``pre`` the first iteration's cross-products
    are taken from A0, cz0, B0, XᵀWX0, XᵀWž0 (computed once per warm start by
    :func:`start_crossprods`) instead of a pass over the rows. On entry ``eta`` is the
    starting η and ``offset``
    the offset (with Xβ folded in for the u-only mode); on exit ``eta``, ``u`` (J × q),
    ``beta`` (joint mode), ``Lfac`` (J × q × q) and ``RX`` (p × p, when ``joint`` or
    ``want_rx``) hold the final state.

    Returns (status, iterations, pdev, ldL2, aic, devsum, usq) with devsum = Σ d_i and
    usq = ‖ũ‖² at the final μ, and aic = −2 log p(y | ũ) = devsum + C_sat (the ``aic`` term;
    ``csat`` is the saturated constant, so no per-row log-density is needed).
    """
    J, q = u.shape
    p = X.shape[1]
    with_x = joint or want_rx
    A = np.zeros((J, q, q))
    cz = np.zeros((J, q))
    B = np.zeros((J if with_x else 1, q, p))
    XtWX = np.zeros((p, p))
    XtWz = np.zeros(p)
    bT = np.empty((J, q))
    u_old = u.copy()
    beta_old = beta.copy()
    oldpdev = 1.7976931348623157e308
    pdev = oldpdev
    dev = np.nan
    ldL2 = np.nan
    status = NOT_CONVERGED
    it = 0
    # weights at the starting η (given in A0 … when ``pre``: they depend on the warm start
    # only); afterwards every sweep leaves the next iteration's weights
    if pre:
        A[:] = A0
        cz[:] = cz0
        if with_x:
            B[:] = B0
            XtWX[:] = XtWX0
            XtWz[:] = XtWz0
    else:
        _accumulate(y, w, X, Z, g, fam, offset, eta, A, cz, B, XtWX, XtWz, with_x)
    for iteration in range(1, maxit + 1):
        it = iteration  # returned: the number of iterations run
        u_old[:] = u
        beta_old[:] = beta
        ok, ldL2 = _factor(T, A, cz, B, XtWX, XtWz, Lfac, RX, with_x, joint, u, beta)
        if not ok:
            status = NOT_PD
            break
        pdev, dev = _sweep(y, w, X, Z, g, fam, T, offset, u, beta, joint, eta, bT, A, cz, B,
                           XtWX, XtWz, with_x)
        if abs((oldpdev - pdev) / pdev) < tol:
            status = OK
            break
        if math.isnan(pdev) or pdev > oldpdev:
            k = 0
            while k < MAX_HALF and (math.isnan(pdev) or pdev > oldpdev):
                for j in range(J):
                    for a in range(q):
                        u[j, a] = 0.5 * (u_old[j, a] + u[j, a])
                if joint:
                    for c in range(p):
                        beta[c] = 0.5 * (beta_old[c] + beta[c])
                pdev, dev = _sweep(y, w, X, Z, g, fam, T, offset, u, beta, joint, eta, bT, A,
                                   cz, B, XtWX, XtWz, with_x)
                k += 1
            if math.isnan(pdev):
                status = NAN_PDEV
                break
            if pdev - oldpdev > tol:
                status = STEP_HALVING
                break
        oldpdev = pdev
    if status == OK and refresh:  # L (and RX) at the final weights, left by the last sweep
        u2 = u.copy()
        beta2 = beta.copy()
        ok, ldL2 = _factor(T, A, cz, B, XtWX, XtWz, Lfac, RX, with_x, False, u2, beta2)
        if not ok:
            status = NOT_PD
    usq = 0.0
    for j in range(J):
        for a in range(q):
            usq += u[j, a] * u[j, a]
    return status, it, pdev, ldL2, dev + csat, dev, usq


@numba.njit(cache=True)
def start_crossprods(y, w, X, Z, g, fam, offset, eta, J):
    """A_j, c_j, B_j, XᵀWX, XᵀWž at the warm start η = o + lp0 with ž = η − o + r (they do not
    depend on θ; for the u-only mode c_j − B_jβ gives the c_j with Xβ in the offset)."""
    q = Z.shape[1]
    p = X.shape[1]
    A = np.zeros((J, q, q))
    cz = np.zeros((J, q))
    B = np.zeros((J, q, p))
    XtWX = np.zeros((p, p))
    XtWz = np.zeros(p)
    _accumulate(y, w, X, Z, g, fam, offset, eta, A, cz, B, XtWX, XtWz, True)
    return A, cz, B, XtWX, XtWz


@numba.njit(cache=True)
def agq_kernel(y, w, Z, g, fam, t11, offset, u, Lfac, nodes, weights):
    """Adaptive Gauss–Hermite sum for one scalar random effect (lme4's ``glmerAGQ``, §3.2):
    devc0_j = u_j² + Σ_{i∈j} d_i(μ̃), s_j = 1/L_j, and for each node z_k (weights w_k summing
    to 1 for ∫ h(z) φ(z) dz): mult_j += w_k exp(z_k²/2 − ½(devc_jk − devc0_j)) with devc_jk at
    u_j + z_k s_j. Returns (Σ_j devc0_j, −2 Σ_j log mult_j); add ldL2 for the AGQ deviance."""
    n = y.shape[0]
    J = u.shape[0]
    devc0 = np.zeros(J)
    for j in range(J):
        devc0[j] = u[j, 0] * u[j, 0]
    for i in range(n):
        e = offset[i] + Z[i, 0] * t11 * u[g[i], 0]
        mu, dmu, V = _family_row(fam, e)
        devc0[g[i]] += _unit_dev(fam, y[i], mu, w[i])
    mult = np.zeros(J)
    devc = np.empty(J)
    for k in range(nodes.shape[0]):
        z = nodes[k]
        if z == 0.0:
            for j in range(J):
                mult[j] += weights[k]
            continue
        for j in range(J):
            uj = u[j, 0] + z / Lfac[j, 0, 0]
            devc[j] = uj * uj
        for i in range(n):
            j = g[i]
            e = offset[i] + Z[i, 0] * t11 * (u[j, 0] + z / Lfac[j, 0, 0])
            mu, dmu, V = _family_row(fam, e)
            devc[j] += _unit_dev(fam, y[i], mu, w[i])
        for j in range(J):
            mult[j] += weights[k] * math.exp(0.5 * z * z - 0.5 * (devc[j] - devc0[j]))
    s0 = 0.0
    lm = 0.0
    for j in range(J):
        s0 += devc0[j]
        lm += math.log(mult[j])
    return s0, -2.0 * lm


@numba.njit(cache=True)
def row_values_kernel(fam, eta, y, w):
    """Per row (μ, V(μ), d_i) at η (for fitted values and residuals)."""
    n = eta.shape[0]
    out = np.empty((n, 3))
    for i in range(n):
        mu, dmu, V = _family_row(fam, eta[i])
        out[i, 0] = mu
        out[i, 1] = V
        out[i, 2] = _unit_dev(fam, y[i], mu, w[i])
    return out
