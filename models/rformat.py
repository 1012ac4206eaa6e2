"""R's number formatting, enough to print lme4 / lmerTest summaries digit for digit.

Ports of R's ``formatReal`` (``format(x, digits=, nsmall=)`` on a numeric vector: common number of
decimals, fixed unless scientific is narrower), ``format.pval``, ``printCoefmat``, ``zapsmall``,
``abbreviate`` and ``print.default`` of character matrices and named vectors (R 4.2, options
``digits = 7``, ``width = 80``, ``scipen = 0``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = [
    "abbreviate",
    "cat_fill",
    "format_pval",
    "print_char_matrix",
    "print_coefmat",
    "print_named",
    "r_format",
    "r_round",
    "zapsmall",
]

WIDTH = 80
_EPS = float(np.finfo(float).eps)


def r_round(x, digits: int):
    """R's ``round(x, digits)``; a negative zero becomes 0 (R prints no "-0")."""
    return np.round(np.asarray(x, dtype=float), int(digits)) + 0.0


def _sci_parts(x: float, digits: int) -> tuple[int, int, bool]:
    """(kpower, nsig, neg) of R's ``scientific()``: x rounded to ``digits`` significant digits,
    trailing zeros dropped."""
    if x == 0:
        return 0, 1, False
    s = f"{abs(x):.{digits - 1}e}"
    mant, exp = s.split("e")
    sig = mant.replace(".", "").rstrip("0")
    return int(exp), max(1, len(sig)), x < 0


def r_format(values: Sequence[float], digits: int = 7, nsmall: int = 0) -> list[str]:
    """R's ``format(x, digits = digits, nsmall = nsmall)`` for a numeric vector: common width."""
    vals = [float(v) for v in values]
    fin = [v for v in vals if math.isfinite(v)]
    neg = any(v < 0 for v in fin)
    rgt, mxsl, mxns, mxe, mne = 0, 1, 1, -400, 400
    for v in fin:
        kp, nsig, _ = _sci_parts(v, digits)
        left = kp + 1
        sleft = (1 if v < 0 else 0) + (1 if left <= 0 else left)
        rgt = max(rgt, nsig - left)
        mxsl = max(mxsl, sleft)
        mxns = max(mxns, nsig)
        mxe, mne = max(mxe, kp), min(mne, kp)
    rgt = max(rgt, 0)
    out: list[str]
    if fin:
        e = 2 if (mxe >= 100 or mne <= -99) else 1
        d = mxns - 1
        w_sci = (1 if neg else 0) + (1 if d > 0 else 0) + d + 4 + e
        w_fix = mxsl + rgt + (1 if rgt else 0)
        if w_fix <= w_sci:
            rgt = max(rgt, nsmall)
            out = [f"{v:.{rgt}f}" if math.isfinite(v) else _nonfinite(v) for v in vals]
        else:
            out = [_sci(v, d) if math.isfinite(v) else _nonfinite(v) for v in vals]
    else:
        out = [_nonfinite(v) for v in vals]
    w = max((len(s) for s in out), default=0)
    return [s.rjust(w) for s in out]


def _sci(v: float, d: int) -> str:
    return f"{v:.{d}e}"


def _nonfinite(v: float) -> str:
    if math.isnan(v):
        return "NA"
    return "Inf" if v > 0 else "-Inf"


def zapsmall(x, digits: int) -> np.ndarray:
    """R 4.2's ``zapsmall``: ``round(x, max(0, digits − log10(max|x|)))`` (digits rounded)."""
    x = np.asarray(x, dtype=float)
    mx = float(np.max(np.abs(x[np.isfinite(x)]))) if np.isfinite(x).any() else 0.0
    d = max(0.0, digits - math.log10(mx)) if mx > 0 else digits
    return np.round(x, int(math.floor(d + 0.5))) + 0.0


def format_pval(pv: Sequence[float], digits: int, eps: float = _EPS) -> list[str]:
    """R's ``format.pval``."""
    pv = np.asarray(pv, dtype=float)
    is0 = pv < eps
    r = [""] * len(pv)
    rr: list[str] = []
    if (~is0).any():
        idx = np.nonzero(~is0)[0]
        p = pv[idx]
        with np.errstate(divide="ignore"):
            expo = np.floor(np.log10(np.where(p > 0, p, 1e-50)))
        fixp = (expo >= -3) | ((expo == -4) & (digits > 1))
        rr = [""] * len(p)
        for mask in (fixp, ~fixp):
            if mask.any():
                for k, s in zip(np.nonzero(mask)[0], r_format(p[mask], digits), strict=True):
                    rr[k] = s
        for k, i in enumerate(idx):
            r[i] = rr[k]
    if is0.any():
        dg = max(1, digits - 2)
        if (~is0).any():
            nc = max(len(s) for s in rr)
            if dg > 1 and dg + 6 > nc:
                dg = max(1, nc - 7)
            sep = "" if (dg == 1 and nc <= 6) else " "
        else:
            sep = "" if dg == 1 else " "
        s0 = "<" + sep + r_format([eps], dg)[0].strip()
        for i in np.nonzero(is0)[0]:
            r[i] = s0
    return r


