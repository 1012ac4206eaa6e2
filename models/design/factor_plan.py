"""Model matrices without ``formulae`` evaluating every row: plain numeric columns
(:func:`_find_simple_plan`) and factors with interactions built column by column, ``formulae``
reading only a few rows (:func:`factor_model_matrix`): the design stage of a large in-memory frame.

``formulae`` evaluates a factor on every row by sorting its values (``numpy.unique``), about 2 s a
million rows for strings, and builds the whole matrix in a data frame; the DuckDB engine computes
the same statistics in a second. Here ``formulae`` sees a *head*: the first rows plus the first
row of every level of every factor of the right-hand side, so its levels, its contrasts and its
column labels are those of the whole data. Each column of its matrix is then read as a product of
numeric columns and level indicators (``x:f[b]`` is x · [f = b]) and rebuilt on all rows from
the factor's codes (``pandas.factorize``). The rebuilt head must equal ``formulae``'s head matrix
exactly, or the caller falls back to ``formulae`` on all rows. ``formulae``'s fitted term object
is kept as the design's spec, so new data are encoded as before.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["factor_model_matrix"]

_HEAD_ROWS = 64


def _is_factor(dtype) -> bool:
    """A column ``formulae`` treats as categorical: not numeric (strings, categoricals)."""
    return not pd.api.types.is_numeric_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype)


def _head_common(response: str, rhs: str, head: pd.DataFrame):
    """``formulae``'s fitted right-hand side (``design_matrices(...).common``) on a few rows, or
    None when it has no terms or fails (the evaluation on every row then reports the error)."""
    import formulae

    try:
        return formulae.design_matrices(f"{response} ~ {rhs}", head, na_action="error").common
    except Exception:
        return None


def _find_simple_plan(
    response: str, rhs: str, head: pd.DataFrame
) -> tuple[tuple[str | None, ...], tuple[str, ...]] | None:
    common = _head_common(response, rhs, head)
    if common is None:
        return None
    sources: list[str | None] = []
    for term_name, term in common.terms.items():
        kind = getattr(term, "kind", None)
        if kind == "intercept":
            sources.append(None)
            continue
        comps = getattr(term, "components", None)
        if kind != "numeric" or not comps or len(comps) != 1:
            return None
        comp = comps[0]
        name = getattr(comp, "name", None)
        if (type(comp).__name__ != "Variable" or name != term_name or name not in head.columns
                or list(term.labels) != [name]):
            return None
        s = head[name]
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            return None
        sources.append(name)
    from twolevel.models.design.matrices import _column_names

    names = _column_names(common)
    if len(names) != len(sources):
        return None
    mat = np.empty((len(head), len(sources)))
    for k, src in enumerate(sources):
        mat[:, k] = 1.0 if src is None else head[src].to_numpy(dtype=float)
    if not np.array_equal(mat, np.asarray(common.design_matrix, dtype=float)):
        return None
    return tuple(sources), tuple(names)


def _column_recipe(labels, components, levels) -> list[tuple] | None:
    """Each label of a term (``x:f[b]``) as a tuple of factors: ``("num", col)`` or
    ``("lvl", col, code)``; None when a label is not such a product."""
    recipe = []
    for label in labels:
        pieces = label.split(":")
        if len(pieces) != len(components):
            return None
        col: list[tuple] = []
        for piece, comp in zip(pieces, components, strict=True):
            name, kind = getattr(comp, "name", None), getattr(comp, "kind", None)
            if type(comp).__name__ != "Variable" or name is None:
                return None
            if kind == "numeric" and piece == name and name not in levels:
                col.append(("num", name))
            elif (kind == "categoric" and name in levels and piece.startswith(f"{name}[")
                    and piece.endswith("]")):
                code = levels[name].get(piece[len(name) + 1:-1])
                if code is None:
                    return None
                col.append(("lvl", name, code))
            else:
                return None
        recipe.append(tuple(col))
    return recipe


def _build(recipe, n: int, numeric, codes) -> np.ndarray:
    """The matrix of ``recipe`` on n rows; ``numeric(col)`` and ``codes[col]`` give the rows."""
    mat = np.empty((n, len(recipe)), order="F")
    for k, factors in enumerate(recipe):
        out = mat[:, k]
        out[:] = 1.0
        for f in factors:
            if f[0] == "num":
                out *= numeric(f[1])
            else:
                out *= codes[f[1]] == f[2]
    return mat


def factor_model_matrix(response: str, rhs: str, variables: list[str], md):
    """The model matrix of ``rhs`` over the complete rows of ``md``, R's column names and
    ``formulae``'s term object, when ``rhs`` has a factor and every term is a product of plain
    columns (``x * f + w``); else None (``formulae`` then evaluates every row).

    Parameters
    ----------
    response, rhs : str
        The formula's response and a right-hand side (fixed part or a bar's left-hand side).
    variables : list of str
        The data columns ``rhs`` uses.
    md : twolevel.models.design.matrices._ModelData
        The complete rows of the model's columns.

    Returns
    -------
    (numpy.ndarray, list of str, object) or None
        The n × p matrix (Fortran order), the names, the term object for new data.

    Examples
    --------
    >>> import numpy as np, pandas as pd, twolevel as tl
    >>> rng = np.random.default_rng(1)
    >>> d = pd.DataFrame({"y": rng.normal(size=300), "x": rng.normal(size=300),
    ...                   "f": rng.choice(["a", "b", "c"], 300), "g": np.repeat(range(30), 10)})
    >>> tl.make_design("y ~ x * f + (1 | g)", d).x_names
    ('(Intercept)', 'x', 'fb', 'fc', 'x:fb', 'x:fc')
    """
    from twolevel.models.design.matrices import _column_names

    dtypes = dict(md.dtypes)
    factors = [v for v in variables if v in dtypes and _is_factor(dtypes[v])]
    if not factors or md.n <= _HEAD_ROWS:
        return None
    codes, levels, first = {}, {}, [np.arange(_HEAD_ROWS)]
    for col in factors:
        c, uniques = pd.factorize(md.values(col), use_na_sentinel=True)
        text = {str(u): k for k, u in enumerate(uniques)}
        if len(text) != len(uniques) or (c < 0).any():
            return None  # two levels print alike, or a missing value formulae would see
        codes[col], levels[col] = c, text
        first.append(pd.Series(c).drop_duplicates().index.to_numpy())
    rows = np.unique(np.concatenate(first))
    head = pd.DataFrame({v: md.values(v)[rows] for v in dict.fromkeys([response, *variables])
                         if v in dtypes})
    common = _head_common(response, rhs, head)
    if common is None:
        return None
    recipe: list[tuple] = []
    for term in common.terms.values():
        if getattr(term, "kind", None) == "intercept":
            recipe.append(())
            continue
        comps = getattr(term, "components", None)
        part = _column_recipe(list(term.labels), comps or [], levels) if comps else None
        if part is None:
            return None
        recipe.extend(part)
    names = _column_names(common)
    if len(names) != len(recipe):
        return None
    head_codes = {c: v[rows] for c, v in codes.items()}
    head_mat = _build(recipe, len(rows), lambda c: head[c].to_numpy(dtype=float), head_codes)
    if not np.array_equal(head_mat, np.asarray(common.design_matrix, dtype=float)):
        return None
    cache: dict[str, np.ndarray] = {}

    def numeric(col: str) -> np.ndarray:
        if col not in cache:
            cache[col] = md.column(col)
        return cache[col]

    return _build(recipe, md.n, numeric, codes), names, common
