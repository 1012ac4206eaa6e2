"""Bayesian fit of a two-level model for a binary or count outcome: design → PyMC model → NUTS →
the same frozen :class:`~twolevel.models.bayes.fit.BayesFit` as the Gaussian model.

``fit_bayes(formula, data, family="binomial" | "poisson", link=...)`` comes here. The response
encodings are glmer's (0/1, two-level factor, logical, ``cbind(successes, failures)``, proportions
with ``weights`` = trials, counts with ``offset(log(exposure))``;
:mod:`twolevel.models.glmm.response`).
The model (:mod:`twolevel.models.bayes.pymc_glmm`) has the LKJ prior on the school effects'
correlation and samples the school effects **non-centred** by default; ``centering="auto"`` centres
the leading effects whose reliability in the Laplace fit (``glmer``) is ≥ 0.5. The non-centred
logit-binomial and log-Poisson models are sampled through their C log density and gradient
(:mod:`twolevel.models.bayes.glmm_sampler`, equal to the PyMC model's, tested; no PyMC import,
nothing compiled per process); the others through the PyMC model. The diagnostic gate
is the Gaussian model's (0 divergences, R-hat ≤ 1.01, ESS ≥ 400 over every parameter including
each school effect, BFMI ≥ 0.3). The ``log_likelihood`` group holds ``<response>`` [obs] (per
student, PSIS-LOO) and ``<response>_by_school`` [school] with each school's effects integrated
out by adaptive Gauss–Hermite quadrature per draw (:mod:`twolevel.models.bayes.glmm_loglik`;
leave-one-school-out).
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from twolevel.data.errors import TwolevelError
from twolevel.models.bayes.fit import (
    LOG_LIKELIHOODS,
    BayesFit,
    SamplerSettings,
    _draws,
    cholesky_draws,
    diagnose,
)
from twolevel.models.bayes.gate import INTEGRATED_TARGET_ACCEPT, INTEGRATED_TUNE
from twolevel.models.bayes.glmm_loglik import school_loglik_agq, student_loglik_glmm
from twolevel.models.bayes.glmm_sampler import compiled_glmm_supported
from twolevel.models.bayes.priors import ModelPriors, default_glmm_priors
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.response import glmer_design

__all__ = ["GIL_FREE_ROWS", "INTEGRATED_TARGET_ACCEPT", "INTEGRATED_TUNE", "SAMPLERS",
           "fit_bayes_glmm", "glmm_reliabilities", "integrated_sampler_reason"]

SAMPLERS = ("auto", "integrated", "full")

# From this many rows the model is compiled into nutpie's GIL-free callback (~8 s of compilation
# per process; at the lecture's 11,091 rows a gradient costs ~450 µs and 4 chains on 2 cores then
# sample 2.6× faster per iteration than through the cached Python callback, which holds the GIL);
# below it the cached route's start-up wins.
GIL_FREE_ROWS = 5000



def glmm_reliabilities(formula: str, data: pd.DataFrame, family: str, link: str,
                       weights=None) -> np.ndarray:
    """Reliability of each random effect in the Laplace fit: 1 − mean_j Var(b_jk | y) / τ̂_kk
    (0 where τ̂_kk = 0)."""
    from twolevel.models.glmm.glmer import glmer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = glmer(formula, data, family=family, link=link, weights=weights)
    re = fit.ranef(cond_var=True)
    names = list(fit.design.z_names)
    tau = np.diag(np.asarray(fit.VarCorr().cov, dtype=float))
    cv = np.array([np.mean(re[f"condsd_{n}"].to_numpy() ** 2) for n in names])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(tau > 0, 1.0 - cv / tau, 0.0)
    return np.clip(rel, 0.0, 1.0)


def integrated_sampler_reason(formula: str, data: pd.DataFrame, family: str,
                              link: str | None = None, *, weights=None,
                              priors: ModelPriors | None = None) -> str | None:
    """Why the integrated sampler (school effects integrated out by adaptive Gauss–Hermite
    quadrature) cannot fit this model, in one line; None when it can — what
    ``fit_bayes(..., sampler="auto")`` decides.

    Parameters
    ----------
    formula, data, family, link, weights : as :func:`fit_bayes_glmm`.
    priors : ModelPriors, optional
        Default :func:`~twolevel.models.bayes.priors.default_glmm_priors`.

    Returns
    -------
    str or None

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> integrated_sampler_reason("g1below ~ famsesc + (1 | schid)", d, "binomial") is None
    True
    >>> integrated_sampler_reason("g1below ~ famsesc + (1 + famsesc + ses + meanses | schid)",
    ...                           d, "binomial")[:25]
    '4 random effects per scho'
    """
    from twolevel.models.bayes.agq_sampler import agq_supported

    fam = get_family(family, link)
    design, resp = glmer_design(formula, data, fam, weights)
    priors = priors or default_glmm_priors(design, resp.y, resp.w, resp.offset, fam.name,
                                           fam.link)
    return agq_supported(fam.name, fam.link, design.q, design.p, priors)


def fit_bayes_glmm(
    formula: str,
    data: pd.DataFrame,
    family: str,
    link: str | None = None,
    *,
    weights=None,
    priors: ModelPriors | None = None,
    centering: str | int = "noncentered",
    settings: SamplerSettings | None = None,
    progress: bool = True,
    log_likelihood: str = "both",
    nodes: int | None = None,
    sampler: str = "auto",
) -> BayesFit:
    """NUTS fit of a binary (``family="binomial"``: logit, probit, cloglog) or count
    (``"poisson"``: log) two-level model, with the diagnostic gate (module docstring).

    ``sampler``: ``"auto"`` (default) the integrated sampler where it applies
    (logit/probit/cloglog binomial, log Poisson, 1–3 effects, non-centred, compiled priors, a C
    compiler) and otherwise the full one, saying why in one warning; ``"integrated"`` samples
    (β, the covariance factor) with each school's effects integrated out by adaptive
    Gauss–Hermite quadrature and draws the school effects afterwards
    (:mod:`twolevel.models.bayes.agq_sampler`; ``nodes`` per dimension, default
    :func:`twolevel.models.bayes.agq.default_agq_nodes`), an error where it does not apply;
    ``"full"`` samples every school effect (non-centred or ``centering``). At the lecture design
    (742 schools of ~15 students, two effects) the integrated fit has 1.58 times the full
    sampler's min-ESS per second (25.2 against 16.0, idle, 2026-12-07;
    ``benchmarks/bayes_glmm.py --full``): a gradient costs 5.6 times the full model's, for
    trajectories of ~6 leapfrog steps against the full sampler's longer ones.

    ``centering`` (full sampler): "noncentered" (default), "centered", "auto" (reliability rule)
    or the number of leading effects to centre; anything but "noncentered" selects the full
    sampler. ``settings``: default ``SamplerSettings.for_family(family, sampler=...)`` — the
    integrated sampler: 4 × 1,000 draws after 500 tuning steps, low-rank adaptation,
    target_accept 0.8; the full one: diagonal adaptation, target_accept 0.8, 4 × 2,000 draws.
    ``nodes``: Gauss–Hermite nodes per dimension for the per-school log-likelihood (default: the
    integrated sampler 7 for one random effect, 5 for two, 3 for three; the full sampler's
    log-likelihood 9, 5, 3)."""
    if log_likelihood not in LOG_LIKELIHOODS:
        raise TwolevelError(f"log_likelihood {log_likelihood!r} is not one of "
                            f"{', '.join(LOG_LIKELIHOODS)}; use one of those")
    fam = get_family(family, link)
    if sampler not in SAMPLERS:
        raise TwolevelError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}; use one "
                            "of those")
    if sampler != "full":
        design, resp = glmer_design(formula, data, fam, weights)
        priors = priors or default_glmm_priors(design, resp.y, resp.w, resp.offset, fam.name,
                                               fam.link)
        from twolevel.models.bayes.agq_sampler import agq_supported

        why = agq_supported(fam.name, fam.link, design.q, design.p, priors)
        if why is None and centering == "noncentered":
            return _fit_integrated(formula, design, resp, fam, priors, settings, progress,
                                   log_likelihood, nodes)
        if sampler == "integrated":
            raise TwolevelError(f"the integrated sampler cannot fit '{formula}': "
                                f"{why or 'centering applies to sampled school effects'}; use "
                                "sampler='full'")
        if why is not None:
            warnings.warn(f"'{formula}': {why}; sampling every school effect instead "
                          "(sampler='full')", UserWarning, stacklevel=2)
    if settings is not None and settings.adaptation == "low_rank":
        warnings.warn(
            f"SamplerSettings(adaptation='low_rank') is the normal model's default; with every "
            f"school effect sampled ({fam.name}) it is about 10x slower (the lecture design: "
            f"338 s against 31 s for the same gate); use SamplerSettings.for_family"
            f"('{fam.name}', ...) for this model's defaults (diag, target_accept 0.8, 2,000 "
            "draws)", UserWarning, stacklevel=2)
    settings = settings or SamplerSettings.for_family(fam.name)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    design, resp = glmer_design(formula, data, fam, weights)
    priors = priors or default_glmm_priors(design, resp.y, resp.w, resp.offset, fam.name,
                                           fam.link)
    q = design.q
    if centering == "noncentered":
        m = 0
    elif centering == "centered":
        m = q
    elif centering == "auto":
        from twolevel.models.bayes.pymc_glmm import choose_glmm_centering

        m = choose_glmm_centering(glmm_reliabilities(formula, data, fam.name, fam.link, weights))
    elif isinstance(centering, int | np.integer) and 0 <= int(centering) <= q:
        m = int(centering)
    else:
        raise TwolevelError(f"centering {centering!r} is not valid; use 'noncentered', "
                            f"'centered', 'auto' or a number of leading centred effects 0-{q}")
    sample_kw = dict(draws=settings.draws, tune=settings.tune, chains=settings.chains,
                     cores=settings.cores, seed=settings.seed,
                     target_accept=settings.target_accept, adaptation=settings.adaptation,
                     progress=progress)
    if compiled_glmm_supported(fam.name, fam.link, m, priors):
        # the C log density and gradient (no PyMC/PyTensor): the same density as the PyMC model
        from twolevel.models.bayes.glmm_sampler import sample_glmm

        timings["build"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        dt = sample_glmm(design, resp.y, resp.w, resp.offset, fam.name, fam.link, priors,
                         **sample_kw)
        sampler = ("nutpie, non-centred model compiled from C "
                   "(twolevel.models.bayes.glmm_sampler)")
    else:
        from twolevel.models.bayes.pymc_glmm import build_glmm_model
        from twolevel.models.bayes.pymc_model import sample_nuts

        built = build_glmm_model(design, resp.y, resp.w, resp.offset, fam.name, fam.link,
                                 priors, centering=m)
        timings["build"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        dt = sample_nuts(built, gil_free=design.n >= GIL_FREE_ROWS, **sample_kw)
        sampler = "nutpie, PyMC model compiled by PyTensor/Numba"
    timings["compile+sample"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    post = dt["posterior"].to_dataset()
    diag = diagnose(xr.DataTree.from_dict(
        {"posterior": post, "sample_stats": dt["sample_stats"].to_dataset()}))
    timings["diagnostics"] = time.perf_counter() - t2
    if log_likelihood != "none":
        t3 = time.perf_counter()
        dt["log_likelihood"] = xr.DataTree(_glmm_log_likelihoods(
            post, design, resp, fam.name, fam.link, log_likelihood == "both", nodes))
        timings["log-likelihood"] = time.perf_counter() - t3
    for p in diag.problems:
        warnings.warn(f"NUTS fit of '{formula}': {p}", RuntimeWarning, stacklevel=2)
    return BayesFit(
        formula=formula, design=design, priors=priors, likelihood=f"{fam.name}/{fam.link}",
        n_centered=m, settings=settings, datatree=dt, diagnostics=diag, timings=timings,
        sampler=sampler,
    )


def _glmm_log_likelihoods(post: xr.Dataset, design, resp, family: str, link: str,
                          per_student: bool, nodes: int | None) -> xr.Dataset:
    C, D = post.sizes["chain"], post.sizes["draw"]
    beta = _draws(post["beta"], "fixed")
    w = resp.w if family == "binomial" else np.ones(design.n)
    ll = {}
    if per_student:
        b = _draws(post["b_school"], "school", "effect")
        ll[design.response] = (("chain", "draw", "obs"), student_loglik_glmm(
            design.X, design.Z, design.group_index, resp.y, w, resp.offset, family, link, beta,
            b).reshape(C, D, -1))
    L = cholesky_draws(post, design.q)
    by_school = _school_loglik_c(design, resp, family, link, beta, L, nodes)
    if by_school is None:
        by_school = school_loglik_agq(design.X, design.Z, design.group_index, design.n_groups,
                                      resp.y, w, resp.offset, family, link, beta, L, nodes)
    ll[f"{design.response}_by_school"] = (("chain", "draw", "school"),
                                          by_school.reshape(C, D, -1))
    return xr.Dataset(ll, coords={"school": [str(s) for s in design.group_levels]})


def _school_loglik_c(design, resp, family: str, link: str, beta: np.ndarray, L: np.ndarray,
                     nodes: int | None) -> np.ndarray | None:
    """The per-school integrated log-likelihood of every draw, (S, J), by the integrated
    sampler's C kernel (:func:`twolevel.models.bayes.agq.agq_schools`, both cores) with
    :func:`~twolevel.models.bayes.glmm_loglik.school_loglik_agq`'s nodes — the same AGQ rule
    (for the canonical links logit and log the observed and expected curvature coincide; a test
    holds the two to 1e-9) in about half its CPU time (lecture design, 25 nodes: 7.5 against 17
    ms per draw, measured under load); None where the kernel does not apply (other links,
    q > 3, no compiled kernel)."""
    from twolevel.data.errors import TwolevelError
    from twolevel.models.bayes import agq
    from twolevel.models.bayes.glmm_loglik import default_nodes

    q, p = design.q, design.p
    if (family, link) not in (("binomial", "logit"), ("poisson", "log")) or q > agq.QMAX \
            or p > agq.PMAX or not np.all(np.diagonal(L, axis1=1, axis2=2) > 0):
        return None
    try:
        agq.load()
    except (TwolevelError, OSError):
        return None
    from twolevel.models.bayes.sampler import effect_structure

    structure = effect_structure(design)
    pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, family, link)  # (unused)
    data = agq.pack_agq(design, resp.y, resp.w, resp.offset, family, link, pri, structure,
                        nodes or default_nodes(q), agq.DEFAULT_THREADS)
    rows, cols = np.tril_indices(q) if structure == "lkj" else (np.arange(q), np.arange(q))
    out = np.empty((beta.shape[0], design.n_groups))
    for i in range(beta.shape[0]):
        v = L[i][rows, cols].copy()
        v[rows == cols] = np.log(v[rows == cols])
        out[i] = agq.agq_schools(np.concatenate([beta[i], v]), data)
    return out


def _fit_integrated(formula: str, design, resp, fam, priors, settings, progress: bool,
                    log_likelihood: str, nodes: int | None) -> BayesFit:
    """The integrated (AGQ) sampler's fit (:mod:`twolevel.models.bayes.agq_sampler`): NUTS on
    the hyperparameters, the school effects drawn afterwards, the per-school log-likelihood
    stored by the sampler, the diagnostic gate, and the quadrature error estimated at a few
    posterior draws (a warning saying what to do when it is not far below the Monte-Carlo
    error)."""
    from twolevel.models.bayes.agq_sampler import LL_SCHOOL, quadrature_error, sample_agq

    settings = settings or SamplerSettings.for_family(fam.name, sampler="integrated")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    dt, model, t_s = sample_agq(
        design, resp.y, resp.w, resp.offset, fam.name, fam.link, priors, draws=settings.draws,
        tune=settings.tune, chains=settings.chains, cores=settings.cores, seed=settings.seed,
        target_accept=settings.target_accept, adaptation=settings.adaptation, progress=progress,
        nodes=nodes, store_loglik=log_likelihood != "none")
    timings["compile+sample"] = t_s["sample"]
    timings["school effects"] = t_s["school effects"]
    post = dt["posterior"].to_dataset()
    ll_school = post.get(LL_SCHOOL)
    post = post.drop_vars(LL_SCHOOL, errors="ignore")
    dt["posterior"] = xr.DataTree(post)
    if "warmup_posterior" in dt:
        dt["warmup_posterior"] = xr.DataTree(
            dt["warmup_posterior"].to_dataset().drop_vars(LL_SCHOOL, errors="ignore"))
    t2 = time.perf_counter()
    diag = diagnose(xr.DataTree.from_dict(
        {"posterior": post, "sample_stats": dt["sample_stats"].to_dataset()}))
    timings["diagnostics"] = time.perf_counter() - t2
    err = quadrature_error(model, post)
    timings["quadrature error"] = err["seconds"]
    K = int(err["nodes"])
    mc = 1.0 / math.sqrt(max(diag.min_ess_bulk, 1.0))
    post.attrs.update({"agq_nodes": K, "agq_error_sd": err["sd"],
                       "agq_error_max_abs": err["max_abs"], "mc_error_sd_units": mc})
    dt["posterior"] = xr.DataTree(post)
    problems = list(diag.problems)
    if err["sd"] > 0.25 * mc:
        problems_q = (f"quadrature error: the log density with {K} and {2 * K + 1} nodes per "
                      f"dimension differs by SD {err['sd']:.2g} over posterior draws, not far "
                      f"below the Monte-Carlo error ({mc:.2g} posterior SDs); refit with "
                      f"nodes={2 * K + 1}")
        warnings.warn(f"NUTS fit of '{formula}': {problems_q}", RuntimeWarning, stacklevel=3)
    if log_likelihood != "none":
        t3 = time.perf_counter()
        ll = {}
        C, D = post.sizes["chain"], post.sizes["draw"]
        if log_likelihood == "both":
            w = resp.w if fam.name == "binomial" else np.ones(design.n)
            ll[design.response] = (("chain", "draw", "obs"), student_loglik_glmm(
                design.X, design.Z, design.group_index, resp.y, w, resp.offset, fam.name,
                fam.link, _draws(post["beta"], "fixed"),
                _draws(post["b_school"], "school", "effect")).reshape(C, D, -1))
        ll[f"{design.response}_by_school"] = (("chain", "draw", "school"),
                                              ll_school.transpose("chain", "draw", "school")
                                              .to_numpy())
        dt["log_likelihood"] = xr.DataTree(xr.Dataset(
            ll, coords={"school": [str(s) for s in design.group_levels]}))
        timings["log-likelihood"] = time.perf_counter() - t3
    timings["build"] = time.perf_counter() - t0 - sum(timings.values())
    for p in problems:
        warnings.warn(f"NUTS fit of '{formula}': {p}", RuntimeWarning, stacklevel=3)
    return BayesFit(
        formula=formula, design=design, priors=priors, likelihood=f"{fam.name}/{fam.link}",
        n_centered=0, settings=settings, datatree=dt, diagnostics=diag, timings=timings,
        sampler=(f"nutpie, school effects integrated out by adaptive Gauss-Hermite quadrature "
                 f"({K} nodes per dimension; quadrature error SD {err['sd']:.1g}) and drawn "
                 "from their exact conditional (twolevel.models.bayes.agq_sampler)"))
