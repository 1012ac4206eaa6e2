"""Pointwise log-likelihoods of a Bayesian binary or count two-level model, for PSIS-LOO.

Pure NumPy and numba (no PyMC). Per student, given a draw's β and school effects b::

    ℓ_ij = log p(y_ij | η_ij),  η_ij = x_ij β + o_ij + z_ij b_j
    binomial: log C(n, s) + s log μ + (n − s) log(1 − μ),  s = n·y successes of n trials
    Poisson:  y log μ − μ − log y!

Per school, with the school's effects **integrated out** (for leave-one-school-out, where the
left-out school's effects are unknown)::

    ℓ_j = log ∫ Π_i p(y_ij | x_ij β + o_ij + z_ij L u) N(u; 0, I_q) du,   Σ = L Lᵀ

by adaptive Gauss–Hermite quadrature, one integral per posterior draw and school: the integrand's
mode û (Fisher scoring on f(u) = Σ_i ℓ_ij − ½|u|²), H = Σ_i w_i a_i a_iᵀ + I at û (w_i the
expected information of η_i, a_i = Lᵀz_ij), S with S Sᵀ = H⁻¹, and K nodes per dimension::

    ℓ_j ≈ log|S| + log Σ_k W_k exp(f(û + S x_k) + ½|x_k|²)

(x_k, W_k the probabilists' Gauss–Hermite rule, Σ W_k = 1; exact for Gaussian integrands and
converging fast for these log-concave ones; K = 1 is the Laplace approximation). The tests check
it against brute-force quadrature on small data sets.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from twolevel.data.errors import TwolevelError

__all__ = ["FAMILY_CODES", "binomial_trials", "row_constants", "school_loglik_agq",
           "student_loglik_glmm", "gauss_hermite"]

# (family, link) → kernel code
FAMILY_CODES = {("binomial", "logit"): 0, ("binomial", "probit"): 1,
                ("binomial", "cloglog"): 2, ("poisson", "log"): 3}
_EPS = float(np.finfo(float).eps)
_SQRT2 = math.sqrt(2.0)


def binomial_trials(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Successes s = y·w and trials n = w of a binomial response given as proportions y with
    weights w (trials); both must be whole numbers for the Binomial likelihood."""
    n = np.asarray(w, dtype=float)
    s = np.asarray(y, dtype=float) * n
    if np.any(np.abs(n - np.round(n)) > 1e-8) or np.any(np.abs(s - np.round(s)) > 1e-6):
        raise TwolevelError(
            "the Bayesian binomial model needs whole numbers of successes and trials; the "
            "response times its weights is not whole (give cbind(successes, failures), or 0/1 "
            "with weights = 1)"
        )
    return np.round(s), np.round(n)


def row_constants(y: np.ndarray, n: np.ndarray, family: str) -> tuple[np.ndarray, np.ndarray]:
    """Successes (or counts) s and the constant of each row's log-pmf: log C(n, s) for binomial,
    −log y! for Poisson."""
    from scipy import special

    if family == "poisson":
        s = np.asarray(y, dtype=float)
        return s, -special.gammaln(s + 1.0)
    s = np.asarray(y, dtype=float) * n
    return s, special.gammaln(n + 1.0) - special.gammaln(s + 1.0) - special.gammaln(n - s + 1.0)


@nb.njit(cache=True, inline="always")
def _ll_row(code, eta, s, n, const):
    """log p(s | η) of one row and its derivative and expected information in η."""
    if code == 0:  # logit
        if eta > 0:
            e = math.exp(-eta)
            log1pexp = eta + math.log1p(e)
            mu = 1.0 / (1.0 + e)
        else:
            e = math.exp(eta)
            log1pexp = math.log1p(e)
            mu = e / (1.0 + e)
        return const + s * eta - n * log1pexp, s - n * mu, n * mu * (1.0 - mu)
    if code == 3:  # Poisson, log
        mu = math.exp(eta)
        return const + s * eta - mu, s - mu, mu
    if code == 1:  # probit
        mu = 0.5 * math.erfc(-eta / _SQRT2)
        dmu = math.exp(-0.5 * eta * eta) / math.sqrt(2.0 * math.pi)
    else:  # cloglog
        ee = math.exp(eta)
        mu = -math.expm1(-ee)
        dmu = ee * math.exp(-ee)
    mu = min(max(mu, _EPS), 1.0 - _EPS)
    v = mu * (1.0 - mu)
    ll = const + s * math.log(mu) + (n - s) * math.log1p(-mu)
    return ll, (s - n * mu) / v * dmu, n * dmu * dmu / v


