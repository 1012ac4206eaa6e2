"""The GLMM's response side: ``cbind(s, f)``, 0/1 / two-level factor / logical, proportions with
``weights``, counts, and ``offset(...)`` terms (glmer-algorithms §1.3), checked and turned into
the arrays the kernels use. The fixed and random parts are built by
:func:`twolevel.models.design.make_design` on the same complete rows.

Stored per row (as glmer's ``glmResp``): y (the proportion for binomial), w (prior weight ×
trials), n (trials, 1 unless ``cbind``), the offset o, and η⁰ = o + g(mustart).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

from twolevel.data.errors import DataError, FormulaError
from twolevel.models.design import Design, make_design, parse_formula
from twolevel.models.design.formula import _matching_paren, _missing_variables, _variables
from twolevel.models.design.newdata import NewRows, new_model_matrices
from twolevel.models.glmm.family import Family

__all__ = ["GlmResponse", "glmer_design", "glmer_new_rows"]

_Y = "glmer_response_"  # the synthetic response column handed to make_design
_FUNCS = {"log": np.log, "exp": np.exp, "sqrt": np.sqrt, "log1p": np.log1p, "abs": np.abs,
          "log10": np.log10, "log2": np.log2}


@dataclass(frozen=True)
class GlmResponse:
    """Response arrays of a GLMM on the design's rows.

    Fields
    ------
    y : response (proportion of successes for binomial).  w : prior weights × trials.
    n : trials (1 unless ``cbind``).  offset : o.  label : the response as written.
    kind : "bernoulli", "cbind", "proportion" or "count".  weights_label, offset_label : for
    ``summary()``'s Weights/Offset lines (None when absent).
    ka, kb, kc : per-row constants of the ``aic`` term (see ``kernels._aic_row``).
    notes : warnings given while encoding.
    """

    y: np.ndarray
    w: np.ndarray
    n: np.ndarray
    offset: np.ndarray
    label: str
    kind: str
    weights_label: str | None
    offset_label: str | None
    ka: np.ndarray
    kb: np.ndarray
    kc: np.ndarray
    notes: tuple[str, ...] = ()

    def with_y(self, y: np.ndarray) -> GlmResponse:
        """The same rows, weights, trials and offset with a new response ``y`` (a proportion
        for binomial rows, a count for Poisson), and the ``aic`` constants recomputed: the
        parametric bootstrap refits simulated responses with it."""
        y = np.ascontiguousarray(y, dtype=float)
        w = self.w
        if self.kind == "count":
            ka, kb, kc = w * y, w, -w * special.gammaln(y + 1)
        else:
            m = np.round(self.n if (self.n > 1).any() else w)
            kk = np.round(m * y)
            c = np.where(m > 0, w / np.where(m > 0, m, 1), 0.0)
            ka, kb = c * kk, c * (m - kk)
            kc = (np.zeros_like(c) if np.all(m == 1) else
                  c * (special.gammaln(m + 1) - special.gammaln(kk + 1)
                       - special.gammaln(m - kk + 1)))
        return dataclasses.replace(self, y=y, ka=np.ascontiguousarray(ka),
                                   kb=np.ascontiguousarray(kb), kc=np.ascontiguousarray(kc),
                                   notes=())

    def mustart(self, family: Family) -> np.ndarray:
        """R's ``family$initialize``: (n·y + ½)/(n + 1) for cbind, (w·y + ½)/(w + 1) for other
        binomial responses, y + 0.1 for Poisson."""
        if family.is_binomial:
            m = self.n if self.kind == "cbind" else self.w
            return (m * self.y + 0.5) / (m + 1.0)
        return self.y + 0.1

    def saturated_constant(self, family: Family) -> float:
        """C_sat = −2 Σ log p(y_i | μ_i = y_i), the ``aic`` term at the saturated fit (§1.4)."""
        mu = np.clip(self.y, 1e-300, None)
        if family.is_binomial:
            lp = self.kc + special.xlogy(self.ka, self.y) + special.xlogy(self.kb, 1 - self.y)
        else:
            lp = self.kc + special.xlogy(self.ka, mu) - self.kb * self.y
        return float(-2 * lp.sum())


def _eval(expr: str, data: pd.DataFrame) -> np.ndarray:
    """Value of an R-style arithmetic expression of columns (``size - incidence``,
    ``log(exposure)``) on every row, as float."""
    py = expr.replace("^", "**")
    names = {c: pd.to_numeric(data[c], errors="coerce").to_numpy(dtype=float)
             for c in _variables(expr, data.columns)}
    try:
        with np.errstate(all="ignore"):
            val = eval(py, {"__builtins__": {}}, {**_FUNCS, **names})  # noqa: S307
    except Exception as exc:
        raise FormulaError(f"cannot evaluate '{expr}' on the data: {exc}") from exc
    return np.broadcast_to(np.asarray(val, dtype=float), (len(data),)).copy()


def _split_offsets(rhs: str) -> tuple[str, list[str]]:
    """The right-hand side without its ``offset(...)`` terms, and the offsets' expressions."""
    offsets = []
    out = rhs
    while True:
        m = re.search(r"\boffset\s*\(", out)
        if not m:
            break
        end = _matching_paren(out, m.end() - 1)
        offsets.append(out[m.end() : end].strip())
        out = out[: m.start()] + out[end + 1 :]
    out = re.sub(r"\+\s*(\+\s*)+", "+ ", out)
    out = re.sub(r"^\s*\+|\+\s*$", "", out.strip()).strip()
    return out, offsets


