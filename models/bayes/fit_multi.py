"""Bayesian fit of a nested design with several grouping factors: design → collapsed PyMC model
→ NUTS → every level's effects drawn from their exact conditional → frozen
:class:`MultiBayesFit`.

``fit_bayes("y ~ x + (1 | school/class)", data)`` (and slopes at any level,
``(1 + x | school) + (1 | school:class)``) lands here (:func:`twolevel.models.bayes.fit.
fit_bayes` dispatches formulas with several grouping factors). The sampled model is the collapsed
likelihood of :mod:`twolevel.models.bayes.collapsed_multi` — every level integrated out by block
elimination — as a PyTensor graph (:func:`twolevel.models.bayes.pymc_multi.build_multi_model`)
run by nutpie; NUTS samples only β, σ and each factor's SDs and LKJ factor, so the posterior has
no funnel and a gradient costs O(classes + schools), independent of the number of students. The
effects of every level are then drawn per draw in reverse elimination order
(:func:`twolevel.models.bayes.collapsed_multi.draw_nested_effects`): the same joint posterior
as the non-centred model (``build_multi_model(likelihood="noncentered")``).

Stored in the DataTree: ``posterior`` with ``beta`` [fixed], ``sigma``; per factor F (lme4's
name: ``school``, ``class:school``) ``sd_F`` [effect_F], ``corr_F`` [effect_F, effect_F_b]
(correlated factors), ``chol_cov_F`` (packed factor) and ``b_F`` [F, effect_F]; ``sample_stats``
(nutpie's) and the ``warmup_*`` groups. Pointwise log-likelihoods (LOO) are not stored for
several factors.

This module does not import PyMC at import time (the builder is imported when a fit runs).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from twolevel.data.errors import TwolevelError
from twolevel.models.bayes.collapsed_multi import (
    NestedCrossprods,
    draw_nested_effects,
    nested_crossprods,
)
from twolevel.models.bayes.diagnostics import rhat_ess
from twolevel.models.bayes.gate import Diagnostics, SamplerSettings, _flat_params, diagnose
from twolevel.models.bayes.multi_priors import MultiPriors
from twolevel.models.design.multi import MultiDesign, make_multi_design
from twolevel.models.fit_base import BayesSummary, short_repr

__all__ = ["MultiBayesFit", "factor_cholesky_draws", "fit_bayes_multi", "flat_params_multi"]


def _draws(da: xr.DataArray, *dims: str) -> np.ndarray:
    return da.transpose("chain", "draw", *dims).to_numpy().reshape(-1, *[da.sizes[d] for d in dims])


def factor_cholesky_draws(post: xr.Dataset, name: str, q: int) -> np.ndarray:
    """Σ_F = LLᵀ factor per draw, (S, q, q): from ``chol_cov_F`` (LKJCholeskyCov's packed lower
    triangle, row-major) or L = diag(sd_F) for independent effects."""
    key = f"chol_cov_{name}"
    if key in post:
        packed = _draws(post[key], post[key].dims[-1])
        L = np.zeros((packed.shape[0], q, q))
        L[:, *np.tril_indices(q)] = packed
        return L
    sd = _draws(post[f"sd_{name}"], f"effect_{name}")
    return sd[:, :, None] * np.eye(q)[None]


def flat_params_multi(post: xr.Dataset, design: MultiDesign) -> dict[str, np.ndarray]:
    """Every scalar parameter as (chain, draw) arrays: ``beta[x]``, ``sigma``, ``sd_F[e]``,
    ``corr_F[a,b]`` (below the diagonal), ``b_F[level,e]`` — what the gate checks."""
    names = ["beta", "sigma"]
    for f in design.factors:
        names += [f"sd_{f.name}", f"corr_{f.name}", f"b_{f.name}"]
    return _flat_params(post, names)


@dataclass(frozen=True, repr=False)
class MultiBayesFit:
    """A finished NUTS fit of a nested design with several grouping factors.

    Fields
    ------
    formula, design (:class:`MultiDesign`), priors (:class:`MultiPriors`), likelihood
    ("collapsed"), structures ("lkj"/"diag" per factor), settings, datatree, diagnostics
    (:class:`Diagnostics`, over every parameter incl. every level's effects), timings, sampler.

    Examples
    --------
    >>> b = tl.fit_bayes("y ~ x + (1 | school/class)", data)   # doctest: +SKIP
    >>> b.variance_components()                                 # doctest: +SKIP
    """

    formula: str
    design: MultiDesign
    priors: MultiPriors
    likelihood: str
    structures: tuple[str, ...]
    settings: SamplerSettings
    datatree: object
    diagnostics: Diagnostics
    timings: dict[str, float] = field(default_factory=dict)
    sampler: str = ""

    @property
    def posterior(self) -> xr.Dataset:
        return self.datatree["posterior"].to_dataset()

    @property
    def factor_names(self) -> tuple[str, ...]:
        """lme4's names of the grouping factors, innermost first."""
        return tuple(f.name for f in self.design.factors)

    def draws(self, name: str, *dims: str) -> np.ndarray:
        """Draws of a posterior variable, (S, *dims), chains flattened."""
        return _draws(self.posterior[name], *dims)

    def _rows(self) -> dict[str, np.ndarray]:
        post = self.posterior
        rows: dict[str, np.ndarray] = {}
        for k, nm in enumerate(post["fixed"].to_numpy()):
            rows[f"fixef:{nm}"] = post["beta"].isel(fixed=k).to_numpy()
        for f in self.design.factors:
            F = f.name
            for k, nm in enumerate(f.z_names):
                rows[f"sd:{F}:{nm}"] = post[f"sd_{F}"].isel({f"effect_{F}": k}).to_numpy()
            if f"corr_{F}" in post:
                for a in range(f.q):
                    for b in range(a):
                        rows[f"corr:{F}:{f.z_names[b]}:{f.z_names[a]}"] = post[f"corr_{F}"].isel(
                            {f"effect_{F}": a, f"effect_{F}_b": b}).to_numpy()
        rows["sigma"] = post["sigma"].to_numpy()
        return rows

    @staticmethod
    def _table(rows: dict[str, np.ndarray], prob: float, index_name: str) -> pd.DataFrame:
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
        }, index=pd.Index(names, name=index_name))

    def to_frame(self, prob: float = 0.95) -> pd.DataFrame:
        """mean, sd, quantiles, ESS and R̂ of the fixed effects (``fixef:``), each factor's SDs
        (``sd:F:effect``) and correlations (``corr:F:A:B``), and σ."""
        return self._table(self._rows(), prob, "parameter")

    def variance_components(self, prob: float = 0.95) -> pd.DataFrame:
        """Posterior of the variances per level: ``F:effect`` (sd²) for every factor and
        ``Residual`` (σ²), the Bayesian counterpart of lme4's ``VarCorr`` variances."""
        post = self.posterior
        rows: dict[str, np.ndarray] = {}
        for f in self.design.factors:
            for k, nm in enumerate(f.z_names):
                rows[f"{f.name}:{nm}"] = post[f"sd_{f.name}"].isel(
                    {f"effect_{f.name}": k}).to_numpy() ** 2
        rows["Residual"] = post["sigma"].to_numpy() ** 2
        return self._table(rows, prob, "component")

    def ranef(self, factor: str) -> pd.DataFrame:
        """Posterior mean, SD and 95% interval of ``factor``'s effects per level (long:
        ``level``, ``effect``, ``mean``, ``sd``, ``q2.5``, ``q97.5``, ``size`` = rows of the group)
        — what caterpillar and shrinkage plots draw.

        Raises
        ------
        TwolevelError
            An unknown factor name.
        """
        if factor not in self.factor_names:
            raise TwolevelError(f"'{factor}' is not a grouping factor of '{self.formula}'; "
                                f"use one of {', '.join(self.factor_names)}")
        f = self.design.factors[self.factor_names.index(factor)]
        b = self.draws(f"b_{factor}", factor, f"effect_{factor}")
        levels = [str(v) for v in f.levels]
        return pd.DataFrame({
            "level": np.repeat(levels, f.q), "effect": np.tile(list(f.z_names), len(levels)),
            "mean": b.mean(0).ravel(), "sd": b.std(0, ddof=1).ravel(),
            "q2.5": np.quantile(b, 0.025, axis=0).ravel(),
            "q97.5": np.quantile(b, 0.975, axis=0).ravel(),
            "size": np.repeat(np.bincount(f.codes, minlength=f.n_levels), f.q)})

    def shrinkage_table(self, factor: str) -> pd.DataFrame:
        """Per level of ``factor``: its intercept without pooling and with it. ``raw`` is the
        mean over the group's rows of y − Xβ̄ − Σ_outer z b̄_outer (the posterior-mean fixed part
        and outer levels' effects removed), ``posterior`` the posterior mean of the group's
        intercept, ``size`` its rows; partial pooling pulls ``posterior`` towards 0 the more the
        smaller the group.

        Raises
        ------
        TwolevelError
            An unknown factor, or a factor without a random intercept.
        """
        if factor not in self.factor_names:
            raise TwolevelError(f"'{factor}' is not a grouping factor of '{self.formula}'; "
                                f"use one of {', '.join(self.factor_names)}")
        k = self.factor_names.index(factor)
        f = self.design.factors[k]
        if "(Intercept)" not in f.z_names:
            raise TwolevelError(f"'{factor}' has no random intercept in '{self.formula}'; the "
                                "shrinkage table compares group intercepts")
        d = self.design
        r = d.y - d.X @ self.draws("beta", "fixed").mean(0)
        for g in self.design.factors[k + 1:]:
            b = self.draws(f"b_{g.name}", g.name, f"effect_{g.name}").mean(0)
            r = r - (g.Z * b[g.codes]).sum(1)
        size = np.bincount(f.codes, minlength=f.n_levels)
        raw = np.bincount(f.codes, weights=r, minlength=f.n_levels) / size
        post = self.draws(f"b_{factor}", factor, f"effect_{factor}").mean(0)
        return pd.DataFrame({"level": [str(v) for v in f.levels], "raw": raw,
                             "posterior": post[:, f.z_names.index("(Intercept)")],
                             "size": size})

    def __repr__(self) -> str:
        d = self.diagnostics
        return short_repr(type(self).__name__, [
            ("likelihood", self.likelihood), ("nobs", self.design.n),
            ("groups", ", ".join(f"{f.name}:{f.n_levels}" for f in self.design.factors)),
            ("draws", f"{self.settings.chains}x{self.settings.draws}"),
            ("gate", "passed" if d.passed else "FAILED")], self.formula)

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

    def summary(self) -> BayesSummary:
        """A printed summary: model, sampler, settings, diagnostics gate, posterior table.

        Returns
        -------
        BayesSummary
            ``str`` with ``.table``, ``.gate`` and ``.priors``.
        """
        s, d = self.settings, self.diagnostics
        table = self.to_frame()
        groups = ", ".join(f"{f.name} {f.n_levels}" for f in self.design.factors)
        lines = [
            f"Bayesian linear mixed model fit by NUTS ({self.sampler})",
            f"Formula: {self.formula}",
            f"Likelihood: {self.likelihood} (every level's effects integrated out, drawn "
            "afterwards from their exact conditional)",
            f"Number of obs: {self.design.n}, groups: {groups}",
            "Priors:\n  " + str(self.priors).replace("\n", "\n  "),
            f"Chains: {s.chains} x {s.draws} draws after {s.tune} tuning steps; seed {s.seed}; "
            f"target_accept {s.target_accept}",
            f"Diagnostics (all parameters incl. every level's effects): divergences "
            f"{d.divergences}, max R-hat {d.max_rhat:.4f}, min ESS bulk {d.min_ess_bulk:.0f}, "
            f"min ESS tail {d.min_ess_tail:.0f}, BFMI "
            + (", ".join(f"{b:.2f}" for b in d.bfmi) or "n/a"),
            "Gate: passed" if d.passed else "Gate: FAILED\n  " + "\n  ".join(d.problems),
            "",
            table.to_string(float_format=lambda v: f"{v:.4g}"),
        ]
        return BayesSummary("\n".join(lines), table=table, gate=d.to_frame(),
                            priors=self.priors, header=lines[:3])

    def save(self, path) -> None:
        """Write the DataTree as NetCDF (reopen with ``xarray.open_datatree``); sampler
        statistics of object dtype are left out, as :meth:`BayesFit.save` does."""
        dt = self.datatree.copy()
        for grp in ("sample_stats", "warmup_sample_stats"):
            if grp in dt:
                ds = dt[grp].to_dataset()
                drop = [v for v in ds.data_vars if ds[v].dtype == object]
                dt[grp] = xr.DataTree(ds.drop_vars(drop))
        dt.attrs = {**dt.attrs, "twolevel_formula": self.formula,
                    "twolevel_likelihood": self.likelihood}
        dt.to_netcdf(path, engine="h5netcdf")

    def posterior_json(self) -> dict[str, dict[str, float]]:
        """``{name: {mean, sd, q2.5, q97.5}}`` for the CLI's ``--json``."""
        f = self.to_frame()
        return {n: {"mean": float(r["mean"]), "sd": float(r["sd"]), "q2.5": float(r["q2.5"]),
                    "q97.5": float(r["q97.5"])} for n, r in f.iterrows()}


