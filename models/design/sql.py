"""Formula → SQL: the model-matrix columns of an lme4 formula as SQL expressions (the scale path).

At scale the rows are never in Python: a database or a cluster evaluates each column of X, Z and y
inside its aggregation. This module turns the formula into those column expressions, with the
same columns, names and order as the in-memory path (:mod:`twolevel.models.design.matrices`, i.e.
``formulae``'s):

* numeric columns, ``a:b`` interactions and ``a*b`` (a, b, a:b); ``0 +`` / ``- 1`` drop the
  intercept;
* text columns are factors with R's treatment contrasts: the first level in sorted (bytewise) order
  is the reference; a factor is coded by all its levels when the term without it is absent (R's
  rule, e.g. ``w:f`` with no ``w``); the levels come from a first cheap pass (complete rows only);
* ``I(expr)`` with + − * / ^ ** on numeric columns, ``log``/``np.log``, ``exp``, ``sqrt``;
* centred columns by name (:class:`CenteredName`): ``c<x>`` = x − x̄_j, ``mean<x>`` = x̄_j,
  ``<x>_gmc`` = x − x̄ (:func:`twolevel.data.centering.center`'s default names).

Anything else raises :class:`~twolevel.data.errors.FormulaError` naming the term. lme4's
complete-case rule (a row goes when any variable of the formula or the grouping is missing) is the
``WHERE`` clause of :func:`complete_case_sql`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from twolevel.data.errors import DataError, FormulaError
from twolevel.models.design.formula import parse_formula

__all__ = ["CenteredName", "SqlColumn", "SqlTerm", "Atom", "compile_terms", "quote", "sql_literal",
           "complete_case_sql", "is_numeric_type", "is_text_type", "expand_columns",
           "centered_names"]

_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "INT")
_FUNCS = {"log": "ln", "np.log": "ln", "exp": "exp", "np.exp": "exp", "sqrt": "sqrt",
          "np.sqrt": "sqrt"}


def is_numeric_type(t: str) -> bool:
    """A DuckDB type that the formula treats as a number."""
    return str(t).upper().startswith(_NUMERIC)


def is_text_type(t: str) -> bool:
    """A DuckDB type that the formula treats as a factor (VARCHAR, ENUM)."""
    t = str(t).upper()
    return t.startswith("VARCHAR") or t.startswith("ENUM") or t == "STRING"


def quote(name: str) -> str:
    """SQL identifier ``"name"`` (embedded quotes doubled)."""
    return '"' + str(name).replace('"', '""') + '"'


def sql_literal(v) -> str:
    """An SQL literal for a level or a constant: floats round-trip exactly (``repr``)."""
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int):
        return str(v)
    return f"CAST({float(v)!r} AS DOUBLE)"


@dataclass(frozen=True)
class CenteredName:
    """A centred column a formula may name: ``c<x>`` (x − x̄_j, group-mean), ``mean<x>`` (x̄_j) or
    ``<x>_gmc`` (x − x̄, grand-mean), the names :func:`twolevel.data.centering.center` gives."""

    name: str
    column: str
    kind: str  # "group-mean" | "group-means" | "grand-mean"


def centered_names(column: str) -> tuple[CenteredName, ...]:
    """The three names a centred ``column`` can be used under (see :class:`CenteredName`)."""
    return (CenteredName(f"c{column}", column, "group-mean"),
            CenteredName(f"mean{column}", column, "group-means"),
            CenteredName(f"{column}_gmc", column, "grand-mean"))


@dataclass(frozen=True)
class Atom:
    """One factor of an interaction term: a numeric expression, or a text column (a factor).

    ``name`` is its R/formulae name, ``sql`` its expression (numeric atoms, DOUBLE),
    ``columns`` the data columns it reads, ``factor`` the text column (factor atoms), ``check``
    an SQL condition that must hold on complete rows (e.g. ``x > 0`` for ``log(x)``)."""

    name: str
    sql: str = ""
    columns: tuple[str, ...] = ()
    factor: str | None = None
    check: str | None = None
    centering: tuple[CenteredName, ...] = ()


@dataclass(frozen=True)
class SqlTerm:
    """An interaction of atoms (the intercept is the empty term)."""

    atoms: tuple[Atom, ...]

    @property
    def key(self) -> frozenset[str]:
        return frozenset(a.name for a in self.atoms)


@dataclass(frozen=True)
class SqlColumn:
    """One model-matrix column: R's name, its SQL (DOUBLE), and its kind ("intercept" = all
    ones, "dummy" = 0/1 product of factor indicators, "numeric" = anything else, shifted by its
    mean before the sums are taken)."""

    name: str
    sql: str
    kind: str
    columns: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------- parsing


def _split_top(s: str, sep: str) -> list[str]:
    """Split ``s`` on the character ``sep`` outside parentheses."""
    out, depth, start = [], 0, 0
    for k, ch in enumerate(s):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append(s[start:k])
            start = k + 1
    out.append(s[start:])
    return [p.strip() for p in out]


def _split_terms(rhs: str) -> list[str]:
    """Split a right-hand side into its top-level '+' terms; a top-level '-' starts a term that
    keeps its sign (``x - 1`` → ``x``, ``-1``)."""
    out, depth, cur = [], 0, []
    for ch in rhs:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if depth == 0 and ch in "+-":
            out.append("".join(cur).strip())
            cur = ["-"] if ch == "-" else []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return [re.sub(r"^-\s+", "-", p) for p in out if p]


_TOKEN = re.compile(r"\s*(\*\*|[A-Za-z_.][A-Za-z0-9_.]*"
                    r"|[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|[-+*/^()])")


def _expr_sql(expr: str, types: dict[str, str], term: str) -> tuple[str, str, tuple[str, ...]]:
    """SQL (DOUBLE arithmetic), R/formulae-style name and columns of an ``I(...)`` expression."""
    pos, sql, name, cols = 0, [], [], []
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise FormulaError(
                f"term '{term}': the SQL path cannot express '{expr[pos:]}'; inside I() use "
                "numeric "
                "columns, numbers and + - * / ^ ** only, or compute the column in the data first"
            )
        tok = m.group(1)
        pos = m.end()
        if re.fullmatch(r"[A-Za-z_.][A-Za-z0-9_.]*", tok):
            if tok not in types:
                raise DataError(f"column '{tok}' of term '{term}' is not in the data; available "
                                f"columns: {', '.join(types)}")
            if not is_numeric_type(types[tok]):
                raise FormulaError(f"term '{term}': column '{tok}' is {types[tok]}, not numeric; "
                                   "I() needs numbers")
            sql.append(f"CAST({quote(tok)} AS DOUBLE)")
            name.append(tok)
            cols.append(tok)
        elif tok in ("**", "^"):
            sql.append("^")
            name.append(f" {tok} " if tok == "**" else tok)
        elif tok in "+-*/":
            sql.append(tok)
            name.append(f" {tok} ")
        elif tok[0].isdigit():
            sql.append(f"CAST({tok} AS DOUBLE)")
            name.append(tok)
        else:
            sql.append(tok)
            name.append(tok)
    return "(" + " ".join(sql) + ")", "".join(name), tuple(dict.fromkeys(cols))


def _atom(text: str, types: dict[str, str], centered: dict[str, CenteredName], term: str) -> Atom:
    text = text.strip()
    if text in centered:
        c = centered[text]
        return Atom(name=text, sql="", columns=(c.column,), centering=(c,))
    if re.fullmatch(r"[A-Za-z_.][A-Za-z0-9_.]*", text):
        if text not in types:
            raise DataError(f"column '{text}' of the formula is not in the data; available "
                            f"columns: {', '.join(types)}")
        t = types[text]
        if is_numeric_type(t):
            return Atom(name=text, sql=f"CAST({quote(text)} AS DOUBLE)", columns=(text,))
        if is_text_type(t):
            return Atom(name=text, columns=(text,), factor=text)
        raise FormulaError(f"term '{term}': column '{text}' has type {t}, which the SQL path "
                           "treats neither as a number nor as a factor; cast it to DOUBLE or "
                           "VARCHAR")
    m = re.fullmatch(r"(I|log|np\.log|exp|np\.exp|sqrt|np\.sqrt)\((.*)\)", text, flags=re.S)
    if m:
        fn, inner = m.group(1), m.group(2)
        sql, name, cols = _expr_sql(inner, types, term)
        if fn == "I":
            return Atom(name=f"I({name})", sql=sql, columns=cols,
                        check=f"isfinite({sql})")
        f = _FUNCS[fn]
        check = {"ln": f"{sql} > 0", "sqrt": f"{sql} >= 0"}.get(f, f"isfinite({f}({sql}))")
        return Atom(name=f"{fn}({name})", sql=f"{f}({sql})", columns=cols, check=check)
    raise FormulaError(
        f"term '{text}' cannot be expressed by the SQL path (engine duckdb/dask); it supports "
        "numeric and text columns, ':' and '*', I(...), log(), exp(), sqrt() and the centred "
        "names c<x>, mean<x>, <x>_gmc; compute the column in the data, or use engine='memory'"
    )


def compile_terms(rhs: str, types: dict[str, str], centered: dict[str, CenteredName],
                  ) -> tuple[bool, list[SqlTerm]]:
    """The terms of a right-hand side in formulae's order: (has intercept, terms).

    ``a*b`` expands in place to a, b, a:b; duplicates are kept once; ``0``/``-1`` drop the
    intercept; ``1`` keeps it."""
    intercept = True
    terms: list[SqlTerm] = []
    seen: set[frozenset[str]] = set()
    for part in _split_terms(rhs):
        if not part:
            continue
        if part in ("0", "-1", "- 1"):
            intercept = False
            continue
        if part == "1":
            intercept = True
            continue
        if part.startswith("-"):
            raise FormulaError(f"term '{part}': removing terms with '-' is not supported by the "
                               "SQL path; write the terms you want")
        factors = _split_top(part, "*")
        groups = [[_atom(a, types, centered, part) for a in _split_top(f, ":")] for f in factors]
        for r in range(1, len(groups) + 1):
            for combo in itertools.combinations(groups, r):
                atoms = tuple(a for g in combo for a in g)
                if len({a.name for a in atoms}) < len(atoms):
                    continue
                t = SqlTerm(atoms)
                if t.key not in seen:
                    seen.add(t.key)
                    terms.append(t)
    return intercept, terms


def expand_columns(intercept: bool, terms: list[SqlTerm], levels: dict[str, list],
                   centered_sql: dict[str, str]) -> list[SqlColumn]:
    """Model-matrix columns of the terms, with R's treatment-contrast rule for factors."""
    cols: list[SqlColumn] = []
    if intercept:
        cols.append(SqlColumn("(Intercept)", "1.0", "intercept"))
    present = {t.key for t in terms} | ({frozenset()} if intercept else set())
    for t in terms:
        pieces: list[list[tuple[str, str, bool]]] = []  # (name, sql, is_dummy)
        for a in t.atoms:
            if a.factor is None:
                sql = centered_sql[a.name] if a.centering else a.sql
                pieces.append([(a.name, sql, False)])
                continue
            lv = levels[a.factor]
            contrast = (t.key - {a.name}) in present
            use = lv[1:] if contrast else lv
            pieces.append([(f"{a.name}{v}", f"CAST({quote(a.factor)} = {sql_literal(v)} AS DOUBLE)",
                            True) for v in use])
        # the first factor varies fastest (R's column order within a term)
        for combo in itertools.product(*reversed(pieces)):
            combo = tuple(reversed(combo))
            name = ":".join(c[0] for c in combo)
            sql = " * ".join(c[1] for c in combo) if len(combo) > 1 else combo[0][1]
            kind = "dummy" if all(c[2] for c in combo) else "numeric"
            cols.append(SqlColumn(name, sql, kind,
                                  tuple(dict.fromkeys(c for a in t.atoms for c in a.columns))))
    return cols