def print_char_matrix(
    cells: Sequence[Sequence[str]],
    colnames: Sequence[str],
    rownames: Sequence[str],
    right: bool,
) -> str:
    """R's ``print.default`` of a character matrix with ``quote = FALSE``."""
    ncol = len(colnames)
    widths = [
        max([len(colnames[j])] + [len(row[j]) for row in cells]) for j in range(ncol)
    ]
    rw = max((len(r) for r in rownames), default=0)

    def fmt(s: str, w: int) -> str:
        return s.rjust(w) if right else s.ljust(w)

    lines = [" " * rw + "".join(" " + fmt(colnames[j], widths[j]) for j in range(ncol))]
    for rn, row in zip(rownames, cells, strict=True):
        lines.append(rn.ljust(rw) + "".join(" " + fmt(row[j], widths[j]) for j in range(ncol)))
    return "\n".join(lines)


def print_named(names: Sequence[str], values: Sequence[str]) -> str:
    """R's print of a named vector (already formatted): one common right-aligned column width,
    each entry followed by a space."""
    w = max(max(len(n) for n in names), max(len(v) for v in values))
    return (
        "".join(n.rjust(w) + " " for n in names) + "\n" + "".join(v.rjust(w) + " " for v in values)
    )


def cat_fill(items: Sequence[str], width: int = WIDTH) -> str:
    """R's ``cat(..., sep = "", fill = TRUE)``: break the line before an item that would pass
    ``width``."""
    lines, cur = [], ""
    for it in items:
        if cur and len(cur) + len(it) > width:
            lines.append(cur)
            cur = it
        else:
            cur += it
    lines.append(cur)
    return "\n".join(lines)


def abbreviate(name: str, minlength: int) -> str:
    """R's ``abbreviate(name, minlength)``: drop lower-case vowels from the right (not a word's
    first letter: R's ``FIRSTCHAR`` is a character after white space, so ``I(age^2)`` →
    ``I(g^2)``), then lower-case letters, then truncate."""
    if len(name) <= minlength:
        return name
    chars = list(name)

    def first_of_word(i: int) -> bool:
        return i == 0 or chars[i - 1].isspace()

    for cls in ("aeiou", "abcdefghijklmnopqrstuvwxyz"):
        i = len(chars) - 1
        while len(chars) > minlength and i > 0:
            if chars[i] in cls and not first_of_word(i):
                del chars[i]
            i -= 1
    return "".join(chars[: max(minlength, 0)]) if len(chars) > minlength else "".join(chars)


def print_coefmat(
    table: np.ndarray,
    rownames: Sequence[str],
    colnames: Sequence[str],
    digits: int = 4,
    has_pvalue: bool = True,
    signif_stars: bool = True,
) -> str:
    """R's ``printCoefmat(x, digits = digits)`` with its default column roles: all columns but the
    last two are coefficient-like (one rounding for all), the one before the p-value is the test
    statistic, the last is the p-value (with significance stars)."""
    x = np.asarray(table, dtype=float)
    nr, nc = x.shape
    k = nc - int(has_pvalue) - 1
    cs, tst = list(range(k)), k
    dig_tst = max(1, min(5, digits - 1))
    cf = [["" for _ in range(nc)] for _ in range(nr)]
    acs = np.abs(x[:, cs])
    ok = acs[np.isfinite(acs) & (acs != 0)]
    if np.isfinite(acs).any():
        digmin = 1 + (np.floor(np.log10([ok.min(), ok.max()])) if ok.size else np.zeros(2))
        rd = max(1, int(digits - digmin.min()))
        block = r_format(r_round(x[:, cs], rd).ravel(order="F"), digits)
        for jj, j in enumerate(cs):
            for i in range(nr):
                cf[i][j] = block[jj * nr + i]
    tcol = r_format(r_round(x[:, tst], dig_tst), digits)
    for i in range(nr):
        cf[i][tst] = tcol[i]
    # values that are not 0 but print as 0
    for j in cs:
        for i in range(nr):
            if x[i, j] != 0 and float(cf[i][j]) == 0:
                cf[i][j] = r_format([x[i, j]], max(1, digits - 1))[0]
    cols = list(colnames)
    legend = ""
    if has_pvalue:
        pv = x[:, nc - 1]
        pstr = format_pval(pv, dig_tst)
        for i in range(nr):
            cf[i][nc - 1] = pstr[i]
        if signif_stars and (pv < 0.1).any():
            stars = [_stars(p) for p in pv]
            w = max(len(s) for s in stars)
            for i in range(nr):
                cf[i].append(stars[i].ljust(w))
            cols.append("")
            legend = "\n---\nSignif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1"
    return print_char_matrix(cf, cols, rownames, right=True) + legend


def _stars(p: float) -> str:
    if not math.isfinite(p):
        return ""
    for cut, s in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p <= cut:
            return s
    return " "


def _r_num(x: float, digits: int) -> str:
    """R's ``cat(round(x, digits))`` (up to 7 significant digits, trailing zeros dropped)."""
    return f"{float(r_round(x, digits)):.7g}"


def deparse_formula(formula: str) -> str:
    """R's ``deparse`` spacing of a formula: spaces around ~ + - * | ||, none around ':'."""
    s = re.sub(r"\s+", "", formula)
    s = re.sub(r"\|\|", "\x00", s)
    s = re.sub(r"([~+*|\x00])", r" \1 ", s)
    s = re.sub(r"(?<=[^\s(~])-", " - ", s)
    s = s.replace("\x00", "||")
    s = re.sub(r"\s+", " ", s).strip()
    s = s.replace("( ", "(").replace(" )", ")")
    return s
