"""Compiled log-density and gradient of the collapsed two-level model (numba, cached on disk).

The PyMC model of :func:`twolevel.models.bayes.pymc_model.build_model` (``likelihood="collapsed"``)
is the specification; this module evaluates the same log-density, with PyMC's transforms,
Jacobians and normalising constants, in the same unconstrained space and the same order as
``model.value_vars``::

    x = [ β (p) | log σ | LKJCholeskyCov's packed factor, diagonal on the log scale (q(q+1)/2) ]
    x = [ β (p) | log σ | log sd (q) ]                      (independent effects, "diag")

Its gradient is derived by hand (module functions below give the formulas). Every function is
compiled by numba with ``cache=True`` and takes one flat float64 array ``data``
(:func:`twolevel.models.bayes.sampler.pack_data`: a header, the prior parameters, the
cross-products) instead of closing over
the model, so the machine code is generic: compiled once per installation, then loaded from
``__pycache__`` (or ``NUMBA_CACHE_DIR``) by every later process, whatever the data, formula or
priors. :func:`logp_cfunc` and :func:`copy_cfunc` give C callbacks with nutpie's signatures:
nutpie's Rust NUTS calls them from its own threads without the GIL
(:mod:`twolevel.models.bayes.sampler`).

Collapsed likelihood (as :mod:`twolevel.models.bayes.collapsed`): with d_j = c_j − B_jβ,
M_j = I + LᵀA_jL/σ² = R_jR_jᵀ, u_j = Lᵀd_j, W_j = M_j⁻¹, h_j = W_ju_j, Q_j = u_jᵀh_j,
S(β) = yᵀy − 2βᵀXᵀy + βᵀXᵀXβ::

    ℓ = −½ [ n log 2πσ² + Σ_j log|M_j| + S(β)/σ² − Σ_j Q_j/σ⁴ ]
    ∂ℓ/∂β  = −(XᵀXβ − Xᵀy)/σ² − Σ_j B_jᵀL h_j/σ⁴
    ∂ℓ/∂L  = Σ_j [ d_j h_jᵀ/σ⁴ − A_jL (W_j/σ² + h_jh_jᵀ/σ⁶) ]            (lower triangle)
    ∂ℓ/∂σ² = −½ [ n/σ² − Σ_j (q − tr W_j)/σ² − S(β)/σ⁴ + Σ_j (Q_j + h_jᵀh_j)/σ⁶ ]

(from d log|M| = tr(W dM) and dQ = 2hᵀdu − hᵀdM h).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types

from twolevel.models.bayes.kernel_layout import (
    DIAG,
    HEADER,
    LKJ,
    LOCATION_CODES,
    POSITIVE_CODES,
)

__all__ = ["HEADER", "LKJ", "DIAG", "LOCATION_CODES", "POSITIVE_CODES", "copy_cfunc",
           "logp_and_grad", "logp_cfunc", "logp_grad", "logp_grad_general", "logp_grad_q2"]

# header of the packed data vector (twolevel.models.bayes.kernel_layout)
_Q, _P, _J, _N, _STRUCT, _ETA, _FBETA, _FSIGMA, _FSD, _CONST = range(10)


# ----------------------------------------------------------------------------- compiled maths


@numba.njit(cache=True, nogil=True)
def _positive_logp(code, x, a, b):
    """(variable part of log density, derivative) at x > 0 of HalfNormal(a): −x²/2a², −x/a²;
    HalfStudentT(a, ν=b): −(ν+1)/2 log1p(x²/νa²), −(ν+1)x/(νa² + x²); HalfCauchy(a):
    −log1p((x/a)²), −2x/(a² + x²); Exponential(λ=a): −ax, −a; Gamma(α=a, β=b):
    (α−1) log x − βx, (α−1)/x − β."""
    if code == 0:
        return -0.5 * (x / a) ** 2, -x / (a * a)
    if code == 1:
        return (-0.5 * (b + 1.0) * math.log1p(x * x / (b * a * a)),
                -(b + 1.0) * x / (b * a * a + x * x))
    if code == 2:
        return -math.log1p((x / a) ** 2), -2.0 * x / (a * a + x * x)
    if code == 3:
        return -a * x, -a
    return (a - 1.0) * math.log(x) - b * x, (a - 1.0) / x - b


_LOG_FLUSH = 1e100  # the running product of det M_j ≥ 1 is folded into its logarithm above this


@numba.njit(cache=True, nogil=True)
def logp_grad_q2(x, grad, data):
    """log density of the collapsed model at x (unconstrained, module docstring) with PyMC's
    Jacobians and constants, for q = 2; writes ∂/∂x into ``grad``. ``data`` from
    :func:`twolevel.models.bayes.sampler.pack_data`. The per-school sums in closed form
    (W_j = M_j⁻¹ by the adjugate, no square roots; Σ log|M_j| from a running product of
    det M_j ≥ 1), then :func:`_assemble`."""
    q, p, J = 2, int(data[_P]), int(data[_J])
    o_pb = HEADER  # positions in data (pack_data)
    o_ps = o_pb + 3 * p
    o_pd = o_ps + 2
    o_A = o_pd + 2 * q
    o_B = o_A + J * q * q
    o_c = o_B + J * q * p
    # (XtX follows at o_c + J * q, then Xty; both read in _assemble)
    L = np.zeros((q, q))  # lower: LKJ packed rows with exp on the diagonal, or diag(exp)
    k = p + 1
    if int(data[_STRUCT]) == 0:
        for i in range(q):
            for j in range(i + 1):
                L[i, j] = math.exp(x[k]) if i == j else x[k]
                k += 1
    else:
        for i in range(q):
            L[i, i] = math.exp(x[k + i])
    sigma = math.exp(x[p])
    s2 = sigma * sigma
    GL = np.zeros((2, 2))
    gB = np.zeros(p)
    i2 = 1.0 / s2
    i4 = i2 * i2
    i6 = i4 * i2
    l00, l10, l11 = L[0, 0], L[1, 0], L[1, 1]
    g00 = 0.0
    g10 = 0.0
    g11 = 0.0
    sum_Q = 0.0
    sum_trW = 0.0
    sum_hh = 0.0
    logsum = 0.0
    prod = 1.0
    for j in range(J):
        oA = o_A + 4 * j
        oB = o_B + 2 * p * j
        oc = o_c + 2 * j
        d0 = data[oc]
        d1 = data[oc + 1]
        for m in range(p):
            d0 -= data[oB + m] * x[m]
            d1 -= data[oB + p + m] * x[m]
        a00, a01, a11 = data[oA], data[oA + 1], data[oA + 3]
        al00 = a00 * l00 + a01 * l10
        al01 = a01 * l11
        al10 = a01 * l00 + a11 * l10
        al11 = a11 * l11
        M00 = 1.0 + (l00 * al00 + l10 * al10) * i2
        M01 = (l00 * al01 + l10 * al11) * i2
        M11 = 1.0 + l11 * al11 * i2
        det = M00 * M11 - M01 * M01
        prod *= det
        if prod > _LOG_FLUSH:
            logsum += math.log(prod)
            prod = 1.0
        idet = 1.0 / det
        W00 = M11 * idet
        W01 = -M01 * idet
        W11 = M00 * idet
        u0 = l00 * d0 + l10 * d1
        u1 = l11 * d1
        h0 = W00 * u0 + W01 * u1
        h1 = W01 * u0 + W11 * u1
        sum_Q += u0 * h0 + u1 * h1
        sum_hh += h0 * h0 + h1 * h1
        sum_trW += W00 + W11
        w0 = l00 * h0
        w1 = l10 * h0 + l11 * h1
        for m in range(p):
            gB[m] += data[oB + m] * w0 + data[oB + p + m] * w1
        K00 = W00 * i2 + h0 * h0 * i6
        K01 = W01 * i2 + h0 * h1 * i6
        K11 = W11 * i2 + h1 * h1 * i6
        g00 += d0 * h0 * i4 - (al00 * K00 + al01 * K01)
        g10 += d1 * h0 * i4 - (al10 * K00 + al11 * K01)
        g11 += d1 * h1 * i4 - (al10 * K01 + al11 * K11)
    GL[0, 0] += g00
    GL[1, 0] += g10
    GL[1, 1] += g11
    sums = (logsum + math.log(prod), sum_Q, sum_trW, sum_hh)
    return _assemble(x, grad, data, L, sigma, sums, GL, gB)


@numba.njit(cache=True, nogil=True)
def logp_grad_general(x, grad, data):
    """:func:`logp_grad_q2` for any q: M_j = R_jR_jᵀ (Cholesky), W_j = R_j⁻ᵀR_j⁻¹."""
    q, p, J = int(data[_Q]), int(data[_P]), int(data[_J])
    o_pb = HEADER  # positions in data (pack_data)
    o_ps = o_pb + 3 * p
    o_pd = o_ps + 2
    o_A = o_pd + 2 * q
    o_B = o_A + J * q * q
    o_c = o_B + J * q * p
    # (XtX follows at o_c + J * q, then Xty; both read in _assemble)
    L = np.zeros((q, q))  # lower: LKJ packed rows with exp on the diagonal, or diag(exp)
    k = p + 1
    if int(data[_STRUCT]) == 0:
        for i in range(q):
            for j in range(i + 1):
                L[i, j] = math.exp(x[k]) if i == j else x[k]
                k += 1
    else:
        for i in range(q):
            L[i, i] = math.exp(x[k + i])
    sigma = math.exp(x[p])
    s2 = sigma * sigma
    GL = np.zeros((q, q))
    gB = np.zeros(p)
    s4 = s2 * s2
    s6 = s4 * s2
    d = np.empty(q)
    u = np.empty(q)
    h = np.empty(q)
    w = np.empty(q)
    AL = np.empty((q, q))
    M = np.empty((q, q))
    R = np.empty((q, q))
    Rinv = np.empty((q, q))
    W = np.empty((q, q))
    K = np.empty((q, q))
    sum_Q = 0.0
    sum_trW = 0.0
    sum_hh = 0.0
    logsum = 0.0
    prod = 1.0
    for j in range(J):
        oA = o_A + j * q * q
        oB = o_B + j * q * p
        oc = o_c + j * q
        for k in range(q):
            s = data[oc + k]
            for m in range(p):
                s -= data[oB + k * p + m] * x[m]
            d[k] = s
        for a in range(q):
            for b in range(q):
                s = 0.0
                for k in range(b, q):
                    s += data[oA + a * q + k] * L[k, b]
                AL[a, b] = s
        for a in range(q):
            s = 0.0
            for k in range(a, q):
                s += L[k, a] * d[k]
            u[a] = s
            for b in range(a + 1):
                s = 0.0
                for k in range(a, q):
                    s += L[k, a] * AL[k, b]
                M[a, b] = s / s2 + (1.0 if a == b else 0.0)
        # M = R Rᵀ
        for k in range(q):
            s = M[k, k]
            for m in range(k):
                s -= R[k, m] * R[k, m]
            r = math.sqrt(s)
            R[k, k] = r
            prod *= s
            if prod > _LOG_FLUSH:
                logsum += math.log(prod)
                prod = 1.0
            for i in range(k + 1, q):
                s = M[i, k]
                for m in range(k):
                    s -= R[i, m] * R[k, m]
                R[i, k] = s / r
        # Rinv (lower), W = Rinvᵀ Rinv
        for c in range(q):
            for i in range(q):
                if i < c:
                    Rinv[i, c] = 0.0
                    continue
                s = 1.0 if i == c else 0.0
                for m in range(c, i):
                    s -= R[i, m] * Rinv[m, c]
                Rinv[i, c] = s / R[i, i]
        trW = 0.0
        for a in range(q):
            for b in range(a + 1):
                s = 0.0
                for k in range(a, q):
                    s += Rinv[k, a] * Rinv[k, b]
                W[a, b] = s
                W[b, a] = s
            trW += W[a, a]
        Qj = 0.0
        hh = 0.0
        for a in range(q):
            s = 0.0
            for b in range(q):
                s += W[a, b] * u[b]
            h[a] = s
            Qj += u[a] * s
            hh += s * s
        for a in range(q):
            s = 0.0
            for k in range(a + 1):
                s += L[a, k] * h[k]
            w[a] = s
        for m in range(p):
            s = 0.0
            for k in range(q):
                s += data[oB + k * p + m] * w[k]
            gB[m] += s
        for a in range(q):
            for b in range(q):
                K[a, b] = W[a, b] / s2 + h[a] * h[b] / s6
        for a in range(q):
            for b in range(a + 1):
                s = 0.0
                for k in range(q):
                    s += AL[a, k] * K[k, b]
                GL[a, b] += d[a] * h[b] / s4 - s
        sum_Q += Qj
        sum_trW += trW
        sum_hh += hh
    sums = (logsum + math.log(prod), sum_Q, sum_trW, sum_hh)
    return _assemble(x, grad, data, L, sigma, sums, GL, gB)


@numba.njit(cache=True, nogil=True)
def _assemble(x, grad, data, L, sigma, sums, GL, gB):
    """ℓ and its gradient from the school sums (:func:`logp_grad_q2`), plus the priors with their
    transforms' Jacobians: Normal/StudentT β; log σ; LKJCholeskyCov (PyMC's density: sd_i the row
    norms of L, Σ_i (2η − 2 + q − i) log(L_ii/sd_i) − i log sd_i + log p_sd(sd_i), diagonal on the
    log scale) or independent log sd."""
    q, p, J = int(data[_Q]), int(data[_P]), int(data[_J])
    n, struct, eta = data[_N], int(data[_STRUCT]), data[_ETA]
    o_pb = HEADER  # positions in data (pack_data)
    o_ps = o_pb + 3 * p
    o_pd = o_ps + 2
    o_A = o_pd + 2 * q
    o_B = o_A + J * q * q
    o_c = o_B + J * q * p
    o_XtX = o_c + J * q
    o_Xty = o_XtX + p * p
    yty = data[o_Xty + p]
    s2 = sigma * sigma
    s4 = s2 * s2
    s6 = s4 * s2
    sum_logdet, sum_Q, sum_trW, sum_hh = sums

    # S(β) and its gradient
    S = yty
    for k in range(p):
        xb = 0.0
        for m in range(p):
            xb += data[o_XtX + k * p + m] * x[m]
        S += x[k] * xb - 2.0 * x[k] * data[o_Xty + k]
        grad[k] = -(xb - data[o_Xty + k]) / s2 - gB[k] / s4
    lp = data[_CONST] - 0.5 * (n * math.log(s2) + sum_logdet + S / s2 - sum_Q / s4)
    g_s2 = -0.5 * (n / s2 - (J * q - sum_trW) / s2 - S / s4 + (sum_Q + sum_hh) / s6)

    # β prior
    # Normal −½((x−μ)/s)², −(x−μ)/s²;
    # StudentT −(ν+1)/2 log1p(((x−μ)/s)²/ν), −(ν+1)(x−μ)/(νs² + (x−μ)²)
    fb = int(data[_FBETA])
    for k in range(p):
        mu, sk, nu = data[o_pb + 3 * k], data[o_pb + 3 * k + 1], data[o_pb + 3 * k + 2]
        r = x[k] - mu
        if fb == 0:
            lp += -0.5 * (r / sk) ** 2
            grad[k] += -r / (sk * sk)
        else:
            lp += -0.5 * (nu + 1.0) * math.log1p((r / sk) ** 2 / nu)
            grad[k] += -(nu + 1.0) * r / (nu * sk * sk + r * r)
    # σ prior, log transform (Jacobian x[p])
    v, dv = _positive_logp(int(data[_FSIGMA]), sigma, data[o_ps], data[o_ps + 1])
    lp += v + x[p]
    grad[p] = 2.0 * s2 * g_s2 + sigma * dv + 1.0

    fd = int(data[_FSD])
    if struct == 0:
        # LKJCholeskyCov: sd_i = ‖L_i·‖, corr_diag_i = L_ii/sd_i;
        # log p = Σ_i [(2η − 2 + q − i) log corr_diag_i − i log sd_i + log p_sd(sd_i)]
        for i in range(q):
            ss = 0.0
            for j in range(i + 1):
                ss += L[i, j] * L[i, j]
            sd = math.sqrt(ss)
            kk = 2.0 * eta - 2.0 + q - i
            v, dv = _positive_logp(fd, sd, data[o_pd + 2 * i], data[o_pd + 2 * i + 1])
            lp += kk * (math.log(L[i, i]) - math.log(sd)) - i * math.log(sd) + v
            for j in range(i + 1):
                g = -(kk + i) * L[i, j] / ss + dv * L[i, j] / sd
                if i == j:
                    g += kk / L[i, i]
                GL[i, j] += g
        k = p + 1
        for i in range(q):
            for j in range(i + 1):
                if i == j:
                    lp += x[k]
                    grad[k] = L[i, i] * GL[i, i] + 1.0
                else:
                    grad[k] = GL[i, j]
                k += 1
    else:
        for i in range(q):
            v, dv = _positive_logp(fd, L[i, i], data[o_pd + 2 * i], data[o_pd + 2 * i + 1])
            lp += v + x[p + 1 + i]
            grad[p + 1 + i] = L[i, i] * (GL[i, i] + dv) + 1.0
    return lp




def logp_grad(x: np.ndarray, grad: np.ndarray, data: np.ndarray) -> float:
    """:func:`logp_grad_q2` or :func:`logp_grad_general` by q (only the one used is compiled)."""
    return (logp_grad_q2 if int(data[_Q]) == 2 else logp_grad_general)(x, grad, data)


def logp_and_grad(x: np.ndarray, data: np.ndarray) -> tuple[float, np.ndarray]:
    """(log density, gradient) at x: :func:`logp_grad` from Python."""
    x = np.ascontiguousarray(x, dtype=float)
    grad = np.empty_like(x)
    return float(logp_grad(x, grad, data)), grad


_LOGP_SIG = types.int64(types.uint64, types.CPointer(types.double), types.CPointer(types.double),
                        types.CPointer(types.double), types.voidptr)
_EXPAND_SIG = types.int64(types.uint64, types.uint64, types.CPointer(types.double),
                          types.CPointer(types.double), types.voidptr)


def _logp_c_q2(dim, x_, grad_, logp_, user_data):
    """nutpie's logp callback (q = 2): 0 on success, 3 / 4 for a non-finite gradient / density."""
    head = numba.carray(user_data, (HEADER,), np.float64)  # the packed data (pack_data)
    q, p, J = int(head[_Q]), int(head[_P]), int(head[_J])
    size = HEADER + 3 * p + 2 + 2 * q + J * q * (q + p + 1) + p * p + p + 1
    data = numba.carray(user_data, (size,), np.float64)
    x = numba.carray(x_, (dim,))
    grad = numba.carray(grad_, (dim,))
    lp = logp_grad_q2(x, grad, data)
    logp_[0] = lp
    for i in range(dim):
        if not math.isfinite(grad[i]):
            return 3
    if not math.isfinite(lp):
        return 4
    return 0