def with_effects(post: xr.Dataset, design: MultiDesign, cp: NestedCrossprods,
                 seed: int) -> xr.Dataset:
    """The posterior with ``b_F`` [F, effect_F] for every factor, drawn from the exact
    conditional given each draw (seeded by ``[seed, 1]``)."""
    Ls = [factor_cholesky_draws(post, f.name, f.q) for f in design.factors]
    beta, sigma = _draws(post["beta"], "fixed"), _draws(post["sigma"])
    bs = draw_nested_effects(cp, beta, Ls, sigma, np.random.default_rng([seed, 1]))
    C, D = post.sizes["chain"], post.sizes["draw"]
    for f, b in zip(design.factors, bs, strict=True):
        post[f"b_{f.name}"] = (("chain", "draw", f.name, f"effect_{f.name}"),
                               b.reshape(C, D, *b.shape[1:]))
        post = post.assign_coords({f.name: [str(v) for v in f.levels],
                                   f"effect_{f.name}": list(f.z_names)})
    return post


def fit_bayes_multi(formula: str, data: pd.DataFrame, *, priors: MultiPriors | None = None,
                    settings: SamplerSettings | None = None, progress: bool = True,
                    likelihood: str = "collapsed") -> MultiBayesFit:
    """NUTS on a nested design with several grouping factors (module docstring).

    Parameters
    ----------
    formula : str
        lme4 syntax with nested factors: ``(1 | school/class)``, ``(1 + x | school) +
        (1 | school:class)``, …
    data : DataFrame
        The rows.
    priors : MultiPriors, optional
        Default :func:`~twolevel.models.bayes.multi_priors.default_multi_priors`.
    settings : SamplerSettings, optional
    progress : bool
    likelihood : "collapsed" (default) or "noncentered" (the reference PyMC model with every
        effect sampled, O(n) per gradient).

    Returns
    -------
    MultiBayesFit

    Raises
    ------
    TwolevelError
        Factors that are not nested, data not in a data frame, unknown likelihood.

    Examples
    --------
    >>> b = fit_bayes_multi("y ~ x + (1 | school/class)", data)   # doctest: +SKIP
    """
    from twolevel.models.bayes.pymc_model import sample_nuts
    from twolevel.models.bayes.pymc_multi import build_multi_model

    if not isinstance(data, pd.DataFrame):
        raise TwolevelError(f"fit_bayes with several grouping factors ('{formula}') takes the "
                            "rows as a pandas DataFrame; load the data with twolevel.load_data")
    settings = settings or SamplerSettings()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    design = make_multi_design(formula, data)
    for note in design.notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    cp = nested_crossprods(design)
    built = build_multi_model(design, priors, likelihood=likelihood, crossprods=cp)
    timings["build"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    dt = sample_nuts(built, draws=settings.draws, tune=settings.tune, chains=settings.chains,
                     cores=settings.cores, seed=settings.seed,
                     target_accept=settings.target_accept, progress=progress,
                     adaptation=settings.adaptation)
    timings["compile+sample"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    post = dt["posterior"].to_dataset()
    if likelihood == "collapsed":
        post = with_effects(post, design, cp, settings.seed)
    dt["posterior"] = xr.DataTree(post)
    timings["effects"] = time.perf_counter() - t2
    diag = diagnose(xr.DataTree.from_dict({"posterior": post,
                                           "sample_stats": dt["sample_stats"].to_dataset()}),
                    params=flat_params_multi(post, design))
    for p in diag.problems:
        warnings.warn(f"NUTS fit of '{formula}': {p}", RuntimeWarning, stacklevel=3)
    return MultiBayesFit(formula=formula, design=design, priors=built.priors,
                         likelihood=likelihood, structures=built.structures, settings=settings,
                         datatree=dt, diagnostics=diag, timings=timings,
                         sampler="nutpie, collapsed PyMC model compiled by PyTensor/Numba"
                         if likelihood == "collapsed" else "nutpie, non-centred PyMC model")
