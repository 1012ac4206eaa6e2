"""glmer speed and memory against lme4::glmer (issue 11, item 5). A script, not a test.

Usage::

    .venv/bin/python benchmarks/glmer_speed.py [--repeats 5] [--repeats-big 1] [--rows 1000000]
        [--schools 50000] [--no-big] [--seed 20261201]

Jobs
----
* lecture: ``glmer("y ~ 1 + famsesc + (1 + famsesc | schid)", family="binomial")`` at the
  lecture design (``data/ecls_k_like.csv``: 11,091 students in 742 schools, its ``famsesc`` and
  ``schid``) with a Bernoulli outcome simulated from a known model (seeded NumPy: logit P(y=1) =
  −0.4 + 0.5·famsesc + b0_j + b1_j·famsesc, sd(b0) = 0.8, sd(b1) = 0.3, corr 0.3).
* big: the same model simulated with ``--rows`` rows in ``--schools`` schools (x ~ N(0, 1)).

Both sides run in child processes that read the same CSV: ours in a fresh Python (one warm-up
fit on a small data set first, so the kernels are loaded; then ``--repeats`` timed fits, or
``--repeats-big`` at 1M rows), R in one ``Rscript`` session (``proc.time()`` around each
``glmer`` call, so start-up, package loading and CSV reading are excluded). Reported: median wall
time of each, the ratio R / ours, and each child's peak resident set size (ours: ``ru_maxrss``; R:
``VmHWM``), which includes the interpreter, libraries and data. glmer runs with its defaults; ours
twice, each in its own child: the default ``optimizer="lme4"`` (glmer's path: BOBYQA, then
Nelder–Mead) and ``optimizer="newton"`` (Newton steps with deriv12's Hessian in stage 2), both
Laplace with the finite-difference Hessian. Each row also gives how far ours is from glmer's fit:
deviance difference, max |β − β_glmer| / SE and max relative SE difference. Ours uses the C kernels
(``route``) with OpenMP ``threads`` a sweep, the build this processor runs (``path``: avx512, avx2
or baseline, :mod:`twolevel.models.native`); with the default optimizer ours runs again with
``TWOLEVEL_KERNEL_BASELINE=1`` (the x86-64 baseline build): ``baseline_s`` and
``baseline_over_dispatched``, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

FORMULA = "y ~ 1 + x + (1 + x | g)"
OPTIMIZERS = ("lme4", "newton")  # ours: the default (glmer's path) and Newton's stage 2

R_CHILD = r"""
args <- commandArgs(TRUE)
suppressPackageStartupMessages(library(lme4))
d <- read.csv(args[1]); d$g <- factor(d$g); reps <- as.integer(args[2])
times <- numeric(reps)
for (k in seq_len(reps)) {
  gc()
  t0 <- proc.time()[["elapsed"]]
  m <- suppressWarnings(glmer(y ~ 1 + x + (1 + x | g), data = d, family = binomial))
  times[k] <- proc.time()[["elapsed"]] - t0
}
hwm <- grep("VmHWM", readLines("/proc/self/status"), value = TRUE)
cat(sprintf('{"times": [%s], "peak_kb": %s, "m2ll": %.10f, "beta": [%s], "se": [%s]}\n',
    paste(times, collapse = ","), gsub("[^0-9]", "", hwm), -2 * as.numeric(logLik(m)),
    paste(sprintf("%.12g", fixef(m)), collapse = ","),
    paste(sprintf("%.12g", sqrt(diag(as.matrix(vcov(m))))), collapse = ",")))
"""

PY_CHILD = r"""
import json, os, resource, sys, time, warnings, gc
import numpy as np, pandas as pd
from twolevel.models.glmm.glmer import glmer
if os.environ.get("GLMER_SPEED_LIBRARY"):  # the anchor: a -march=native build (see --native)
    import ctypes, pathlib
    from twolevel.models import native
    p = pathlib.Path(os.environ["GLMER_SPEED_LIBRARY"])
    native._LOADED[("twolevel.models.glmm._cpirls", False)] = native.Library(
        "twolevel.models.glmm._cpirls", p, "native", ctypes.CDLL(str(p)))
opt = sys.argv[3]
warm = pd.DataFrame({"y": np.tile([0, 1, 1, 0, 1], 40), "x": np.linspace(-1, 1, 200),
                     "g": np.repeat(np.arange(20), 10)})
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    glmer("y ~ 1 + x + (1 + x | g)", warm, optimizer=opt)
d = pd.read_csv(sys.argv[1])
times = []
for _ in range(int(sys.argv[2])):
    gc.collect()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = glmer("y ~ 1 + x + (1 + x | g)", d, optimizer=opt)
    times.append(time.perf_counter() - t0)
se = np.sqrt(np.diag(m.vcov().to_numpy()))
print(json.dumps({"times": times, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "m2ll": m.minus2loglik, "beta": m.beta.tolist(), "se": se.tolist(),
                  "route": m.problem.route, "threads": getattr(m.problem._c, "threads", 1),
                  "path": __import__("twolevel.models.native", fromlist=["x"]).vector_path(
                      "twolevel.models.glmm._cpirls")}))
