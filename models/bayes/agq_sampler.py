"""NUTS on the GLMM with the school effects integrated out by adaptive Gauss–Hermite quadrature
(:mod:`twolevel.models.bayes.agq`): nutpie's Rust sampler calling ``twolevel_logp_agq`` of
``cagq.c`` on the hyperparameters (β, the LKJ Cholesky factor or log SDs) only.

nutpie's expand callback (``twolevel_expand_agq``) stores, with every draw, each school's
integrated log-likelihood Q_j — the leave-one-school-out log-likelihood of the DataTree, a
by-product of the sampler rather than a second pass. After sampling, every school's effects are
drawn for every posterior draw from their exact conditional posterior
(:func:`twolevel.models.bayes.agq.draw_school_effects_agq`), so the DataTree has the variables,
dims and coordinates of the full non-centred sampler (:mod:`twolevel.models.bayes.glmm_sampler`):
``beta``, ``chol_cov``/``sd``/``corr``, ``z`` (the whitened effects u_j) and ``b_school`` = L u_j.

The quadrature error is estimated per fit (:func:`quadrature_error`): the log density with K and
2K + 1 nodes per dimension at a few posterior draws; its spread over the draws (a constant offset
does not change the posterior) is what moves posterior expectations, by at most about that many
posterior SDs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from twolevel.models.bayes import agq
from twolevel.models.bayes import kernel_layout as layout
from twolevel.models.bayes.sampler import (
    CompiledModel,
    effect_structure,
    nutpie_lib,
    nuts_settings,
    run_nuts,
    trace_to_datatree,
)
from twolevel.models.design import Design

__all__ = ["AgqModel", "agq_supported", "compile_agq", "quadrature_error", "sample_agq"]

LL_SCHOOL = "_ll_school"  # the expanded per-school log-likelihood, moved to log_likelihood


def agq_supported(family: str, link: str, q: int, p: int, priors) -> str | None:
    """None when the integrated sampler computes this model, else the reason it does not (one
    line, for the fallback's message)."""
    if (family, link) not in agq.AGQ_LINK_CODES:
        return f"family/link {family}/{link} has no integrated (AGQ) kernel"
    if q > agq.QMAX:
        return (f"{q} random effects per school: the integrated likelihood takes at most "
                f"{agq.QMAX} (a product rule of K^q nodes per school and evaluation)")
    if p > agq.PMAX:
        return f"{p} fixed effects: the integrated likelihood takes at most {agq.PMAX}"
    if priors.beta.dist not in layout.LOCATION_CODES or priors.sd.dist not in layout.POSITIVE_CODES:
        return f"priors {priors.beta.dist}/{priors.sd.dist} have no compiled kernel"
    from twolevel.data.errors import TwolevelError

    try:
        agq.load()
    except (TwolevelError, OSError) as e:
        return f"the integrated kernel is not available ({e})"
    return None


def _expand(x: np.ndarray, q: int, p: int, J: int, structure: str) -> dict[str, np.ndarray]:
    """The model's variables from the expanded draws [x (n_dim) | Q_j (J)]: ``beta``; LKJ: the
    packed factor ``chol_cov`` (exp on the diagonal), ``sd``, ``corr``; else ``sd``; and the
    per-school log-likelihood."""
    x = np.asarray(x, dtype=float)
    lead = x.shape[:-1]
    m = q * (q + 1) // 2 if structure == "lkj" else q
    out = {"beta": x[..., :p].copy()}
    if structure == "lkj":
        rows, cols = np.tril_indices(q)
        packed = x[..., p:p + m].copy()
        diag = rows == cols
        packed[..., diag] = np.exp(packed[..., diag])
        L = np.zeros((*lead, q, q))
        L[..., rows, cols] = packed
        sd = np.sqrt(np.einsum("...ij,...ij->...i", L, L))
        Ls = L / sd[..., :, None]
        out.update(chol_cov=packed, sd=sd, corr=np.einsum("...ik,...jk->...ij", Ls, Ls))
    else:
        out["sd"] = np.exp(x[..., p:p + q])
    if x.shape[-1] >= p + m + J:
        out[LL_SCHOOL] = x[..., p + m:p + m + J].copy()
    return out


@dataclass(frozen=True)
class AgqModel(CompiledModel):
    """The integrated GLMM as nutpie's Rust sampler takes it (:class:`CompiledModel`); the
    expanded draw is [x | Q_j] (``n_expanded`` = n_dim + J)."""

    q: int
    p: int
    J: int
    structure: str
    n_expanded: int
    sampling_data: np.ndarray  # what nutpie's callbacks read (agq.with_sampling_coordinates)

    def expand(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The model's variables and per-school log-likelihoods (:func:`_expand`)."""
        return _expand(x, self.q, self.p, self.J, self.structure)

    def callbacks(self) -> tuple[int, int, object]:
        """nutpie's (logp, expand) addresses: ``twolevel_logp_agq``, ``twolevel_expand_agq``."""
        return (*agq.callback_addresses(), agq.load())


def newton_start(data: np.ndarray, x0: np.ndarray, q: int, p: int, structure: str
                 ) -> np.ndarray:
    """Where every evaluation's Newton iterations start, (J, q) on the scale of b = L u: the
    schools' conditional modes at the posterior mode of the Laplace (K = 1) density, found by
    L-BFGS from ``x0`` (zeros when that fails). Computed once per fit, so each evaluation's
    result does not depend on which evaluations came before it."""
    from scipy.optimize import minimize

    lap = agq.with_threads(agq.with_nodes(data, 1), agq.DEFAULT_THREADS)

    def neg(x):
        lp, g, st = agq.agq_logp(x, lap)
        return (np.inf, np.zeros_like(x)) if st != 0 else (-lp, -g)

    try:
        res = minimize(neg, x0, jac=True, method="L-BFGS-B", options={"maxiter": 200})
        _, _, _, uj, _ = agq.agq_schools(res.x, lap, gradient=True)
    except (ValueError, FloatingPointError):
        return np.zeros((int(data[2]), q))
    if not (np.all(np.isfinite(res.x)) and np.all(np.isfinite(uj))):
        return np.zeros((int(data[2]), q))
    L = _factors(res.x[None], q, p, structure)[0]
    return uj @ L.T


def compile_agq(design: Design, y, w, offset, family: str, link: str, priors,
                nodes: int | None = None, threads: int = 1, warm_start: bool = True,
                store_loglik: bool = True) -> AgqModel:
    """The :class:`AgqModel` of a design (the C library is built once per installation);
    ``warm_start``: Newton starts at :func:`newton_start`'s modes instead of 0;
    ``store_loglik``: every draw carries each school's Q_j (one evaluation without gradient per
    draw; False: the draw only)."""
    from twolevel.models.bayes.sampler import _location_params, _positive_support

    structure = effect_structure(design)
    q, p, J = design.q, design.p, design.n_groups
    data = agq.pack_agq(design, y, w, offset, family, link, priors, structure, nodes, threads)
    m = q * (q + 1) // 2 if structure == "lkj" else q
    n_dim = p + m
    x0 = np.zeros(n_dim)
    x0[:p] = _location_params(priors.beta, p)[0][:, 0]
    if structure != "lkj":
        x0[p:] = np.log(_positive_support(priors.sd, q))
    if warm_start:
        data = agq.with_start(data, newton_start(data, x0, q, p, structure))
    data.flags.writeable = False
    sampling = agq.with_sampling_coordinates(data)
    sampling.flags.writeable = False
    effects = list(design.z_names)
    schools = [str(s) for s in design.group_levels]
    cov_name = "chol_cov_cholesky-cov-packed__" if structure == "lkj" else "sd_log__"
    unc = ([f"beta_{i}" for i in range(p)] + [f"{cov_name}_{i}" for i in range(m)]
           + ([f"loglik_school_{j}" for j in range(J)] if store_loglik else []))
    coords = {"fixed": pd.Index(list(design.x_names)), "effect": pd.Index(effects),
              "effect_b": pd.Index(effects), "school": pd.Index(schools),
              "effect_nc": pd.Index(effects), "unconstrained_parameter": pd.Index(unc)}
    dims = {"beta": ("fixed",), "sd": ("effect",)}
    if store_loglik:
        dims[LL_SCHOOL] = ("school",)
    if structure == "lkj":
        dims["corr"] = ("effect", "effect_b")
    return AgqModel(data=data, n_dim=n_dim, q=q, p=p, J=J, structure=structure, x0=x0,
                    dims=dims, coords=coords, n_expanded=n_dim + (J if store_loglik else 0),
                    sampling_data=sampling)


def _unconstrained(post: xr.Dataset, structure: str) -> np.ndarray:
    """(S, n_dim) unconstrained draws (chains flattened) from the posterior's variables."""
    beta = post["beta"].transpose("chain", "draw", "fixed").to_numpy()
    S = beta.shape[0] * beta.shape[1]
    if structure == "lkj":
        cov = post["chol_cov"].to_numpy().reshape(S, -1)
    else:
        cov = post["sd"].transpose("chain", "draw", "effect").to_numpy().reshape(S, -1)
    return agq.unconstrained_from_posterior(beta.reshape(S, -1), cov, structure)


def _factors(xs: np.ndarray, q: int, p: int, structure: str) -> np.ndarray:
    """(S, q, q) lower factors L from unconstrained draws."""
    L = np.zeros((xs.shape[0], q, q))
    if structure == "lkj":
        rows, cols = np.tril_indices(q)
        v = xs[:, p:p + rows.size].copy()
        v[:, rows == cols] = np.exp(v[:, rows == cols])
        L[:, rows, cols] = v
    else:
        idx = np.arange(q)
        L[:, idx, idx] = np.exp(xs[:, p:p + q])
    return L


def quadrature_error(model: AgqModel, post: xr.Dataset, n_points: int = 8,
                     threads: int = agq.DEFAULT_THREADS) -> dict[str, float]:
    """The integrated log-likelihood Σ_j Q_j with K and 2K + 1 nodes per dimension at
    ``n_points`` posterior draws spread over the chains: ``nodes`` K, ``max_abs`` max |Δ|,
    ``sd`` the SD of Δ over the draws (what shifts posterior expectations: by at most about
    that many posterior SDs), ``seconds``."""
    import time

    t0 = time.perf_counter()
    xs = _unconstrained(post, model.structure)
    pick = np.linspace(0, xs.shape[0] - 1, min(n_points, xs.shape[0])).round().astype(int)
    K = int(model.data[10])
    lo = agq.with_threads(model.data, threads)
    hi = agq.with_nodes(lo, 2 * K + 1)
    d = np.array([agq.agq_schools(xs[i], hi).sum() - agq.agq_schools(xs[i], lo).sum()
                  for i in pick])
    return {"nodes": float(K), "max_abs": float(np.abs(d).max()),
            "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0,
            "seconds": time.perf_counter() - t0}


def sample_agq(design: Design, y, w, offset, family: str, link: str, priors, *, draws: int,
               tune: int, chains: int, cores: int, seed: int, target_accept: float,
               progress: bool, adaptation: str = "low_rank", nodes: int | None = None,
               mh_steps: int = agq.DEFAULT_MH_STEPS, store_loglik: bool = True
               ) -> tuple[xr.DataTree, AgqModel, dict]:
    """NUTS on the integrated GLMM, then the school effects drawn per posterior draw; returns
    the DataTree (``posterior`` with ``beta``, ``chol_cov``/``sd``/``corr``, ``z``,
    ``b_school``; ``sample_stats``; ``warmup_*``; with ``store_loglik`` the per-school
    log-likelihoods stored by the sampler are in ``posterior[_ll_school]`` until the caller
    moves them), the model and timings."""
    import time
    from importlib.metadata import version

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    lib = nutpie_lib()
    settings = nuts_settings(lib, adaptation=adaptation, seed=seed, draws=draws, tune=tune,
                             chains=chains, target_accept=target_accept)
    # the chains already use every core when there are at least as many as cores
    threads = 1 if chains >= cores else max(1, cores // max(chains, 1))
    model = compile_agq(design, y, w, offset, family, link, priors, nodes, threads,
                        store_loglik=store_loglik)
    draw_batches, stat_batches = run_nuts(model, settings, cores, progress, lib)
    raw = settings.as_dict()
    attrs = {"inference_library": "nutpie", "inference_library_version": version("nutpie"),
             "inference_library_settings": json.dumps(raw)}
    dt = trace_to_datatree(draw_batches, stat_batches, model, raw["settings"], attrs)
    timings["sample"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    post = dt["posterior"].to_dataset()
    C, D = post.sizes["chain"], post.sizes["draw"]
    xs = _unconstrained(post, model.structure)
    u, acc = agq.draw_school_effects_agq(xs, agq.with_threads(model.data, cores),
                                         seed=seed, steps=mh_steps, threads=cores)
    L = _factors(xs, design.q, design.p, model.structure)
    b = np.einsum("skl,sjl->sjk", L, u)
    q, J = design.q, design.n_groups
    # the schools' labels too: without a stored Q_j no variable of the trace carries them
    post = post.assign_coords(effect_nc=list(design.z_names),
                              school=[str(s) for s in design.group_levels])
    post["z"] = (("chain", "draw", "school", "effect_nc"), u.reshape(C, D, J, q))
    post["b_school"] = (("chain", "draw", "school", "effect"), b.reshape(C, D, J, q))
    post.attrs["agq_mh_acceptance"] = float(acc.mean())
    dt["posterior"] = xr.DataTree(post)
    timings["school effects"] = time.perf_counter() - t1
    return dt, model, timings
