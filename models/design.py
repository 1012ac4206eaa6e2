"""Design stage: an lme4 formula and a data frame become arrays (lme4's ``lFormula``).

Only one grouping factor is supported (students in schools). The random-effects design is kept as
the N × q matrix ``Z`` of per-row covariates plus the group index of every row, never as a dense
N × (J·q) matrix. Everything later stages need is in :class:`Design`; the per-group cross-products
of §7.1 of the lme4 algorithm notes are in :class:`GroupCrossprods`.

Formula parsing: the random-effect bars ``(lhs | g)`` and ``(lhs || g)`` are split off here (the
``formulae`` library does not keep the terms of one bar together nor know ``||``); the fixed part
and the left-hand side of each bar are turned into model matrices by ``formulae``, with R's
treatment contrasts, and the column names are rewritten the way R names them
(``Intercept`` → ``(Intercept)``, ``k[b]`` → ``kb``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import formulae
import numpy as np
import pandas as pd

from data.errors import DataError, FormulaError

__all__ = [
    "BarTerm",
    "Design",
    "GroupCrossprods",
    "RandomTerm",
    "group_crossprods",
    "make_design",
    "parse_formula",
]

_RANK_TOL = 1e-7
_FORMULA_CACHE = 64  # formula strings (and right-hand sides) whose parsed structure is kept


@dataclass(frozen=True)
class BarTerm:
    """One random-effects bar of a formula: ``(lhs | group)`` or, with ``correlated=False``,
    ``(lhs || group)``."""

    lhs: str
    group: str
    correlated: bool


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed right-hand side and random-effects bars."""

    formula: str
    response: str
    fixed: str
    bars: tuple[BarTerm, ...]


@dataclass(frozen=True)
class RandomTerm:
    """One lme4 random-effects term after ``||`` expansion: a block of columns of ``Z`` whose
    covariance is ``σ² T Tᵀ`` with ``T`` lower triangular (a single column for uncorrelated terms).

    ``columns`` are positions in ``Design.Z``; ``names`` are lme4's names for them.
    """

    names: tuple[str, ...]
    columns: tuple[int, ...]
    group: str


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
        q = self.Z.shape[1]
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


@dataclass(frozen=True)
class GroupCrossprods:
    """Per-group cross-products, one pass over the data (§7.1 of the lme4 notes).

    ``A[j] = Z_jᵀZ_j`` (J, q, q), ``B[j] = Z_jᵀX_j`` (J, q, p), ``c[j] = Z_jᵀy_j`` (J, q); global
    ``XtX = XᵀX``, ``Xty = Xᵀy``, ``yty = yᵀy``; ``n`` rows and ``p`` fixed effects. These are all the
    (RE)ML criterion needs, so they can also be aggregated elsewhere (a database, a cluster).
    """

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    n: int
    p: int

    @property
    def n_groups(self) -> int:
        """Number of groups J."""
        return int(self.A.shape[0])

    @cached_property
    def columns(self) -> tuple[dict[tuple[int, int], np.ndarray], tuple[np.ndarray, ...]]:
        """Contiguous copies for component-wise PLS (computed once): ``A[:, a, b]`` for a ≤ b as
        length-J vectors keyed (a, b), and for each a the (J, p+1) block ``[B_j c_j][a, :]``."""
        q = self.A.shape[1]
        a_cols = {(a, b): np.ascontiguousarray(self.A[:, a, b]) for a in range(q)
                  for b in range(a, q)}
        bc = tuple(np.ascontiguousarray(np.concatenate([self.B[:, a, :], self.c[:, a, None]],
                                                       axis=1)) for a in range(q))
        return a_cols, bc

    @cached_property
    def shifted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The blocks ``[B_j c_j]`` (J, q, p+1) and ``[[XᵀX, Xᵀy], [yᵀX, yᵀy]]`` (p+1, p+1) for the
        response y − Xγ, with γ the OLS coefficients, and γ (computed once).

        r²(θ) and both log-determinants are the same for y and y − Xγ (β̂ absorbs Xγ), but the
        down-dating that yields r² then cancels far less (‖y − Xγ‖² instead of ‖y‖²), so the
        criterion has ~10× less rounding noise, which numDeriv's Hessian (Satterthwaite) feels."""
        p = self.p
        try:
            gamma = np.linalg.solve(self.XtX, self.Xty) if p else np.zeros(0)
        except np.linalg.LinAlgError:
            gamma = np.zeros(p)
        if not np.all(np.isfinite(gamma)):
            gamma = np.zeros(p)
        J, q = self.c.shape
        BC = np.empty((J, q, p + 1))
        BC[:, :, :p] = self.B
        BC[:, :, p] = self.c - np.einsum("jak,k->ja", self.B, gamma)
        aug = np.empty((p + 1, p + 1))
        aug[:p, :p] = self.XtX
        aug[:p, p] = aug[p, :p] = self.Xty - self.XtX @ gamma
        aug[p, p] = float(self.yty - 2.0 * gamma @ self.Xty + gamma @ self.XtX @ gamma)
        return BC, aug, gamma


