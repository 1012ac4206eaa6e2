"""DuckDB statistics source: the passes of :mod:`twolevel.models.design.sources` as SQL on files.

Inputs: a Parquet or CSV path, a glob (``'data/*.parquet'``), a directory, a list of paths, or a
pandas frame. Files are checked before any pass: a glob that matches nothing, files whose columns
or column types differ (text in one, numbers in another) are refused with the file names. DuckDB
runs with a memory limit and a spill folder of our choosing (spec §3.3); a limit too small for the
aggregation is reported as such.
"""

from __future__ import annotations

import glob as globmod
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError, TwolevelError
from twolevel.data.loaders import require_unique_header
from twolevel.models.design.sql import is_numeric_type, is_text_type, quote

__all__ = ["DuckDBRunner", "resolve_files", "parse_memory_limit", "read_all", "file_scan_sql"]

_PARQUET = (".parquet", ".pq", ".parq")
_CSV = (".csv", ".tsv", ".txt", ".csv.gz")


def parse_memory_limit(limit: str | None) -> str | None:
    """``"4GB"``, ``"500MB"``, ``"2GiB"`` → the same text for DuckDB; anything else is refused."""
    if limit is None:
        return None
    s = str(limit).strip()
    if not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", s, flags=re.I):
        raise TwolevelError(f"memory limit '{limit}' is not a size like '4GB', '500MB' or '2GiB'")
    return s


