"""Dask statistics source: the same SQL passes, run by DuckDB inside each Dask task (spec §4.1 (4)).

Each task reads one shard (a Parquet/CSV file, or one partition of a ``dask.dataframe``) with a
single-threaded DuckDB, runs the statement the DuckDB source would run on all rows, and returns
its partial sums; the partials are added in a tree (``split_every`` at a time) keyed by the group,
so only J-sized results travel. Adding partials is exact algebra; the tree's shape changes only the
rounding. The cluster is the user's: a ``distributed.Client``, a scheduler address, or Dask's
current scheduler; the package never starts cluster processes itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError, TwolevelError
from twolevel.models.design.duckdb_source import (
    check_file_columns,
    file_scan_sql,
    file_types,
    grouped_result,
    grouped_sql,
    parse_memory_limit,
    resolve_files,
    scalar_result,
    scalar_sql,
)

__all__ = ["DaskRunner", "merge_grouped", "merge_scalar"]

SPLIT_EVERY = 8


def merge_scalar(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add partial ungrouped results by name: ``n_``/``s_`` add, ``lo_`` min, ``hi_`` max,
    ``lv_`` distinct union, ``w_`` concatenation."""
    out: dict[str, Any] = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        if k.startswith("lo_"):
            vals = [v for v, p in zip(vals, parts, strict=True) if p.get("n_r", 1)]
            out[k] = min(vals) if vals else 0.0
        elif k.startswith("hi_"):
            vals = [v for v, p in zip(vals, parts, strict=True) if p.get("n_r", 1)]
            out[k] = max(vals) if vals else 0.0
        elif k.startswith("lv_"):
            out[k] = list(dict.fromkeys(x for v in vals for x in v))
        elif k.startswith("w_"):
            out[k] = [x for v in vals for x in v]
        else:
            out[k] = sum(vals)
    return out


def merge_grouped(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Add partial grouped results on their keys (sorted union of the keys)."""
    parts = [p for p in parts if len(p["__key"])] or parts[:1]
    if len(parts) == 1:
        return parts[0]
    keys = np.unique(np.concatenate([p["__key"] for p in parts]))
    out = {"__key": keys}
    idx = [np.searchsorted(keys, p["__key"]) for p in parts]
    for k in parts[0]:
        if k == "__key":
            continue
        acc = np.zeros(keys.shape[0])
        for p, ix in zip(parts, idx, strict=True):
            acc[ix] += p[k]
        out[k] = acc
    return out


def _run_shard(shard, sql: str, tables: dict[str, pd.DataFrame], grouped: bool,
               memory_limit: str | None) -> dict:
    """One task: DuckDB (one thread) on one shard; the statement's partial result."""
    import duckdb

    cfg = {"threads": 1}
    if memory_limit:
        cfg["memory_limit"] = memory_limit
    con = duckdb.connect(config=cfg)
    try:
        if isinstance(shard, pd.DataFrame):
            con.register("__src_frame", shard)
            con.execute("CREATE VIEW __src AS SELECT * FROM __src_frame")
        else:
            con.execute(f"CREATE VIEW __src AS SELECT * FROM {file_scan_sql(shard)}")
        for name, frame in tables.items():
            con.register(name, frame)
        try:
            res = con.sql(sql).fetchnumpy()
        except duckdb.OutOfMemoryException as exc:
            raise TwolevelError(f"a Dask task ran out of memory with DuckDB memory limit "
                                f"{memory_limit}: raise --memory-limit ({str(exc)[:200]})"
                                ) from None
        return grouped_result(res) if grouped else scalar_result(res)
    finally:
        con.close()


class DaskRunner:
    """Runs the passes as Dask tasks (see module docstring)."""

    engine = "dask"

    def __init__(self, data, scheduler=None, memory_limit: str | None = None):
        import dask
        import duckdb

        self._dask = dask
        self.memory_limit = parse_memory_limit(memory_limit)
        self.client = None
        if scheduler is not None:
            from distributed import Client
            if isinstance(scheduler, Client):
                self.client = scheduler
            else:
                try:
                    self.client = Client(scheduler, timeout="10s", set_as_default=False)
                except (OSError, TimeoutError) as exc:
                    raise TwolevelError(f"cannot reach the Dask scheduler at '{scheduler}': "
                                        f"{exc}; start it, or check the address") from None
        self._tables: dict[str, pd.DataFrame] = {}
        self._rows_read = 0
        con = duckdb.connect()
        if type(data).__module__.startswith("dask"):
            self.files = []
            self.shards = list(data.to_delayed())
            meta = data._meta_nonempty
            con.register("m", meta)
            self._types = {r[0]: str(r[1]) for r in con.sql("DESCRIBE SELECT * FROM m").fetchall()}
            self._per_file = None
            self.description = f"a dask dataframe of {len(self.shards)} partitions"
        elif isinstance(data, pd.DataFrame):
            raise DataError("engine='dask' needs a dask.dataframe or files; for a pandas frame "
                            "use engine='memory' or 'duckdb' (or dask.dataframe.from_pandas)")
        else:
            self.files = resolve_files(data)
            self._per_file = file_types(con, self.files)
            self.shards = [[f] for f in self.files]
            con.execute(f"CREATE VIEW __src AS SELECT * FROM {file_scan_sql(self.files)}")
            self._types = {r[0]: str(r[1])
                           for r in con.sql("DESCRIBE SELECT * FROM __src").fetchall()}
            self.description = (f"'{self.files[0]}'" if len(self.files) == 1
                                else f"{len(self.files)} files ('{self.files[0]}', ...) on Dask")
        con.close()

    @property
    def rows_read(self) -> int:
        return self._rows_read

    def types(self) -> dict[str, str]:
        return dict(self._types)

    def check_columns(self, columns: list[str]) -> None:
        if self._per_file is not None:
            check_file_columns(self.files, self._per_file, columns)

    def set_table(self, name: str, frame: pd.DataFrame) -> None:
        self._tables[name] = frame

    def _compute(self, sql: str, grouped: bool):
        delayed = self._dask.delayed
        tables = delayed(dict(self._tables), pure=True) if self._tables else {}
        parts = [delayed(_run_shard, pure=True)(s, sql, tables, grouped, self.memory_limit)
                 for s in self.shards]
        merge = delayed(merge_grouped if grouped else merge_scalar, pure=True)
        while len(parts) > 1:
            parts = [merge(parts[i:i + SPLIT_EVERY]) for i in range(0, len(parts), SPLIT_EVERY)]
        if self.client is not None:
            return self.client.compute(parts[0]).result()
        return self._dask.compute(parts[0])[0]

    def scalar(self, select: list[str], from_: str, where: str) -> dict[str, Any]:
        out = self._compute(scalar_sql(select, from_, where), grouped=False)
        if "n_total" in out:
            self._rows_read = int(out["n_total"])
        return out

    def grouped(self, select: list[str], from_: str, where: str, key: str,
                n_groups: int | None = None) -> dict[str, np.ndarray]:
        return self._compute(grouped_sql(select, from_, where, key), grouped=True)