@nb.njit(cache=True)
def _chol_small(H, q, Lh):
    for i in range(q):
        for j in range(i + 1):
            acc = H[i, j]
            for k in range(j):
                acc -= Lh[i, k] * Lh[j, k]
            if i == j:
                Lh[i, i] = math.sqrt(max(acc, 1e-300))
            else:
                Lh[i, j] = acc / Lh[j, j]


@nb.njit(cache=True)
def _f_at(code, u, eta0, A, s, n, const, lo, hi, q):
    f = 0.0
    for r in range(lo, hi):
        eta = eta0[r]
        for k in range(q):
            eta += A[r, k] * u[k]
        ll, _, _ = _ll_row(code, eta, s[r], n[r], const[r])
        f += ll
    for k in range(q):
        f -= 0.5 * u[k] * u[k]
    return f


@nb.njit(cache=True)
def _score_info(code, u, eta0, A, s, n, const, lo, hi, q, g, H):
    """Score g = Σ_i ℓ'_i a_i − u and information H = Σ_i w_i a_i a_iᵀ + I (lower triangle) of
    f(u) = Σ_i ℓ_i(η_i0 + a_i·u) − ½|u|² over one school's rows lo..hi."""
    for a in range(q):
        g[a] = -u[a]
        for b in range(q):
            H[a, b] = 1.0 if a == b else 0.0
    for r in range(lo, hi):
        eta = eta0[r]
        for k in range(q):
            eta += A[r, k] * u[k]
        _, d1, w = _ll_row(code, eta, s[r], n[r], const[r])
        for a in range(q):
            g[a] += d1 * A[r, a]
            for b in range(a + 1):
                H[a, b] += w * A[r, a] * A[r, b]


@nb.njit(cache=True, parallel=True)
def _agq_kernel(code, X, Zs, starts, s, n, const, offset, beta, L, xk, logwk, out):
    S, J = out.shape
    N, q = Zs.shape
    p = X.shape[1]
    K = xk.shape[0]
    for d in nb.prange(S):
        eta0 = np.empty(N)
        for r in range(N):
            acc = offset[r]
            for k in range(p):
                acc += X[r, k] * beta[d, k]
            eta0[r] = acc
        A = np.zeros((N, q))  # a_r = Lᵀ z_r
        for r in range(N):
            for a in range(q):
                acc = 0.0
                for k in range(a, q):
                    acc += L[d, k, a] * Zs[r, k]
                A[r, a] = acc
        u = np.zeros(q)
        g = np.zeros(q)
        H = np.zeros((q, q))
        Lh = np.zeros((q, q))
        step = np.zeros(q)
        un = np.zeros(q)
        idx = np.zeros(q, dtype=np.int64)
        for j in range(J):
            lo, hi = starts[j], starts[j + 1]
            for k in range(q):
                u[k] = 0.0
            f = _f_at(code, u, eta0, A, s, n, const, lo, hi, q)
            for _ in range(50):  # Fisher scoring with step halving
                _score_info(code, u, eta0, A, s, n, const, lo, hi, q, g, H)
                _chol_small(H, q, Lh)
                for a in range(q):  # solve Lh Lhᵀ step = g
                    acc = g[a]
                    for k in range(a):
                        acc -= Lh[a, k] * step[k]
                    step[a] = acc / Lh[a, a]
                for a in range(q - 1, -1, -1):
                    acc = step[a]
                    for k in range(a + 1, q):
                        acc -= Lh[k, a] * step[k]
                    step[a] = acc / Lh[a, a]
                t = 1.0
                fn = f
                for _h in range(30):
                    for k in range(q):
                        un[k] = u[k] + t * step[k]
                    fn = _f_at(code, un, eta0, A, s, n, const, lo, hi, q)
                    if fn >= f - 1e-12 * abs(f):
                        break
                    t *= 0.5
                mx = 0.0
                for k in range(q):
                    mx = max(mx, abs(un[k] - u[k]))
                    u[k] = un[k]
                f = fn
                if mx < 1e-10:
                    break
            # information at the mode, its Cholesky factor Lh (S = Lh⁻ᵀ)
            _score_info(code, u, eta0, A, s, n, const, lo, hi, q, g, H)
            _chol_small(H, q, Lh)
            logdetS = 0.0
            for a in range(q):
                logdetS -= math.log(Lh[a, a])
            # tensor-product nodes: u = û + Lh⁻ᵀ x
            total = K**q
            m = -1e300
            terms = np.empty(total)
            for t_ in range(total):
                rem = t_
                for a in range(q):
                    idx[a] = rem % K
                    rem //= K
                lw = 0.0
                half = 0.0
                for a in range(q):
                    lw += logwk[idx[a]]
                    half += 0.5 * xk[idx[a]] ** 2
                for a in range(q - 1, -1, -1):  # step = Lh⁻ᵀ x
                    acc = xk[idx[a]]
                    for k in range(a + 1, q):
                        acc -= Lh[k, a] * step[k]
                    step[a] = acc / Lh[a, a]
                for k in range(q):
                    un[k] = u[k] + step[k]
                v = lw + _f_at(code, un, eta0, A, s, n, const, lo, hi, q) + half
                terms[t_] = v
                if v > m:
                    m = v
            acc = 0.0
            for t_ in range(total):
                acc += math.exp(terms[t_] - m)
            out[d, j] = logdetS + m + math.log(acc)
    return out


