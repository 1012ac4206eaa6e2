"""Design stage for several grouping factors (lme4's ``mkReTrms`` with more than one factor).

``(1 | school/class)`` expands, as lme4 (``reformulas::expandGrpVar``) does, into the terms
``(1 | class:school)`` and ``(1 | school)``; ``(1 | a/b/c)`` into ``c:(b:a)``, ``b:a``, ``a``.
An interaction factor's labels paste the columns' labels in the name's order (``"a:A"``), and its
levels are ordered by the first column's levels, then the next (lme4's ``%i%``), so the factor is
unique even when class labels repeat across schools. ``||`` splits a term into one term per
column. lme4 orders the terms by decreasing number of levels (stably), and θ holds each term's
lower triangle column-wise, term after term, in that order.

The design keeps one :class:`Factor` per distinct grouping factor (terms on the same factor, e.g.
``(1 | g) + (0 + x | g)``, share it; their block of Λ is block-diagonal), the N × q_f matrix of
each factor's random-effect covariates and the integer code of every row's level. Nothing here
depends on θ; the statistics (:mod:`twolevel.models.design.multi_stats`) and the engines
(:mod:`twolevel.models.lmm.nested`, :mod:`twolevel.models.lmm.crossed`) take it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError, FormulaError
from twolevel.models.design.formula import _missing_variables, _variables, parse_formula
from twolevel.models.design.matrices import (
    _factorize_sorted,
    _full_rank_columns,
    _model_matrix,
    _ModelData,
    _ModelSpecs,
)

__all__ = [
    "Factor",
    "MultiDesign",
    "MultiTerm",
    "expand_group",
    "grouping_factors",
    "is_nested_in",
    "make_multi_design",
    "needs_multi",
]

_GROUP_PART = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


# ----------------------------------------------------------------------------- formula side


def _split_top(s: str, sep: str) -> list[str]:
    """Split ``s`` at ``sep`` outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [p.strip() for p in out]


def _interaction_name(parts: list[str]) -> str:
    """lme4's deparsed name of the interaction of ``parts`` (innermost first):
    ``["c", "b", "a"]`` → ``"c:(b:a)"``; ``["b", "a"]`` → ``"b:a"``."""
    if len(parts) == 1:
        return parts[0]
    rest = _interaction_name(parts[1:])
    return f"{parts[0]}:({rest})" if len(parts) > 2 else f"{parts[0]}:{rest}"


def expand_group(group: str) -> list[tuple[str, tuple[str, ...]]]:
    """The grouping factors of one bar's right-hand side, lme4's names and the data columns
    whose interaction each is (in the name's order).

    ``"school/class"`` → ``[("class:school", ("class", "school")), ("school", ("school",))]``;
    ``"school:class"`` → ``[("school:class", ("school", "class"))]``; ``"a/b/c"`` →
    ``c:(b:a)``, ``b:a``, ``a``.

    Raises
    ------
    FormulaError
        For a grouping expression that is not columns joined by ``/`` or ``:``.
    """
    g = re.sub(r"\s+", "", group)
    while g.startswith("(") and g.endswith(")"):
        g = g[1:-1]
    slash = _split_top(g, "/")
    levels: list[list[str]] = []
    for piece in slash:
        piece = piece.strip("()")
        cols = [c for c in piece.split(":")]
        if not all(_GROUP_PART.match(c) for c in cols):
            raise FormulaError(
                f"grouping factor '{group}' is not understood: write column names joined by '/' "
                "(nesting, e.g. 'school/class') or ':' (interaction, e.g. 'school:class')"
            )
        levels.append(cols)
    if len(levels) == 1:
        cols = levels[0]
        return [(":".join(cols), tuple(cols))]
    out = []
    for i in range(len(levels), 0, -1):
        # nesting a/b/c: factor i is the interaction of levels[:i], innermost first
        parts = [":".join(p) for p in reversed(levels[:i])]
        cols = tuple(c for p in reversed(levels[:i]) for c in p)
        out.append((_interaction_name(parts), cols))
    return out


