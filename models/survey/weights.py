"""Sampling weights at two levels: checking them and turning them into a_ij and w_j.

Notation (``docs/survey.md``, Rabe-Hesketh & Skrondal 2006): school j has the level-2 weight
w_j; student i of school j has the level-1 weight *conditional* on the school, a_ij = w_{i|j}.
The unconditional (total) student weight is w_ij = a_ij · w_j. WeMix's ``mix()`` expects
unconditional level-1 weights by default (a_ij = w_ij / w_j); Stata's ``mixed``, Mplus, GLLAMM
and SAS expect conditional ones (``conditional=True``).

Scaling rescales a_ij within each school (w_j untouched):

* ``none``: a*_ij = a_ij;
* ``size`` (method A; Stata ``pwscale(size)``, Mplus ``CLUSTER``): a*_ij = a_ij n_j / Σ_i a_ij;
* ``effective`` (method B; Stata ``pwscale(effective)``, Mplus ``ECLUSTER``):
  a*_ij = a_ij Σ_i a_ij / Σ_i a_ij².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError

__all__ = ["SCALINGS", "SurveyWeights", "check_weight_column", "check_weights_spec",
           "scale_level1", "survey_weights", "weights_by_codes"]

SCALINGS = ("none", "size", "effective")
LEVEL2_RTOL = 1e-8  # a level-2 weight may vary within a school by this much (rounding)


@dataclass(frozen=True)
class SurveyWeights:
    """The weights a pseudo-likelihood fit uses, aligned with the rows kept.

    Fields
    ------
    level1, level2 : the column names as given (``None`` for a level of unit weights).
    conditional : whether ``level1`` was given conditional on the school.
    scaling : ``none``, ``size`` or ``effective``.
    keep : boolean mask of the input rows kept (weights positive, school weight positive).
    a : (n_kept,) conditional level-1 weights a*_ij after scaling.
    w_school : w_j of the schools kept (a Series indexed by school label).
    n_zero_rows, n_zero_schools : rows and schools dropped because their weight was 0.
    """

    level1: str | None
    level2: str | None
    conditional: bool
    scaling: str
    keep: np.ndarray
    a: np.ndarray
    w_school: pd.Series
    n_zero_rows: int
    n_zero_schools: int

    def to_dict(self) -> dict:
        """The CLI's ``weights`` object: level1, level2, conditional, scaling."""
        return {"level1": self.level1, "level2": self.level2,
                "conditional": bool(self.conditional), "scaling": self.scaling}

    @property
    def notes(self) -> tuple[str, ...]:
        """Warnings about dropped rows/schools (WeMix drops rows with weight 0 too)."""
        out = []
        if self.n_zero_rows:
            out.append(f"{self.n_zero_rows} row(s) with a level-1 weight of 0 dropped")
        if self.n_zero_schools:
            out.append(f"{self.n_zero_schools} school(s) with a level-2 weight of 0, or all "
                       "level-1 weights 0, dropped")
        return tuple(out)


def check_weight_column(data: pd.DataFrame, col: str, level: str, values: bool = True
                        ) -> np.ndarray:
    """The values of weight column ``col`` as floats, after checking them (``values=False``:
    only that the column exists and is numeric; the values are checked elsewhere).

    Raises
    ------
    DataError
        ``col`` is not in the data, not numeric, or has a missing, negative or infinite value
        (the message names the column and the first offending row).
    """
    if col not in data.columns:
        raise DataError(f"{level} weight column '{col}' is not in the data; available columns: "
                        f"{', '.join(map(str, data.columns))}")
    s = data[col]
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        raise DataError(f"{level} weight column '{col}' is not numeric (dtype {s.dtype}); "
                        "convert it to numbers first")
    v = s.to_numpy(dtype=float, na_value=np.nan)
    if not values:
        return v
    for bad, what in ((np.isnan(v), "missing"), (np.isinf(v), "infinite"), (v < 0, "negative")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{level} weight column '{col}' has {int(bad.sum())} {what} "
                            f"value(s) (first at row {i}: {v[i]!r}); sampling weights must be "
                            "finite and ≥ 0: fix or drop those rows")
    return v


def scale_level1(a: np.ndarray, codes: np.ndarray, n_groups: int, scaling: str) -> np.ndarray:
    """Rescale conditional level-1 weights within each school (module docstring).

    ``size``: a·n_j/Σa; ``effective``: a·Σa/Σa². Schools must have Σa > 0.

    Parameters
    ----------
    a : (n,) weights.  codes : (n,) school codes.  n_groups : J.  scaling : the method.

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> import numpy as np
    >>> scale_level1(np.array([1.0, 3.0]), np.array([0, 0]), 1, "size")
    array([0.5, 1.5])
    """
    if scaling == "none":
        return a
    s1 = np.bincount(codes, weights=a, minlength=n_groups)
    if scaling == "size":
        n = np.bincount(codes, minlength=n_groups)
        return a * (n / s1)[codes]
    s2 = np.bincount(codes, weights=a * a, minlength=n_groups)
    return a * (s1 / s2)[codes]


