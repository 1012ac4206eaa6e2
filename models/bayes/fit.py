"""Bayesian fit of the two-level model: design → PyMC model → NUTS → frozen :class:`BayesFit`.

The stages mirror the REML engine (:mod:`twolevel.models.lmm.lmer`): the same formula strings and
column names
(:func:`twolevel.models.design.make_design`), the model built by
:func:`twolevel.models.bayes.pymc_model.build_model`
(LKJ prior on the school-effect correlation, school effects non-centred or integrated out), NUTS
(nutpie), then a result that records how it was obtained. The default collapsed model is sampled
through its compiled log-density and gradient (:mod:`twolevel.models.bayes.ckernels` in C,
compiled with the package, or :mod:`twolevel.models.bayes.kernels` in numba; nutpie's Rust NUTS
calling them without the GIL: :mod:`twolevel.models.bayes.sampler`; no PyMC import, nothing
compiled per process); the other likelihoods through the PyMC model
(:func:`twolevel.models.bayes.pymc_model.sample_nuts`).

Default: ``likelihood="collapsed"``. The school effects are integrated out analytically, NUTS
samples only (β, σ, sd, LKJ factor), and every school's effects are then drawn from their exact
Gaussian conditional posterior b_j | y, β, Σ, σ
(:func:`twolevel.models.bayes.collapsed.draw_school_effects`):
the same joint posterior as the non-centred model, without its funnel (no divergences by
construction) and with O(J) work per gradient.

Stored in the returned DataTree (PyMC 6 / ArviZ 1.x layout):

* ``posterior``: ``beta`` [fixed], ``sigma``, ``sd`` [effect], ``corr`` [effect, effect_b]
  (q ≥ 2), ``b_school`` [school, effect] (the school effects u_j).
* ``log_likelihood`` (``fit_bayes(log_likelihood="both")``, the default): ``<response>`` [obs],
  each student's log density given the school's effects (for PSIS-LOO over students), and
  ``<response>_by_school`` [school], each school's log density with its effects integrated out
  (for leave-one-school-out); ``"school"`` stores only the latter, ``"none"`` neither.
* ``sample_stats`` (nutpie's, with ``diverging`` and ``energy``) and the ``warmup_*`` groups.

This module does not import PyMC (only :mod:`twolevel.models.bayes.pymc_model` does).
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from twolevel.data.errors import TwolevelError
from twolevel.models.bayes.collapsed import draw_school_effects, school_marginal_loglik
from twolevel.models.bayes.diagnostics import rhat_ess
from twolevel.models.bayes.gate import (  # noqa: F401 (re-exported: fit.SamplerSettings, ...)
    GATE,
    Diagnostics,
    SamplerSettings,
    _flat_params,
    diagnose,
)
from twolevel.models.bayes.priors import ModelPriors
from twolevel.models.bayes.scale import (
    bayes_statistics,
    scale_log_likelihood,
    school_effect_summary,
    school_effects_dataset,
    summarise_school_effects,
)
from twolevel.models.design import Design, GroupCrossprods
from twolevel.models.design.multi import needs_multi
from twolevel.models.fit_base import BayesSummary, short_repr

__all__ = [
    "BayesFit",
    "Diagnostics",
    "SamplerSettings",
    "diagnose",
    "fit_bayes",
    "posterior_predictive",
    "prior_predictive",
]

_LOG2PI = float(np.log(2.0 * np.pi))


def _draws(da: xr.DataArray, *dims: str) -> np.ndarray:
    """(S, *dims) array of a posterior variable, chains and draws flattened (chain-major)."""
    return da.transpose("chain", "draw", *dims).to_numpy().reshape(-1, *[da.sizes[d] for d in dims])


def cholesky_draws(post: xr.Dataset, q: int) -> np.ndarray:
    """Σ = LLᵀ factor per draw, (S, q, q): from ``chol_cov`` (LKJCholeskyCov's packed lower
    triangle, row-major) or, for independent effects, L = diag(sd)."""
    if "chol_cov" in post:
        packed = _draws(post["chol_cov"], post["chol_cov"].dims[-1])
        L = np.zeros((packed.shape[0], q, q))
        L[:, *np.tril_indices(q)] = packed
        return L
    sd = _draws(post["sd"], "effect")
    return sd[:, :, None] * np.eye(q)[None]


def school_residual_ss(design: Design, beta: np.ndarray) -> np.ndarray:
    """r_jᵀr_j = ‖y_j − X_jβ‖² per draw and school, (S, J), from each school's own cross-products:

    r_jᵀr_j = y_jᵀy_j − 2βᵀX_jᵀy_j + βᵀX_jᵀX_jβ   (per-school sums by ``np.bincount``, as
    :func:`twolevel.models.design.group_crossprods`; then O(S·J·p²)).
    """
    moments = getattr(design, "group_moments", None)
    if moments is not None:  # statistics-only design: the per-school sums are already there
        return (design.yty_groups[None] - 2.0 * beta @ moments.Xty.T
                + np.einsum("sk,jkl,sl->sj", beta, moments.XtX, beta, optimize=True))
    X, y, g, J, p = design.X, design.y, design.group_index, design.n_groups, design.p

    def gsum(w: np.ndarray) -> np.ndarray:
        return np.bincount(g, weights=w, minlength=J)

    yty = gsum(y * y)
    Xty = np.stack([gsum(X[:, k] * y) for k in range(p)], axis=1)  # (J, p)
    XtX = np.empty((J, p, p))
    for k in range(p):
        for m in range(k, p):
            XtX[:, k, m] = XtX[:, m, k] = gsum(X[:, k] * X[:, m])
    return (yty[None] - 2.0 * beta @ Xty.T
            + np.einsum("sk,jkl,sl->sj", beta, XtX, beta, optimize=True))


def student_loglik(design: Design, beta: np.ndarray, b: np.ndarray, sigma: np.ndarray,
                   chunk: int = 250) -> np.ndarray:
    """Per-student log density given the school's effects, (S, n):

    log N(y_i | x_iβ + z_i b_j, σ²) = −½ [log 2πσ² + (y_i − x_iβ − z_i b_j)²/σ²]. Chunked over
    draws.
    """
    S = beta.shape[0]
    g, X, Z, y = design.group_index, design.X, design.Z, design.y
    ll = np.empty((S, design.n))
    for s0 in range(0, S, chunk):
        sl = slice(s0, min(S, s0 + chunk))
        r = y[None, :] - beta[sl] @ X.T  # (s, n): y − Xβ
        for k in range(design.q):
            r -= Z[None, :, k] * b[sl, :, k][:, g]
        s2 = sigma[sl, None] ** 2
        ll[sl] = -0.5 * (_LOG2PI + np.log(s2) + r * r / s2)
    return ll


def school_loglik(design: Design, cp: GroupCrossprods, beta: np.ndarray, L: np.ndarray,
                  sigma: np.ndarray) -> np.ndarray:
    """Per-school log density with the school's effects integrated out, (S, J)
    (:func:`twolevel.models.bayes.collapsed.school_marginal_loglik` with
    :func:`school_residual_ss`)."""
    rss0 = school_residual_ss(design, beta)
    return school_marginal_loglik(cp.A, cp.B, cp.c, rss0, design.group_sizes, beta, L, sigma)


LOG_LIKELIHOODS = ("both", "school", "none")


@dataclass(frozen=True, repr=False)
class BayesFit:
    """A finished NUTS fit and how it was obtained.

    Fields
    ------
    formula, design, priors, likelihood ("collapsed", "suffstat", "student"), n_centered
    (centred leading effects; 0 = non-centred), settings (:class:`SamplerSettings`), datatree
    (the posterior, log-likelihoods and sampler statistics), diagnostics (:class:`Diagnostics`),
    timings (seconds per stage), sampler (text).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> d = d[d.schid.isin(sorted(d.schid.unique())[:40])]
    >>> s = tl.SamplerSettings(chains=2, draws=100, tune=100, seed=1)
    >>> b = tl.fit_bayes("g1rscore ~ 1 + famsesc + (1 | schid)", d, settings=s, progress=False)
    >>> b  # doctest: +ELLIPSIS
    <BayesFit 'g1rscore ~ 1 + famsesc + (1 | schid)' likelihood=collapsed nobs=...
     draws=2x100 gate=...>
    """

    formula: str
    design: Design
    priors: ModelPriors
    likelihood: str
    n_centered: int
    settings: SamplerSettings
    datatree: object
    diagnostics: Diagnostics
    timings: dict[str, float] = field(default_factory=dict)
    sampler: str = ""

    @property
    def posterior(self) -> xr.Dataset:
        return self.datatree["posterior"].to_dataset()

    def draws(self, name: str, *dims: str) -> np.ndarray:
        """Draws of a posterior variable, (S, *dims), chains flattened."""
        return _draws(self.posterior[name], *dims)

    def to_frame(self, prob: float = 0.95) -> pd.DataFrame:
        """mean, sd, quantiles, ESS and R̂ of γ (``fixef:``), SDs (``sd:``), correlations
        (``corr:A:B``) and σ, indexed by those names."""
        post = self.posterior
        rows: dict[str, np.ndarray] = {}
        for k, nm in enumerate(post["fixed"].to_numpy()):
            rows[f"fixef:{nm}"] = post["beta"].isel(fixed=k).to_numpy()
        eff = [str(e) for e in post["effect"].to_numpy()]
        for k, nm in enumerate(eff):
            rows[f"sd:{nm}"] = post["sd"].isel(effect=k).to_numpy()
        if "corr" in post:
            for a in range(len(eff)):
                for b in range(a):
                    rows[f"corr:{eff[b]}:{eff[a]}"] = post["corr"].isel(
                        effect=a, effect_b=b).to_numpy()
        if "sigma" in post:
            rows["sigma"] = post["sigma"].to_numpy()
        names = list(rows)
        arr = np.stack([rows[n] for n in names], axis=-1)
        rhat, ess_b, ess_t = rhat_ess(arr)
        flat = arr.reshape(-1, arr.shape[-1])
        lo, hi = (1 - prob) / 2, (1 + prob) / 2
        return pd.DataFrame({
            "mean": flat.mean(0), "sd": flat.std(0, ddof=1),
            f"q{100 * lo:g}": np.quantile(flat, lo, axis=0),
            f"q{100 * hi:g}": np.quantile(flat, hi, axis=0),
            "ess_bulk": ess_b, "ess_tail": ess_t, "r_hat": rhat,
        }, index=pd.Index(names, name="parameter"))

    def __repr__(self) -> str:
        d = self.diagnostics
        return short_repr(type(self).__name__, [
            ("likelihood", self.likelihood), ("nobs", self.design.n),
            ("groups", f"{self.design.group}:{self.design.n_groups}"),
            ("draws", f"{self.settings.chains}x{self.settings.draws}"),
            ("gate", "passed" if d.passed else "FAILED")], self.formula)

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

    def summary(self) -> BayesSummary:
        """A printed summary: model, sampler, settings, diagnostics gate, posterior table.

        Returns
        -------
        BayesSummary
            A ``str`` (the printout) with ``.table`` (posterior table), ``.gate`` (the
            diagnostics) and ``.priors``.
        """
        s, d = self.settings, self.diagnostics
        table = self.to_frame()
        glmm = "/" in self.likelihood  # "binomial/logit", "poisson/log"
        integrated = glmm and "integrated out" in self.sampler
        lines = [
            f"Bayesian {'generalized ' if glmm else ''}linear mixed model fit by NUTS "
            f"({self.sampler})",
            f"Formula: {self.formula}",
            (f"Family: {self.likelihood.split('/')[0]} ({self.likelihood.split('/')[1]} link); "
             + ("school effects integrated out by adaptive quadrature" if integrated else
                "school effects sampled") if glmm else f"Likelihood: {self.likelihood}")
            + (" (school effects integrated out, drawn afterwards from their exact conditional)"
               if self.likelihood == "collapsed" else
               " (drawn afterwards from their exact conditional)" if integrated else
               f" ({self.n_centered} leading effect(s) centred, the rest non-centred)"),
            "Priors:\n  " + str(self.priors).replace("\n", "\n  "),
            f"Chains: {s.chains} x {s.draws} draws after {s.tune} tuning steps; seed {s.seed}; "
            f"target_accept {s.target_accept}",
            f"Diagnostics (all parameters incl. {self.design.n_groups} x {self.design.q} school "
            f"effects): divergences {d.divergences}, max R-hat {d.max_rhat:.4f}, min ESS bulk "
            f"{d.min_ess_bulk:.0f}, min ESS tail {d.min_ess_tail:.0f}, BFMI "
            + (", ".join(f"{b:.2f}" for b in d.bfmi) or "n/a"),
            "Gate: passed" if d.passed else "Gate: FAILED\n  " + "\n  ".join(d.problems),
            "",
            table.to_string(float_format=lambda v: f"{v:.4g}"),
        ]
        return BayesSummary("\n".join(lines), table=table, gate=d.to_frame(),
                            priors=self.priors, header=lines[:3])

    def posterior_json(self) -> dict[str, dict[str, float]]:
        """``{name: {mean, sd, q2.5, q97.5}}`` for the CLI's ``--json``."""
        f = self.to_frame()
        return {n: {"mean": float(r["mean"]), "sd": float(r["sd"]), "q2.5": float(r["q2.5"]),
                    "q97.5": float(r["q97.5"])} for n, r in f.iterrows()}

    def save(self, path, pointwise: bool = False) -> None:
        """Write the DataTree as NetCDF (reopen with ``xarray.open_datatree`` / ArviZ). The
        per-student log-likelihood (S × n doubles) is left out unless ``pointwise``."""
        dt = self.datatree.copy()
        for grp in ("sample_stats", "warmup_sample_stats"):
            if grp in dt:
                ds = dt[grp].to_dataset()
                drop = [v for v in ds.data_vars if ds[v].dtype == object]
                dt[grp] = xr.DataTree(ds.drop_vars(drop))
        if not pointwise and "log_likelihood" in dt:
            ds = dt["log_likelihood"].to_dataset()
            dt["log_likelihood"] = xr.DataTree(ds.drop_vars(self.design.response,
                                                            errors="ignore"))
        dt.attrs = {**dt.attrs, "twolevel_formula": self.formula,
                    "twolevel_likelihood": self.likelihood}
        dt.to_netcdf(path, engine="h5netcdf")