def group_crossprods(design: Design) -> GroupCrossprods:
    """Compute :class:`GroupCrossprods` with O(n·(q² + qp)) work and O(n) extra memory.

    Each distinct product of two columns is summed by group once (``np.bincount``): columns that
    Z and X share (the intercept, a variable with both a fixed and a random slope) are detected
    and their products reused, and a product with the all-ones column is the column itself (or
    the group sizes)."""
    g, J = design.group_index, design.n_groups
    Z, X, y = design.Z, design.X, design.y
    q, p = design.q, design.p

    # distinct columns: ids into `cols`; -1 is the all-ones column
    cols: list[np.ndarray] = []

    def col_id(v: np.ndarray) -> int:
        if v.shape[0] and v[0] == 1.0 and np.all(v == 1.0):
            return -1
        for k, w in enumerate(cols):
            same_view = (w.shape == v.shape and w.strides == v.strides
                         and w.__array_interface__["data"][0] == v.__array_interface__["data"][0])
            if same_view or np.array_equal(w, v):
                return k
        cols.append(np.ascontiguousarray(v))
        return len(cols) - 1

    zid = [col_id(Z[:, a]) for a in range(q)]
    xid = [col_id(X[:, b]) for b in range(p)]
    yid = col_id(y)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def gsum(i: int, k: int) -> np.ndarray:
        key = (min(i, k), max(i, k))
        if key not in cache:
            a, b = key
            if a == -1 and b == -1:
                w = None
            elif a == -1:
                w = cols[b]
            else:
                w = cols[a] * cols[b]
            cache[key] = np.bincount(g, weights=w, minlength=J).astype(float, copy=False)
        return cache[key]

    A = np.empty((J, q, q))
    for a in range(q):
        for b in range(a, q):
            A[:, a, b] = A[:, b, a] = gsum(zid[a], zid[b])
    B = np.empty((J, q, p))
    for a in range(q):
        for b in range(p):
            B[:, a, b] = gsum(zid[a], xid[b])
    c = np.empty((J, q))
    for a in range(q):
        c[:, a] = gsum(zid[a], yid)
    # einsum, not BLAS: OpenBLAS threads long dot products, which stalls on a busy machine
    return GroupCrossprods(
        A=A, B=B, c=c, XtX=np.einsum("ij,ik->jk", X, X), Xty=np.einsum("ij,i->j", X, y),
        yty=float(np.einsum("i,i->", y, y)), n=design.n, p=p,
    )


# ----------------------------------------------------------------------------- formula parsing


def _matching_paren(s: str, i: int) -> int:
    depth = 0
    for k in range(i, len(s)):
        if s[k] == "(":
            depth += 1
        elif s[k] == ")":
            depth -= 1
            if depth == 0:
                return k
    raise FormulaError(f"unbalanced parentheses in formula '{s}': close every '(' with ')'")