@dataclass(frozen=True)
class MultiTerm:
    """One lme4 random-effects term after ``/`` and ``||`` expansion.

    Fields
    ------
    factor : index into :attr:`MultiDesign.factors`.  names : lme4's names of its columns.
    columns : positions in that factor's ``Z``.
    """

    factor: int
    names: tuple[str, ...]
    columns: tuple[int, ...]


@dataclass(frozen=True)
class Factor:
    """One grouping factor: lme4's name, the data columns it is built from, each row's level
    code, the level labels (R's order) and the N × q random-effect covariates of its terms."""

    name: str
    columns: tuple[str, ...]
    codes: np.ndarray
    levels: np.ndarray
    Z: np.ndarray
    z_names: tuple[str, ...]

    @property
    def n_levels(self) -> int:
        """Number of levels ℓ."""
        return int(self.levels.shape[0])

    @property
    def q(self) -> int:
        """Random effects per level."""
        return int(self.Z.shape[1])


def is_nested_in(inner: np.ndarray, outer: np.ndarray, n_inner: int) -> bool:
    """lme4's ``isNested``: every level of ``inner`` occurs with exactly one level of ``outer``
    (both are integer codes of the same rows)."""
    first = np.full(n_inner, -1, dtype=np.int64)
    first[inner] = outer  # the last outer code seen for each inner level
    return bool(np.all(first[inner] == outer))


