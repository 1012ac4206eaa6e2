"""Subcommands of the ``twolevel`` command line, one module each (see
``twolevel.workflows.cli``)."""

from __future__ import annotations

import argparse

from twolevel.data.loaders import BUILTIN_DATASETS


def add_data_argument(p: argparse.ArgumentParser) -> None:
    """The positional ``DATA`` argument shared by ``fit``, ``anova``, ``bayes`` and ``ols``."""
    p.add_argument("data", metavar="DATA", help=f"built-in name ({', '.join(BUILTIN_DATASETS)}) "
                   "or path of a CSV/Parquet file")


# single files above this size go to DuckDB under --engine auto (globs and folders always do)
AUTO_FILE_BYTES = 1_000_000_000


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """``--engine``, ``--memory-limit`` and ``--scheduler`` (``fit``, ``anova``, ``bayes``): where
    the per-school statistics are computed (:mod:`twolevel.models.design.sources`)."""
    p.add_argument("--engine", choices=("auto", "memory", "duckdb", "dask"), default="auto",
                   help="memory (pandas + NumPy), duckdb (SQL over Parquet/CSV files, bounded "
                   "memory) or dask (tasks on a cluster); auto: duckdb for globs, folders and "
                   f"files over {AUTO_FILE_BYTES // 10**9} GB, dask with --scheduler, else memory")
    p.add_argument("--memory-limit", metavar="SIZE", default=None,
                   help="DuckDB's memory limit, e.g. 4GB (engines duckdb and dask)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="a running Dask scheduler, e.g. tcp://host:8786 (engine dask)")


def resolve_data(args: argparse.Namespace) -> tuple[object, str, dict]:
    """(data, engine, lmer options) for DATA and the engine flags: a loaded frame for the memory
    engine (today's path, unchanged), the path or glob itself for duckdb and dask."""
    import glob
    import os
    import sys

    from twolevel.data.errors import TwolevelError
    from twolevel.data.loaders import load_data

    spec, engine = args.data, getattr(args, "engine", "auto")
    builtin = spec in BUILTIN_DATASETS
    if engine == "auto":
        if args.scheduler:
            engine = "dask"
        elif builtin:
            engine = "memory"
        elif glob.has_magic(spec) or os.path.isdir(spec):
            engine = "duckdb"
        elif os.path.isfile(spec) and os.path.getsize(spec) > AUTO_FILE_BYTES:
            engine = "duckdb"
        else:
            engine = "memory"
    if args.scheduler and engine != "dask":
        raise TwolevelError(f"--scheduler needs --engine dask (got --engine {engine})")
    if engine == "memory":
        if glob.has_magic(spec) or (not builtin and os.path.isdir(spec)):
            raise TwolevelError(f"'{spec}' names several files: use --engine duckdb (or dask), "
                                "or give one file for --engine memory")
        return load_data(spec), "memory", {}
    if builtin:
        raise TwolevelError(f"'{spec}' is a built-in data set held in memory: use --engine "
                            "memory, or give a file path for --engine duckdb/dask")
    return spec, engine, {"memory_limit": args.memory_limit, "scheduler": args.scheduler,
                          "progress": sys.stderr.isatty()}


def rows_read(fit, data) -> int:
    """Rows read from the data: the scale engines count them in their first pass; in memory it
    is the frame's length."""
    return int(getattr(fit.design, "rows_read", None) or len(data))


def check_memory_engine_for_family(args: argparse.Namespace, engine: str | None = None) -> None:
    """Binary and count outcomes (``--family``) are fitted from the rows in memory: refuse
    ``--engine duckdb|dask`` (and ``--scheduler``) with them, saying what to use."""
    family = getattr(args, "family", None)
    if family in (None, "gaussian"):
        return
    engine = engine or getattr(args, "engine", "auto")
    if engine not in ("auto", "memory") or getattr(args, "scheduler", None):
        from twolevel.data.errors import TwolevelError

        raise TwolevelError(
            f"--family {family} is fitted from the rows in memory; --engine duckdb/dask computes "
            "per-school statistics for normal outcomes only: use --engine memory with a file "
            "that fits in memory"
        )
