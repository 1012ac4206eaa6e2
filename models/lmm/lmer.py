"""``lmer(formula, data)``: design → profiled deviance → optimizer → frozen result (lme4's stages).

>>> fit = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)   # doctest: +SKIP
>>> print(fit.summary())                                            # doctest: +SKIP

The default optimizer reproduces lme4's own optimizer path (NLopt BOBYQA with lme4's settings,
restart_edge, check.boundary), so the printed numbers are lme4's; ``optimizer="tight"`` polishes
the optimum further (see :mod:`twolevel.models.lmm.optimize`).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.design import Design, GroupCrossprods, group_crossprods, make_design
from twolevel.models.design.multi import needs_multi
from twolevel.models.design.sources import ScaleDesign, choose_engine, crossprods_from
from twolevel.models.fit_base import has_several_factors
from twolevel.models.lmm.deviance import criterion, deviance_gradient, make_deviance, pls_state
from twolevel.models.lmm.optimize import MODES, optimize_theta, refit_ml_theta
from twolevel.models.lmm.results import LmerFit

__all__ = ["lmer", "fit_design", "refit_ml", "check_random_slopes"]


def check_random_slopes(design: Design, cp: GroupCrossprods) -> None:
    """Refuse a random slope whose variable is constant within every group when the same term
    has a random intercept: its group-to-group variation is the intercept's, so its variance
    cannot be estimated (a level-2 variable, e.g. a school's size, has no within-school slope)."""
    names = design.z_names
    for term in design.terms:
        if "(Intercept)" not in term.names:
            continue
        i0 = term.columns[term.names.index("(Intercept)")]
        nj = cp.A[:, i0, i0]
        for nm, k in zip(term.names, term.columns, strict=True):
            if k == i0:
                continue
            mean = cp.A[:, i0, k] / nj
            within = cp.A[:, k, k] - nj * mean**2  # Σ_i (z_ik − z̄_jk)² per group
            scale = float(np.sum(cp.A[:, k, k])) or 1.0
            if np.all(within <= 1e-10 * scale):
                raise FormulaError(
                    f"random slope '{names[k]}' in '({' + '.join(term.names)} | {design.group})' "
                    f"is constant within every '{design.group}' group: a group-level variable has "
                    f"no within-group slope that could vary; keep '{nm}' as a fixed effect and "
                    f"remove it from the random-effects term"
                )


def fit_design(
    design: Design,
    REML: bool = True,
    optimizer: str = "lme4",
    data_name: str = "data",
    crossprods: GroupCrossprods | None = None,
) -> LmerFit:
    """Fit a model whose :class:`~twolevel.models.design.Design` is already built (lme4's
    ``mkLmerDevfun`` → ``optimizeLmer`` → ``mkMerMod``)."""
    if optimizer not in MODES:
        raise TwolevelError(
            f"unknown optimizer '{optimizer}'; choose 'lme4' (lme4's exact path, default) or "
            "'tight' (lme4's path then a gradient polish)"
        )
    cp = crossprods if crossprods is not None else group_crossprods(design)
    check_random_slopes(design, cp)
    fn = make_deviance(design, reml=REML, crossprods=cp)
    start = design.theta_start(cp) if isinstance(design, ScaleDesign) else design.theta_start()
    opt = optimize_theta(
        fn, start, design.theta_lower, mode=optimizer,
        gradient=lambda th: deviance_gradient(design, cp, th, REML),
    )
    state = pls_state(cp, design.theta_to_T(opt.theta))
    assert abs(criterion(state, REML) - opt.fmin) <= 1e-9 * max(1.0, abs(opt.fmin))
    return LmerFit(
        design=design, crossprods=cp, reml=REML, theta=np.asarray(opt.theta, dtype=float),
        state=state, optsum=opt, data_name=data_name,
    )


def lmer(
    formula: str,
    data: pd.DataFrame,
    REML: bool = True,
    optimizer: str = "lme4",
    data_name: str = "data",
    engine: str = "auto",
    memory_limit: str | None = None,
    threads: int | None = None,
    scheduler=None,
    progress: bool = False,
    per_group_x: bool = False,
    weights=None,
    conditional_weights: bool = False,
    weight_scaling: str = "none",
    pv=None,
    df_com: float | None = None,
):
    """Fit a two-level linear mixed model by REML (default) or ML, like ``lme4::lmer``.

    Parameters
    ----------
    formula : lme4 formula, e.g. ``"y ~ 1 + x*w + (1 + x | school)"``; ``(1 + x || g)`` for
        uncorrelated effects. With several grouping factors (``(1 | school/class)``,
        ``(1 | a) + (1 | b)``) the fit is a :class:`~twolevel.models.lmm.multi_results.MultiFit`
        (:func:`twolevel.models.lmm.multi.lmer_multi`; in memory only).
    data : a data frame with the columns of the formula; or (engines duckdb/dask) a Parquet/CSV
        path, glob, directory or list of files, or a ``dask.dataframe``.
    REML : REML (True) or maximum likelihood (False).
    optimizer : "lme4" (lme4's exact optimizer path; default) or "tight".
    data_name : the name printed in ``summary()``'s "Data:" line.
    engine : where the per-school statistics are computed: "memory" (NumPy, the rows in memory),
        "duckdb" (SQL over files, bounded memory), "dask" (tasks on a cluster), or "auto"
        (memory for a frame, duckdb for files, dask for a dask collection or a scheduler); see
        :mod:`twolevel.models.design.sources`. The fit is the same; at scale, per-student
        quantities (``fitted``, ``residuals``) are refused with a message.
    memory_limit, threads : DuckDB's limits (e.g. "4GB").  scheduler : a ``distributed``
        address or ``Client`` (dask).  progress : DuckDB's progress bar.  per_group_x : also
        aggregate X_jᵀX_j, X_jᵀy_j per school (HLM statistics at scale need them).
    weights : (level-1 column, level-2 column) sampling weights: a pseudo-maximum-likelihood
        fit with robust SEs (needs ``REML=False``); see :mod:`twolevel.models.survey`.
    conditional_weights, weight_scaling : level-1 weights conditional on the school (Stata) or
        unconditional (WeMix, default); scaling "none", "size" or "effective".
    pv : plausible values: a list of response columns (or {variable: [columns]}); each set is
        fitted and the fixed effects pooled by Rubin's rules. A list of data frames as ``data``
        (imputed data sets) is pooled the same way.  df_com : Rubin's complete-data df
        (default nobs − p).

    Returns
    -------
    LmerFit
        (a ``WeightedLmerFit`` with weights, a ``PooledFit`` with pv or a list of data sets)
        With ``fixef``, ``vcov``, ``VarCorr``, ``ranef``, ``coef``, ``summary`` and the rest of
        lme4's vocabulary.

    Warns
    -----
    UserWarning
        For lme4's messages: rank-deficient fixed effects dropped, rows with missing values
        removed, singular fit, non-convergence.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", d)
    >>> fit.fixef().round(2).to_dict()
    {'(Intercept)': 94.92, 'famsesc': 7.65}
    """
    if weights is not None or pv is not None or isinstance(data, (list, tuple)) and data and all(
            isinstance(d, pd.DataFrame) for d in data):
        from twolevel.models.survey.api import survey_lmer

        return survey_lmer(formula, data, REML=REML, weights=weights,
                           conditional_weights=conditional_weights,
                           weight_scaling=weight_scaling, pv=pv, df_com=df_com,
                           optimizer=optimizer, data_name=data_name, engine=engine,
                           memory_limit=memory_limit, scheduler=scheduler)
    if needs_multi(formula):
        return _lmer_several(formula, data, REML, optimizer, data_name, engine, scheduler,
                             memory_limit=memory_limit, threads=threads, progress=progress)
    cp = None
    if _route_to_duckdb(data, engine, scheduler, per_group_x):
        design, cp = _duckdb_for_frame(formula, data, memory_limit, threads, progress)
    elif choose_engine(data, engine, scheduler) == "memory" and isinstance(data, pd.DataFrame):
        design = make_design(formula, data)
    else:
        design, cp = crossprods_from(formula, data, engine, memory_limit=memory_limit,
                                     threads=threads, scheduler=scheduler, progress=progress,
                                     per_group_x=per_group_x)
        if data_name == "data" and isinstance(design, ScaleDesign):
            data_name = design.source
    for note in design.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    fit = fit_design(design, REML=REML, optimizer=optimizer, data_name=data_name, crossprods=cp)
    if fit.is_singular():
        warnings.warn(fit.singular_explanation(), UserWarning, stacklevel=2)
    if not fit.converged:
        warnings.warn(
            f"optimizer did not converge ({fit.optsum.status_message})", UserWarning, stacklevel=2
        )
    return fit


AUTO_DUCKDB_ROWS = 2_000_000  # a pandas frame this long is summed by DuckDB by default


def _route_to_duckdb(data, engine: str, scheduler, per_group_x: bool) -> bool:
    """``engine="auto"`` on a pandas frame of at least :data:`AUTO_DUCKDB_ROWS` rows, with DuckDB
    installed (the ``scale`` extra): the statistics come from DuckDB, which reads the frame's
    columns in place and never builds the model matrices (at 5 million rows the in-memory design
    takes ~2× the time and ~0.5 GB more; benchmarks/large_frame.py). The rows stay available: the
    design builds them from the frame when a per-student quantity is asked
    (:attr:`~twolevel.models.design.scale_design.ScaleDesign.rows_design`)."""
    if engine != "auto" or scheduler is not None or per_group_x:
        return False
    if not isinstance(data, pd.DataFrame) or len(data) < AUTO_DUCKDB_ROWS:
        return False
    import importlib.util

    return importlib.util.find_spec("duckdb") is not None


def _duckdb_for_frame(formula, data, memory_limit, threads, progress):
    """(design, cross-products) of a large frame from DuckDB, the frame kept for the rows; the
    in-memory design when DuckDB cannot take the formula (its errors, if any, are the user's)."""
    try:
        design, cp = crossprods_from(formula, data, "duckdb", memory_limit=memory_limit,
                                     threads=threads, progress=progress)
    except TwolevelError:
        return make_design(formula, data), None
    return dataclasses.replace(design, frame=data), cp


def _lmer_several(formula, data, REML, optimizer, data_name, engine, scheduler,
                  memory_limit=None, threads=None, progress=False):
    """Several grouping factors (or an interaction factor): in memory
    (:func:`twolevel.models.lmm.multi.lmer_multi`), or nested designs from DuckDB/Dask
    (:func:`twolevel.models.lmm.multi_scale.lmer_multi_scale`)."""
    from twolevel.models.lmm.multi import lmer_multi

    chosen = choose_engine(data, engine, scheduler)
    if chosen == "memory" and not isinstance(data, pd.DataFrame):
        from twolevel.models.design.duckdb_source import read_all

        data = read_all(data)
    if chosen != "memory":
        from twolevel.models.lmm.multi_scale import lmer_multi_scale

        return lmer_multi_scale(formula, data, engine=chosen, REML=REML, optimizer=optimizer,
                                data_name=data_name, memory_limit=memory_limit,
                                threads=threads, scheduler=scheduler, progress=progress)
    return lmer_multi(formula, data, REML=REML, optimizer=optimizer, data_name=data_name)


def refit_ml(fit: LmerFit) -> LmerFit:
    """lme4's ``refitML``: the same model refitted by ML, with minqa-style BOBYQA started at the
    REML θ̂ (:func:`twolevel.models.lmm.optimize.refit_ml_theta`). ML fits are returned unchanged.

    Parameters
    ----------
    fit : LmerFit
        A REML or ML fit (a glmer fit, already ML, is also returned unchanged).

    Returns
    -------
    LmerFit
        The ML fit.

    Examples
    --------
    >>> import twolevel as tl
    >>> m = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> ml = tl.refit_ml(m)
    >>> ml.reml, ml.nobs == m.nobs
    (False, True)
    """
    if not fit.reml:
        return fit
    if has_several_factors(fit):
        from twolevel.models.lmm.multi import refit_ml_multi

        return refit_ml_multi(fit)
    d, cp = fit.design, fit.crossprods
    fn = make_deviance(d, reml=False, crossprods=cp)
    opt = refit_ml_theta(
        fn, fit.theta, d.theta_lower, gradient=lambda th: deviance_gradient(d, cp, th, False)
    )
    state = pls_state(cp, d.theta_to_T(opt.theta))
    return LmerFit(
        design=d, crossprods=cp, reml=False, theta=np.asarray(opt.theta, dtype=float),
        state=state, optsum=opt, data_name=fit.data_name,
    )