def survey_weights(data: pd.DataFrame, group: str, weights, conditional: bool = False,
                   scaling: str = "none") -> SurveyWeights:
    """Check the two weight columns and compute a*_ij and w_j (module docstring).

    Parameters
    ----------
    data : the rows.  group : the grouping (school) column.
    weights : (level-1 column, level-2 column); either may be ``None`` for unit weights.
    conditional : level-1 weights conditional on the school (Stata) instead of unconditional
        (WeMix's default).
    scaling : ``none``, ``size`` or ``effective``.

    Returns
    -------
    SurveyWeights

    Raises
    ------
    DataError
        A weight column missing, non-numeric, negative or infinite; a level-2 weight varying
        within a school (the message names the schools); every school dropped.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"s": [1, 1, 2], "w1": [2.0, 4.0, 3.0], "w2": [2.0, 2.0, 1.0]})
    >>> survey_weights(d, "s", ("w1", "w2")).a
    array([1., 2., 3.])
    """
    l1, l2 = check_weights_spec(weights, scaling)
    n = len(data)
    w1 = check_weight_column(data, l1, "level-1") if l1 is not None else np.ones(n)
    w2 = check_weight_column(data, l2, "level-2") if l2 is not None else np.ones(n)
    g = data[group]
    ok = ~g.isna().to_numpy()
    codes, levels = pd.factorize(g[ok], sort=True)
    sw = weights_by_codes(codes, np.asarray(levels), w1[ok], w2[ok], group=group, l1=l1, l2=l2,
                          conditional=conditional, scaling=scaling)
    keep = np.zeros(n, dtype=bool)
    keep[ok] = sw.keep
    return SurveyWeights(level1=l1, level2=l2, conditional=sw.conditional, scaling=scaling,
                         keep=keep, a=sw.a, w_school=sw.w_school, n_zero_rows=sw.n_zero_rows,
                         n_zero_schools=sw.n_zero_schools)


def check_weights_spec(weights, scaling: str) -> tuple[str | None, str | None]:
    """(level-1 column, level-2 column) after checking the pair and the scaling name."""
    if scaling not in SCALINGS:
        raise DataError(f"unknown weight scaling '{scaling}'; choose one of: {', '.join(SCALINGS)}")
    if not isinstance(weights, (tuple, list)) or len(weights) != 2:
        raise DataError(f"weights must be two column names (level 1, level 2), got {weights!r}; "
                        "use None for a level without weights")
    return weights[0], weights[1]


def weights_by_codes(codes: np.ndarray, levels: np.ndarray, w1: np.ndarray, w2: np.ndarray, *,
                     group: str, l1: str | None, l2: str | None, conditional: bool,
                     scaling: str) -> SurveyWeights:
    """The core of :func:`survey_weights` on rows with school codes 0..J−1 (``levels`` their
    labels) and checked weight values: w_j per school (refusing one that varies within a
    school), a_ij, the rows and schools with weight 0 dropped, then the scaling. ``keep`` and
    ``a`` refer to these rows."""
    n = codes.shape[0]
    J = len(levels)
    # the first row of each school (a reversed fancy assignment keeps the first), its weight w_j
    first = np.full(J, -1)
    first[codes[::-1]] = np.arange(n)[::-1]
    present = first >= 0
    wj = np.where(present, w2[np.maximum(first, 0)], np.inf)
    wrow = wj[codes]
    off = np.abs(w2 - wrow) > LEVEL2_RTOL * np.maximum(np.abs(wrow), 1e-300)
    if off.any():
        varies = np.bincount(codes, weights=off, minlength=J) > 0
        bad = [str(levels[k]) for k in np.flatnonzero(varies)[:5]]
        raise DataError(f"level-2 weight column '{l2}' varies within {int(varies.sum())} "
                        f"'{group}' group(s) (e.g. {', '.join(bad)}); a school weight must be "
                        "one value per school")
    if conditional:
        a = w1
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(wrow > 0, w1 / wrow, 0.0)
    keep = a > 0
    all_kept = bool(keep.all()) and bool(np.all(wj[present] > 0))
    if all_kept:
        school_ok = present
        n_zero_rows = n_zero_schools = 0
    else:
        school_any = np.bincount(codes, weights=keep, minlength=J) > 0
        school_ok = present & (wj > 0) & school_any
        n_zero_schools = int(present.sum()) - int(school_ok.sum())
        in_ok = school_ok[codes]
        n_zero_rows = int((in_ok & ~keep).sum())
        keep &= in_ok
        if not keep.any():
            raise DataError(f"every '{group}' group has a weight of 0 (level-1 '{l1}', "
                            f"level-2 '{l2}'): nothing left to fit")
    if school_ok.all():
        kc, a_kept = codes[keep] if not all_kept else codes, a[keep] if not all_kept else a
    else:
        kc = (np.cumsum(school_ok) - 1)[codes[keep]]  # schools kept, renumbered in order
        a_kept = a[keep]
    a_kept = scale_level1(a_kept, kc, int(school_ok.sum()), scaling)
    return SurveyWeights(level1=l1, level2=l2, conditional=bool(conditional), scaling=scaling,
                         keep=keep, a=a_kept,
                         w_school=pd.Series(wj[school_ok], index=levels[school_ok], name=l2),
                         n_zero_rows=n_zero_rows, n_zero_schools=n_zero_schools)
