"""``tl.lmer``'s survey path: weights, plausible values and lists of imputed data sets."""

from __future__ import annotations

import os

import pandas as pd

from twolevel.data.errors import DataError
from twolevel.models.survey.fit import lmer_weighted
from twolevel.models.survey.pv import fit_sets, pv_formulas

__all__ = ["survey_lmer", "survey_sets"]


def survey_sets(fit_one, formula: str, data, pv, weighted: bool, df_com=None):
    """One fit per plausible value (``pv``) or imputed frame (``data`` a list), pooled by
    Rubin's rules (:class:`~twolevel.models.survey.pv.PooledFit`)."""
    if isinstance(data, (list, tuple)):
        if pv is not None:
            raise DataError("give either pv=[...] (plausible values in one data set) or a list "
                            "of imputed data sets, not both")
        bad = [i for i, d in enumerate(data) if not isinstance(d, pd.DataFrame)]
        if bad or len(data) < 2:
            raise DataError("a list of imputed data sets must hold at least two pandas frames"
                            + (f"; item {bad[0]} is a {type(data[bad[0]]).__name__}" if bad
                               else ""))
        return fit_sets(fit_one, [formula] * len(data), list(data),
                        [f"set {i + 1}" for i in range(len(data))], weighted, df_com)
    if not isinstance(data, pd.DataFrame):
        raise DataError("plausible values need a pandas data frame (engine 'memory')")
    formulas = pv_formulas(formula, pv, data)
    labels = (list(pv) if isinstance(pv, (list, tuple))
              else [f"set {i + 1}" for i in range(len(formulas))])
    return fit_sets(fit_one, formulas, [data] * len(formulas), labels, weighted, df_com)


def survey_lmer(formula: str, data, *, REML: bool, weights=None, conditional_weights=False,
                weight_scaling="none", pv=None, df_com=None, optimizer="lme4",
                data_name="data", **engine_opts):
    """Dispatch ``lmer(..., weights=, pv=)`` or ``lmer(formula, [frames])``.

    Returns a :class:`~twolevel.models.survey.fit.WeightedLmerFit` (weights, one set) or a
    :class:`~twolevel.models.survey.pv.PooledFit` (several sets)."""
    from twolevel.models.lmm.lmer import lmer

    def fit_one(f: str, d: pd.DataFrame):
        if weights is None:
            return lmer(f, d, REML=REML, optimizer=optimizer, data_name=data_name)
        return lmer_weighted(f, d, weights, conditional_weights=conditional_weights,
                             weight_scaling=weight_scaling, REML=REML, data_name=data_name)

    if pv is not None or isinstance(data, (list, tuple)) and not all(
            isinstance(d, (str, os.PathLike)) for d in data):
        return survey_sets(fit_one, formula, data, pv, weights is not None, df_com)
    if weights is not None and not isinstance(data, pd.DataFrame) or engine_opts.get(
            "engine", "auto") not in ("auto", "memory"):
        if weights is None:
            raise DataError("the duckdb/dask engines are for weighted fits here; an unweighted "
                            "fit of files goes through lmer without pv=")
        return lmer_weighted(formula, data, weights, conditional_weights=conditional_weights,
                             weight_scaling=weight_scaling, REML=REML, data_name=data_name,
                             **engine_opts)
    return fit_one(formula, data)
