"""Design stage: an lme4 formula and a data frame become arrays (lme4's ``lFormula``).

Only one grouping factor is supported (students in schools). The random-effects design is kept as
the N × q matrix ``Z`` of per-row covariates plus the group index of every row, never as a dense
N × (J·q) matrix. Everything later stages need is in :class:`Design`. The fixed part and the
left-hand side of each bar (split off by :mod:`twolevel.models.design.formula`) are turned into
model matrices by ``formulae``, with R's treatment contrasts and R's column names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError, FormulaError
from twolevel.models.design.formula import (
    _FORMULA_CACHE,
    _missing_variables,
    _plain_columns_plan,
    _r_name,
    _variables,
    parse_formula,
)

__all__ = ["Design", "RandomTerm", "make_design"]

_RANK_TOL = 1e-7


@dataclass(frozen=True)
class RandomTerm:
    """One lme4 random-effects term after ``||`` expansion: a block of columns of ``Z`` whose
    covariance is ``σ² T Tᵀ`` with ``T`` lower triangular (a single column for uncorrelated terms).

    ``columns`` are positions in ``Design.Z``; ``names`` are lme4's names for them.
    """

    names: tuple[str, ...]
    columns: tuple[int, ...]
    group: str


class _ModelSpecs(dict):
    """right-hand side → (``formulae`` term object or None, column names). The term objects
    keep their evaluation environment (modules), which cannot be pickled: a pickled design keeps
    the names and marks those specs ``"unpickled"`` (predicting new data then needs a refit)."""

    def __reduce__(self):
        return (_ModelSpecs, ({k: (None if spec is None else "unpickled", names)
                               for k, (spec, names) in self.items()},))


@dataclass(frozen=True)
class Design:
    """Arrays for a two-level linear mixed model with one grouping factor.

    Fields
    ------
    formula, response, group : the formula as given, the response column, the grouping column.
    y : (n,) response.  X : (n, p) fixed-effects model matrix (full column rank).
    x_names : lme4's names of the columns of X.
    Z : (n, q) random-effects covariates of each row (the left-hand sides of all bars, stacked).
    z_names : lme4's names of the columns of Z.
    terms : the random-effects terms in lme4's order; they partition the columns of Z.
    group_index : (n,) integer code 0..J-1 of each row's group.
    group_levels : the J group labels in R's ``levels(factor(g))`` order (sorted).
    n_na_dropped : rows removed because a variable of the model was missing or not finite.
    dropped_columns : fixed-effect columns dropped because X was rank deficient.
    model_specs : how each model matrix was built, for new data (``predict``): right-hand side →
        (``formulae``'s fitted term object — factor levels, stateful transforms such as
        ``center(x)`` — or ``None`` for plain numeric columns, R's names of all its columns); see
        :func:`twolevel.models.design.newdata.new_model_matrices`.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> des = tl.make_design("g1rscore ~ famsesc + (1 | schid)", d)
    >>> des.X.shape, des.Z.shape
    ((11091, 2), (11091, 1))
    """

    formula: str
    response: str
    group: str
    y: np.ndarray
    X: np.ndarray
    x_names: tuple[str, ...]
    Z: np.ndarray
    z_names: tuple[str, ...]
    terms: tuple[RandomTerm, ...]
    group_index: np.ndarray
    group_levels: np.ndarray
    n_na_dropped: int = 0
    dropped_columns: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    model_specs: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n(self) -> int:
        """Number of observations (rows used)."""
        return int(self.y.shape[0])

    @property
    def p(self) -> int:
        """Number of fixed effects (rank of X)."""
        return int(self.X.shape[1])

    @property
    def q(self) -> int:
        """Number of random effects per group."""
        return int(self.Z.shape[1])

    @property
    def n_groups(self) -> int:
        """Number of groups J."""
        return int(self.group_levels.shape[0])

    @property
    def group_sizes(self) -> np.ndarray:
        """n_j, the number of rows in each group, in ``group_levels`` order."""
        return np.bincount(self.group_index, minlength=self.n_groups)

    @cached_property
    def theta_template(self) -> np.ndarray:
        """q × q integer matrix: entry (r, c) is the index in θ of T[r, c], or −1 for a structural
        zero. θ holds each term's lower triangle column-wise, term after term (lme4's layout).
        Computed once; read-only."""
        tmpl = -np.ones((self.q, self.q), dtype=int)
        k = 0
        for term in self.terms:
            cols = term.columns
            for ci, c in enumerate(cols):
                for r in cols[ci:]:
                    tmpl[r, c] = k
                    k += 1
        tmpl.flags.writeable = False
        return tmpl

    @property
    def n_theta(self) -> int:
        """Length of θ: Σ_k nc_k (nc_k + 1) / 2 over the terms."""
        return int(sum(len(t.columns) * (len(t.columns) + 1) // 2 for t in self.terms))

    @property
    def theta_lower(self) -> np.ndarray:
        """lme4's lower bounds of θ: 0 for diagonal elements of T, −∞ for off-diagonal ones."""
        tmpl = self.theta_template
        lower = np.full(self.n_theta, -np.inf)
        for r, c in zip(*np.nonzero(tmpl >= 0), strict=True):
            if r == c:
                lower[tmpl[r, c]] = 0.0
        return lower

    @property
    def theta_names(self) -> tuple[str, ...]:
        """Names of the θ elements, e.g. ``schid.(Intercept)``, ``schid.famsesc.(Intercept)``."""
        tmpl = self.theta_template
        names = [""] * self.n_theta
        for r, c in zip(*np.nonzero(tmpl >= 0), strict=True):
            nm = self.z_names[r] if r == c else f"{self.z_names[r]}.{self.z_names[c]}"
            names[tmpl[r, c]] = f"{self.group}.{nm}"
        return tuple(names)

    @cached_property
    def _theta_positions(self) -> np.ndarray:
        """Flat positions in T (row-major) of θ_0, θ_1, … (from :attr:`theta_template`)."""
        flat = self.theta_template.ravel()
        pos = np.flatnonzero(flat >= 0)
        return pos[np.argsort(flat[pos])]

    def theta_to_T(self, theta: np.ndarray) -> np.ndarray:
        """Relative covariance factor T (q × q, lower triangular) from θ: Σ_b = σ² T Tᵀ."""
        theta = np.asarray(theta, dtype=float)
        pos = self._theta_positions
        if theta.shape != pos.shape:
            raise ValueError(f"theta must have length {pos.shape[0]}, got shape {theta.shape}")
        q = self.q
        T = np.zeros(q * q)
        T[pos] = theta
        return T.reshape(q, q)

    def T_to_theta(self, T: np.ndarray) -> np.ndarray:
        """θ from a relative covariance factor T (inverse of :meth:`theta_to_T`)."""
        tmpl = self.theta_template
        theta = np.empty(self.n_theta)
        mask = tmpl >= 0
        theta[tmpl[mask]] = np.asarray(T)[mask]
        return theta

    def theta_start(self) -> np.ndarray:
        """lme4's starting θ: 1 on T's diagonal, 0 off it; for intercept-only models
        ``θ0 = sqrt(v_g / v_e)`` with v_g = var(ave(y, g)) and v_e = var(y) − v_g when v_e > 0."""
        theta = self.T_to_theta(np.eye(self.q))
        if self.z_names == ("(Intercept)",):
            means = np.bincount(self.group_index, weights=self.y) / self.group_sizes
            v_g = float(np.var(means[self.group_index], ddof=1))
            v_e = float(np.var(self.y, ddof=1)) - v_g
            if v_e > 0:
                theta = np.array([np.sqrt(v_g / v_e)])
        return theta