def _inline_I(rhs: str, data: dict, names: dict) -> str:
    """Replace each ``I(expr)`` by a computed column (R arithmetic, ``^`` for powers, which
    ``formulae`` does not read); ``names`` maps the column to R's name ``I(expr)``."""
    out = rhs
    while True:
        m = re.search(r"(?<![A-Za-z0-9_.])I\s*\(", out)
        if not m:
            return out
        end = _matching_paren(out, m.end() - 1)
        expr = out[m.end() : end].strip()
        col = f"glmer_I{len(names)}_"
        data[col] = expr
        names[col] = "I(" + re.sub(r"\s*\^\s*", "^", expr) + ")"
        out = out[: m.start()] + col + out[end + 1 :]


def _inner_formula(parsed, fixed: str):
    """The formula handed to make_design: the synthetic response, ``fixed`` (offsets already
    split off) and the bars, each ``I(expr)`` replaced by a computed column. Returns
    ``(inner, fixed, bar_lhs, icols, inames)``: icols maps each computed column to its
    expression, inames to R's name ``I(expr)``."""
    icols: dict[str, str] = {}
    inames: dict[str, str] = {}
    fixed = _inline_I(fixed, icols, inames)
    bar_lhs = [_inline_I(b.lhs, icols, inames) for b in parsed.bars]
    bars = " + ".join(f"({lhs_} {'|' if b.correlated else '||'} {b.group})"
                      for lhs_, b in zip(bar_lhs, parsed.bars, strict=True))
    return f"{_Y} ~ {fixed}" + (f" + {bars}" if bars else ""), fixed, bar_lhs, icols, inames


def _cbind_parts(lhs: str) -> tuple[str, str] | None:
    m = re.fullmatch(r"\s*cbind\s*\((.*)\)\s*", lhs)
    if not m:
        return None
    inner, depth = m.group(1), 0
    for k, ch in enumerate(inner):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            return inner[:k].strip(), inner[k + 1 :].strip()
    raise FormulaError(f"'{lhs}' needs two arguments: cbind(successes, failures)")


def _binary_codes(s: pd.Series, col: str) -> np.ndarray:
    """0/1 codes of a logical or two-level factor response (R: the first level is failure)."""
    if pd.api.types.is_bool_dtype(s):
        return s.astype(float).to_numpy()
    if isinstance(s.dtype, pd.CategoricalDtype):
        levels = list(s.cat.remove_unused_categories().cat.categories)
    else:
        levels = sorted(s.dropna().unique().tolist(), key=str)
    if len(levels) != 2:
        raise DataError(
            f"response column '{col}' is not numeric and has {len(levels)} distinct value(s) "
            f"({', '.join(map(str, levels[:6]))}); a binomial response must be 0/1, logical, a "
            "two-level factor, or cbind(successes, failures)"
        )
    out = np.where(s.isna(), np.nan, (s.astype(object) == levels[1]).astype(float))
    return out.astype(float)


