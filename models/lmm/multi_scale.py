"""Fitting a nested design with several grouping factors from DuckDB or Dask: the statistics
stage runs in the engine (:func:`twolevel.models.design.multi_scale.nested_stats_scale`, one
GROUP BY on the innermost group), the objective and the optimizer are the in-memory ones
(:func:`twolevel.models.lmm.multi.fit_multi_design` with those statistics), so θ̂, the criterion,
β̂ and the conditional modes are the in-memory answer.
"""

from __future__ import annotations

import warnings

from twolevel.models.lmm.multi_results import MultiFit

__all__ = ["lmer_multi_scale"]


def lmer_multi_scale(formula: str, data, engine: str = "duckdb", REML: bool = True,
                     optimizer: str = "lme4", data_name: str = "data",
                     memory_limit: str | None = None, threads: int | None = None,
                     scheduler=None, progress: bool = False) -> MultiFit:
    """``lmer`` with nested grouping factors on files (or a frame) through DuckDB or Dask.

    Parameters
    ----------
    formula : lme4 formula whose terms share one left-hand side and whose factors are nested
        by ``/`` or ``:``, e.g. ``"y ~ x + (1 | school/class)"``.
    data : a path, glob, folder or list of Parquet/CSV files, a pandas frame (duckdb) or a
        dask dataframe (dask).
    engine : "duckdb" or "dask".  REML, optimizer, data_name : as :func:`~twolevel.lmer`.
    memory_limit, threads : DuckDB's limits.  scheduler : a Dask scheduler (engine dask).
    progress : DuckDB's progress bar.

    Returns
    -------
    MultiFit
        Its design has no rows in memory: ``fitted``, ``residuals`` and ``predict`` on the
        fitted rows are not available (``predict(newdata)`` is not either).

    Raises
    ------
    FormulaError
        A formula outside that shape (use engine="memory").
    DataError, ScaleError
        Unreadable files, missing columns, memory exhausted.

    Examples
    --------
    >>> fit = lmer_multi_scale("y ~ x + (1 | school/class)", "three/*.parquet")  # doctest: +SKIP
    """
    from twolevel.models.design.multi_scale import nested_stats_scale
    from twolevel.models.design.sources import require_scale_extra
    from twolevel.models.lmm.multi import fit_multi_design, warn_fit

    require_scale_extra(engine)
    if engine == "duckdb":
        from twolevel.models.design.duckdb_source import DuckDBRunner

        runner = DuckDBRunner(data, memory_limit=memory_limit, threads=threads,
                              progress=progress)
    else:
        from twolevel.models.design.dask_source import DaskRunner

        runner = DaskRunner(data, scheduler=scheduler, memory_limit=memory_limit)
    design, stats = nested_stats_scale(formula, runner)
    for note in design.notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    if data_name == "data":
        data_name = design.source
    return warn_fit(fit_multi_design(design, REML=REML, optimizer=optimizer,
                                     data_name=data_name, stats=stats))
