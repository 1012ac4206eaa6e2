"""DuckDB and Dask against memory for a nested three-level model on a 10⁶-row Parquet set (issue
22's acceptance line: "DuckDB and Dask give the in-memory answer on a 10⁶-row three-level Parquet
set (criterion 1e-9 relative)"). A script, not a test (``tests/test_multilevel_scale.py`` checks
10⁴ rows).

Data: ``--rows`` students (default 10⁶) in 5,000 schools × 10 classes (class labels 1..10 restart
in every school), written as ``--files`` Parquet files; y = 1 + 0.5x + 0.3w + u_school + u_class
+ (v_school + v_class)x + ε. Models: ``y ~ x + w + (1 | school/class)`` and
``y ~ x + w + (1 + x | school/class)``. For each engine it prints the criterion, its relative
difference from memory (target ≤ 1e-9), max |Δβ̂|/SE, and the wall time (with the load average).

Usage::

    nice -n 10 .venv/bin/python benchmarks/several_factors_scale.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMULAS = ("y ~ x + w + (1 | school/class)", "y ~ x + w + (1 + x | school/class)")
TARGET = 1e-9


def simulate(rows: int, seed: int = 1, schools: int = 5000, classes: int = 10) -> pd.DataFrame:
    """The three-level data set of the module docstring."""
    rng = np.random.default_rng(seed)
    cell = rng.integers(0, schools * classes, rows)
    cell.sort()
    s = cell // classes
    c = cell % classes + 1
    x = rng.normal(size=rows)
    w = rng.normal(size=schools)[s]
    u0, u1 = rng.normal(0, 1.0, schools), rng.normal(0, 0.3, schools)
    v0, v1 = rng.normal(0, 0.6, schools * classes), rng.normal(0, 0.2, schools * classes)
    y = 1 + 0.5 * x + 0.3 * w + u0[s] + v0[cell] + (u1[s] + v1[cell]) * x + rng.normal(size=rows)
    return pd.DataFrame({"school": s + 1, "class": c, "x": x, "w": w, "y": y})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    import twolevel as tl

    print(f"load average before: {os.getloadavg()}")
    d = simulate(a.rows, a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for k, part in enumerate(np.array_split(np.arange(len(d)), a.files)):
            d.iloc[part].to_parquet(Path(tmp) / f"part-{k}.parquet", index=False)
        glob = str(Path(tmp) / "*.parquet")
        print(f"{len(d):,} rows, {d['school'].nunique():,} schools, "
              f"{d.groupby(['school', 'class']).ngroups:,} classes, {a.files} Parquet files")
        worst = 0.0
        for formula in FORMULAS:
            print(f"\n{formula}")
            res = {}
            for engine in ("memory", "duckdb", "dask"):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = tl.lmer(formula, d if engine == "memory" else glob, engine=engine)
                res[engine] = (fit, time.perf_counter() - t0)
            mem = res["memory"][0]
            for engine, (fit, dt) in res.items():
                rel = abs(fit.criterion - mem.criterion) / abs(mem.criterion)
                dbeta = float(np.max(np.abs(fit.fixef().to_numpy() - mem.fixef().to_numpy())
                                     / mem.se().to_numpy()))
                if engine != "memory":
                    worst = max(worst, rel)
                print(f"  {engine:7s} criterion {fit.criterion:.10f}  rel. diff {rel:.2e}  "
                      f"max|dbeta|/SE {dbeta:.1e}  {dt:6.1f} s")
    print(f"\nworst relative criterion difference {worst:.2e}; target <= {TARGET:.0e}: "
          f"{'met' if worst <= TARGET else 'NOT met'}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