def limit_bytes(limit: str) -> float:
    """Bytes of a size text (decimal units KB/MB/GB, binary KiB/MiB/GiB)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?i?B)", limit.strip(), flags=re.I)
    num, unit = float(m.group(1)), m.group(2).upper()
    base = 1024.0 if "I" in unit else 1000.0
    return num * base ** ("BKMGT".index(unit[0]) if unit != "B" else 0)


def resolve_files(spec) -> list[str]:
    """The files of a path, glob, directory or list; refused when nothing matches."""
    if isinstance(spec, (list, tuple)):
        files = [str(p) for p in spec]
        if not files:
            raise DataError("the list of data files is empty")
    else:
        s = str(spec)
        if any(ch in s for ch in "*?["):
            files = sorted(globmod.glob(s, recursive=True))
            if not files:
                raise DataError(f"the pattern '{s}' matches no file; check the folder and the "
                                "extension (quote the pattern so the shell does not expand it)")
        elif os.path.isdir(s):
            files = sorted(str(p) for p in Path(s).rglob("*")
                           if p.is_file() and p.name.lower().endswith(_PARQUET + _CSV))
            if not files:
                raise DataError(f"the folder '{s}' holds no .parquet or .csv file")
        else:
            files = [s]
    for f in files:
        if not os.path.isfile(f):
            raise DataError(f"data file '{f}' does not exist")
    kinds = {"parquet" if f.lower().endswith(_PARQUET) else
             "csv" if f.lower().endswith(_CSV) else "?" for f in files}
    if "?" in kinds:
        bad = [f for f in files if not f.lower().endswith(_PARQUET + _CSV)][0]
        raise DataError(f"data file '{bad}' is neither Parquet (.parquet) nor CSV (.csv)")
    if len(kinds) > 1:
        raise DataError("the files mix Parquet and CSV; convert them to one format")
    for f in files:
        require_unique_header(f)
    return files


def file_scan_sql(files: list[str]) -> str:
    """``read_parquet([...])`` or ``read_csv([...], nullstr='NA')`` of the files."""
    lst = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    if files[0].lower().endswith(_PARQUET):
        return f"read_parquet({lst}, union_by_name = true)"
    return f"read_csv({lst}, nullstr = ['NA', ''], union_by_name = true)"


def _kind(t: str) -> str:
    return "numeric" if is_numeric_type(t) else "text" if is_text_type(t) else str(t)


def file_types(con, files: list[str]) -> list[dict[str, str]]:
    """Per file, column → DuckDB type (Parquet from the footer, CSV by DuckDB's sniffer)."""
    out = []
    for f in files:
        rel = con.sql(f"DESCRIBE SELECT * FROM {file_scan_sql([f])}")
        out.append({r[0]: str(r[1]) for r in rel.fetchall()})
    return out


def check_file_columns(files: list[str], per_file: list[dict[str, str]],
                       columns: list[str]) -> None:
    """Every file has the model's columns, of one kind (numeric or text) across files."""
    for c in columns:
        have = [(f, t.get(c)) for f, t in zip(files, per_file, strict=True)]
        missing = [f for f, t in have if t is None]
        if missing:
            other = next(f for f, t in have if t is not None) if len(missing) < len(files) else None
            if other is None:
                continue  # missing everywhere: the formula's message names it
            raise DataError(f"the files' schemas differ: '{missing[0]}' has no column '{c}' "
                            f"but '{other}' has ({len(missing)} file(s) lack it); give files "
                            "with the same columns")
        kinds = {}
        for f, t in have:
            kinds.setdefault(_kind(t), (f, t))
        if len(kinds) > 1:
            (k1, (f1, t1)), (k2, (f2, t2)) = list(kinds.items())[:2]
            raise DataError(f"column '{c}' is {k1} ({t1}) in '{f1}' but {k2} ({t2}) in '{f2}'; "
                            "make it the same type in every file (e.g. numbers everywhere)")


def read_all(spec) -> pd.DataFrame:
    """All rows of files (engine='memory' on file input) as one pandas frame."""
    import duckdb
    files = resolve_files(spec)
    con = duckdb.connect()
    per = file_types(con, files)
    check_file_columns(files, per, sorted({c for t in per for c in t}))
    return con.sql(f"SELECT * FROM {file_scan_sql(files)}").df()


class DuckDBRunner:
    """Runs the passes in one DuckDB connection over the files (or a frame) as view ``__src``."""

    engine = "duckdb"

    def __init__(self, data, memory_limit: str | None = None, threads: int | None = None,
                 progress: bool = False, temp_directory: str | None = None):
        import duckdb

        self._duckdb = duckdb
        self.memory_limit = parse_memory_limit(memory_limit)
        cfg: dict[str, Any] = {}
        if self.memory_limit:
            cfg["memory_limit"] = self.memory_limit
        if threads:
            cfg["threads"] = int(threads)
        tmp = temp_directory or os.path.join(tempfile.gettempdir(), "twolevel-duckdb")
        cfg["temp_directory"] = tmp
        self.con = duckdb.connect(config=cfg)
        try:
            self.con.execute(f"SET enable_progress_bar = {'true' if progress else 'false'}")
        except duckdb.InvalidInputException:  # in Jupyter without ipywidgets: no bar at all
            pass
        self._rows_read = 0
        if isinstance(data, pd.DataFrame):
            self.files: list[str] = []
            self.con.register("__src_frame", data)
            self.con.execute("CREATE VIEW __src AS SELECT * FROM __src_frame")
            self.description = f"a data frame of {len(data)} rows"
            self._per_file = None
        else:
            self.files = resolve_files(data)
            self.description = (f"'{self.files[0]}'" if len(self.files) == 1
                                else f"{len(self.files)} files ('{self.files[0]}', ...)")
            try:
                self._per_file = file_types(self.con, self.files)
            except duckdb.OutOfMemoryException as exc:
                raise self._oom(exc) from None
            self.con.execute(f"CREATE VIEW __src AS SELECT * FROM {file_scan_sql(self.files)}")

    @property
    def rows_read(self) -> int:
        return self._rows_read

    def types(self) -> dict[str, str]:
        return {r[0]: str(r[1]) for r in self.con.sql("DESCRIBE SELECT * FROM __src").fetchall()}

    def check_columns(self, columns: list[str]) -> None:
        if self._per_file is not None:
            check_file_columns(self.files, self._per_file, columns)

    def set_table(self, name: str, frame: pd.DataFrame) -> None:
        self.con.register(name, frame)

    def _run(self, sql: str) -> dict[str, Any]:
        try:
            return self.con.sql(sql).fetchnumpy()
        except self._duckdb.OutOfMemoryException as exc:
            raise self._oom(exc) from None
        except self._duckdb.Error as exc:
            raise DataError(
                f"DuckDB could not read {self.description}: {_first_line(exc)}") from None

    def _oom(self, exc: Exception) -> TwolevelError:
        return TwolevelError(
            f"DuckDB ran out of memory with memory limit {self.memory_limit or 'default'} on "
            f"{self.description}: raise --memory-limit (the per-school aggregation needs room "
            f"for its hash table, spilling to disk beyond that) ({_first_line(exc)[:120]})")

    def scalar(self, select: list[str], from_: str, where: str) -> dict[str, Any]:
        out = scalar_result(self._run(scalar_sql(select, from_, where)))
        if "n_total" in out:
            self._rows_read = int(out["n_total"])
        return out

    def grouped(self, select: list[str], from_: str, where: str, key: str,
                n_groups: int | None = None) -> dict[str, np.ndarray]:
        """A grouped pass; with a memory limit and ``n_groups`` (an estimate of J), fewer threads
        when the threads' hash tables would not fit in it (:func:`grouped_threads`)."""
        sql = grouped_sql(select, from_, where, key)
        threads = int(self.con.sql("SELECT current_setting('threads')").fetchall()[0][0])
        use = grouped_threads(threads, self.memory_limit, n_groups, len(select))
        if use == threads:
            return grouped_result(self._run(sql))
        self.con.execute(f"SET threads = {use}")
        try:
            return grouped_result(self._run(sql))
        finally:
            self.con.execute(f"SET threads = {threads}")

    def query(self, sql: str) -> dict[str, Any]:
        """Run one statement and fetch it as NumPy (for later passes such as residuals)."""
        return self._run(sql)


def grouped_threads(threads: int, memory_limit: str | None, n_groups: int | None,
                    n_aggregates: int) -> int:
    """Threads for a grouped pass: each thread builds its own hash table of about
    J·(32·aggregates + 64) bytes (a Kahan state is larger than a plain sum's), and a table that
    does not fit spills to disk, which was 2–5× slower than one thread that fits (2×10⁷ rows,
    10⁶ groups, 1.5 GB). So: as many threads as fit in 60 % of the limit, at least one."""
    if not memory_limit or not n_groups or threads <= 1:
        return threads
    per_thread = n_groups * (32.0 * n_aggregates + 64.0)
    return int(max(1, min(threads, (0.6 * limit_bytes(memory_limit)) // per_thread)))


def scalar_sql(select: list[str], from_: str, where: str) -> str:
    """One ungrouped aggregate statement."""
    return f"SELECT {', '.join(select)} FROM {from_} WHERE {where}"


def grouped_sql(select: list[str], from_: str, where: str, key: str) -> str:
    """One grouped aggregate statement, ordered by the key (later passes join on it)."""
    q = quote(key)
    return (f"SELECT {q} AS __key, {', '.join(select)} FROM {from_} WHERE {where} "
            f"GROUP BY {q} ORDER BY {q}")


def scalar_result(res: dict) -> dict[str, Any]:
    """The one row of an ungrouped result: NULL sums (no rows) → 0, lists (``lv_``, ``w_``) as
    Python lists."""
    out = {}
    for k, v in res.items():
        val = v[0] if len(v) else None
        if val is None or val is np.ma.masked or isinstance(val, np.ma.core.MaskedConstant):
            val = [] if k.startswith(("lv_", "w_")) else 0
        out[k] = list(val) if k.startswith(("lv_", "w_")) else val
    return out


def grouped_result(res: dict) -> dict[str, np.ndarray]:
    """A grouped result as NumPy arrays (``__key`` as returned, sums as float)."""
    out = {}
    for k, v in res.items():
        if isinstance(v, np.ma.MaskedArray):
            if np.ma.is_masked(v):
                raise TwolevelError(f"a per-group sum '{k}' came back NULL")
            v = v.data
        out[k] = np.asarray(v) if k == "__key" else np.asarray(v, dtype=float)
    return out


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