def complete_case_sql(columns: list[str], types: dict[str, str], group: str,
                      finite: bool = True) -> str:
    """lme4's complete-case rule as an SQL condition: the grouping column and every text column
    not NULL, every numeric column finite (NULL and NaN fail ``isfinite``). With
    ``finite=False`` only NULL and NaN fail (±Inf pass, to be detected and reported)."""
    conds = [f"{quote(group)} IS NOT NULL"]
    for c in columns:
        if c == group:
            continue
        if is_numeric_type(types[c]):
            conds.append(f"{'isfinite' if finite else 'NOT isnan'}(CAST({quote(c)} AS DOUBLE))")
        else:
            conds.append(f"{quote(c)} IS NOT NULL")
    return " AND ".join(conds)


def formula_parts(formula: str):
    """(parsed formula, the one grouping column) with the in-memory path's checks."""
    parsed = parse_formula(formula)
    if not parsed.bars:
        raise FormulaError(
            f"formula '{formula}' has no random-effects term such as '(1 | school)': "
            "this is not a mixed model; add one, or use ordinary least squares")
    groups = sorted({b.group for b in parsed.bars})
    if len(groups) > 1:
        raise FormulaError(f"formula '{formula}' has several grouping factors "
                           f"({', '.join(groups)}); twolevel fits two-level models with one")
    return parsed, groups[0]