def gauss_hermite(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes x and log-weights of the k-point Gauss–Hermite rule for ∫ g(x) φ(x) dx (weights sum
    to 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(k)
    return x, np.log(w / w.sum())


def default_nodes(q: int) -> int:
    """Nodes per dimension: 9 for one effect, 5 for two (25 nodes), 3 for three or more."""
    return {1: 9, 2: 5}.get(q, 3)


def school_loglik_agq(X, Z, group_index, n_groups, y, n, offset, family, link, beta, L,
                      nodes: int | None = None) -> np.ndarray:
    """Per-school log-likelihood with the school effects integrated out (module docstring), for
    every draw: ``beta`` (S, p), ``L`` (S, q, q) lower Cholesky factors of Σ; returns (S, J)."""
    code = FAMILY_CODES[(family, link)]
    order = np.argsort(group_index, kind="stable")
    counts = np.bincount(group_index, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    s, const = row_constants(y, n, family)
    q = Z.shape[1]
    xk, logwk = gauss_hermite(nodes or default_nodes(q))
    out = np.empty((beta.shape[0], n_groups))
    return _agq_kernel(code, np.ascontiguousarray(X[order], dtype=float),
                       np.ascontiguousarray(Z[order], dtype=float), starts,
                       np.ascontiguousarray(s[order]), np.ascontiguousarray(n[order], dtype=float),
                       np.ascontiguousarray(const[order]),
                       np.ascontiguousarray(offset[order], dtype=float),
                       np.ascontiguousarray(beta, dtype=float),
                       np.ascontiguousarray(L, dtype=float),
                       xk, logwk, out)


def student_loglik_glmm(X, Z, group_index, y, n, offset, family, link, beta, b,
                        chunk: int = 128, threads: int = 2) -> np.ndarray:
    """Per-student log-likelihood ℓ_ij for every draw: ``beta`` (S, p), ``b`` (S, J, q) school
    effects; returns (S, N). Computed ``chunk`` draws at a time (η for a block of draws, then
    the family's log density in place, no (S, N, q) temporary), the blocks shared among
    ``threads`` threads (NumPy releases the GIL in its loops)."""
    from concurrent.futures import ThreadPoolExecutor

    s, const = row_constants(y, n, family)
    S, N = beta.shape[0], X.shape[0]
    out = np.empty((S, N))
    Zc = [np.ascontiguousarray(Z[:, k], dtype=float) for k in range(Z.shape[1])]

    def block(lo: int) -> None:
        hi = min(S, lo + chunk)
        eta = out[lo:hi]
        np.matmul(beta[lo:hi], X.T, out=eta)
        eta += offset[None, :]
        for k, zk in enumerate(Zc):
            eta += np.take(np.ascontiguousarray(b[lo:hi, :, k]), group_index, axis=1) * zk
        _loglik_in_place(eta, s, n, const, family, link)

    starts = range(0, S, chunk)
    if threads > 1 and S > chunk:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            list(ex.map(block, starts))
    else:
        for lo in starts:
            block(lo)
    return out


def _loglik_in_place(eta: np.ndarray, s, n, const, family: str, link: str) -> None:
    """Overwrite η (draws × rows) with the rows' log-likelihood: Poisson c + sη − e^η; logit
    c + sη − n log(1 + e^η); probit and cloglog c + s log μ + (n − s) log(1 − μ)."""
    from scipy import special

    if family == "poisson" or link == "logit":
        tmp = np.exp(eta) if family == "poisson" else np.logaddexp(0.0, eta)
        if family != "poisson":
            tmp *= n
        eta *= s
        eta -= tmp
        eta += const
        return
    mu = special.ndtr(eta) if link == "probit" else -np.expm1(-np.exp(eta))
    np.clip(mu, _EPS, 1 - _EPS, out=mu)
    eta[...] = const + s * np.log(mu) + (n - s) * np.log1p(-mu)