def _top_level_bar(s: str) -> tuple[int, int] | None:
    """Position and width (1 or 2) of the top-level '|' or '||' in s, or None."""
    depth = 0
    for k, ch in enumerate(s):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return k, 2 if s[k + 1 : k + 2] == "|" else 1
    return None


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into response, fixed part and random-effects bars.

    ``"y ~ 1 + x + (1 + x | g)"`` → response ``y``, fixed ``1 + x``, one correlated bar
    ``(1 + x | g)``. Bars must stand at the top level of the right-hand side. The result of
    each formula string is cached (it is immutable).
    """
    if not isinstance(formula, str) or formula.count("~") != 1:
        raise FormulaError(
            f"formula '{formula}' must have exactly one '~', like 'y ~ 1 + x + (1 + x | g)'"
        )
    return _parse_formula(formula)


@lru_cache(maxsize=_FORMULA_CACHE)
def _parse_formula(formula: str) -> ParsedFormula:
    lhs, rhs = (part.strip() for part in formula.split("~"))
    if not lhs:
        raise FormulaError(f"formula '{formula}' has no response: write 'y ~ ...'")
    bars: list[BarTerm] = []
    fixed_parts: list[str] = []
    i, start = 0, 0
    while i < len(rhs):
        if rhs[i] == "(":
            j = _matching_paren(rhs, i)
            inner = rhs[i + 1 : j]
            bar = _top_level_bar(inner)
            if bar is not None:
                fixed_parts.append(rhs[start:i])
                pos, width = bar
                term_lhs, grp = inner[:pos].strip(), inner[pos + width :].strip()
                if not term_lhs or not grp:
                    raise FormulaError(
                        f"random-effects term '({inner})' needs both sides of the bar, "
                        "like '(1 + x | g)'"
                    )
                bars.append(BarTerm(lhs=term_lhs, group=grp, correlated=(width == 1)))
                start = j + 1
            i = j + 1
        else:
            i += 1
    fixed_parts.append(rhs[start:])
    fixed = " ".join(fixed_parts)
    fixed = re.sub(r"\+\s*(\+\s*)+", "+ ", fixed)
    fixed = re.sub(r"^\s*\+|\+\s*$", "", fixed.strip()).strip()
    if not fixed:
        fixed = "1"
    return ParsedFormula(formula=formula, response=lhs, fixed=fixed, bars=tuple(bars))


def _r_name(label: str) -> str:
    """R's column name for a formulae column label: ``Intercept`` → ``(Intercept)``,
    ``k[b]`` → ``kb``, ``x:k[b]`` → ``x:kb``."""
    if label == "Intercept":
        return "(Intercept)"
    return re.sub(r"\[([^\]]*)\]", r"\1", label)


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

    def column(self, col: str) -> np.ndarray:
        """Column ``col`` of the complete rows, as float (a view when it is float64 already and
        no row was dropped)."""
        s = self._series[col]
        if pd.api.types.is_extension_array_dtype(s):  # nullable dtypes: NA in dropped rows
            return s.to_numpy(dtype=float, na_value=np.nan)[self._rows]
        return s.to_numpy(dtype=float)[self._rows]

    def frame(self) -> pd.DataFrame:
        """The model frame: the used columns of the complete rows, index 0..n-1."""
        if self._frame is None:
            f = self._data[list(self._series)]
            f.attrs = {}  # pandas deep-copies attrs (e.g. a loader's notes) on every column access
            self._frame = f.loc[self._rows].reset_index(drop=True)
        return self._frame


def _model_matrix(response: str, rhs: str, md: _ModelData) -> tuple[np.ndarray, list[str]]:
    """Model matrix of ``rhs`` and R's names of its columns."""
    simple = _simple_model_matrix(response, rhs, md)
    if simple is not None:
        return simple
    try:
        dm = formulae.design_matrices(f"{response} ~ {rhs}", md.frame(), na_action="error")
    except Exception as exc:  # formulae raises several types; give the user one clear message
        raise FormulaError(f"cannot build the model matrix for '{rhs}': {exc}") from exc
    if dm.common is None:
        return np.zeros((md.n, 0)), []
    mat = np.array(dm.common.design_matrix, dtype=float)
    return mat, _column_names(dm.common)


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
    plan = _find_simple_plan(response, rhs, head())
    if len(_PLANS) >= _FORMULA_CACHE:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[key] = plan
    return plan