class _ModelData:
    """The complete rows of the model's columns: ``column(name)`` as a float array, and the model
    frame (a data frame) built only when ``formulae`` has to see the rows.

    Fields
    ------
    n : number of complete rows.  dtypes : ((name, dtype), ...) of the used columns.
    """

    def __init__(self, data: pd.DataFrame, series: dict[str, pd.Series], rows, n: int):
        self._data, self._series, self._rows = data, series, rows
        self._frame: pd.DataFrame | None = None
        self.n = n
        self.dtypes = tuple((col, s.dtype) for col, s in series.items())
        self.columns = list(series)

    def column(self, col: str) -> np.ndarray:
        """Column ``col`` of the complete rows, as float (a view when it is float64 already and
        no row was dropped)."""
        s = self._series[col]
        if pd.api.types.is_extension_array_dtype(s):  # nullable dtypes: NA in dropped rows
            return s.to_numpy(dtype=float, na_value=np.nan)[self._rows]
        return s.to_numpy(dtype=float)[self._rows]

    def values(self, col: str):
        """Column ``col`` of the complete rows as it is (a pandas array: categories kept)."""
        arr = self._series[col].array
        return arr if isinstance(self._rows, slice) else arr[self._rows]

    def frame(self) -> pd.DataFrame:
        """The model frame: the used columns of the complete rows, index 0..n-1."""
        if self._frame is None:
            f = self._data[list(self._series)]
            f.attrs = {}  # pandas deep-copies attrs (e.g. a loader's notes) on every column access
            self._frame = f.loc[self._rows].reset_index(drop=True)
        return self._frame


