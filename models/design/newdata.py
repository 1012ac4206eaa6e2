"""Model matrices of a fitted design on new data (what lme4's ``predict(newdata =)`` rebuilds).

The fixed-effects matrix X₀ and the random-effects covariates Z₀ of new rows are built the way
the fit built X and Z: plain numeric columns are read as they are; any other right-hand side is
evaluated by the ``formulae`` term object kept from the fit (:attr:`Design.model_specs`), so
factor levels and treatment contrasts, and stateful transforms such as ``center(x)`` or
``scale(x)`` use the *fitted data's* levels, means and SDs (lme4's ``get.orig.levs`` and
``makepredictcall``). Columns dropped at fit time for rank deficiency are dropped again.
Each new row's group is matched against the fit's groups; unseen groups get index −1.

Centring done *outside* the formula (a group-mean-centred column such as ``famsesc`` or HSB's
``cses``) is data like any other: the new rows must carry it, or see
:func:`center_new_rows`, which centres a raw column on the fitted school means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.models.design.formula import _missing_variables, _variables, parse_formula
from twolevel.models.design.matrices import Design

__all__ = [
    "NewRows",
    "center_new_rows",
    "check_new_levels",
    "match_groups",
    "new_model_matrices",
    "newdata_frame",
    "parse_re_form",
]


@dataclass(frozen=True)
class NewRows:
    """The new rows' design.

    Fields
    ------
    X : (m, p) fixed-effects rows x₀ (columns ``Design.x_names``).
    Z : (m, q) random-effects covariates z₀ (columns ``Design.z_names``).
    group_index : (m,) index into ``Design.group_levels``, −1 for a group not in the fit (or a
        missing group label).
    new_groups : the labels of the unseen groups, in order of appearance.
    """

    X: np.ndarray
    Z: np.ndarray
    group_index: np.ndarray
    new_groups: tuple


def _as_frame(newdata) -> pd.DataFrame:
    if isinstance(newdata, pd.DataFrame):
        return newdata
    if isinstance(newdata, dict):
        return pd.DataFrame(newdata)
    raise DataError(
        f"newdata must be a data frame (or a dict of columns), got {type(newdata).__name__}"
    )


def _check_columns(design: Design, nd: pd.DataFrame, exprs: list[str]) -> list[str]:
    """The variables of ``exprs`` (names of the fit's columns); names any that ``nd`` lacks."""
    missing = list(dict.fromkeys(v for e in exprs for v in _missing_variables(e, nd.columns)))
    if missing:
        raise DataError(
            f"newdata lacks column(s) {', '.join(repr(m) for m in missing)} used by the fixed or "
            f"random part of '{design.formula}'; newdata has: {', '.join(map(str, nd.columns))}"
        )
    return list(dict.fromkeys(v for e in exprs for v in _variables(e, nd.columns)))


def _check_finite(nd: pd.DataFrame, used: list[str]) -> None:
    """No missing or non-finite value in a covariate (lme4 would return NA; here it is an
    error naming the column and the rows)."""
    for col in used:
        s = nd[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            bad = ~np.isfinite(s.to_numpy(dtype=float, na_value=np.nan))
        else:
            bad = s.isna().to_numpy()
        if bad.any():
            rows = [str(r) for r in nd.index[bad][:5]]
            more = "" if bad.sum() <= 5 else f" and {int(bad.sum()) - 5} more"
            raise DataError(
                f"newdata column '{col}' has a missing or non-finite value in row(s) "
                f"{', '.join(rows)}{more}; fill them in or drop those rows before predicting"
            )


def _all_names(design: Design, rhs: str) -> tuple[str, ...]:
    """R's names of every column of the model matrix of ``rhs`` at fit time."""
    rec = design.model_specs.get(rhs.strip())
    if rec is None:
        engine = getattr(design, "engine", None)
        if engine in ("duckdb", "dask"):
            raise FormulaError(
                f"cannot rebuild '{rhs}' on new data: {engine} built its columns in the query "
                "and predictions on new data rebuild only an intercept and numeric columns by "
                "name; fit the model from a data frame (engine='memory') to predict with factor "
                "or transformed columns"
            )
        raise FormulaError(
            f"cannot rebuild '{rhs}' on new data: the design does not record how it was built; "
            "refit the model with this version of twolevel"
        )
    return rec[1]


def _matrix(design: Design, rhs: str, nd: pd.DataFrame, names: tuple[str, ...]) -> np.ndarray:
    """Columns ``names`` of the model matrix of ``rhs`` on ``nd``, as the fit built them."""
    rec = design.model_specs.get(rhs.strip())
    if rec is None and getattr(design, "engine", None) in ("duckdb", "dask"):
        _all_names(design, rhs)  # the engine built this side in SQL: say so
    spec = None if rec is None else rec[0]
    if isinstance(spec, str):
        raise FormulaError(
            f"this design was restored from a pickle, which cannot keep how '{rhs}' was built "
            "(factor levels, transforms); refit the model to predict new data"
        )
    m = len(nd)
    if spec is None:  # plain numeric columns (or a design built before model_specs existed)
        out = np.empty((m, len(names)))
        for k, nm in enumerate(names):
            if nm == "(Intercept)":
                out[:, k] = 1.0
            elif nm in nd.columns:
                out[:, k] = nd[nm].to_numpy(dtype=float)
            else:
                raise FormulaError(
                    f"cannot rebuild column '{nm}' of '{rhs}' on new data: refit the model with "
                    "this version of twolevel"
                )
        return out
    try:
        common = spec.evaluate_new_data(nd.reset_index(drop=True))
    except ValueError as exc:
        msg = str(exc)
        if "not present in the original data" in msg:
            raise DataError(
                f"newdata has a factor level the model never saw: {msg} Predictions for an "
                "unseen level have no coefficient; use one of the fitted levels"
            ) from exc
        raise DataError(f"cannot build the model matrix of '{rhs}' on newdata: {msg}") from exc
    from twolevel.models.design.matrices import _column_names

    full = np.asarray(common.design_matrix, dtype=float).reshape(m, -1)
    col_names = _column_names(common)
    pos = {n: k for k, n in enumerate(col_names)}
    return np.column_stack([full[:, pos[n]] for n in names]) if names else np.zeros((m, 0))


def match_groups(design: Design, labels: pd.Series) -> np.ndarray:
    """Index of each label in ``design.group_levels`` (−1 for an unseen or missing label).

    Labels are compared as values first, then as text (a CSV may read school ids as numbers
    where the fit had strings, or the reverse)."""
    levels = pd.Index(design.group_levels)
    vals = labels.to_numpy()
    idx = np.asarray(levels.get_indexer(vals), dtype=np.intp)
    todo = (idx < 0) & ~pd.isna(labels).to_numpy()
    if todo.any():
        text = {str(v): k for k, v in enumerate(design.group_levels)}
        for i in np.flatnonzero(todo):
            idx[i] = text.get(str(vals[i]), -1)
    return idx


def new_model_matrices(design: Design, newdata) -> NewRows:
    """X₀, Z₀ and the group index of ``newdata`` for the fitted ``design`` (module docstring).

    Raises
    ------
    DataError
        newdata lacks a column of the formula (named), has a missing or non-finite covariate
        (column and rows named), or a factor level the fit never saw.
    """
    nd = _as_frame(newdata)
    if len(nd) == 0:
        raise DataError("newdata has no rows")
    parsed = parse_formula(design.formula)
    exprs = [parsed.fixed] + [b.lhs for b in parsed.bars]
    used = _check_columns(design, nd, exprs)
    _check_finite(nd, used)
    # the fixed part: the fitted columns, by name (rank-deficient ones stay dropped)
    X = _matrix(design, parsed.fixed, nd, design.x_names)
    # Z: the bars' model matrices side by side, in the fit's order (as make_design stacks them)
    blocks = [_matrix(design, bar.lhs, nd, _all_names(design, bar.lhs)) for bar in parsed.bars]
    Z = np.column_stack(blocks)
    if Z.shape[1] != design.q:
        raise FormulaError(f"random-effects columns of '{design.formula}' could not be rebuilt")
    if design.group in nd.columns:
        gidx = match_groups(design, nd[design.group])
        labels = nd[design.group].to_numpy()
    else:
        gidx = np.full(len(nd), -1, dtype=np.intp)
        labels = np.full(len(nd), None)
    new = tuple(dict.fromkeys(labels[i] for i in np.flatnonzero(gidx < 0)))
    return NewRows(X=X, Z=Z, group_index=gidx, new_groups=new)


def center_new_rows(
    design: Design,
    newdata,
    column: str,
    group_means: pd.Series,
    *,
    name: str,
    means_column: str | None = None,
) -> pd.DataFrame:
    """Add the group-mean-centred column ``name`` = ``column`` − school mean to ``newdata``.

    For a school of the fit the mean is the recorded one (``group_means``, e.g.
    :attr:`twolevel.data.centering.Centering.group_means`), so a student is placed relative to
    his own school as in the fitted data. A new school has no recorded mean: its mean must be
    given in ``means_column`` of newdata (e.g. ``meanses``); otherwise a DataError names the
    schools. (A student "one SD above his school's mean" can simply be given ``name`` = SD.)

    Parameters
    ----------
    design : Design
        The fit's design.
    newdata : DataFrame
        The new rows, with ``column`` and the grouping column.
    column : str
        The raw predictor, e.g. ``"ses"``.
    group_means : pandas.Series
        The school means recorded when the data were centred.
    name : str
        The centred column to add, e.g. ``"cses"``.
    means_column : str, optional
        A column of newdata holding the school means of new schools.

    Returns
    -------
    pandas.DataFrame
        A copy of newdata with ``name`` added.

    Raises
    ------
    DataError
        A new school without a mean in ``means_column``.

    Examples
    --------
    >>> import pandas as pd, twolevel as tl
    >>> d = tl.load_data("hsb")
    >>> c = tl.center(d, "ses", by="school")
    >>> fit = tl.lmer("mAch ~ cses + (1 | school)", d.assign(cses=c.centered))
    >>> new = pd.DataFrame({"ses": [0.5], "school": [d.school.iloc[0]]})
    >>> out = tl.center_new_rows(fit.design, new, "ses", c.group_means, name="cses")
    >>> bool(abs(out.cses[0] - (0.5 - c.group_means[d.school.iloc[0]])) < 1e-12)
    True
    """
    nd = _as_frame(newdata).copy()
    for col in [column, design.group]:
        if col not in nd.columns:
            raise DataError(f"newdata lacks column '{col}' needed to centre '{column}'")
    means = pd.Series(group_means)
    idx = pd.Index(means.index).get_indexer(nd[design.group].to_numpy())
    m = np.where(idx >= 0, means.to_numpy(dtype=float)[np.maximum(idx, 0)], np.nan)
    if (idx < 0).any():
        if means_column is not None and means_column in nd.columns:
            given = nd[means_column].to_numpy(dtype=float)
            m = np.where(idx < 0, given, m)
        else:
            new = list(dict.fromkeys(nd[design.group].to_numpy()[idx < 0]))
            raise DataError(
                f"school(s) {', '.join(map(repr, new[:5]))} are new: their mean of '{column}' is "
                f"unknown, so '{name}' cannot be computed; give the school mean in a column "
                f"(means_column=...) or give '{name}' directly"
            )
    nd[name] = nd[column].to_numpy(dtype=float) - m
    return nd


def parse_re_form(re_form) -> bool:
    """True when ``re_form`` conditions on the school effects (``None``, lme4's ``NULL``), False
    for the population level (``"NA"``, ``"~0"``, ``"~ 0"``, ``"0"``, NaN). Other formulas are
    not supported (one grouping factor: all or none)."""
    if re_form is None:
        return True
    if isinstance(re_form, float) and np.isnan(re_form):
        return False
    if isinstance(re_form, str):
        s = re.sub(r"\s+", "", re_form)
        if s in ("NA", "~0", "0", "~-1", "NULL") or s.upper() == "NA":
            return s == "NULL"
    raise TwolevelError(
        f"re_form={re_form!r} is not supported: use None (condition on the schools' BLUPs) or "
        "'NA' / '~0' (population level, no school effects)"
    )


def newdata_frame(design: Design, newdata, conditional: bool) -> pd.DataFrame:
    """``newdata`` as a DataFrame; with ``conditional`` (re_form=None: the school effects are
    used) it must hold the grouping column, or a DataError says so and what to do instead."""
    nd = newdata if isinstance(newdata, pd.DataFrame) else pd.DataFrame(newdata)
    if conditional and design.group not in nd.columns:
        raise DataError(
            f"newdata lacks the grouping column '{design.group}' needed for re_form=None; add "
            "it, or predict at the population level with re_form='NA'"
        )
    return nd


def check_new_levels(rows: NewRows, allow_new_levels: bool, group: str) -> None:
    """lme4's "new levels detected in newdata" unless ``allow_new_levels`` (names them)."""
    if rows.new_groups and not allow_new_levels:
        shown = ", ".join(repr(g) for g in rows.new_groups[:5])
        more = "" if len(rows.new_groups) <= 5 else f" and {len(rows.new_groups) - 5} more"
        raise DataError(
            f"new level(s) of '{group}' in newdata: {shown}{more} (not in the fitted data); "
            "pass allow_new_levels=True (--allow-new-levels) to predict them with school "
            "effect 0 (the population value), or use a fitted school"
        )
