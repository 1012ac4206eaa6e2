"""The statistics stage of a *nested* design with several grouping factors from DuckDB or Dask:
the per-innermost-group cross-products of ``[Z_1 … Z_K X y]`` (:class:`NestedStats`) from one
GROUP BY over the files, without the rows in memory.

For ``y ~ X + (Z | school/class)`` (or ``(Z | school) + (Z | school:class)``, or ``a/b/c``) the
innermost group is the combination of every grouping column, and every factor's random-effect
covariates are the same Z. The one-factor scale path (:func:`twolevel.models.design.sources.
scale_statistics`) already computes, per group of one key, ZᵀZ, ZᵀX, Zᵀy, XᵀX, Xᵀy and yᵀy with
its SQL compiler of the formula (factors, transforms, centring, complete cases, Kahan sums). Here
its key is the innermost combination (a text key pasting the grouping columns, NULL when any of
them is NULL, so such rows are dropped and counted), and the cross-products of the nested W are
assembled from those blocks: with W = [Z … Z X y] (K copies of Z)

    C_c = [[ZᵀZ … ZᵀZ ZᵀX Zᵀy], …, [XᵀZ … XᵀZ XᵀX Xᵀy], [yᵀZ … yᵀZ yᵀX yᵀy]]_c.

The grouping columns' values come back in the key; each factor's levels and labels are built
from them exactly as in memory (R's factor order, lme4's ``%i%`` labels), and each group's parent
follows from the labels. The result is a row-less :class:`ScaleMultiDesign` for the same nested
engine (:func:`twolevel.models.lmm.nested.nested_state`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.design.formula import parse_formula
from twolevel.models.design.matrices import _factorize_sorted
from twolevel.models.design.multi import (
    Factor,
    MultiDesign,
    MultiTerm,
    _interaction_codes,
    expand_group,
)
from twolevel.models.design.multi_stats import NestedStats
from twolevel.models.design.sql import is_numeric_type, quote

__all__ = ["ScaleMultiDesign", "nested_stats_scale"]

CELL = "__cell"
_SEP = "\x1f"  # unit separator: not part of any label


@dataclass(frozen=True)
class ScaleMultiDesign(MultiDesign):
    """A :class:`MultiDesign` whose statistics came from DuckDB or Dask: no rows in memory
    (``y``, ``X`` and each factor's ``codes``/``Z`` are empty), ``n_rows`` observations.

    Fields (beyond MultiDesign's)
    ------
    n_rows : observations used.  engine : "duckdb" or "dask".  source : what was read.
    rows_read : rows in the files.  theta0 : lme4's starting θ, from the statistics.
    """

    n_rows: int = 0
    engine: str = "duckdb"
    source: str = ""
    rows_read: int = 0
    theta0: tuple[float, ...] = ()

    @property
    def n(self) -> int:
        """Number of observations (counted by the engine)."""
        return int(self.n_rows)

    @property
    def p(self) -> int:
        """Number of fixed effects."""
        return len(self.x_names)

    def theta_start(self) -> np.ndarray:
        """lme4's starting θ, computed from the statistics (:func:`_theta_start`)."""
        return np.array(self.theta0, dtype=float)


class _CellRunner:
    """A runner whose source ``__src`` has one more column, ``__cell``: the grouping columns
    pasted (NULL when one of them is NULL)."""

    def __init__(self, runner, columns: tuple[str, ...]):
        self._r = runner
        self.engine = runner.engine
        self.description = runner.description
        self.memory_limit = getattr(runner, "memory_limit", None)
        self.columns = columns
        parts = ", ".join(f"CAST({quote(c)} AS VARCHAR)" for c in columns)
        nulls = " OR ".join(f"{quote(c)} IS NULL" for c in columns)
        self._sub = (f"(SELECT *, CASE WHEN {nulls} THEN NULL ELSE concat_ws('{_SEP}', {parts}) "
                     f"END AS {quote(CELL)} FROM __src) AS __src")

    def _from(self, from_: str) -> str:
        return re.sub(r"\b__src\b(?!_)", self._sub.replace("\\", "\\\\"), from_)

    @property
    def rows_read(self) -> int:
        return self._r.rows_read

    def types(self) -> dict[str, str]:
        return self._r.types() | {CELL: "VARCHAR"}

    def check_columns(self, columns: list[str]) -> None:
        self._r.check_columns([c for c in columns if c != CELL] + list(self.columns))

    def set_table(self, name: str, frame: pd.DataFrame) -> None:
        self._r.set_table(name, frame)

    def scalar(self, select, from_, where):
        return self._r.scalar(select, self._from(from_), where)

    def grouped(self, select, from_, where, key, n_groups=None):
        return self._r.grouped(select, self._from(from_), where, key, n_groups=n_groups)


def _nested_factors(formula: str) -> tuple[object, str, list[tuple[str, tuple[str, ...]]]]:
    """(parsed formula, the common left-hand side, the factors innermost first) of a formula
    whose bars share one left-hand side and whose factors form a chain of nested column sets.

    Raises
    ------
    FormulaError
        Different left-hand sides, ``||``, or factors that are not nested by their columns.
    """
    parsed = parse_formula(formula)
    lhs = {re.sub(r"\s+", "", b.lhs) for b in parsed.bars}
    if len(lhs) != 1 or not all(b.correlated for b in parsed.bars):
        raise FormulaError(
            f"engines duckdb and dask fit several grouping factors when every term has the same "
            f"random effects, e.g. '(1 + x | school/class)'; '{formula}' has different ones (or "
            "'||'): use engine='memory'")
    facs = list(dict.fromkeys((n, c) for b in parsed.bars for n, c in expand_group(b.group)))
    facs.sort(key=lambda f: -len(f[1]))
    for inner, outer in zip(facs, facs[1:], strict=False):
        if not set(outer[1]) < set(inner[1]):
            raise FormulaError(
                f"engines duckdb and dask fit nested grouping factors written with '/' or ':' "
                f"(e.g. '(1 | school/class)'); '{inner[0]}' and '{outer[0]}' in '{formula}' are "
                "not nested that way: use engine='memory'")
    return parsed, parsed.bars[0].lhs, facs


def _cell_values(keys: np.ndarray, columns: tuple[str, ...], types: dict[str, str]
                 ) -> pd.DataFrame:
    """The grouping columns' values of every cell key, numeric columns back as numbers."""
    parts = pd.Series(keys.astype(str)).str.split(_SEP, expand=True)
    parts.columns = list(columns)
    for c in columns:
        if is_numeric_type(types[c]):
            v = pd.to_numeric(parts[c])
            if re.match(r"U?(TINY|SMALL|BIG|HUGE)?INT", types[c].upper()):
                v = v.astype(np.int64)
            parts[c] = v
    return parts


def _theta_start(design: MultiDesign, stats: NestedStats, cell_codes: list[np.ndarray]
                 ) -> tuple[float, ...]:
    """lme4's start (:meth:`MultiDesign.theta_start`) from the per-cell sums: 1 on each T's
    diagonal; for random intercepts only, θ0_f = sqrt(v_f / v_e) with
    v_f = var(ave(y, f)) = (Σ_g n_g m_g² − n ȳ²)/(n − 1), m_g the mean of y in group g of f, and
    v_e = var(y) − Σ_f v_f when positive."""
    th = np.zeros(design.n_theta)
    for tm in design.templates:
        dg = np.diag(tm)
        th[dg[dg >= 0]] = 1.0
    if (all(t.names == ("(Intercept)",) for t in design.terms)
            and len(design.terms) == len(design.factors)):
        n_c, sy_c = stats.C[:, 0, 0], stats.C[:, 0, -1]
        n = float(n_c.sum())
        sy = float(sy_c.sum())
        v = []
        for f, codes in zip(design.factors, cell_codes, strict=True):
            ng = np.bincount(codes, weights=n_c, minlength=f.n_levels)
            sg = np.bincount(codes, weights=sy_c, minlength=f.n_levels)
            v.append((float(np.sum(sg * sg / ng)) - sy * sy / n) / (n - 1.0))
        v_e = (float(stats.C[:, -1, -1].sum()) - sy * sy / n) / (n - 1.0) - sum(v)
        if v_e > 0:
            for k, vf in enumerate(v):
                th[design.templates[k][0, 0]] = np.sqrt(vf / v_e)
    return tuple(float(t) for t in th)


def _plain_specs(sides: dict[str, tuple[str, ...]], types: dict) -> dict:
    """``model_specs`` entries (no formulae spec, the column names) for every right-hand side
    whose columns are all ``(Intercept)`` or numeric data columns: new data rebuilds those by
    name (:func:`twolevel.models.design.newdata._matrix`). Other sides (factor or transformed
    columns, which the engine built in SQL) get none, and predicting new data says so."""
    return {rhs.strip(): (None, tuple(names)) for rhs, names in sides.items()
            if all(nm == "(Intercept)" or (nm in types and is_numeric_type(types[nm]))
                   for nm in names)}


def nested_stats_scale(formula: str, runner) -> tuple[ScaleMultiDesign, NestedStats]:
    """The row-less design and the :class:`NestedStats` of a nested formula from a runner
    (:class:`~twolevel.models.design.duckdb_source.DuckDBRunner` or
    :class:`~twolevel.models.design.dask_source.DaskRunner`): the per-cell passes of the
    one-factor scale path with the innermost combination as key (module docstring).

    Parameters
    ----------
    formula : lme4 formula with nested grouping factors sharing one left-hand side.
    runner : the engine's runner over the files.

    Returns
    -------
    tuple
        (ScaleMultiDesign, NestedStats), factors innermost first as in memory.

    Raises
    ------
    FormulaError
        For formulas outside that shape (see :func:`_nested_factors`).
    DataError
        A missing column, no complete rows, or a factor with fewer than 2 levels.

    Examples
    --------
    >>> from twolevel.models.design.duckdb_source import DuckDBRunner   # doctest: +SKIP
    >>> design, st = nested_stats_scale("y ~ x + (1 | school/class)", DuckDBRunner("d.parquet"))
    """
    from twolevel.data.errors import DataError
    from twolevel.models.design.sources import scale_statistics

    parsed, lhs, facs = _nested_factors(formula)
    types = runner.types()
    group_cols = facs[0][1]
    absent = [c for c in group_cols if c not in types]
    if absent:
        raise DataError(f"grouping column(s) {', '.join(map(repr, absent))} of formula "
                        f"'{formula}' not in the data; available columns: {', '.join(types)}")
    cells = _CellRunner(runner, group_cols)
    one = f"{parsed.response} ~ {parsed.fixed} + ({lhs} | {CELL})"
    sd, cp = scale_statistics(one, cells, per_group_x=True)
    vals = _cell_values(sd.group_levels, group_cols, types)
    coded = {c: _factorize_sorted(vals[c]) for c in group_cols}
    factors_list = []
    q = len(sd.z_names)
    for name, cols in facs:
        codes, levels = _interaction_codes(cols, coded)
        factors_list.append((name, cols, codes, levels))
    n_cells = len(vals)
    for name, _, _, levels in factors_list:
        if len(levels) < 2:
            raise DataError(f"grouping factor '{name}' has only {len(levels)} level; every "
                            "grouping factor needs at least 2 levels")
    inner_codes = factors_list[0][2]
    if len(np.unique(inner_codes)) != n_cells:  # cannot happen: the key is the combination
        raise TwolevelError("the innermost groups do not match the cells of the GROUP BY")
    order = np.argsort(inner_codes)
    K, p = len(facs), cp.p
    d = K * q + p + 1
    C = np.empty((n_cells, d, d))
    for a in range(K):
        for b in range(K):
            C[:, a * q:(a + 1) * q, b * q:(b + 1) * q] = cp.A
        C[:, a * q:(a + 1) * q, K * q:K * q + p] = cp.B
        C[:, K * q:K * q + p, a * q:(a + 1) * q] = np.swapaxes(cp.B, 1, 2)
        C[:, a * q:(a + 1) * q, -1] = cp.c
        C[:, -1, a * q:(a + 1) * q] = cp.c
    gm = sd.group_moments
    C[:, K * q:K * q + p, K * q:K * q + p] = gm.XtX
    C[:, K * q:K * q + p, -1] = gm.Xty
    C[:, -1, K * q:K * q + p] = gm.Xty
    C[:, -1, -1] = sd.yty_groups
    C = np.ascontiguousarray(C[order])
    parents = []
    for k in range(K - 1):
        par = np.zeros(len(factors_list[k][3]), dtype=np.intp)
        par[factors_list[k][2]] = factors_list[k + 1][2]
        parents.append(par)
    z_names = tuple(sd.z_names)
    factors = tuple(Factor(name=n, columns=cols, codes=np.empty(0, dtype=np.intp),
                           levels=np.asarray(levels, dtype=object), Z=np.empty((0, q)),
                           z_names=z_names) for n, cols, _, levels in factors_list)
    terms = tuple(MultiTerm(factor=k, names=z_names, columns=tuple(range(q)))
                  for k in range(K))
    design = ScaleMultiDesign(
        formula=formula, response=parsed.response, y=np.empty(0), X=np.empty((0, p)),
        x_names=tuple(sd.x_names), factors=factors, terms=terms,
        n_na_dropped=sd.n_na_dropped, dropped_columns=sd.dropped_columns,
        notes=tuple(n.replace(f"'{CELL}'", "a grouping column") for n in sd.notes),
        n_rows=int(cp.n), engine=runner.engine, source=runner.description,
        rows_read=int(runner.rows_read),
        model_specs=_plain_specs({parsed.fixed: sd.x_names, lhs: sd.z_names}, types))
    stats = NestedStats(C=C, parents=tuple(parents), q=(q,) * K, n=int(cp.n), p=p)
    cell_codes = [fl[2][order] for fl in factors_list]
    from dataclasses import replace

    design = replace(design, theta0=_theta_start(design, stats, cell_codes))
    return design, stats