def _model_matrix(
    response: str, rhs: str, md: _ModelData
) -> tuple[np.ndarray, list[str], object | None]:
    """Model matrix of ``rhs``, R's names of its columns, and ``formulae``'s term object (None
    when the columns are plain numeric columns of the data)."""
    simple = _simple_model_matrix(response, rhs, md)
    if simple is not None:
        return (*simple, None)
    from twolevel.models.design.factor_plan import factor_model_matrix

    built = factor_model_matrix(response, rhs, _variables(rhs, pd.Index(md.columns)), md)
    if built is not None:
        return built
    import formulae  # here, not at import: it loads scipy.interpolate and scipy.sparse.linalg

    try:
        dm = formulae.design_matrices(f"{response} ~ {rhs}", md.frame(), na_action="error")
    except Exception as exc:  # formulae raises several types; give the user one clear message
        raise FormulaError(f"cannot build the model matrix for '{rhs}': {exc}") from exc
    if dm.common is None:
        return np.zeros((md.n, 0)), [], None
    mat = np.array(dm.common.design_matrix, dtype=float)
    return mat, _column_names(dm.common), dm.common


def _column_names(common) -> list[str]:
    names: list[str] = []
    for term_name, term in common.terms.items():
        sl = common.slices[term_name]
        labels = list(term.labels)
        if len(labels) != sl.stop - sl.start:
            labels = [f"{term_name}{k}" for k in range(sl.stop - sl.start)]
        names.extend(_r_name(lab) for lab in labels)
    return names


_HEAD_ROWS = 64


def _simple_model_matrix(
    response: str, rhs: str, md: _ModelData
) -> tuple[np.ndarray, list[str]] | None:
    """The model matrix without ``formulae`` evaluating every row, when every term of ``rhs`` is
    the intercept or a plain numeric column (``1 + x + w``), or None (see :func:`_simple_plan`).
    The columns are then the data's own columns, as float."""
    if md.n <= _HEAD_ROWS:
        return None
    plan = _simple_plan(response, rhs, md.dtypes, lambda: md.frame().iloc[:_HEAD_ROWS])
    if plan is None:
        return None
    sources, names = plan
    mat = np.empty((md.n, len(sources)), order="F")  # contiguous columns
    for k, src in enumerate(sources):
        mat[:, k] = 1.0 if src is None else md.column(src)
    return mat, list(names)


_PLANS: dict[tuple, tuple[tuple[str | None, ...], tuple[str, ...]] | None] = {}


