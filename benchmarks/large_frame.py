"""A large pandas frame with the default engine against ``engine="duckdb"`` (issue 20, item 5):
time, peak memory and the criterion, each engine in a fresh process. A script, not a test.

The frame: N rows (default 5 million) in N/1000 schools; a 3-level string factor ``f``, a
student covariate ``x``, a school covariate ``w``, the cross-level interaction ``x:w`` and a
random slope: ``y ~ x * w + f + (1 + x | school)``. Each process builds the frame, warms the
engine's imports on a 20,000-row slice, then times ``tl.lmer`` on the whole frame and reads the
process's peak RSS (``ru_maxrss``) before and after. Engines: ``auto`` (the default: DuckDB from
2 million rows when it is installed, the frame kept for per-student quantities), ``duckdb`` (the
anchor) and ``memory`` (the in-memory design, for information). Median of ``--repeats``.

Usage::

    nice .venv/bin/python benchmarks/large_frame.py [--rows 5e6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, pandas as pd
import twolevel as tl
n, engine = int(float(sys.argv[1])), sys.argv[2]
rng = np.random.default_rng(1)
J = n // 1000
school = rng.integers(0, J, n)
w = rng.normal(size=J)
u0, u1 = rng.normal(size=J) * 2, rng.normal(size=J) * 0.5
x = rng.normal(size=n)
f = rng.choice(np.array(["a", "b", "c"]), n)
fe = np.where(f == "b", 1.0, np.where(f == "c", -0.5, 0.0))
y = (1 + 2 * x + 0.5 * w[school] + 0.3 * x * w[school] + fe + u0[school] + u1[school] * x
     + rng.normal(size=n) * 3)
d = pd.DataFrame({"y": y, "x": x, "w": w[school], "f": f, "school": school})
del school, x, f, fe, y
formula = "y ~ x * w + f + (1 + x | school)"
tl.lmer(formula, d.iloc[:20000], engine=engine)  # imports (duckdb, formulae) outside the timing
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
fit = tl.lmer(formula, d, engine=engine)
secs = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"secs": secs, "peak_mb": peak, "before_mb": before, "criterion": fit.criterion,
                  "design": type(fit.design).__name__}))
"""


def run(rows: float, engine: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(rows), engine], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=5e6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print("load:", os.getloadavg())
    res: dict[str, list[dict]] = {"duckdb": [], "auto": [], "memory": []}
    for _ in range(args.repeats):  # interleaved: each engine sees the same load
        for engine in res:
            res[engine].append(run(args.rows, engine))
    med = {e: {k: statistics.median(r[k] for r in rs) for k in ("secs", "peak_mb", "before_mb")}
           for e, rs in res.items()}
    anchor = med["duckdb"]
    print(f"{int(args.rows):,} rows; median of {args.repeats} fresh processes each")
    print(f"{'engine':<10}{'design':<13}{'fit s':>8}{'peak MB':>9}{'+MB':>7}"
          f"{'time / duckdb':>15}{'criterion rel. diff':>21}")
    for e, rs in res.items():
        m = med[e]
        rel = abs(rs[0]["criterion"] - res["duckdb"][0]["criterion"]) / abs(
            res["duckdb"][0]["criterion"])
        print(f"{e:<10}{rs[0]['design']:<13}{m['secs']:>8.2f}{m['peak_mb']:>9.0f}"
              f"{m['peak_mb'] - m['before_mb']:>7.0f}{m['secs'] / anchor['secs']:>15.2f}"
              f"{rel:>21.1e}")
    ok_t = med["auto"]["secs"] <= 1.5 * anchor["secs"]
    ok_m = med["auto"]["peak_mb"] <= anchor["peak_mb"] * 1.02  # RSS noise: 2%
    print(f"default engine: time {med['auto']['secs'] / anchor['secs']:.2f}× duckdb (target "
          f"≤ 1.5×: {'met' if ok_t else 'NOT met'}); peak {med['auto']['peak_mb']:.0f} MB against "
          f"{anchor['peak_mb']:.0f} MB (target: no more: {'met' if ok_m else 'NOT met'})")
    print("load:", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