def fit_bayes(
    formula: str,
    data: pd.DataFrame,
    *,
    priors: ModelPriors | None = None,
    likelihood: str = "collapsed",
    centering: str | int | None = None,
    settings: SamplerSettings | None = None,
    progress: bool = True,
    log_likelihood: str = "both",
    family: str = "gaussian",
    link: str | None = None,
    weights=None,
    engine: str = "auto",
    memory_limit: str | None = None,
    scheduler=None,
    pv=None,
    sampler: str = "auto",
    nodes: int | None = None,
) -> BayesFit:
    """Fit ``formula`` (lme4 syntax, one grouping factor) by NUTS and run the diagnostic gate.

    Several nested grouping factors (``(1 | school/class)``, ``(1 + x | school) +
    (1 | school:class)``, …; normal outcomes, rows in a data frame):
    :func:`twolevel.models.bayes.fit_multi.fit_bayes_multi` — every level's effects integrated
    out by block elimination, drawn afterwards from their exact conditional — returning a
    :class:`~twolevel.models.bayes.fit_multi.MultiBayesFit` (``b_<factor>`` per factor).

    ``pv`` (plausible values: a list of response columns) or a list of imputed frames as
    ``data``: one fit per set, draws stacked (:mod:`twolevel.models.survey.bayes`).

    ``family="binomial"`` (links logit, probit, cloglog) or ``"poisson"`` (log) fits a binary or
    count outcome (:func:`twolevel.models.bayes.glmm_fit.fit_bayes_glmm`; ``likelihood`` does
    not apply). There ``sampler="auto"`` (default) integrates each school's effects out by
    adaptive Gauss–Hermite quadrature (``nodes`` per dimension) inside NUTS, which samples the
    fixed effects and the covariance factor only, and draws the school effects afterwards from
    their exact conditional, where that applies (logit/probit/cloglog binomial, log Poisson, 1–3
    effects, non-centred), and otherwise samples every school effect (non-centred unless
    ``centering`` says otherwise) with one warning saying why; ``"integrated"`` insists (an
    error where it does not apply), ``"full"`` samples every school effect.

    ``likelihood``/``centering``/``priors`` as in
    :func:`twolevel.models.bayes.pymc_model.build_model`
    (``centering`` only matters for the sampled school effects of "suffstat"/"student"; the
    collapsed model, sampled by :func:`twolevel.models.bayes.sampler.sample_collapsed`, records
    ``n_centered = 0``). A failed
    gate does not raise: it warns in plain words and is recorded in ``fit.diagnostics``.
    ``log_likelihood``: which pointwise log-likelihoods to store — ``"both"`` (per student, for
    PSIS-LOO, and per school, for leave-one-school-out), ``"school"`` (per school only: S × J
    instead of S × n numbers) or ``"none"``. ``engine``/``memory_limit``/``scheduler``: where
    the per-school statistics are computed (files or a dask collection as ``data``;
    :mod:`twolevel.models.bayes.scale`).

    Parameters
    ----------
    formula : str
        lme4 syntax, one grouping factor.
    data : DataFrame (or files / a dask.dataframe with ``engine``)
        The rows.
    priors : ModelPriors, optional
        Default :func:`default_priors`.
    settings : SamplerSettings, optional
        Chains, draws, tuning, seed.
    family, link, weights : as :func:`glmer` for binary and count outcomes.

    Returns
    -------
    BayesFit
        The posterior (``datatree``), the diagnostics gate and ``summary()``.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> d = d[d.schid.isin(sorted(d.schid.unique())[:40])]   # 40 schools, for speed
    >>> s = tl.SamplerSettings(chains=2, draws=100, tune=100, seed=1)
    >>> b = tl.fit_bayes("g1rscore ~ 1 + famsesc + (1 | schid)", d, settings=s, progress=False)
    >>> b.summary().splitlines()[0]
    'Bayesian linear mixed model fit by NUTS (nutpie...'
    """
    if pv is not None or (isinstance(data, (list, tuple)) and data
                          and all(isinstance(d, pd.DataFrame) for d in data)):
        from twolevel.models.survey.bayes import fit_bayes_sets

        return fit_bayes_sets(formula, data, pv=pv, priors=priors, likelihood=likelihood,
                              centering=centering, settings=settings, progress=progress,
                              log_likelihood=log_likelihood, family=family, link=link,
                              weights=weights)
    if isinstance(formula, str) and needs_multi(formula):  # several grouping factors
        return _fit_bayes_multi(formula, data, priors=priors, likelihood=likelihood,
                                settings=settings, progress=progress, family=family,
                                weights=weights, engine=engine)
    if family != "gaussian":
        from twolevel.models.bayes.glmm_fit import fit_bayes_glmm

        if engine not in ("auto", "memory") or not isinstance(data, pd.DataFrame):
            raise TwolevelError(f"family='{family}' is fitted from the rows of a data frame in "
                                "memory; engine='duckdb'/'dask' computes per-school statistics "
                                "for normal outcomes only: load the data with twolevel.load_data")

        return fit_bayes_glmm(formula, data, family, link, weights=weights, priors=priors,
                              centering="noncentered" if centering is None else centering,
                              settings=settings, progress=progress,
                              log_likelihood=log_likelihood, sampler=sampler, nodes=nodes)
    centering = "auto" if centering is None else centering
    if log_likelihood not in LOG_LIKELIHOODS:
        raise TwolevelError(f"log_likelihood {log_likelihood!r} is not one of "
                            f"{', '.join(LOG_LIKELIHOODS)}; use one of those")
    settings = settings or SamplerSettings()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # engine-aware statistics (scale path: twolevel.models.bayes.scale)
    design, cp = bayes_statistics(formula, data, engine, memory_limit, scheduler)
    log_likelihood = scale_log_likelihood(design, likelihood, log_likelihood)
    sample_kw = dict(draws=settings.draws, tune=settings.tune, chains=settings.chains,
                     cores=settings.cores, seed=settings.seed,
                     target_accept=settings.target_accept, adaptation=settings.adaptation,
                     progress=progress)
    if likelihood == "collapsed":
        # compiled kernels (no PyMC/PyTensor): the same density as build_model's collapsed model
        from twolevel.models.bayes.sampler import kernel_description, sample_collapsed

        timings["build"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        dt, used_priors = sample_collapsed(design, cp, priors, **sample_kw)
        n_centered = 0
        sampler = kernel_description()
    else:
        from twolevel.models.bayes.pymc_model import build_model, sample_nuts

        built = build_model(design, priors, likelihood=likelihood, centering=centering,
                            crossprods=cp)
        timings["build"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        dt = sample_nuts(built, **sample_kw)
        used_priors, n_centered = built.priors, built.n_centered
        sampler = "nutpie, PyMC model compiled by PyTensor/Numba"
    timings["compile+sample"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    post = _with_school_effects(dt["posterior"].to_dataset(), design, cp, settings.seed)
    dt["posterior"] = xr.DataTree(post)
    if summarise_school_effects(design):  # many schools at scale: mean and SD only
        dt["school_effects"] = xr.DataTree(school_effects_dataset(*school_effect_summary(
            cp.A, cp.B, cp.c, _draws(post["beta"], "fixed"), cholesky_draws(post, design.q),
            _draws(post["sigma"])), design))
    timings["school effects"] = time.perf_counter() - t2
    # the diagnostics and the log-likelihoods (NumPy, which releases the GIL) side by side
    t3 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut_diag = pool.submit(diagnose, xr.DataTree.from_dict(
            {"posterior": post, "sample_stats": dt["sample_stats"].to_dataset()}))
        if log_likelihood != "none":
            dt["log_likelihood"] = xr.DataTree(
                _log_likelihoods(post, design, cp, per_student=log_likelihood == "both"))
        diag = fut_diag.result()
    timings["log-likelihood + diagnostics"] = time.perf_counter() - t3
    for p in diag.problems:
        warnings.warn(f"NUTS fit of '{formula}': {p}", RuntimeWarning, stacklevel=2)
    return BayesFit(
        formula=formula, design=design, priors=used_priors, likelihood=likelihood,
        n_centered=n_centered, settings=settings, datatree=dt, diagnostics=diag,
        timings=timings, sampler=sampler,
    )


def _fit_bayes_multi(formula: str, data, *, priors, likelihood: str, settings, progress: bool,
                     family: str, weights, engine: str):
    """:func:`fit_bayes` with several (nested) grouping factors:
    :func:`twolevel.models.bayes.fit_multi.fit_bayes_multi` (Gaussian, rows in memory)."""
    from twolevel.models.bayes.fit_multi import fit_bayes_multi

    if family != "gaussian" or weights is not None or engine not in ("auto", "memory"):
        raise TwolevelError(
            f"fit_bayes with several grouping factors ('{formula}') fits normal outcomes without "
            "weights from a data frame in memory; drop family=/weights=/engine=, or fit "
            "twolevel.glmer / twolevel.lmer for the other cases")
    return fit_bayes_multi(formula, data, priors=priors, settings=settings, progress=progress,
                           likelihood=likelihood)


def _with_school_effects(post: xr.Dataset, design: Design, cp: GroupCrossprods,
                         seed: int) -> xr.Dataset:
    """The posterior with ``b_school`` [school, effect]: drawn from the exact conditional
    (:func:`twolevel.models.bayes.collapsed.draw_school_effects`, seeded by ``[seed, 1]``) when the
    model
    integrated them out; school and effect coordinates named after the data."""
    if summarise_school_effects(design):
        return post.assign_coords(effect=list(design.z_names))
    if "b_school" not in post:
        L = cholesky_draws(post, design.q)
        beta, sigma = _draws(post["beta"], "fixed"), _draws(post["sigma"])
        b = draw_school_effects(cp.A, cp.B, cp.c, beta, L, sigma,
                                np.random.default_rng([seed, 1]))
        C, D = post.sizes["chain"], post.sizes["draw"]
        post["b_school"] = (("chain", "draw", "school", "effect"), b.reshape(C, D, *b.shape[1:]))
    return post.assign_coords(school=[str(s) for s in design.group_levels],
                              effect=list(design.z_names))


def _log_likelihoods(post: xr.Dataset, design: Design, cp: GroupCrossprods,
                     per_student: bool) -> xr.Dataset:
    """The ``log_likelihood`` group: ``<response>_by_school`` [school] (:func:`school_loglik`)
    and, if ``per_student``, ``<response>`` [obs] (:func:`student_loglik`)."""
    C, D = post.sizes["chain"], post.sizes["draw"]
    beta, sigma = _draws(post["beta"], "fixed"), _draws(post["sigma"])
    ll = {}
    if per_student:
        b = _draws(post["b_school"], "school", "effect")
        ll[design.response] = (("chain", "draw", "obs"),
                               student_loglik(design, beta, b, sigma).reshape(C, D, -1))
    ll[f"{design.response}_by_school"] = (
        ("chain", "draw", "school"),
        school_loglik(design, cp, beta, cholesky_draws(post, design.q), sigma).reshape(C, D, -1))
    return xr.Dataset(ll, coords={"school": [str(s) for s in design.group_levels]})


def posterior_predictive(fit: BayesFit, n_draws: int, seed: int) -> np.ndarray:
    """Replicated outcomes y_rep (n_draws, n) from ``n_draws`` posterior draws (evenly spaced):
    y_rep = Xβ + Z b_j + σ ε, the school effects of the same draw.

    Parameters
    ----------
    fit : BayesFit
    n_draws : int
        Number of posterior draws used.
    seed : int
        Random seed of ε.

    Returns
    -------
    numpy.ndarray
        (n_draws, n) replicated outcomes.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> d = d[d.schid.isin(sorted(d.schid.unique())[:40])]   # 40 schools, for speed
    >>> s = tl.SamplerSettings(chains=2, draws=100, tune=100, seed=1)
    >>> b = tl.fit_bayes("g1rscore ~ 1 + famsesc + (1 | schid)", d, settings=s, progress=False)
    >>> tl.posterior_predictive(b, 10, seed=1).shape == (10, len(d))
    True
    """
    d = fit.design
    beta, sigma = fit.draws("beta", "fixed"), fit.draws("sigma")
    b = fit.draws("b_school", "school", "effect")
    idx = np.linspace(0, beta.shape[0] - 1, n_draws).astype(int)
    rng = np.random.default_rng(seed)
    mu = beta[idx] @ d.X.T + np.einsum("nq,snq->sn", d.Z, b[idx][:, d.group_index, :])
    return mu + sigma[idx, None] * rng.standard_normal(mu.shape)


def prior_predictive(design: Design, priors: ModelPriors | None, n_draws: int, seed: int,
                     likelihood: str = "collapsed") -> dict[str, np.ndarray]:
    """Draws from the prior: ``beta`` (S, p), ``sigma`` (S,), ``L`` (S, q, q), ``b`` (S, J, q)
    and ``y`` (S, n) = Xβ + Z b_j + σ ε (PyMC draws the hyperparameters).

    Parameters
    ----------
    design : Design
    priors : ModelPriors or None
        None for :func:`default_priors`.
    n_draws : int
    seed : int
    likelihood : str
        As :func:`fit_bayes`.

    Returns
    -------
    dict of numpy.ndarray
        ``beta``, ``sigma``, ``L``, ``b`` and ``y`` draws.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("sleepstudy")
    >>> design = tl.make_design("Reaction ~ Days + (1 | Subject)", d)
    >>> draws = tl.prior_predictive(design, None, n_draws=5, seed=1)
    >>> draws["y"].shape, draws["b"].shape
    ((5, 180), (5, 18, 1))
    """
    from twolevel.models.bayes.pymc_model import build_model, prior_draws

    built = build_model(design, priors, likelihood=likelihood)
    h = prior_draws(built, n_draws, seed)
    rng = np.random.default_rng([seed, 2])
    w = rng.standard_normal((n_draws, design.n_groups, design.q))
    b = np.einsum("skl,sjl->sjk", h["L"], w)
    mu = h["beta"] @ design.X.T + np.einsum("nq,snq->sn", design.Z, b[:, design.group_index, :])
    y = mu + h["sigma"][:, None] * rng.standard_normal(mu.shape)
    return {**h, "b": b, "y": y}

