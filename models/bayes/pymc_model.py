"""PyMC builders for the two-level model (the only module of twolevel that imports PyMC/PyTensor).

Model (school j, student i; q random effects with lme4's names, p fixed effects)::

    y_ij = x_ij β + z_ij b_j + e_ij,   e_ij ~ N(0, σ²),   b_j ~ N_q(0, Σ),   Σ = L Lᵀ
    L = diag(sd) · chol(corr),   corr ~ LKJ(η),   sd_k ~ prior.sd,
    β ~ prior.beta,   σ ~ prior.sigma

Three likelihoods give the same posterior of (β, Σ, σ) (and of b when it is sampled):

``likelihood="student"``
    The textbook observation-level model ``y ~ Normal(Xβ + (Z∘b[g]), σ)``: O(n) work per gradient.
``likelihood="suffstat"``
    The same Gaussian likelihood from the per-school cross-products of the REML engine
    (:func:`twolevel.models.design.group_crossprods`), O(J) work per gradient; see
    :func:`suffstat_loglik`.
``likelihood="collapsed"`` (default of :mod:`twolevel.models.bayes.fit`)
    The school effects integrated out analytically (Woodbury), see :func:`collapsed_loglik`; only
    β, σ and the LKJ factor are sampled. The school effects are drawn afterwards from their exact
    Gaussian conditional posterior (:func:`draw_school_effects`, in
    :mod:`twolevel.models.bayes.fit`).

Variable names (fixed, relied on by :mod:`twolevel.models.bayes.fit` and the CLI)
-------------------------------------------------------------------
``beta`` (dims ``fixed``), ``sigma``, ``chol_cov`` (LKJCholeskyCov's packed factor, q ≥ 2),
``sd`` (dims ``effect``), ``corr`` (dims ``effect, effect_b``; q ≥ 2), ``z`` (standard-normal
school effects, dims ``school, effect_nc``), ``b_centered`` (centred school effects, dims
``school, effect_c``), ``b_school`` (school effects, dims ``school, effect``; not in the collapsed
model, where bayes adds it after sampling), potentials ``loglik`` (suffstat) /
``marginal_loglik`` (collapsed) and the observed ``<response>`` (student).
Coordinates: ``fixed`` = lme4 names of X's columns, ``effect`` = lme4 names of Z's columns
(``(Intercept)``, ``famsesc``), ``school`` = the group levels.

Parameterisation of the sampled school effects: the first ``m`` effects are centred (sampled as
``b_centered ~ MvNormal(0, L₁₁L₁₁ᵀ)``), the rest non-centred (``z ~ N(0, 1)``,
``b = w₁ L₂₁ᵀ + z L₂₂ᵀ`` with ``w₁ = L₁₁⁻¹ b_centered``), which is exactly ``b = w Lᵀ`` with
``w ~ N(0, I)``. ``m = 0`` is the fully non-centred model, ``m = q`` the centred one.
:func:`choose_centering` gives the documented rule (centre the leading effects whose average
reliability is ≥ 0.5).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np

# Our compiled functions use PyTensor's Numba backend; the C backend's BLAS check is irrelevant.
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS installation")

import pymc as pm  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

from twolevel.data.errors import TwolevelError  # noqa: E402
from twolevel.models.bayes.priors import ModelPriors, Prior, check_priors, default_priors  # noqa: E402
from twolevel.models.bayes.sampler import (  # noqa: E402
    check_adaptation,
    effect_structure,  # re-exported
)
from twolevel.models.design import Design, GroupCrossprods, group_crossprods  # noqa: E402

__all__ = [
    "LIKELIHOODS",
    "build_model",
    "choose_centering",
    "collapsed_loglik",
    "reliabilities",
    "suffstat_loglik",
    "effect_structure",
]

LIKELIHOODS = ("collapsed", "suffstat", "student")
RELIABILITY_CUTOFF = 0.5
_LOG2PI = float(np.log(2 * np.pi))


# ----------------------------------------------------------------------------- structure checks


# ----------------------------------------------------------------------------- centering rule


def reliabilities(design: Design, cp: GroupCrossprods | None = None) -> np.ndarray:
    """Average reliability of each random effect from a quick moment estimate.

    λ_k = mean_j τ̂_kk / (τ̂_kk + σ̂² [A_j⁻¹]_kk) over schools where A_j = Z_jᵀZ_j is invertible,
    with σ̂² the pooled within-school residual variance of per-school OLS fits of y on (X, Z)
    reduced to Z, and τ̂_kk = max(var_j(b̂_jk) − mean_j σ̂²[A_j⁻¹]_kk, 0) (method of moments on
    the per-school OLS coefficients b̂_j = A_j⁻¹ Z_jᵀ(y_j − X_j β̂), β̂ the pooled OLS estimate).
    """
    cp = cp or group_crossprods(design)
    moments = getattr(design, "group_moments", None)
    if moments is not None:  # statistics-only design: OLS and per-school RSS from the sums
        beta = cp.shifted[2]
        rss_all = (design.yty_groups - 2.0 * moments.Xty @ beta
                   + np.einsum("k,jkl,l->j", beta, moments.XtX, beta))
    else:
        beta = np.linalg.lstsq(design.X, design.y, rcond=None)[0]
    d = cp.c - cp.B @ beta  # Z_jᵀ(y_j − X_jβ̂)
    n_j = design.group_sizes
    q = design.q
    ok = (n_j > q + 1) & (np.linalg.cond(cp.A) < 1e10)
    if ok.sum() < 2:
        return np.zeros(q)
    Ainv = np.linalg.inv(cp.A[ok])
    bhat = np.einsum("jkl,jl->jk", Ainv, d[ok])
    if moments is None:
        r = design.y - design.X @ beta
        rss_all = np.bincount(design.group_index, weights=r * r, minlength=design.n_groups)
    rss_j = rss_all[ok]
    rss_j = rss_j - np.einsum("jk,jk->j", bhat, d[ok])
    sigma2 = max(float(rss_j.sum() / (n_j[ok] - q).sum()), 1e-12)
    samp = sigma2 * np.diagonal(Ainv, axis1=1, axis2=2)  # (J, q)
    tau = np.maximum(np.var(bhat, axis=0, ddof=1) - samp.mean(axis=0), 0.0)
    return np.mean(tau / (tau + samp), axis=0)


def choose_centering(design: Design, cp: GroupCrossprods | None = None) -> int:
    """Number of leading random effects to sample centred: the longest leading run of effects
    whose :func:`reliabilities` value is ≥ 0.5 (well-identified school effects sample better
    centred, weakly identified ones non-centred)."""
    rel = reliabilities(design, cp)
    m = 0
    while m < len(rel) and rel[m] >= RELIABILITY_CUTOFF:
        m += 1
    return m


# ----------------------------------------------------------------------------- likelihood maths


def residual_ss(cp: GroupCrossprods, beta, b=None):
    """Σ_i (y_i − x_iβ − z_i b_j)² from the cross-products:

    yᵀy − 2βᵀXᵀy + βᵀXᵀXβ − 2 Σ_j b_jᵀ(c_j − B_jβ) + Σ_j b_jᵀ A_j b_j   (b terms omitted when
    ``b`` is None). Works on NumPy arrays and PyTensor tensors alike.
    """
    mod = pt if isinstance(beta, pt.TensorVariable) else np
    ss = (_cp(cp, "yty") - 2.0 * mod.dot(_cp(cp, "Xty"), beta)
          + mod.dot(beta, mod.dot(_cp(cp, "XtX"), beta)))
    if b is None:
        return ss
    d = _cp(cp, "c") - mod.tensordot(_cp(cp, "B"), beta, axes=[[2], [0]])  # Z_jᵀ(y_j − X_jβ)
    quad = (b[:, :, None] * _cp(cp, "A") * b[:, None, :]).sum(axis=(1, 2))
    return ss - 2.0 * (b * d).sum() + quad.sum()


def _cp(cp, name: str):
    """Cross-product ``name`` (A, B, c, XtX, Xty, yty) of a :class:`GroupCrossprods` or of the dict
    of ``pm.Data`` tensors of :func:`_data_crossprods`, so the maths below serves both."""
    return cp[name] if isinstance(cp, dict) else getattr(cp, name)


def suffstat_loglik(cp, n: int, beta, b, sigma):
    """Gaussian log-likelihood of all students from the cross-products, given the school effects:

    log p(y | β, b, σ) = −n/2 · log(2πσ²) − RSS(β, b) / (2σ²),  RSS from :func:`residual_ss`.
    """
    mod = pt if isinstance(sigma, pt.TensorVariable) else np
    return -0.5 * n * (_LOG2PI + 2.0 * mod.log(sigma)) - residual_ss(cp, beta, b) / (2.0 * sigma**2)


def _unrolled_cholesky(M: list[list], mod):
    """Cholesky factor R (lower, list of lists) of a small q×q SPD matrix whose entries are
    vectors over schools: r_kk = √(M_kk − Σ_l<k r_kl²), r_ik = (M_ik − Σ_l<k r_il r_kl) / r_kk."""
    q = len(M)
    R = [[None] * q for _ in range(q)]
    for k in range(q):
        s = M[k][k]
        for m in range(k):
            s = s - R[k][m] ** 2
        R[k][k] = mod.sqrt(s)
        for i in range(k + 1, q):
            s = M[i][k]
            for m in range(k):
                s = s - R[i][m] * R[k][m]
            R[i][k] = s / R[k][k]
    return R


def collapsed_terms(cp, beta, L, sigma, mod=pt):
    """Per-school pieces of the marginal likelihood with b_j integrated out.

    With d_j = Z_jᵀ(y_j − X_jβ) = c_j − B_jβ, u_j = Lᵀd_j and M_j = I + LᵀA_jL / σ² = R_jR_jᵀ:

    log|V_j| = n_j log σ² + log|M_j|,   (y_j−X_jβ)ᵀV_j⁻¹(y_j−X_jβ) = (r_jᵀr_j − ‖R_j⁻¹u_j‖²/σ²)/σ²

    where V_j = σ²I + Z_jΣZ_jᵀ. Returns ``(logdet_M, quad)``: two length-J vectors,
    log|M_j| and ‖R_j⁻¹u_j‖².
    """
    A, c, B = _cp(cp, "A"), _cp(cp, "c"), _cp(cp, "B")
    q = len(L)
    d = c - mod.tensordot(B, beta, axes=[[2], [0]])  # (J, q)
    s2 = sigma**2
    # AL[k][b] = Σ_m A[:, k, m] L[m][b]   (vectors over schools)
    AL = [[sum(A[:, k, m] * L[m][bb] for m in range(q) if L[m][bb] is not None) for bb in range(q)]
          for k in range(q)]
    M = [[None] * q for _ in range(q)]
    for a in range(q):
        for bb in range(a, q):
            v = sum(L[k][a] * AL[k][bb] for k in range(q) if L[k][a] is not None) / s2
            if a == bb:
                v = v + 1.0
            M[a][bb] = M[bb][a] = v
    u = [sum(L[k][a] * d[:, k] for k in range(q) if L[k][a] is not None) for a in range(q)]
    R = _unrolled_cholesky(M, mod)
    logdet = sum(2.0 * mod.log(R[k][k]) for k in range(q))
    # forward solve R v = u
    v = []
    for k in range(q):
        s = u[k]
        for m in range(k):
            s = s - R[k][m] * v[m]
        v.append(s / R[k][k])
    quad = sum(vk**2 for vk in v)
    return logdet, quad


def collapsed_loglik(cp, n: int, beta, L, sigma, mod=pt):
    """Marginal log-likelihood log p(y | β, Σ = LLᵀ, σ) with the school effects integrated out:

    −½ [ n log(2πσ²) + Σ_j log|M_j| + (RSS₀(β) − Σ_j ‖R_j⁻¹Lᵀd_j‖² / σ²) / σ² ]

    with RSS₀(β) = ‖y − Xβ‖² from the global cross-products (:func:`residual_ss` without b) and
    the per-school terms of :func:`collapsed_terms`. ``L`` is a q×q list of lists of scalars
    (``None`` for structural zeros). O(J q³) work.
    """
    logdet, quad = collapsed_terms(cp, beta, L, sigma, mod)
    s2 = sigma**2
    rss0 = residual_ss(cp, beta)
    return -0.5 * (n * (_LOG2PI + mod.log(s2)) + logdet.sum() + (rss0 - quad.sum() / s2) / s2)


# ----------------------------------------------------------------------------- builders


def _rv(name: str, prior: Prior, size: int | None = None, dims=None):
    """A PyMC random variable for ``prior`` (vector when ``size`` is given). Scalar parameters are
    passed as float64 NumPy scalars: a Python float such as 3.0 would become a float32 constant
    (PyTensor's autocast), and the constants of the density (log √(2/π), ...) would be folded in
    float32, ~1e-8 off."""
    kw = {k: (prior.param(k, size) if size is not None else np.float64(prior.param(k)))
          for k in prior.params}
    cls = getattr(pm, prior.dist)
    if size is None:
        return cls(name, **kw)
    return cls(name, **kw, dims=dims)


def _dist(prior: Prior, size: int):
    kw = {k: prior.param(k, size) for k in prior.params}
    return getattr(pm, prior.dist).dist(**kw, shape=size)


def school_covariance(priors: ModelPriors, q: int, structure: str):
    """The school effects' covariance factor (inside a model context): Σ = LLᵀ with
    L = diag(sd)·chol(corr), ``pm.LKJCholeskyCov("chol_cov", eta, sd_dist=prior.sd)`` and the
    deterministics ``sd`` [effect] and ``corr`` [effect, effect_b] (structure "lkj"), or
    L = diag(sd) with ``sd ~ prior.sd`` (structure "diag"). Returns (L, sd)."""
    if structure == "lkj":
        chol, _, sds = pm.LKJCholeskyCov(
            "chol_cov", n=q, eta=float(priors.corr.param("eta")),
            sd_dist=_dist(priors.sd, q), compute_corr=True, store_in_trace=False,
        )
        pm.Deterministic("sd", sds, dims="effect")
        corr_mat = chol / sds[:, None]
        pm.Deterministic("corr", corr_mat @ corr_mat.T, dims=("effect", "effect_b"))
        return chol, sds
    sds = _rv("sd", priors.sd, q, dims="effect")
    return pt.diag(sds), sds


@dataclass(frozen=True)
class BuiltModel:
    """A PyMC model with how it was built.

    Fields
    ------
    model : the ``pm.Model``.  design : the :class:`Design`.  priors : the priors used.
    likelihood : "collapsed", "suffstat" or "student".  n_centered : leading centred effects
    (meaningless for "collapsed").  structure : "lkj" or "diag".
    """

    model: pm.Model
    design: Design
    priors: ModelPriors
    likelihood: str
    n_centered: int
    structure: str


def build_model(
    design: Design,
    priors: ModelPriors | None = None,
    *,
    likelihood: str = "collapsed",
    centering: str | int = "noncentered",
    crossprods: GroupCrossprods | None = None,
) -> BuiltModel:
    """Build the PyMC model of ``design`` (see the module docstring for names and maths).

    Parameters
    ----------
    design : from :func:`twolevel.models.design.make_design` (the same formula as the REML engine).
    priors : default :func:`twolevel.models.bayes.priors.default_priors` (design).
    likelihood : "collapsed" (school effects integrated out), "suffstat" (school effects sampled,
        likelihood from per-school cross-products) or "student" (per-student likelihood).
    centering : "noncentered" (all effects z ~ N(0, 1)), "centered", "auto"
        (:func:`choose_centering`) or an int m: the first m effects centred.
    crossprods : precomputed :func:`group_crossprods` (design) (saves one pass over the data).
    """
    if likelihood not in LIKELIHOODS:
        raise TwolevelError(
            f"likelihood '{likelihood}' is not known; choose one of {', '.join(LIKELIHOODS)}"
        )
    structure = effect_structure(design)
    priors = priors if priors is not None else default_priors(design)
    check_priors(priors, design)
    cp = crossprods if crossprods is not None else group_crossprods(design)
    q, p, J = design.q, design.p, design.n_groups
    if centering == "noncentered":
        m = 0
    elif centering == "centered":
        m = q
    elif centering == "auto":
        m = choose_centering(design, cp)
    elif isinstance(centering, (int, np.integer)) and 0 <= int(centering) <= q:
        m = int(centering)
    else:
        raise TwolevelError(
            f"centering {centering!r} is not valid; use 'noncentered', 'centered', 'auto' or a "
            f"number of leading centred effects between 0 and {q}"
        )
    effects = list(design.z_names)
    coords = {
        "fixed": list(design.x_names),
        "effect": effects,
        "effect_b": effects,
        "school": [str(s) for s in design.group_levels],
        "effect_c": effects[:m],
        "effect_nc": effects[m:],
    }
    if likelihood == "student":
        coords["obs"] = np.arange(design.n)

    with pm.Model(coords=coords) as model:
        beta = _rv("beta", priors.beta, p, dims="fixed")
        sigma = _rv("sigma", priors.sigma)
        chol, sds = school_covariance(priors, q, structure)
        if structure == "lkj":
            L = [[chol[i, j] if j <= i else None for j in range(q)] for i in range(q)]
        else:
            L = [[sds[i] if j == i else None for j in range(q)] for i in range(q)]

        if likelihood == "collapsed":
            data = _data_crossprods(cp)
            pm.Potential("marginal_loglik", collapsed_loglik(data, design.n, beta, L, sigma))
        else:
            b = _school_effects(chol, m, q, J)
            if likelihood == "suffstat":
                data = _data_crossprods(cp)
                pm.Potential("loglik", suffstat_loglik(data, design.n, beta, b, sigma))
            else:
                X = pm.Data("X", design.X, dims=("obs", "fixed"))
                Z = pm.Data("Z", design.Z, dims=("obs", "effect"))
                g = pm.Data("school_idx", design.group_index, dims="obs")
                mu = pt.dot(X, beta) + (Z * b[g]).sum(axis=1)
                pm.Normal(design.response, mu=mu, sigma=sigma, observed=design.y, dims="obs")
    return BuiltModel(model, design, priors, likelihood, m, structure)


def _data_crossprods(cp: GroupCrossprods) -> dict:
    """The cross-products as ``pm.Data`` (stored in ``constant_data``; settable for re-use)."""
    return {
        "A": pm.Data("A", cp.A, dims=("school", "effect", "effect_b")),
        "B": pm.Data("B", cp.B, dims=("school", "effect", "fixed")),
        "c": pm.Data("c", cp.c, dims=("school", "effect")),
        "XtX": pm.Data("XtX", cp.XtX),
        "Xty": pm.Data("Xty", cp.Xty),
        "yty": pm.Data("yty", np.float64(cp.yty)),
    }


def _school_effects(chol, m: int, q: int, J: int):
    """School effects b (J × q) = w Lᵀ, the first m columns centred (module docstring)."""
    parts = []
    if m > 0:
        L11 = chol[:m, :m]
        if m == 1:
            bc = pm.Normal("b_centered", mu=0.0, sigma=L11[0, 0], dims=("school", "effect_c"))
        else:
            bc = pm.MvNormal("b_centered", mu=pt.zeros(m), chol=L11, dims=("school", "effect_c"))
        parts.append(bc)
    if m < q:
        z = pm.Normal("z", 0.0, 1.0, dims=("school", "effect_nc"))
        bn = pt.dot(z, chol[m:, m:].T)
        if m > 0:
            w1 = pt.linalg.solve_triangular(chol[:m, :m], bc.T, lower=True).T  # (J, m)
            bn = bn + pt.dot(w1, chol[m:, :m].T)
        parts.append(bn)
    b = parts[0] if len(parts) == 1 else pt.concatenate(parts, axis=1)
    return pm.Deterministic("b_school", b, dims=("school", "effect"))


def prior_draws(built: BuiltModel, draws: int, seed: int | None) -> dict[str, np.ndarray]:
    """Draws of the hyperparameters from the prior: ``beta`` (draws, p), ``sigma`` (draws,),
    ``L`` (draws, q, q) lower-triangular factor of Σ."""
    names = ["beta", "sigma"] + (["chol_cov"] if built.structure == "lkj" else ["sd"])
    model = built.model
    vars_ = [model[n] for n in names]
    # cached; the C default costs s
    out = pm.draw(vars_, draws=draws, random_seed=seed, mode="NUMBA")
    q = built.design.q
    res = {"beta": np.asarray(out[0]).reshape(draws, -1),
           "sigma": np.asarray(out[1]).reshape(draws)}
    if built.structure == "lkj":
        packed = np.asarray(out[2]).reshape(draws, -1)
        L = np.zeros((draws, q, q))
        L[:, *np.tril_indices(q)] = packed
        res["L"] = L
    else:
        sd = np.asarray(out[2]).reshape(draws, q)
        res["L"] = np.einsum("sk,kl->skl", sd, np.eye(q))
    return res


# ----------------------------------------------------------------------------- NUTS


_COMPILED: dict[int, tuple] = {}


def _nutpie_functions(built: BuiltModel):
    """nutpie's PyTensor functions of the model in NUMBA mode (cached per model object)."""
    from pymc.initial_point import make_initial_point_fn

    from twolevel.models.bayes.nutpie_bridge import make_functions

    key = id(built.model)
    if key not in _COMPILED:
        model = built.model
        # as nutpie does: PyMC's support point jittered by U(−1, 1) on the unconstrained scale
        # (a new start for every chain and every retry), called under a lock
        ip_raw = make_initial_point_fn(model=model, jitter_rvs=set(model.free_RVs),
                                       return_transformed=True)
        lock = threading.Lock()

        def ip_fn(seed):
            with lock:
                return ip_raw(seed)

        _COMPILED[key] = (model, *make_functions(model, ip_fn))
    return _COMPILED[key][1:]


def compile_nuts(built: BuiltModel, data: dict[str, np.ndarray] | None = None):
    """The model's log-density and gradient compiled by PyTensor's Numba backend (disk-cached),
    wrapped for nutpie's Rust NUTS through :func:`nutpie.compiled_pyfunc.from_pyfunc`.

    nutpie's own ``compile_pymc_model`` wraps the same PyTensor functions in a Numba ``cfunc``
    that cannot be cached and costs ~10 s of compilation on every run; calling the cached
    PyTensor function from nutpie's Python callback costs ~40 µs a gradient instead (the
    collapsed lecture model needs ~25,000 gradients for 4 × 2000 iterations). The density is
    PyMC's own (``model.logp()`` with its transforms and Jacobians): nothing is rewritten here.

    ``data`` replaces the values of ``pm.Data`` variables by name (e.g. new cross-products
    ``c``, ``Xty``, ``yty`` of a simulated response with the same design) without recompiling.
    """
    from nutpie.compiled_pyfunc import from_pyfunc

    n_dim, logp_pt, expand_pt, init_fn, shape_info, reparam, dims, coords = _nutpie_functions(built)
    data = data or {}
    unknown = set(data) - {v.name for v in [*logp_pt.get_shared(), *expand_pt.get_shared()]}
    if unknown:
        raise TwolevelError(f"data {sorted(unknown)} are not pm.Data of the model; known: "
                            f"{sorted(v.name for v in logp_pt.get_shared())}")
    logp_jit, expand_jit = logp_pt.vm.jit_fn, expand_pt.vm.jit_fn
    logp_shared = [np.asarray(data.get(v.name, v.get_value())) for v in logp_pt.get_shared()]
    expand_shared = [np.asarray(data.get(v.name, v.get_value())) for v in expand_pt.get_shared()]
    names, _, shapes = shape_info

    def make_logp():
        def logp(x, **_):
            value, grad = logp_jit(x, *logp_shared)
            return float(value), np.asarray(grad, dtype="float64", order="C")

        return logp

    def make_expand(seed1, seed2, chain):
        def expand(x, **_):
            vals = expand_jit(x, *expand_shared)
            return {n: np.asarray(v, dtype="float64", order="C").reshape(s)
                    for n, v, s in zip(names, vals, shapes, strict=True)}

        return expand

    return from_pyfunc(
        ndim=n_dim, make_logp_fn=make_logp, make_expand_fn=make_expand,
        make_initial_point_fn=init_fn, expanded_dtypes=[np.dtype("float64")] * len(names),
        expanded_shapes=shapes, expanded_names=names, dims=dict(dims), coords=dict(coords),
        reparameterized_names=list(reparam),
    )


def sample_nuts(
    built: BuiltModel,
    *,
    draws: int,
    tune: int,
    chains: int,
    cores: int,
    seed: int,
    target_accept: float,
    progress: bool,
    data: dict[str, np.ndarray] | None = None,
    adaptation: str = "low_rank",
    gil_free: bool = False,
):
    """NUTS (nutpie's Rust sampler) on :func:`compile_nuts` with nutpie's mass-matrix
    ``adaptation`` (``"low_rank"``, ``"diag"``, ``"draw_diag"``); returns nutpie's DataTree
    (``posterior``, ``sample_stats``, ``warmup_*``).

    ``gil_free=True`` compiles the model with ``nutpie.compile_pymc_model`` (PyTensor's Numba
    backend in a ``cfunc``, as ``pm.sample()`` does when nutpie is installed) instead: about 10 s
    of compilation per process, then gradients without the GIL, so the chains run in parallel.
    That pays when a gradient is expensive (an observation-level likelihood: binary and count
    outcomes at the lecture's size sample 2.6× faster per iteration); ``data`` is not
    available then."""
    import nutpie

    from twolevel.models.bayes.nutpie_bridge import private_route, warn_public

    check_adaptation(adaptation)
    if not gil_free and not private_route():  # the cached route uses nutpie's internals
        if data:
            raise TwolevelError("data= swaps need nutpie's private helpers, which this nutpie "
                                "version does not have: install 'nutpie>=0.16.0,<0.17'")
        warn_public("the PyMC model")
        gil_free = True
    if gil_free:
        if data:
            raise TwolevelError("data= swaps need the cached route (gil_free=False)")
        compiled = nutpie.compile_pymc_model(built.model, backend="numba")
    else:
        compiled = compile_nuts(built, data)
    return nutpie.sample(
        compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
        target_accept=target_accept, progress_bar=progress, adaptation=adaptation,
    )


def value_var_names(built: BuiltModel) -> list[str]:
    """Names of the model's free value variables (transformed space), in model order."""
    return [built.model.rvs_to_values[rv].name for rv in built.model.free_RVs]
