"""Formula parsing: an lme4 formula split into response, fixed part and random-effects bars.

The random-effect bars ``(lhs | g)`` and ``(lhs || g)`` are split off here (the ``formulae``
library does not keep the terms of one bar together nor know ``||``); the fixed part and the
left-hand side of each bar are turned into model matrices by ``formulae`` in
:mod:`twolevel.models.design.matrices`. Also here: the variables an expression uses, and R's
column names for ``formulae``'s labels (``Intercept`` → ``(Intercept)``, ``k[b]`` → ``kb``).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

from twolevel.data.errors import FormulaError

__all__ = ["BarTerm", "ParsedFormula", "parse_formula"]

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


_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")  # formulae: no leading "_"


def _plain_columns_plan(
    rhs: str, dtypes: dict
) -> tuple[tuple[str | None, ...], tuple[str, ...]] | None:
    """The plan of :func:`_simple_plan` read from the text alone, without ``formulae``, for the
    commonest right-hand side: ``1``'s and names of numeric (not boolean) columns joined by
    ``+`` (``1 + famsesc``, ``x + w``); else None, and ``formulae`` decides.

    ``formulae`` gives such a right-hand side the intercept first, then each distinct column once,
    in the order written, named as the column. Importing ``formulae`` costs more than a whole
    lecture fit (it loads ``scipy.interpolate`` and ``scipy.sparse.linalg``), so the command line
    and the first fit of a session skip it here; ``tests/test_design_plain.py`` holds this
    function to ``factor_plan._find_simple_plan`` (``formulae``'s answer) on random right-hand
    sides."""
    sources: list[str | None] = [None]
    for token in rhs.split("+"):
        token = token.strip()
        if token == "1":
            continue
        if not _PLAIN_NAME.match(token) or keyword.iskeyword(token) or token not in dtypes:
            return None
        dtype = dtypes[token]
        if (not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
                or pd.api.types.is_complex_dtype(dtype)):
            return None
        if token not in sources:
            sources.append(token)
    names = ["(Intercept)", *sources[1:]]
    return tuple(sources), tuple(names)