@dataclass(frozen=True)
class MultiDesign:
    """Arrays for a linear mixed model with several grouping factors.

    Fields
    ------
    formula, response : the formula and the response column.
    y : (n,) response.  X : (n, p) fixed-effects model matrix (full column rank).
    x_names : lme4's names of X's columns.
    factors : the distinct grouping factors, most levels first (stable).
    terms : the random-effects terms in lme4's order (decreasing number of levels, stable).
    n_na_dropped : rows removed for a missing value (grouping columns included).
    dropped_columns : rank-deficient fixed-effect columns dropped.  notes : messages for the user.
    model_specs : how each model matrix was built (as :class:`~twolevel.models.design.Design`).
    """

    formula: str
    response: str
    y: np.ndarray
    X: np.ndarray
    x_names: tuple[str, ...]
    factors: tuple[Factor, ...]
    terms: tuple[MultiTerm, ...]
    n_na_dropped: int = 0
    dropped_columns: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    model_specs: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n(self) -> int:
        """Number of observations."""
        return int(self.y.shape[0])

    @property
    def p(self) -> int:
        """Number of fixed effects."""
        return int(self.X.shape[1])

    @cached_property
    def templates(self) -> tuple[np.ndarray, ...]:
        """Per factor a q_f × q_f integer matrix: the index in θ of T_f[r, c], −1 for a
        structural zero. θ holds each term's lower triangle column-wise, in lme4's term order."""
        tmpls = [-np.ones((f.q, f.q), dtype=int) for f in self.factors]
        k = 0
        for t in self.terms:
            for ci, c in enumerate(t.columns):
                for r in t.columns[ci:]:
                    tmpls[t.factor][r, c] = k
                    k += 1
        for tm in tmpls:
            tm.flags.writeable = False
        return tuple(tmpls)

    @property
    def n_theta(self) -> int:
        """Length of θ."""
        return int(sum(len(t.columns) * (len(t.columns) + 1) // 2 for t in self.terms))

    @property
    def theta_lower(self) -> np.ndarray:
        """lme4's lower bounds: 0 for diagonal elements of each T_f, −∞ otherwise."""
        lower = np.full(self.n_theta, -np.inf)
        for tm in self.templates:
            d = np.diag(tm)
            lower[d[d >= 0]] = 0.0
        return lower

    @property
    def term_group_names(self) -> tuple[str, ...]:
        """lme4's VarCorr names of the terms: the factor's name, ``name.1``, ``name.2`` … for
        further terms on the same factor (R's ``make.unique``)."""
        seen: dict[str, int] = {}
        out = []
        for t in self.terms:
            nm = self.factors[t.factor].name
            k = seen.get(nm, 0)
            out.append(nm if k == 0 else f"{nm}.{k}")
            seen[nm] = k + 1
        return tuple(out)

    @property
    def theta_names(self) -> tuple[str, ...]:
        """Names of the θ elements as lme4's ``getME(fit, "theta")``."""
        names = [""] * self.n_theta
        for t in self.terms:
            f = self.factors[t.factor]
            tm = self.templates[t.factor]
            for ci, c in enumerate(t.columns):
                for r in t.columns[ci:]:
                    nm = f.z_names[r] if r == c else f"{f.z_names[r]}.{f.z_names[c]}"
                    names[tm[r, c]] = f"{f.name}.{nm}"
        return tuple(names)

    def factor_T(self, theta: np.ndarray, k: int) -> np.ndarray:
        """T_k (q_k × q_k, lower triangular) of factor k from θ: Σ_k = σ² T_k T_kᵀ."""
        tm = self.templates[k]
        T = np.zeros(tm.shape)
        m = tm >= 0
        T[m] = np.asarray(theta, dtype=float)[tm[m]]
        return T

    def theta_start(self, group_sums: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None
                    ) -> np.ndarray:
        """lme4's starting θ (``mkLmerDevfun``): 1 on each T's diagonal, 0 off it; when every
        term is a random intercept of its own factor, θ0_f = sqrt(v_f / v_e) with
        v_f = var(ave(y, f)) and v_e = var(y) − Σ_f v_f, if v_e > 0. ``group_sums``: per factor
        (rows, Σy) of every level when already at hand (the nested statistics hold them),
        otherwise counted here."""
        th = np.zeros(self.n_theta)
        for tm in self.templates:
            d = np.diag(tm)
            th[d[d >= 0]] = 1.0
        if (all(t.names == ("(Intercept)",) for t in self.terms)
                and len(self.terms) == len(self.factors)):
            v = []
            for k, f in enumerate(self.factors):  # var(ave(y, f)) from group counts and means
                if group_sums is None:
                    counts = np.bincount(f.codes, minlength=f.n_levels).astype(float)
                    sums = np.bincount(f.codes, weights=self.y, minlength=f.n_levels)
                else:
                    counts, sums = group_sums[k]
                means = sums / counts
                grand = float(counts @ means) / self.n
                v.append(float(counts @ (means - grand) ** 2) / (self.n - 1))
            v_e = float(np.var(self.y, ddof=1)) - sum(v)
            if v_e > 0:
                for k, vf in enumerate(v):
                    th[self.templates[k][0, 0]] = np.sqrt(vf / v_e)
        return th


def grouping_factors(formula: str) -> list[str]:
    """lme4's names of the distinct grouping factors of a formula after ``/`` expansion
    (first appearance order); more than one means :func:`make_multi_design` is needed."""
    parsed = parse_formula(formula)
    out: list[str] = []
    for bar in parsed.bars:
        for name, _ in expand_group(bar.group):
            if name not in out:
                out.append(name)
    return out


@lru_cache(maxsize=64)
def needs_multi(formula: str) -> bool:
    """True when a formula needs the several-factors path: more than one grouping factor after
    ``/`` expansion, or one factor that is an interaction (``school:class``). Cached per
    formula string (the one-factor path pays one dictionary look-up)."""
    facs = grouping_factors(formula)
    return len(facs) > 1 or any(":" in f for f in facs)


def _level_text(levels: np.ndarray) -> np.ndarray:
    """``str`` of every level, as an object array (numbers through Python's own ints and floats,
    which print alike and convert several times faster than NumPy scalars)."""
    fast = levels.dtype.kind in "biuUO" or levels.dtype == np.float64  # str(x) unchanged
    values = levels.tolist() if fast else list(levels)
    return np.asarray([str(v) for v in values], dtype=object)


def _interaction_codes(cols: tuple[str, ...], coded: dict[str, tuple[np.ndarray, np.ndarray]]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Codes and labels of the interaction of ``cols`` (lme4's ``%i%``): levels ordered by the
    first column's levels, then the next; labels pasted with ':'; unused combinations dropped."""
    if len(cols) == 1:
        codes, levels = coded[cols[0]]
        return codes, _level_text(levels)
    codes, levels0 = coded[cols[0]]
    n_comb = len(levels0)
    comp = [np.arange(n_comb)]  # per combined level, each column's level code
    for c in cols[1:]:
        cb, lb = coded[c]
        nb = len(lb)
        only = np.full(n_comb, -1, dtype=np.intp)
        only[codes] = cb
        if np.array_equal(only[codes], cb):  # the columns so far determine c (nested): same codes
            comp.append(only)
            continue
        key = codes.astype(np.int64) * nb + cb
        if n_comb * nb <= 4 * key.shape[0] + 1024:  # dense key range: an O(n) table
            present = np.zeros(n_comb * nb, dtype=bool)
            present[key] = True
            uniq = np.flatnonzero(present)
            codes = (np.cumsum(present, dtype=np.intp) - 1)[key]
        else:  # hashing, then the unique keys sorted (np.unique's answer without sorting n keys)
            codes, uniq = pd.factorize(key, sort=True)
        comp = [x[uniq // nb] for x in comp] + [uniq % nb]
        n_comb = len(uniq)
    labels = None
    for c, lv in zip(cols, comp, strict=True):
        text = _level_text(coded[c][1])[lv]
        labels = text if labels is None else labels + ":" + text  # per-element str concatenation
    return np.asarray(codes, dtype=np.intp), np.asarray(labels, dtype=object)


def _reused_label_notes(factors: list[Factor], cols_of: dict[str, tuple[str, ...]],
                        coded: dict, n: int) -> list[str]:
    """The reused-labels message: a single-column factor whose labels (most of them) occur in
    several groups of another single-column factor, some outer group holding at least half of
    the labels (labels restarting at 1 in every school), with replicated (school, class) cells,
    while the formula treats the two as crossed. One line per pair, with the count and the
    nested spelling. A fully crossed design with replication looks the same and gets the note
    too (worded conditionally)."""
    notes = []
    simple = [f for f in factors if len(f.columns) == 1]
    names = {f.name for f in factors}
    for inner in simple:
        for outer in simple:
            if inner is outer or inner.n_levels > outer.n_levels:
                continue
            if inner.n_levels == outer.n_levels and factors.index(inner) < factors.index(outer):
                continue
            if (is_nested_in(inner.codes, outer.codes, inner.n_levels)
                    or is_nested_in(outer.codes, inner.codes, outer.n_levels)):
                continue
            if f"{inner.name}:{outer.name}" in names or f"{outer.name}:{inner.name}" in names:
                continue
            cell = inner.codes.astype(np.int64) * outer.n_levels + outer.codes
            uniq, counts = np.unique(cell, return_counts=True)
            per_label = np.bincount((uniq // outer.n_levels).astype(np.intp),
                                    minlength=inner.n_levels)
            reused = int(np.sum(per_label > 1))
            widest = int(np.max(np.bincount((uniq % outer.n_levels).astype(np.intp))))
            if reused * 2 < inner.n_levels or widest * 2 < inner.n_levels or np.median(counts) < 2:
                # genuinely (partially) crossed: few labels shared, every outer group meets a
                # small part of the labels, or no replication within cells
                continue
            notes.append(
                f"{reused} of {inner.n_levels} '{inner.name}' labels occur in several "
                f"'{outer.name}' groups ({uniq.shape[0]} {outer.name}:{inner.name} combinations): "
                f"'(1 | {inner.name})' treats them as one crossed factor; if each "
                f"'{inner.name}' belongs to one '{outer.name}', write "
                f"'(1 | {outer.name}/{inner.name})'"
            )
    return notes


def make_multi_design(formula: str, data: pd.DataFrame) -> MultiDesign:
    """Build the :class:`MultiDesign` of a formula with any number of grouping factors.

    Parameters
    ----------
    formula : lme4 formula, e.g. ``"y ~ x + (1 + x | school/class)"`` or
        ``"y ~ 1 + (1 | a) + (1 | b)"``.
    data : the rows, a data frame.

    Returns
    -------
    MultiDesign

    Raises
    ------
    FormulaError
        No random-effects term, an unreadable grouping expression, an empty term, or an effect
        listed twice for one factor.
    DataError
        A column missing from the data, a non-numeric response, no complete rows, or a factor
        with fewer than 2 levels or as many levels as rows.

    Examples
    --------
    >>> import pandas as pd
    >>> import twolevel as tl
    >>> frame = pd.DataFrame({"school": [1, 1, 1, 1, 2, 2, 2, 2],
    ...                       "class": [1, 1, 2, 2, 1, 1, 2, 2],
    ...                       "x": [0.1, 0.4, -0.3, 0.8, 0.5, -0.2, 0.3, 0.0],
    ...                       "y": [1.0, 1.3, 0.2, 1.9, 1.1, 0.4, 0.9, 0.6]})
    >>> d = tl.make_multi_design("y ~ x + (1 | school/class)", frame)
    >>> [f.name for f in d.factors]
    ['class:school', 'school']
    """
    parsed = parse_formula(formula)
    if not parsed.bars:
        raise FormulaError(
            f"formula '{formula}' has no random-effects term such as '(1 | school)': "
            "this is not a mixed model; add one, or use ordinary least squares"
        )
    columns = data.columns
    expanded = [(bar, expand_group(bar.group)) for bar in parsed.bars]
    group_cols = list(dict.fromkeys(c for _, fs in expanded for _, cols in fs for c in cols))
    absent = [c for c in group_cols if c not in columns]
    if absent:
        raise DataError(
            f"grouping column(s) {', '.join(repr(c) for c in absent)} of formula '{formula}' "
            f"not in the data; available columns: {', '.join(map(str, columns))}"
        )
    exprs = [parsed.response, parsed.fixed] + [b.lhs for b in parsed.bars]
    missing = [v for e in exprs for v in _missing_variables(e, columns)]
    if missing:
        raise DataError(
            f"column(s) {', '.join(repr(m) for m in dict.fromkeys(missing))} of formula "
            f"'{formula}' not in the data; available columns: {', '.join(map(str, columns))}"
        )
    used = list(dict.fromkeys([v for e in exprs for v in _variables(e, columns)] + group_cols))
    series = {col: data[col] for col in used}
    if not pd.api.types.is_numeric_dtype(series[parsed.response]):
        raise DataError(
            f"response column '{parsed.response}' is not numeric "
            f"(dtype {series[parsed.response].dtype}); convert it to numbers first"
        )
    bad = np.zeros(len(data), dtype=bool)
    for s in series.values():
        if isinstance(s.dtype, np.dtype) and s.dtype.kind in "biu":  # NumPy ints: never missing
            continue
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            bad |= ~np.isfinite(s.to_numpy(dtype=float, na_value=np.nan))
        else:
            bad |= s.isna().to_numpy()
    n_dropped = int(bad.sum())
    if n_dropped == len(bad):
        raise DataError(
            f"no complete rows left for formula '{formula}' after removing missing values"
        )
    md = _ModelData(data, series, ~bad if n_dropped else slice(None), len(bad) - n_dropped)
    specs = _ModelSpecs()
    matrices: dict[str, tuple[np.ndarray, list[str]]] = {}

    def model_matrix(rhs: str) -> tuple[np.ndarray, list[str]]:
        if rhs.strip() not in matrices:
            mat, names, spec = _model_matrix(parsed.response, rhs, md)
            matrices[rhs.strip()] = mat, names
            specs[rhs.strip()] = spec, tuple(names)
        return matrices[rhs.strip()]

    X_full, x_names_full = model_matrix(parsed.fixed)
    keep = _full_rank_columns(X_full)
    dropped = tuple(x_names_full[k] for k in range(len(x_names_full)) if k not in keep)
    X = np.asfortranarray(X_full[:, keep])
    x_names = tuple(x_names_full[k] for k in keep)

    coded = {c: _factorize_sorted(series[c][~bad] if n_dropped else series[c]) for c in group_cols}
    # factor name → (columns, list of (names, matrix columns, correlated))
    fac_cols: dict[str, tuple[str, ...]] = {}
    fac_blocks: dict[str, list[tuple[list[str], np.ndarray]]] = {}
    raw_terms: list[tuple[str, list[str]]] = []
    for bar, facs in expanded:
        mat, names = model_matrix(bar.lhs)
        if mat.shape[1] == 0:
            raise FormulaError(f"random-effects term '({bar.lhs} | {bar.group})' has no columns")
        ncol = mat.shape[1]
        pieces = [[k] for k in range(ncol)] if not bar.correlated else [list(range(ncol))]
        for fname, cols in facs:
            fac_cols.setdefault(fname, cols)
            blocks = fac_blocks.setdefault(fname, [])
            have = [n for nms, _ in blocks for n in nms]
            for piece in pieces:
                nms = [names[k] for k in piece]
                dup = [n for n in nms if n in have]
                if dup:
                    raise FormulaError(
                        f"random effect '{dup[0]}' appears twice for '{fname}' in '{formula}'; "
                        "list each random effect once"
                    )
                have.extend(nms)
                blocks.append((nms, mat[:, piece]))
                raw_terms.append((fname, nms))
    factors_list: list[Factor] = []
    for fname, cols in fac_cols.items():
        codes, levels = _interaction_codes(cols, coded)
        blocks = fac_blocks[fname]
        Z = np.asfortranarray(np.hstack([b for _, b in blocks]))
        factors_list.append(Factor(name=fname, columns=cols, codes=codes, levels=levels, Z=Z,
                                   z_names=tuple(n for nms, _ in blocks for n in nms)))
    n = md.n
    for f in factors_list:
        if f.n_levels < 2:
            raise DataError(
                f"grouping factor '{f.name}' has only {f.n_levels} level; every grouping factor "
                "needs at least 2 levels"
            )
        if f.n_levels >= n:
            raise DataError(
                f"grouping factor '{f.name}' has {f.n_levels} levels for {n} rows: the number of "
                "levels must be smaller than the number of observations (is it a row id?)"
            )
    order = sorted(range(len(factors_list)), key=lambda i: -factors_list[i].n_levels)
    factors = [factors_list[i] for i in order]
    index = {f.name: k for k, f in enumerate(factors)}
    terms_unsorted = []
    for fname, nms in raw_terms:
        f = factors[index[fname]]
        terms_unsorted.append(MultiTerm(factor=index[fname], names=tuple(nms),
                                        columns=tuple(f.z_names.index(n) for n in nms)))
    terms = sorted(terms_unsorted, key=lambda t: -factors[t.factor].n_levels)  # stable
    notes = []
    if n_dropped:
        notes.append(f"{n_dropped} row(s) with missing or non-finite values removed (na.omit)")
    if dropped:
        notes.append("fixed-effect model matrix is rank deficient so dropping "
                     f"{len(dropped)} column(s): {', '.join(dropped)}")
    notes.extend(_reused_label_notes(factors, fac_cols, coded, n))
    return MultiDesign(
        formula=formula, response=parsed.response,
        y=np.array(md.column(parsed.response)), X=X, x_names=x_names, factors=tuple(factors),
        terms=tuple(terms), n_na_dropped=n_dropped, dropped_columns=dropped, notes=tuple(notes),
        model_specs=specs,
    )