def _logp_c_general(dim, x_, grad_, logp_, user_data):
    """nutpie's logp callback (any q): as :func:`_logp_c_q2`."""
    head = numba.carray(user_data, (HEADER,), np.float64)  # the packed data (pack_data)
    q, p, J = int(head[_Q]), int(head[_P]), int(head[_J])
    size = HEADER + 3 * p + 2 + 2 * q + J * q * (q + p + 1) + p * p + p + 1
    data = numba.carray(user_data, (size,), np.float64)
    x = numba.carray(x_, (dim,))
    grad = numba.carray(grad_, (dim,))
    lp = logp_grad_general(x, grad, data)
    logp_[0] = lp
    for i in range(dim):
        if not math.isfinite(grad[i]):
            return 3
    if not math.isfinite(lp):
        return 4
    return 0


def _copy_c(dim, n_expanded, x_, out_, user_data):
    """nutpie's expand callback: the draw x itself (the model's variables are computed from all
    draws afterwards, :func:`twolevel.models.bayes.sampler.expand_draws`)."""
    x = numba.carray(x_, (dim,))
    out = numba.carray(out_, (n_expanded,))
    for i in range(dim):
        out[i] = x[i]
    return 0


_CFUNCS: dict[str, object] = {}


def logp_cfunc(q: int):
    """The compiled C logp callback for q random effects (created, or loaded from numba's cache,
    on first use: a q = 2 fit compiles nothing of the general path)."""
    key = "q2" if q == 2 else "general"
    if key not in _CFUNCS:
        fn = _logp_c_q2 if q == 2 else _logp_c_general
        _CFUNCS[key] = numba.cfunc(_LOGP_SIG, cache=True, nogil=True)(fn)
    return _CFUNCS[key]


def copy_cfunc():
    """The compiled C expand callback that copies x (created or loaded on first use)."""
    if "copy" not in _CFUNCS:
        _CFUNCS["copy"] = numba.cfunc(_EXPAND_SIG, cache=True, nogil=True)(_copy_c)
    return _CFUNCS["copy"]
