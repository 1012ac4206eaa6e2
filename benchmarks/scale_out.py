"""Scale-out benchmark (issue 13): per-school statistics from Parquet by DuckDB and Dask. A script,
not a test.

Usage::

    .venv/bin/python benchmarks/scale_out.py [--rows 1000000 10000000] [--schools 100000]
        [--engines memory duckdb dask] [--memory-limit 4GB] [--threads 2] [--lme4-max-rows 1000000]
        [--scratch DIR] [--keep] [--no-fsum-anchor] [--seed 13]

Data
----
For each ``--rows`` N, a generator writes N rows of Parquet into a scratch folder (``--scratch``,
default a new folder under the system temporary directory; refused inside the repository), in
files of at most 5·10⁶ rows with row groups of 10⁶ rows: ``school`` (int64, ``--schools`` schools,
uniform), ``x`` ~ N(0, 1), ``f`` a 3-level text factor, ``w`` a level-2 predictor (one N(0, 1)
value per school) and

    y = 1 + 0.5x + 0.3[f=b] − 0.4[f=c] + 0.2x[f=c] + 0.8w + b0_j + b1_j x + e,
    b0 ~ N(0, 1), b1 ~ N(0, 0.4²), e ~ N(0, 1);

fitted as ``y ~ x*f + w + (1 + x | school)``. The folder is deleted afterwards unless ``--keep``.

Jobs (each in a fresh Python process)
-------------------------------------
* ``anchor``: one hand-written DuckDB ``GROUP BY school`` query of the same per-school sums
  (n, Σ of each column, Σ x·column, Σy²; plain ``sum`` of the raw products) and the ungrouped
  global sums, fetched to NumPy: the practical limit of any statistics pass over these files
  that does without reproducible sums.
* ``anchor_fsum``: the same query computing **the same sums as twolevel**: ``fsum`` (Kahan) of
  the columns shifted by their means over the first 100,000 rows (scale-out.md §3's SQL), the
  sums the issue requires so that two runs give the same numbers. The ratios are printed against
  both anchors; every job runs with the same ``--memory-limit`` and ``--threads``.
* ``duckdb``: ``crossprods_from(..., engine="duckdb")`` (all passes: counts and levels, per-school
  sums with ``fsum`` on shifted columns, global sums), then the REML fit from the statistics.
* ``dask``: the same through Dask on a ``LocalCluster`` of 2 worker processes × 1 thread.
* ``memory``: ``pd.read_parquet`` of all files, then ``lmer`` (today's path); skipped above
  ``--memory-max-rows``.
* ``lme4``: ``Rscript`` with lme4 on a CSV copy, for N ≤ ``--lme4-max-rows`` (the time is that of
  ``lmer`` alone; the peak RSS is the R process's, reading included).

Printed per job: wall seconds (statistics pass, fit, whole), rows per second, peak RSS of the
process tree (a 50 ms sampler summing the RSS of the process and its children, Dask's workers
included), the ratio of the statistics pass and of the whole fit to the anchor query, and each
fixed effect's (estimate − truth)/SE.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FORMULA = "y ~ x*f + w + (1 + x | school)"
TRUTH = {"(Intercept)": 1.0, "x": 0.5, "fb": 0.3, "fc": -0.4, "x:fb": 0.0, "x:fc": 0.2, "w": 0.8}
FILE_ROWS = 5_000_000
ROW_GROUP = 1_000_000

ANCHOR_SQL = """
SELECT school, count(*) AS n,
  sum(x) AS sx, sum(x*x) AS sxx,
  sum(CAST(f = 'b' AS DOUBLE)) AS sb, sum(CAST(f = 'c' AS DOUBLE)) AS sc,
  sum(x*CAST(f = 'b' AS DOUBLE)) AS sxb, sum(x*CAST(f = 'c' AS DOUBLE)) AS sxc,
  sum(x*x*CAST(f = 'b' AS DOUBLE)) AS sxxb, sum(x*x*CAST(f = 'c' AS DOUBLE)) AS sxxc,
  sum(w) AS sw, sum(x*w) AS sxw, sum(y) AS sy, sum(x*y) AS sxy, sum(y*y) AS syy