def _first_bad(mask: np.ndarray, values: np.ndarray, index) -> str:
    k = int(np.flatnonzero(mask)[0])
    return f"row {index[k]} (value {values[k]:g}; {int(mask.sum())} row(s) in all)"


def glmer_design(
    formula: str, data: pd.DataFrame, family: Family, weights=None, multi: bool = False
) -> tuple[Design, GlmResponse]:
    """Design (X, Z, groups) and response arrays of a glmer formula on ``data``.

    Rows with a missing value in any variable of the model (response parts, offset inputs,
    weights, covariates, group) are dropped, as R's ``na.omit``. Raises DataError for responses
    glmer cannot fit, naming the column and an offending value. ``multi``: several grouping
    factors, the design of :func:`twolevel.models.design.multi.make_multi_design`.
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError("data must be a pandas DataFrame")
    parsed = parse_formula(formula)
    fixed, offsets = _split_offsets(parsed.fixed)
    fixed = fixed or "1"
    lhs = parsed.response
    cb = _cbind_parts(lhs)
    index = data.index
    if cb is not None:
        if not family.is_binomial:
            raise FormulaError(f"'{lhs}' (cbind) is a binomial response; use family='binomial'")
        s, f = _eval(cb[0], data), _eval(cb[1], data)
        ok = np.isfinite(s) & np.isfinite(f)
        if (ok & (s < 0)).any():
            raise DataError(f"successes '{cb[0]}' in '{lhs}' are negative in "
                            f"{_first_bad(ok & (s < 0), s, index)}; counts must be ≥ 0")
        if (ok & (f < 0)).any():
            raise DataError(f"failures '{cb[1]}' in '{lhs}' are negative in "
                            f"{_first_bad(ok & (f < 0), f, index)}: successes exceed trials; "
                            "cbind takes (successes, failures), not (successes, trials)")
        for nm, v in ((cb[0], s), (cb[1], f)):
            if (ok & (v != np.round(v))).any():
                raise DataError(f"'{nm}' in '{lhs}' is not a whole number in "
                                f"{_first_bad(ok & (v != np.round(v)), v, index)}; "
                                "cbind needs counts of successes and failures")
        trials = s + f
        with np.errstate(invalid="ignore", divide="ignore"):
            yv = np.where(trials > 0, s / trials, 0.0)
        yv[~ok] = np.nan
        kind = "cbind"
    else:
        col = lhs.strip()
        if col in data.columns and not pd.api.types.is_numeric_dtype(data[col]) or (
            col in data.columns and pd.api.types.is_bool_dtype(data[col])
        ):
            if not family.is_binomial:
                raise DataError(f"response column '{col}' is not numeric (dtype "
                                f"{data[col].dtype}); a poisson response must be counts")
            yv = _binary_codes(data[col], col)
        else:
            yv = _eval(col, data)
        trials = np.ones(len(data))
        kind = ("proportion" if weights is not None else "bernoulli") if family.is_binomial \
            else "count"
    if weights is None:
        prior = np.ones(len(data))
        wlabel = None
    elif isinstance(weights, str):
        if weights not in data.columns:
            raise DataError(f"weights column '{weights}' is not in the data")
        prior = pd.to_numeric(data[weights], errors="coerce").to_numpy(dtype=float)
        wlabel = weights
    else:
        prior = np.asarray(weights, dtype=float)
        if prior.shape != (len(data),):
            raise DataError(f"weights must have one value per row ({len(data)}), got {prior.shape}")
        wlabel = "weights"
    if (np.isfinite(prior) & (prior < 0)).any():
        raise DataError(f"weights {wlabel!r} are negative in "
                        f"{_first_bad(np.isfinite(prior) & (prior < 0), prior, index)}")
    off = np.zeros(len(data))
    off_missing = np.zeros(len(data), dtype=bool)
    for expr in offsets:
        v = _eval(expr, data)
        inputs = _variables(expr, data.columns)
        miss = np.zeros(len(data), dtype=bool)
        for c in inputs:
            miss |= data[c].isna().to_numpy()
        bad = ~np.isfinite(v) & ~miss
        if bad.any():
            raise DataError(f"offset 'offset({expr})' is not finite in "
                            f"{_first_bad(bad, v, index)}; e.g. log(0) for a zero exposure — "
                            "drop those rows or fix the exposure")
        off += np.where(miss, 0.0, v)
        off_missing |= miss
    yv = np.where(off_missing | ~np.isfinite(prior), np.nan, yv)

    inner, fixed, bar_lhs, icols, inames = _inner_formula(parsed, fixed)
    frame = data.assign(**{_Y: yv}, **{c: _eval(e, data) for c, e in icols.items()})
    frame.attrs = {}
    if multi:
        from twolevel.models.design.multi import expand_group, make_multi_design

        design = make_multi_design(inner, frame)
        design = dataclasses.replace(design, formula=formula, response=lhs)
        group_cols = [c for b in parsed.bars for _, cols in expand_group(b.group) for c in cols]
    else:
        design = make_design(inner, frame)
        design = dataclasses.replace(design, formula=formula, response=lhs)
        group_cols = [parsed.bars[0].group]
    if inames and multi:
        def rn(names):
            return tuple(inames.get(n, n) for n in names)
        design = dataclasses.replace(
            design, x_names=rn(design.x_names),
            factors=tuple(dataclasses.replace(f, z_names=rn(f.z_names)) for f in design.factors),
            terms=tuple(dataclasses.replace(t, names=rn(t.names)) for t in design.terms))
    elif inames:
        def rn(names):
            return tuple(inames.get(n, n) for n in names)
        design = dataclasses.replace(
            design, formula=formula, x_names=rn(design.x_names), z_names=rn(design.z_names),
            terms=tuple(dataclasses.replace(t, names=rn(t.names)) for t in design.terms))
    # the rows make_design kept: the same complete-case rule on the same columns
    exprs = [fixed] + bar_lhs
    used = list(dict.fromkeys([v for e in exprs for v in _variables(e, frame.columns)]
                              + group_cols + [_Y]))
    keep = np.ones(len(frame), dtype=bool)
    for c in used:
        s_ = frame[c]
        if pd.api.types.is_numeric_dtype(s_) and not pd.api.types.is_bool_dtype(s_):
            keep &= np.isfinite(s_.to_numpy(dtype=float, na_value=np.nan))
        else:
            keep &= ~s_.isna().to_numpy()
    if int(keep.sum()) != design.n:
        raise DataError("internal: could not align the response with the model rows")
    y = yv[keep]
    trials, prior, off = trials[keep], prior[keep], off[keep]
    rows = index[keep]
    notes = list(design.notes)
    if family.is_binomial:
        if kind == "bernoulli":
            bad = (y != 0) & (y != 1)
            if bad.any():
                raise DataError(f"response '{lhs}' has values other than 0/1 in "
                                f"{_first_bad(bad, y, rows)}; for a binomial response give "
                                "0/1, cbind(successes, failures), or proportions with weights")
        elif kind == "proportion":
            bad = (y < 0) | (y > 1)
            if bad.any():
                raise DataError(f"proportion response '{lhs}' is outside [0, 1] in "
                                f"{_first_bad(bad, y, rows)}")
            k = y * prior
            if (np.abs(k - np.round(k)) > 1e-7).any():
                msg = "non-integer #successes in a binomial glm! (proportion × weights)"
                warnings.warn(msg, stacklevel=3)
                notes.append(msg)
        w = prior * trials
        n = trials if kind == "cbind" else np.ones_like(y)
        m = n.copy() if (n > 1).any() else w.copy()
        kk = np.round(m * y)
        m = np.round(m)
        c = np.where(m > 0, w / np.where(m > 0, m, 1), 0.0)
        ka, kb = c * kk, c * (m - kk)
        if np.all(m == 1):  # one trial a row: log C(1, k) = 0 (skips 3n log-gammas)
            kc = np.zeros_like(c)
        else:
            kc = c * (special.gammaln(m + 1) - special.gammaln(kk + 1)
                      - special.gammaln(m - kk + 1))
        if np.all(y == y[0]) and kind == "bernoulli":
            raise DataError(f"response '{lhs}' is constant ({y[0]:g}) on all {len(y)} rows")
    else:
        bad = y < 0
        if bad.any():
            raise DataError(f"count response '{lhs}' is negative in {_first_bad(bad, y, rows)}; "
                            "poisson needs counts ≥ 0")
        bad = y != np.round(y)
        if bad.any():
            raise DataError(
                f"count response '{lhs}' is not a whole number in {_first_bad(bad, y, rows)}: "
                "glmer's poisson likelihood is −∞ there (dpois of a non-integer is 0); round "
                "the counts, or model a rate with a whole-number count and "
                "offset(log(exposure))")
        if np.all(y == y[0]):
            raise DataError(f"response '{lhs}' is constant ({y[0]:g}) on all {len(y)} rows")
        w = prior
        n = np.ones_like(y)
        ka, kb, kc = w * y, w, -w * special.gammaln(y + 1)
    resp = GlmResponse(
        y=np.ascontiguousarray(y, dtype=float), w=np.ascontiguousarray(w, dtype=float),
        n=n, offset=np.ascontiguousarray(off, dtype=float), label=lhs, kind=kind,
        weights_label=wlabel, offset_label=" + ".join(offsets) if offsets else None,
        ka=np.ascontiguousarray(ka), kb=np.ascontiguousarray(kb),
        kc=np.ascontiguousarray(kc), notes=tuple(notes))
    return design, resp


def glmer_new_rows(design: Design, newdata) -> tuple[NewRows, np.ndarray]:
    """X₀, Z₀, the group index and the offset o₀ of ``newdata`` for a glmer ``design``: the fit's
    formula without its response, ``offset(...)`` terms evaluated on the new rows, ``I(...)``
    computed as at fit time, factors and transforms rebuilt by
    :func:`twolevel.models.design.newdata.new_model_matrices`. The response is not needed.

    Raises DataError naming a column newdata lacks (the offset's inputs included), a missing or
    non-finite value, an unseen factor level, or a non-finite offset."""
    nd = newdata if isinstance(newdata, pd.DataFrame) else pd.DataFrame(newdata)
    if len(nd) == 0:
        raise DataError("newdata has no rows")
    parsed = parse_formula(design.formula)
    fixed, offsets = _split_offsets(parsed.fixed)
    fixed = fixed or "1"
    missing = list(dict.fromkeys(
        v for e in [fixed, *offsets, *(b.lhs for b in parsed.bars)]
        for v in _missing_variables(e, nd.columns)))
    if missing:
        raise DataError(
            f"newdata lacks column(s) {', '.join(repr(m) for m in missing)} used by "
            f"'{design.formula}'; newdata has: {', '.join(map(str, nd.columns))}")
    inner, _, _, icols, inames = _inner_formula(parsed, fixed)
    back = {v: k for k, v in inames.items()}  # R's I(expr) name -> the computed column

    def rn(names):
        return tuple(back.get(n, n) for n in names)

    inner_design = dataclasses.replace(
        design, formula=inner, x_names=rn(design.x_names), z_names=rn(design.z_names),
        terms=tuple(dataclasses.replace(t, names=rn(t.names)) for t in design.terms))
    frame = nd.assign(**{c: _eval(e, nd) for c, e in icols.items()})
    rows = new_model_matrices(inner_design, frame)
    off = np.zeros(len(nd))
    for expr in offsets:
        v = _eval(expr, nd)
        if not np.isfinite(v).all():
            raise DataError(f"offset 'offset({expr})' is not finite in newdata "
                            f"{_first_bad(~np.isfinite(v), v, nd.index)}; give a positive "
                            "exposure for every row")
        off += v
    return rows, off