def _find_simple_plan(
    response: str, rhs: str, head: pd.DataFrame
) -> tuple[tuple[str | None, ...], tuple[str, ...]] | None:
    try:
        dm = formulae.design_matrices(f"{response} ~ {rhs}", head, na_action="error")
    except Exception:
        return None  # the full evaluation reports the error
    if dm.common is None:
        return None
    sources: list[str | None] = []
    for term_name, term in dm.common.terms.items():
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
    names = _column_names(dm.common)
    if len(names) != len(sources):
        return None
    mat = np.empty((len(head), len(sources)))
    for k, src in enumerate(sources):
        mat[:, k] = 1.0 if src is None else head[src].to_numpy(dtype=float)
    if not np.array_equal(mat, np.asarray(dm.common.design_matrix, dtype=float)):
        return None
    return tuple(sources), tuple(names)


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


_IDENT = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
_FUNCS = {"C", "I", "log", "exp", "sqrt", "center", "scale", "standardize", "np", "abs"}


def _variables(expr: str, columns: pd.Index) -> list[str]:
    """Column names used in a formula expression (identifiers that are columns of the data)."""
    out = []
    for tok in _IDENT.findall(expr):
        if tok in columns and tok not in out:
            out.append(tok)
    return out


def _missing_variables(expr: str, columns: pd.Index) -> list[str]:
    stripped = re.sub(r"\"[^\"]*\"|'[^']*'", "", expr)
    out = []
    for m in _IDENT.finditer(stripped):
        tok = m.group(0)
        after = stripped[m.end() : m.end() + 1]
        if tok in columns or tok in _FUNCS or after == "(" or re.fullmatch(r"[0-9.]+", tok):
            continue
        if tok not in out:
            out.append(tok)
    return out


def make_design(formula: str, data: pd.DataFrame) -> Design:
    """Build the :class:`Design` of ``formula`` on ``data`` (lme4's ``lFormula``).

    Rows with a missing or non-finite value in any variable of the model are dropped (lme4's
    ``na.omit``) and counted in ``n_na_dropped``. Rank-deficient fixed-effect columns are dropped
    (recorded in ``dropped_columns``), as lme4's default ``check.rankX = "message+drop.cols"``.
    """
    parsed = parse_formula(formula)
    if not parsed.bars:
        raise FormulaError(
            f"formula '{formula}' has no random-effects term such as '(1 | school)': "
            "this is not a mixed model; add one, or use ordinary least squares"
        )
    groups = sorted({b.group for b in parsed.bars})
    if len(groups) > 1:
        raise FormulaError(
            f"formula '{formula}' has several grouping factors ({', '.join(groups)}); "
            "twolevel fits two-level models with one grouping factor"
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
        raise DataError(f"no complete rows left for formula '{formula}' after removing missing values")
    md = _ModelData(data, series, ~bad if n_dropped else slice(None), len(bad) - n_dropped)
    matrices: dict[str, tuple[np.ndarray, list[str]]] = {}

    def model_matrix(rhs: str) -> tuple[np.ndarray, list[str]]:
        # the same right-hand side (e.g. '1 + x' fixed and '(1 + x | g)') is built once
        if rhs.strip() not in matrices:
            matrices[rhs.strip()] = _model_matrix(parsed.response, rhs, md)
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
        pieces = [[k] for k in range(mat.shape[1])] if not bar.correlated else [list(range(mat.shape[1]))]
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
            terms.append(RandomTerm(names=tuple(names[k] for k in piece), columns=tuple(cols), group=group))
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