FROM read_parquet({files})
WHERE school IS NOT NULL AND isfinite(x) AND isfinite(y) AND isfinite(w) AND f IS NOT NULL
GROUP BY school ORDER BY school
"""
ANCHOR_GLOBAL = """
SELECT count(*) AS n, sum(x), sum(x*x), sum(w), sum(w*w), sum(x*w), sum(y), sum(y*y),
  sum(x*y), sum(w*y), sum(CAST(f = 'b' AS DOUBLE)), sum(CAST(f = 'c' AS DOUBLE)),
  sum(x*CAST(f = 'b' AS DOUBLE)), sum(x*CAST(f = 'c' AS DOUBLE)),
  sum(x*x*CAST(f = 'b' AS DOUBLE)), sum(x*x*CAST(f = 'c' AS DOUBLE)),
  sum(w*CAST(f = 'b' AS DOUBLE)), sum(w*CAST(f = 'c' AS DOUBLE)),
  sum(y*CAST(f = 'b' AS DOUBLE)), sum(y*CAST(f = 'c' AS DOUBLE)),
  sum(x*y*CAST(f = 'b' AS DOUBLE)), sum(x*y*CAST(f = 'c' AS DOUBLE)),
  sum(x*w*CAST(f = 'b' AS DOUBLE)), sum(x*w*CAST(f = 'c' AS DOUBLE))
FROM read_parquet({files})
WHERE school IS NOT NULL AND isfinite(x) AND isfinite(y) AND isfinite(w) AND f IS NOT NULL
"""

LME4_R = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1], colClasses = c(school = "character", f = "character"))
t0 <- proc.time()[["elapsed"]]
m <- lmer(y ~ x*f + w + (1 + x | school), d, REML = TRUE)
t1 <- proc.time()[["elapsed"]]
cat(sprintf('{"fit_s": %.3f, "criterion": %.10g}\n', t1 - t0, REMLcrit(m)))
"""


# ----------------------------------------------------------------------------- data


