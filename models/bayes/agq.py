"""The two-level GLMM with each school's effects integrated out by adaptive Gauss–Hermite
quadrature (AGQ) inside NUTS: the sampled space is (β, the Cholesky factor of T) only.

For school j (rows i), with b_j = L u_j, u_j ~ N(0, I_q), Σ = T = L Lᵀ, a_i = Lᵀ z_i and
η_i = o_i + x_i β + a_i·u, the integrated likelihood is::

    p(y_j | β, L) = ∫ Π_i p(y_i | η_i) N(u; 0, I) du = (2π)^{−q/2} ∫ exp f(u) du,
    f(u) = Σ_i ℓ_i(η_i) − ½|u|²

Its AGQ value (glmer's construction, ``nAGQ``): û = argmax f (Newton's method), the Laplace
curvature H = −∇²f(û) = Σ_i (−ℓ''_i) a_i a_iᵀ + I (observed information; for the canonical links
logit and log it equals glmer's expected information), H = R Rᵀ, S = R⁻ᵀ, and the product rule of
K-point probabilists' Gauss–Hermite nodes x_k with weights W_k (Σ W_k = 1)::

    Q_j(β, L) = c_j + log|S| + log Σ_k W_k exp(f(û + S x_k) + ½|x_k|²)        (1)

(c_j the school's row constants log C(n, s) or −log y!; K = 1 is the Laplace approximation).
The log density NUTS samples is Σ_j Q_j + the priors of the non-centred model
(:mod:`twolevel.models.bayes.pymc_glmm`: β ~ prior.beta, L ~ LKJCholeskyCov(η, sd ~ prior.sd), or
independent sd), on the same unconstrained x = [β | packed L with log diagonal (or log sd)].

**Gradient** (the total derivative of (1), so NUTS sees the exact gradient of the density it
evaluates). With ω_k the normalised node weights, u_k = û + S x_k, F1_k = Σ_i ℓ'_i(u_k) x_i and
F2_k = Σ_i ℓ'_i(u_k) z_i::

    ∂Q/∂θ |_{û,S} = Σ_k ω_k ∂f(u_k)/∂θ   (∂f/∂β = F1_k, ∂f/∂L = F2_k u_kᵀ)
    v = Σ_k ω_k ∇_u f(u_k),   G_S = S⁻ᵀ + Σ_k ω_k ∇_u f(u_k) x_kᵀ           (∂Q/∂û, ∂Q/∂S)
    G_R = −S G_Sᵀ S (lower),  G_H = sym(S Φ(Rᵀ G_R) Sᵀ)                         (Cholesky adjoint)
    Ψ(u, θ) = ⟨G_H, H(u, θ)⟩,  c = H⁻¹ (v + ∇_u Ψ(û))
    dQ/dθ = ∂Q/∂θ |_{û,S} + ∂Ψ/∂θ (û) + cᵀ ∂(∇_u f)/∂θ (û)

the last term being the implicit-function theorem for dû/dθ = H⁻¹ ∂(∇_u f)/∂θ (the mode moves
with θ, and H with it: third derivatives ℓ''' enter through ∇_u Ψ and ∂Ψ/∂θ). Φ takes the lower
triangle with half the diagonal. The tests check value and gradient against brute-force dense
quadrature and the gradient against finite differences.

**School effects** given a draw (β, L) are drawn from their exact conditional posterior
p(u_j | y_j, β, L) ∝ exp f(u) by an independence Metropolis–Hastings chain per school and draw:
proposals û + S t with t multivariate Student-t(ν = 4) (the Laplace approximation with heavy
tails), the chain started at a proposal, m steps (default :data:`DEFAULT_MH_STEPS`). Why this and
not importance resampling from the quadrature nodes: the nodes are a discrete set, so resampling
them never gives a draw from a continuous posterior; resampling from continuous proposals is
exact only as the number of proposals grows, at one pass over the school's rows per proposal —
the same cost as one MH step. For the independence sampler, if w(u) = p(u)/g(u) ≤ W for all u,
the distribution after m steps from any start is within total variation (1 − 1/W)^m of the
target (Mengersen & Tweedie 1996, Thm 2.1); here W is finite (the target has Gaussian tails from
the N(0, I) prior, the proposal Student-t tails) and near 1 (the target is log-concave and close
to its Laplace approximation), so the error decays geometrically; the tests compare the draws'
moments and distribution with those of dense quadrature.

The kernels are C (``cagq.c``), compiled with the package like
:mod:`twolevel.models.bayes.ckernels` (:mod:`twolevel.models.native`), with OpenMP threads over
schools (:data:`DEFAULT_THREADS`) for the evaluations made outside NUTS.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
from scipy.special import gammaln

from twolevel.data.errors import TwolevelError
from twolevel.models import native
from twolevel.models.bayes import kernel_layout as layout

__all__ = ["AGQ_LINK_CODES", "DEFAULT_MH_STEPS", "agq_logp", "agq_schools", "default_agq_nodes",
           "draw_school_effects_agq", "load", "pack_agq", "unconstrained_from_posterior",
           "with_sampling_coordinates", "with_start"]

MODULE = "twolevel.models.bayes._cagq"  # cagq.c, compiled with the package (setup.py)
_LIB: dict[str, ctypes.CDLL] = {}

AGQ_LINK_CODES = {("binomial", "logit"): 0, ("binomial", "probit"): 1,
                  ("binomial", "cloglog"): 2, ("poisson", "log"): 3}
A_HEADER = 12
QMAX = 3
PMAX = 64
DEFAULT_MH_STEPS = 8
DEFAULT_THREADS = 2
LOG2PI = math.log(2.0 * math.pi)
SD_CPC = 2  # the structure code of LKJ data in NUTS's coordinates (with_sampling_coordinates)


def default_agq_nodes(q: int) -> int:
    """Gauss–Hermite nodes per dimension: 7 for q = 1, 5 for q = 2 (25 nodes), 3 for q = 3 (27).

    Measured by ``benchmarks/agq_nodes.py`` on the lecture design (Bernoulli, 742 schools of ~15
    students; the SD, over 8 hyperparameter values spread ±2 SE around the Laplace estimate, of
    the total log-likelihood's error against K = 21 / 15): q = 1: K = 3, 4, 5, 7, 9 give 0.31,
    0.030, 0.020, 0.00093, 0.00006; q = 2: K = 3, 4, 5, 7 give 0.30, 0.027, 0.019, 0.00084 (at
    about 1.4× the cost of K = 5 per extra 24 nodes). The Monte-Carlo error of a default fit is
    ~0.02 posterior SDs; the posterior's own spread is narrower than these points', and every fit
    checks its own error (K against 2K + 1 at posterior draws) and says when to raise K."""
    return {1: 7, 2: 5}.get(q, 3)


def load() -> ctypes.CDLL:
    """The compiled ``cagq`` library (built with the package); a :class:`TwolevelError` saying
    what to do when it is missing."""
    if "lib" in _LIB:
        return _LIB["lib"]
    lib = native.require(MODULE).cdll
    dbl = ctypes.POINTER(ctypes.c_double)
    for name in ("twolevel_logp_agq",):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_uint64, dbl, dbl, dbl, ctypes.c_void_p]
    lib.twolevel_agq_schools.restype = ctypes.c_int64
    lib.twolevel_agq_schools.argtypes = [dbl, dbl, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.c_void_p]
    lib.twolevel_agq_draw.restype = ctypes.c_int64
    lib.twolevel_agq_draw.argtypes = [dbl, ctypes.c_int64, ctypes.c_int64, dbl, ctypes.c_uint64,
                                      ctypes.c_int64, ctypes.c_double, ctypes.c_int64, dbl, dbl]
    _LIB["lib"] = lib
    return lib


def callback_addresses() -> tuple[int, int]:
    """(logp, expand) addresses for nutpie: ``twolevel_logp_agq``, ``twolevel_expand_agq``."""
    lib = load()
    return (ctypes.cast(lib.twolevel_logp_agq, ctypes.c_void_p).value,
            ctypes.cast(lib.twolevel_expand_agq, ctypes.c_void_p).value)


def gauss_hermite(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and log-weights of the k-point probabilists' Gauss–Hermite rule (Σ weights = 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(k)
    return x, np.log(w / w.sum())


def _check(q: int, p: int, nodes: int) -> None:
    if not 1 <= q <= QMAX:
        raise TwolevelError(f"the integrated (AGQ) likelihood takes 1 to {QMAX} random effects per "
                            f"school, not {q}; use sampler='full' (every school effect sampled)")
    if p > PMAX:
        raise TwolevelError(f"the integrated (AGQ) likelihood takes at most {PMAX} fixed effects, "
                            f"not {p}; use sampler='full'")
    if not 1 <= int(nodes) <= 60:
        raise TwolevelError(f"nodes={nodes} Gauss–Hermite nodes per dimension is not between 1 "
                            "and 60; use e.g. the default (None)")


def pack_agq(design, y: np.ndarray, w: np.ndarray, offset: np.ndarray, family: str, link: str,
             priors, structure: str, nodes: int | None = None, threads: int = 1
             ) -> np.ndarray:
    """The flat float64 vector the kernels of ``cagq.c`` read (rows sorted by school): header
    [q, p, J, n, structure, η, β prior code, sd prior code, constant, link code, nodes, threads]
    | β prior (3p) | sd prior (2q) | nodes (K) | log-weights (K) | school starts (J+1) | school
    constants c_j (J) | X | Z | successes or counts | trials | offset | Newton's start b0 (J q,
    zeros; :func:`with_start`). The constant holds the priors' and the LKJ normalising
    constants."""
    from twolevel.models.bayes.glmm_loglik import binomial_trials
    from twolevel.models.bayes.sampler import (
        _location_params,
        _positive_params,
        lkj_normalizing_constant,
    )

    if (family, link) not in AGQ_LINK_CODES:
        raise TwolevelError(f"family '{family}' with link '{link}' has no integrated (AGQ) "
                            "kernel; use one of " + ", ".join(f"{f}/{lk}" for f, lk in
                                                              AGQ_LINK_CODES))
    q, p, J, n = design.q, design.p, design.n_groups, design.n
    K = int(nodes or default_agq_nodes(q))
    _check(q, p, K)
    if family == "binomial":
        s, trials = binomial_trials(y, w)
        row_const = gammaln(trials + 1.0) - gammaln(s + 1.0) - gammaln(trials - s + 1.0)
    else:
        if np.any(np.asarray(w) != 1):
            raise TwolevelError("prior weights are not supported for the Bayesian Poisson model; "
                                "use an offset (offset(log(exposure))) for exposure instead")
        s, trials = np.round(np.asarray(y, dtype=float)), np.ones(n)
        row_const = -gammaln(s + 1.0)
    g = np.asarray(design.group_index)
    order = np.argsort(g, kind="stable")
    counts = np.bincount(g, minlength=J)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(float)
    cj = np.bincount(g, weights=row_const, minlength=J)
    pb, cb = _location_params(priors.beta, p)
    pd_, cd = _positive_params(priors.sd, q)
    eta = float(priors.corr.param("eta")) if structure == "lkj" else 1.0
    const = cb + cd + (lkj_normalizing_constant(eta, q) if structure == "lkj" else 0.0)
    xk, lwk = gauss_hermite(K)
    head = np.array([q, p, J, n, layout.LKJ if structure == "lkj" else layout.DIAG, eta,
                     layout.LOCATION_CODES[priors.beta.dist],
                     layout.POSITIVE_CODES[priors.sd.dist], const, AGQ_LINK_CODES[(family, link)],
                     K, int(threads)], float)
    return np.ascontiguousarray(np.concatenate([
        head, pb.ravel(), pd_.ravel(), xk, lwk, starts, cj,
        np.asarray(design.X, float)[order].ravel(), np.asarray(design.Z, float)[order].ravel(),
        np.asarray(s, float)[order], np.asarray(trials, float)[order],
        np.asarray(offset, float)[order], np.zeros(J * q)]))


def with_start(data: np.ndarray, b0: np.ndarray) -> np.ndarray:
    """A copy of packed data whose Newton iterations start every school at b0 (J, q) on the
    scale of b = L u (instead of 0): fewer iterations when b0 is near the modes over the
    posterior; the same start for every evaluation, so results do not depend on the order of
    evaluations or on threads."""
    out = data.copy()
    b0 = np.ascontiguousarray(b0, dtype=float).ravel()
    out[out.size - b0.size:] = b0
    return out


def with_sampling_coordinates(data: np.ndarray) -> np.ndarray:
    """A copy of packed LKJ data whose log density takes NUTS's coordinates
    x = [β | log sd (q) | atanh of the canonical partial correlations (q(q−1)/2)] (Stan's
    ``cholesky_factor_corr``; the density of the same posterior, with the Jacobian), and whose
    expand callback writes each draw as the packed factor with log diagonal (the canonical x of
    every other function here). Sampled this way, the slope SD near 0 does not pinch the
    off-diagonal of the factor into a funnel (the packed factor's L₂₁ = sd₂ ρ): on the lecture
    design NUTS takes shorter trajectories for the same ESS (``benchmarks/bayes_glmm.py``).
    Independent SDs (already log sd) are returned unchanged."""
    out = data.copy()
    if int(out[4]) == layout.LKJ:
        out[4] = SD_CPC
    return out


def with_threads(data: np.ndarray, threads: int) -> np.ndarray:
    """A copy of packed data with another thread count."""
    out = data.copy()
    out[11] = threads
    return out


def with_nodes(data: np.ndarray, nodes: int) -> np.ndarray:
    """Packed data with another number of nodes per dimension (the error estimate: K vs 2K+1)."""
    q, p, J = int(data[0]), int(data[1]), int(data[2])
    K = int(data[10])
    _check(q, p, nodes)
    o = A_HEADER + 3 * p + 2 * q
    xk, lwk = gauss_hermite(int(nodes))
    head = data[:A_HEADER].copy()
    head[10] = nodes
    del J
    return np.ascontiguousarray(np.concatenate([head, data[A_HEADER:o], xk, lwk,
                                                data[o + 2 * K:]]))


def _dbl(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def agq_logp(x: np.ndarray, data: np.ndarray) -> tuple[float, np.ndarray, int]:
    """(log density, gradient, status) of the integrated model at x (nutpie's callback, from
    Python)."""
    lib = load()
    x = np.ascontiguousarray(x, dtype=float)
    data = np.ascontiguousarray(data, dtype=float)
    grad = np.empty_like(x)
    lp = ctypes.c_double()
    st = lib.twolevel_logp_agq(x.size, _dbl(x), _dbl(grad), ctypes.byref(lp),
                               data.ctypes.data_as(ctypes.c_void_p))
    return lp.value, grad, int(st)


def agq_schools(x: np.ndarray, data: np.ndarray, gradient: bool = False):
    """Per school at x: Q_j (J,), and with ``gradient`` the per-school gradient in (β, L) as
    (J, p) and (J, q, q) (lower triangle), the modes û_j (J, q) and factors R_j (J, q, q)."""
    lib = load()
    q, p, J = int(data[0]), int(data[1]), int(data[2])
    x = np.ascontiguousarray(x, dtype=float)
    data = np.ascontiguousarray(data, dtype=float)
    qj = np.empty(J)
    gj = np.empty((J, p + q * q)) if gradient else None
    uj = np.empty((J, q))
    Rj = np.empty((J, q, q))
    st = lib.twolevel_agq_schools(_dbl(x), _dbl(data), qj.ctypes.data,
                                  gj.ctypes.data if gradient else None, uj.ctypes.data,
                                  Rj.ctypes.data)
    if st != 0:
        raise TwolevelError("the AGQ kernel ran out of memory")
    if not gradient:
        return qj
    return qj, gj[:, :p], gj[:, p:].reshape(J, q, q), uj, Rj


def draw_school_effects_agq(xs: np.ndarray, data: np.ndarray, seed: int,
                            steps: int = DEFAULT_MH_STEPS, nu: float = 4.0,
                            threads: int = DEFAULT_THREADS) -> tuple[np.ndarray, np.ndarray]:
    """One draw of every school's whitened effects u_j (b_j = L u_j) per hyperparameter draw:
    ``xs`` (S, dim) unconstrained draws; returns u (S, J, q) and the MH acceptance rate per draw
    (module docstring)."""
    lib = load()
    xs = np.ascontiguousarray(xs, dtype=float)
    data = np.ascontiguousarray(data, dtype=float)
    S, dim = xs.shape
    q, J = int(data[0]), int(data[2])
    out = np.empty((S, J, q))
    acc = np.empty(S)
    st = lib.twolevel_agq_draw(_dbl(xs), S, dim, _dbl(data), int(seed) & (2**64 - 1),
                               int(steps), float(nu), int(threads), _dbl(out), _dbl(acc))
    if st != 0:
        raise TwolevelError("the AGQ kernel ran out of memory")
    return out, acc / max(int(steps) - 1, 1) / J


def unconstrained_from_posterior(beta: np.ndarray, packed_or_sd: np.ndarray, structure: str
                                 ) -> np.ndarray:
    """x = [β | packed L with log diagonal] (LKJ) or [β | log sd] from (S, p) and (S, m) draws."""
    m = packed_or_sd.shape[-1]
    if structure == "lkj":
        q = int(round((math.sqrt(8 * m + 1) - 1) / 2))
        rows, cols = np.tril_indices(q)
        cov = packed_or_sd.copy()
        cov[:, rows == cols] = np.log(cov[:, rows == cols])
    else:
        cov = np.log(packed_or_sd)
    return np.ascontiguousarray(np.concatenate([beta, cov], axis=1))