"""


def simulate(g: np.ndarray, x: np.ndarray, seed: int) -> pd.DataFrame:
    """Bernoulli outcome of the module docstring's model on groups ``g`` and covariate ``x``."""
    rng = np.random.default_rng(seed)
    J = int(g.max()) + 1
    C = np.array([[0.64, 0.3 * 0.8 * 0.3], [0.3 * 0.8 * 0.3, 0.09]])
    b = rng.multivariate_normal(np.zeros(2), C, size=J)
    eta = -0.4 + 0.5 * x + b[g, 0] + b[g, 1] * x
    y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"y": y, "x": x, "g": g})


def lecture_data(seed: int) -> pd.DataFrame:
    from twolevel.data.loaders import load_data

    d = load_data("lecture")
    g = pd.factorize(d["schid"], sort=True)[0]
    return simulate(g, d["famsesc"].to_numpy(dtype=float), seed)


def big_data(rows: int, schools: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    g = np.sort(rng.integers(0, schools, rows))
    g = pd.factorize(g, sort=True)[0]
    return simulate(g, rng.normal(size=rows), seed)


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, env=env)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed fits at the lecture design")
    ap.add_argument("--repeats-big", type=int, default=1, help="timed fits at --rows")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--schools", type=int, default=50_000)
    ap.add_argument("--no-big", action="store_true")
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--out", default="benchmarks/results/glmer_speed.json")
    ap.add_argument("--no-r", action="store_true", help="skip lme4 (ours only)")
    ap.add_argument("--native", action="store_true",
                    help="also time a -march=native build of cpirls.c compiled here (how the "
                         "kernels were built at run time before they shipped in the wheel)")
    args = ap.parse_args()
    have_r = shutil.which("Rscript") is not None and not args.no_r
    jobs = [("lecture (11,091 x 742, slope)", lecture_data(args.seed), args.repeats)]
    if not args.no_big:
        jobs.append((f"big ({args.rows:,} x {args.schools:,}, slope)",
                     big_data(args.rows, args.schools, args.seed), args.repeats_big))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rfile = Path(tmp) / "child.R"
        rfile.write_text(R_CHILD)
        for name, d, repeats in jobs:
            csv = Path(tmp) / "d.csv"
            d.to_csv(csv, index=False)
            r = run_child(["Rscript", str(rfile), str(csv), str(repeats)]) if have_r else None
            for opt in OPTIMIZERS:
                ours = run_child([sys.executable, "-c", PY_CHILD, str(csv), str(repeats), opt])
                t_o = statistics.median(ours["times"])
                row = {"job": name, "optimizer": opt, "ours_s": t_o,
                       "ours_peak_mb": ours["peak_kb"] / 1024, "ours_m2ll": ours["m2ll"],
                       "route": ours["route"], "threads": ours["threads"],
                       "path": ours["path"]}
                if opt == OPTIMIZERS[0] and args.native:
                    lib = Path(tmp) / "cpirls_native.so"
                    if not lib.exists():
                        subprocess.run(["cc", "-O3", "-march=native", "-fno-math-errno",
                                        "-fopenmp", "-fPIC", "-shared", "-DTWOLEVEL_MVEC",
                                        "models/glmm/cpirls.c", "-o", str(lib), "-lmvec",
                                        "-lm"], check=True)
                    nat = run_child([sys.executable, "-c", PY_CHILD, str(csv), str(repeats),
                                     opt], env={**os.environ, "GLMER_SPEED_LIBRARY": str(lib)})
                    t_n = statistics.median(nat["times"])
                    row |= {"native_s": t_n, "dispatched_over_native": t_o / t_n}
                if opt == OPTIMIZERS[0]:
                    base = run_child([sys.executable, "-c", PY_CHILD, str(csv), str(repeats),
                                      opt], env={**os.environ, "TWOLEVEL_KERNEL_BASELINE": "1"})
                    t_b = statistics.median(base["times"])
                    row |= {"baseline_s": t_b, "baseline_over_dispatched": t_b / t_o,
                            "baseline_m2ll_rel_diff": abs(base["m2ll"] / ours["m2ll"] - 1)}
                if r:
                    t_r = statistics.median(r["times"])
                    se = np.asarray(r["se"])
                    row |= {"r_s": t_r, "r_peak_mb": r["peak_kb"] / 1024, "ratio": t_r / t_o,
                            "r_m2ll": r["m2ll"], "dev_minus_glmer": ours["m2ll"] - r["m2ll"],
                            "max_beta_diff_in_se": float(np.max(np.abs(
                                np.asarray(ours["beta"]) - np.asarray(r["beta"])) / se)),
                            "max_se_rel_diff": float(np.max(np.abs(
                                np.asarray(ours["se"]) / se - 1)))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    tab = pd.DataFrame(rows)
    print(tab.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