def generate(folder: Path, n: int, J: int, seed: int) -> str:
    """Write n rows in files of ≤ FILE_ROWS rows; returns the glob."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    w_j, b0, b1 = rng.normal(size=J), rng.normal(0, 1.0, J), rng.normal(0, 0.4, J)
    levels = np.array(["a", "b", "c"])
    for k, start in enumerate(range(0, n, FILE_ROWS)):
        m = min(FILE_ROWS, n - start)
        g = rng.integers(0, J, m)
        fi = rng.integers(0, 3, m)
        x = rng.normal(size=m)
        y = (1 + 0.5 * x + 0.3 * (fi == 1) - 0.4 * (fi == 2) + 0.2 * x * (fi == 2) + 0.8 * w_j[g]
             + b0[g] + b1[g] * x + rng.normal(size=m))
        f = pa.DictionaryArray.from_arrays(pa.array(fi.astype(np.int8)), pa.array(levels))
        table = pa.table({"school": g.astype(np.int64), "x": x, "f": f, "w": w_j[g], "y": y})
        pq.write_table(table, folder / f"part{k:04d}.parquet", row_group_size=ROW_GROUP)
    return str(folder / "*.parquet")


# ----------------------------------------------------------------------------- children


class TreeRSS:
    """Peak of the summed RSS of this process and its children, sampled every 50 ms."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss + sum(
                    c.memory_info().rss for c in self.proc.children(recursive=True))
                self.peak = max(self.peak, rss)
            except Exception:
                pass
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def child(job: str, files: str, memory_limit: str, threads: int) -> dict:
    """Run one job in this (fresh) process; returns its timings and estimates."""
    import glob
    import warnings

    import duckdb
    import pandas as pd

    from twolevel.models.design import group_crossprods, make_design
    from twolevel.models.design.sources import crossprods_from
    from twolevel.models.lmm.lmer import fit_design

    warnings.simplefilter("ignore")
    if job not in ("anchor", "anchor_fsum"):  # compile the fit's kernels before the clock starts
        rng = np.random.default_rng(0)
        tiny = pd.DataFrame({"school": np.repeat(np.arange(20), 10), "x": rng.normal(size=200),
                             "f": np.tile(["a", "b", "c", "a"], 50), "w": 0.0,
                             "y": rng.normal(size=200)})
        tiny["w"] = rng.normal(size=20)[tiny["school"]]
        fit_design(*crossprods_from(FORMULA, tiny, engine="memory")[:1],
                   crossprods=crossprods_from(FORMULA, tiny, engine="memory")[1])
    tree = TreeRSS()
    out: dict = {"job": job}
    t0 = time.perf_counter()  # after the imports: the clock covers reading and computing
    if job in ("anchor", "anchor_fsum"):
        con = duckdb.connect(config={"memory_limit": memory_limit, "threads": threads,
                                     "temp_directory": tempfile.gettempdir() + "/twolevel-duckdb"})
        lst = "[" + ", ".join(f"'{f}'" for f in sorted(glob.glob(files))) + "]"
        if job == "anchor_fsum":  # the same sums as twolevel's: fsum on shifted columns
            c = dict(zip("xwy", con.sql(f"SELECT avg(x), avg(w), avg(y) FROM (SELECT x, w, y "
                                        f"FROM read_parquet({lst}) LIMIT 100000)").fetchall()[0],
                         strict=True))

            def acc(q: str) -> str:
                for v in "xwy":
                    q = re.sub(rf"\b{v}\b", f"({v} - {c[v]!r})", q)
                return q.replace("sum(", "fsum(")
        else:
            def acc(q: str) -> str:
                return q
        g = con.sql(acc(ANCHOR_SQL.format(files=lst))).fetchnumpy()
        con.sql(acc(ANCHOR_GLOBAL.format(files=lst))).fetchnumpy()
        out["stats_s"] = time.perf_counter() - t0
        out["groups"] = int(g["n"].shape[0])
    else:
        cluster = client = None
        if job == "memory":
            df = pd.concat([pd.read_parquet(f) for f in sorted(glob.glob(files))],
                           ignore_index=True)
            design = make_design(FORMULA, df)
            cp = group_crossprods(design)
        elif job == "duckdb":
            design, cp = crossprods_from(FORMULA, files, engine="duckdb",
                                         memory_limit=memory_limit, threads=threads)
        else:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   memory_limit="4GiB", dashboard_address=None)
            client = Client(cluster)
            out["cluster_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            design, cp = crossprods_from(FORMULA, files, engine="dask", scheduler=client,
                                         memory_limit=memory_limit)
        out["stats_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        fit = fit_design(design, crossprods=cp)
        out["fit_s"] = time.perf_counter() - t1
        if client is not None:
            client.close()
            cluster.close()
        se = fit.se()
        out["criterion"] = fit.criterion
        out["fixef"] = {k: float(v) for k, v in fit.fixef().items()}
        out["z"] = {k: (float(v) - TRUTH[k]) / float(se[k]) for k, v in fit.fixef().items()}
        out["groups"] = fit.ngroups
    out["total_s"] = time.perf_counter() - t0 + out.get("cluster_s", 0.0)
    out["peak_rss_mb"] = tree.stop() / 2**20
    return out


def run_child(job: str, files: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--child", job, "--files", files,
           "--memory-limit", args.memory_limit, "--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if p.returncode != 0:
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode
        print(f"  {job}: FAILED ({last})")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_lme4(files: str, folder: Path, args) -> dict | None:
    """lme4 on a CSV copy (written before the clock starts); peak RSS by /usr/bin/time."""
    import duckdb

    csv = folder / "all.csv"
    duckdb.sql(f"COPY (SELECT * FROM read_parquet('{files}')) TO '{csv}' (HEADER)")
    script = folder / "lme4.R"
    script.write_text(LME4_R)
    cmd = ["/usr/bin/time", "-f", "%M", "Rscript", str(script), str(csv)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        csv.unlink()
        return {"failed": f"timeout after {args.timeout} s"}
    csv.unlink()
    if p.returncode != 0:
        return {"failed": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "error"}
    res = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    res["peak_rss_mb"] = int(p.stderr.strip().splitlines()[-1]) / 1024
    return res


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, nargs="+", default=[1e6, 1e7])
    ap.add_argument("--schools", type=int, default=100_000)
    ap.add_argument("--engines", nargs="+", default=["memory", "duckdb", "dask"])
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-max-rows", type=float, default=2e7)
    ap.add_argument("--lme4-max-rows", type=float, default=1e6)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-fsum-anchor", action="store_true",
                    help="skip the fsum version of the anchor query (slow on large N)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--files", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.files, args.memory_limit, args.threads)))
        return 0
    base = Path(args.scratch or tempfile.mkdtemp(prefix="twolevel-scale-")).resolve()
    if REPO in base.parents or base == REPO:
        sys.exit(f"--scratch {base} is inside the repository; use a scratch folder elsewhere")
    print(f"scale-out benchmark: {FORMULA}; {args.schools} schools; DuckDB memory limit "
          f"{args.memory_limit}, {args.threads} threads; load {os.getloadavg()[0]:.1f}; "
          f"scratch {base}")
    for n in (int(r) for r in args.rows):
        folder = base / f"n{n}"
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        marker = folder / f".complete-{n}-{args.schools}-{args.seed}"
        if marker.exists():  # a kept folder from an earlier run with the same data
            files = str(folder / "*.parquet")
        else:
            files = generate(folder, n, args.schools, args.seed)
            marker.touch()
        size = sum(f.stat().st_size for f in folder.glob("*.parquet")) / 2**20
        print(f"\nN = {n:,} rows ({size:,.0f} MB of Parquet, written in "
              f"{time.perf_counter() - t:.1f} s); load {os.getloadavg()[0]:.1f}")
        anchor = run_child("anchor", files, args)
        anchor_f = None if args.no_fsum_anchor else run_child("anchor_fsum", files, args)
        rows = [r for r in (anchor, anchor_f) if r]
        for job in args.engines:
            if job == "memory" and n > args.memory_max_rows:
                print(f"  memory: skipped (N > --memory-max-rows {args.memory_max_rows:.0e})")
                continue
            res = run_child(job, files, args)
            if res:
                rows.append(res)
        a = anchor["stats_s"] if anchor else float("nan")
        af = anchor_f["stats_s"] if anchor_f else float("nan")
        print(f"  {'job':11s} {'stats s':>8s} {'fit s':>7s} {'whole s':>8s} {'rows/s':>12s} "
              f"{'peak RSS MB':>12s} {'stats/anchor':>12s} {'whole/anchor':>12s} "
              f"{'stats/fsum':>10s} {'whole/fsum':>10s}  max |z|")
        for r in rows:
            z = max((abs(v) for v in r.get("z", {}).values()), default=float("nan"))
            print(f"  {r['job']:11s} {r['stats_s']:8.2f} {r.get('fit_s', 0.0):7.2f} "
                  f"{r['total_s']:8.2f} {n / r['total_s']:12,.0f} {r['peak_rss_mb']:12,.0f} "
                  f"{r['stats_s'] / a:12.2f} {r['total_s'] / a:12.2f} "
                  f"{r['stats_s'] / af:10.2f} {r['total_s'] / af:10.2f}  {z:.2f}"
                  + (f"  (cluster start {r['cluster_s']:.1f} s)" if "cluster_s" in r else ""))
        fits = [r for r in rows if "fixef" in r]
        if len(fits) > 1:
            ref = fits[0]
            for r in fits[1:]:
                d = max(abs(r["fixef"][k] - ref["fixef"][k]) / max(abs(ref["fixef"][k]), 1e-300)
                        for k in ref["fixef"])
                print(f"  {r['job']} vs {ref['job']}: criterion rel. diff "
                      f"{abs(r['criterion'] - ref['criterion']) / abs(ref['criterion']):.1e}, "
                      f"fixed effects max rel. diff {d:.1e}")
        if n <= args.lme4_max_rows:
            res = run_lme4(files, folder, args)
            if res and "failed" not in res:
                print(f"  lme4: lmer {res['fit_s']:.1f} s, peak RSS {res['peak_rss_mb']:,.0f} MB "
                      f"(R process, CSV read included)")
            else:
                print(f"  lme4: failed at N = {n:,}: {res['failed'] if res else '?'}")
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if not args.keep and not args.scratch:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