def _simple_plan(
    response: str, rhs: str, dtypes: tuple, head: Callable[[], pd.DataFrame]
) -> tuple[tuple[str | None, ...], tuple[str, ...]] | None:
    """Which data column (None for the intercept) each model-matrix column of ``rhs`` is, and
    R's names of them, when every term is the intercept or a plain numeric column; else None.

    ``formulae`` parses the formula on the first rows ``head()``: its terms decide whether the
    shortcut applies (no factors, interactions, calls or stateful transforms such as
    ``center(x)``, whose values depend on all rows), and its matrix on those rows must equal the
    shortcut's. The answer depends on the formula and the columns' names and dtypes only, so it
    is kept per (response, rhs, column dtypes) (at most ``_FORMULA_CACHE`` of them)."""
    key = (response, rhs, dtypes)
    if key in _PLANS:
        return _PLANS[key]
    plan = _plain_columns_plan(rhs, dict(dtypes))
    if plan is None:
        from twolevel.models.design.factor_plan import _find_simple_plan

        plan = _find_simple_plan(response, rhs, head())
    if len(_PLANS) >= _FORMULA_CACHE:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[key] = plan
    return plan


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a·b for long vectors without BLAS (OpenBLAS threads ``ddot`` above 10,000 elements, which
    stalls for milliseconds when the other cores are busy)."""
    return float(np.einsum("i,i->", a, b))


def _full_rank_columns(X: np.ndarray, tol: float = _RANK_TOL) -> list[int]:
    """Columns kept by a LINPACK-style limited-pivoting QR (R's ``dqrdc2``): a column is dropped
    when its norm after projection on the kept columns is below ``tol`` times its original norm.

    Gram–Schmidt with reorthogonalisation, on contiguous copies of the columns (one pass each).
    A screen on XᵀX first: when every column keeps more than 1e-3 of its norm after projection
    (10⁴ times the tolerance, far beyond the Gram matrix's rounding), all columns are kept
    without touching the data again."""
    if 0 < X.shape[1] <= 32 and X.shape[0] > 0:
        G = np.einsum("ij,ik->jk", X, X)
        d = np.diag(G).copy()
        if np.all(d > 0) and np.all(np.isfinite(G)):
            Gs = G / np.sqrt(np.outer(d, d))  # unit diagonal
            try:
                Lg = np.linalg.cholesky(Gs)
            except np.linalg.LinAlgError:
                Lg = None
            if Lg is not None and np.all(np.diag(Lg) ** 2 > 1e-6):
                return list(range(X.shape[1]))
    kept: list[int] = []
    Q: list[np.ndarray] = []
    for k in range(X.shape[1]):
        col = np.ascontiguousarray(X[:, k], dtype=float)
        norm0 = float(np.sqrt(_dot(col, col)))
        resid = col
        for _ in range(2):
            if Q:
                coef = [_dot(qv, resid) for qv in Q]
                resid = resid.copy() if resid is col else resid
                for cf, qv in zip(coef, Q, strict=True):
                    resid -= cf * qv
        rn = float(np.sqrt(_dot(resid, resid)))
        if norm0 > 0 and rn > tol * norm0:
            kept.append(k)
            Q.append(resid / rn)
    return kept


def make_design(formula: str, data: pd.DataFrame) -> Design:
    """Build the :class:`Design` of ``formula`` on ``data`` (lme4's ``lFormula``).

    Rows with a missing or non-finite value in any variable of the model are dropped (lme4's
    ``na.omit``) and counted in ``n_na_dropped``. Rank-deficient fixed-effect columns are dropped
    (recorded in ``dropped_columns``), as lme4's default ``check.rankX = "message+drop.cols"``.

    Parameters
    ----------
    formula : str
        lme4 syntax with one grouping factor, e.g. ``"y ~ 1 + x + (1 + x | g)"``.
    data : pandas.DataFrame
        The columns of the formula.

    Returns
    -------
    Design
        y, X, Z, the grouping, lme4's column names and the random-effects terms.

    Raises
    ------
    FormulaError
        A formula twolevel cannot fit (e.g. two grouping factors).
    DataError
        Missing columns, non-numeric values, fewer than two groups.

    Examples
    --------
    >>> import twolevel as tl
    >>> des = tl.make_design("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)",
    ...                      tl.load_data("lecture"))
    >>> des.x_names, des.z_names, des.n_groups
    (('(Intercept)', 'famsesc'), ('(Intercept)', 'famsesc'), 742)
    """
    parsed = parse_formula(formula)
    if not parsed.bars:
        raise FormulaError(
            f"formula '{formula}' has no random-effects term such as '(1 | school)': "
            "this is not a mixed model; add one, or use ordinary least squares"
        )
    groups = sorted({b.group for b in parsed.bars})
    from twolevel.models.design.multi import grouping_factors, needs_multi

    if len(groups) > 1 or needs_multi(formula):
        facs = groups if len(groups) > 1 else grouping_factors(formula)
        raise FormulaError(
            f"formula '{formula}' has several grouping factors ({', '.join(facs)}); "
            "this model takes one grouping factor (tl.lmer fits several: nested, e.g. "
            "'(1 | school/class)', or crossed)"
        )
    group = groups[0]
    columns = data.columns
    if group not in columns:
        raise DataError(
            f"grouping column '{group}' is not in the data; available columns: "
            f"{', '.join(map(str, columns))}"
        )
    exprs = [parsed.response, parsed.fixed] + [b.lhs for b in parsed.bars]
    missing = [v for e in exprs for v in _missing_variables(e, columns)]
    if missing:
        raise DataError(
            f"column(s) {', '.join(repr(m) for m in dict.fromkeys(missing))} of formula "
            f"'{formula}' not in the data; available columns: {', '.join(map(str, columns))}"
        )
    used = list(dict.fromkeys([v for e in exprs for v in _variables(e, columns)] + [group]))
    series = {col: data[col] for col in used}  # no copies; a model frame only when needed
    response = series[parsed.response]
    if not pd.api.types.is_numeric_dtype(response):
        raise DataError(
            f"response column '{parsed.response}' is not numeric (dtype {response.dtype});"
            " convert it to numbers first"
        )
    bad = series[group].isna().to_numpy().copy()
    for s in series.values():
        if pd.api.types.is_integer_dtype(s) and not pd.api.types.is_extension_array_dtype(s):
            continue  # plain integers are always finite
        if s.dtype == np.float64:
            bad |= ~np.isfinite(s.to_numpy())  # no copy
        elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            bad |= ~np.isfinite(s.to_numpy(dtype=float, na_value=np.nan))
        else:
            bad |= s.isna().to_numpy()
    n_dropped = int(bad.sum())
    if n_dropped == len(bad):
        raise DataError(
            f"no complete rows left for formula '{formula}' after removing missing values"
        )
    md = _ModelData(data, series, ~bad if n_dropped else slice(None), len(bad) - n_dropped)
    matrices: dict[str, tuple[np.ndarray, list[str]]] = {}
    specs = _ModelSpecs()

    def model_matrix(rhs: str) -> tuple[np.ndarray, list[str]]:
        # the same right-hand side (e.g. '1 + x' fixed and '(1 + x | g)') is built once
        if rhs.strip() not in matrices:
            mat, names, spec = _model_matrix(parsed.response, rhs, md)
            matrices[rhs.strip()] = mat, names
            specs[rhs.strip()] = spec, tuple(names)
        return matrices[rhs.strip()]

    X_full, x_names_full = model_matrix(parsed.fixed)
    keep = _full_rank_columns(X_full)
    dropped = tuple(x_names_full[k] for k in range(len(x_names_full)) if k not in keep)
    X = X_full if len(keep) == X_full.shape[1] else np.asfortranarray(X_full[:, keep])
    x_names = tuple(x_names_full[k] for k in keep)

    z_blocks: list[np.ndarray] = []
    z_names: list[str] = []
    terms: list[RandomTerm] = []
    for bar in parsed.bars:
        mat, names = model_matrix(bar.lhs)
        if mat.shape[1] == 0:
            raise FormulaError(f"random-effects term '({bar.lhs} | {bar.group})' has no columns")
        pieces = ([[k] for k in range(mat.shape[1])] if not bar.correlated
                  else [list(range(mat.shape[1]))])
        for piece in pieces:
            cols = []
            for k in piece:
                if names[k] in z_names:
                    raise FormulaError(
                        f"random effect '{names[k]}' appears twice for '{group}' in '{formula}'; "
                        "list each random effect once"
                    )
                cols.append(len(z_names))
                z_names.append(names[k])
                z_blocks.append(mat[:, k])
            terms.append(RandomTerm(names=tuple(names[k] for k in piece), columns=tuple(cols),
                                    group=group))
    if len(parsed.bars) == 1 and len(z_blocks) == mat.shape[1]:
        Z = mat  # one bar: its model matrix is Z (shared with X when the two are the same)
    else:
        Z = np.empty((md.n, len(z_blocks)), order="F")
        for k, blk in enumerate(z_blocks):
            Z[:, k] = blk

    codes, levels = _factorize_sorted(series[group][~bad] if n_dropped else series[group])
    y = np.array(md.column(parsed.response))  # a copy: the design owns its arrays
    design = Design(
        formula=formula,
        response=parsed.response,
        group=group,
        y=y,
        X=X,
        x_names=x_names,
        Z=Z,
        z_names=tuple(z_names),
        terms=tuple(terms),
        group_index=codes,
        group_levels=levels,
        n_na_dropped=n_dropped,
        dropped_columns=dropped,
        notes=_design_notes(n_dropped, dropped),
        model_specs=specs,
    )
    _check_design(design)
    return design


def _factorize_sorted(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and sorted levels of a grouping column (R's ``factor()`` order)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.cat.remove_unused_categories()
        return s.cat.codes.to_numpy().astype(np.intp), np.asarray(s.cat.categories)
    if pd.api.types.is_integer_dtype(s) and not pd.api.types.is_extension_array_dtype(s):
        v = s.to_numpy()
        lo, hi = int(v.min()), int(v.max())
        if hi - lo <= 4 * v.shape[0] + 1024:  # dense range: O(n) table lookup, same as factorize
            base = min(lo, 0)  # index by the values themselves when they are ≥ 0
            idx = v - base if base else v
            present = np.zeros(hi - base + 1, dtype=bool)
            present[idx] = True
            levels = np.flatnonzero(present)
            table = np.cumsum(present, dtype=np.intp) - 1
            return table[idx], (levels + base).astype(v.dtype)
    codes, levels = pd.factorize(s, sort=True)
    return codes.astype(np.intp), np.asarray(levels)


def _design_notes(n_dropped: int, dropped: tuple[str, ...]) -> tuple[str, ...]:
    notes = []
    if n_dropped:
        notes.append(f"{n_dropped} row(s) with missing or non-finite values removed (na.omit)")
    if dropped:
        notes.append(
            "fixed-effect model matrix is rank deficient so dropping "
            f"{len(dropped)} column(s): {', '.join(dropped)}"
        )
    return tuple(notes)


def _check_design(d: Design) -> None:
    """lme4's ``lFormula`` checks, with messages that say what to do."""
    J = d.n_groups
    if J < 2:
        raise DataError(
            f"grouping column '{d.group}' has only {J} group "
            f"({', '.join(map(str, d.group_levels))}); a two-level model needs at least 2 groups"
        )
    if J >= d.n:
        raise DataError(
            f"grouping column '{d.group}' has {J} groups for {d.n} rows: the number of groups must "
            "be smaller than the number of observations (is the grouping column a row id?)"
        )
    if d.n <= J * d.q:
        raise DataError(
            f"number of observations ({d.n}) <= number of random effects ({J * d.q}) for "
            f"'{d.group}': the random-effects parameters and the residual variance are "
            "unidentifiable; use fewer random slopes"
        )
