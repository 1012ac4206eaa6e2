"""glmer with several nested grouping factors against lme4::glmer (issue 22, glmer line): speed on
a moderate three-level design. A script, not a test; no target (the issue sets none), the ratio is
reported.

Usage::

    .venv/bin/python benchmarks/glmer_multi_speed.py [--schools 200] [--classes 5]
        [--students 20] [--repeats 3] [--seed 20261206]

Jobs (simulated with seeded NumPy, class labels 1…C reused in every school):

* bernoulli: ``y ~ x + w + (1 | school/class)``, logit P(y = 1) = −0.2 + 0.6x + 0.3w + b_s + b_c,
  sd(b_s) = 0.7, sd(b_c) = 0.5 (w a school-level predictor);
* poisson: ``k ~ x + w + offset(log(expo)) + (1 | school/class)`` with the same effects.

Both sides read the same CSV in child processes: ours in a fresh Python (one warm-up fit on a small
set first so that the kernels are loaded, then ``--repeats`` timed fits, the median kept), R in
one ``Rscript`` session (``proc.time()`` around each ``glmer`` call, defaults, nAGQ = 1). Printed:
the median wall times, the ratio R / ours, the deviance difference and max |β − β_glmer| / SE,
and the machine's load average at the start (run it on an idle machine for the record).
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

JOBS = {
    "bernoulli": ("y ~ x + w + (1 | school/class)", "binomial"),
    "poisson": ("k ~ x + w + offset(log(expo)) + (1 | school/class)", "poisson"),
}

R_CHILD = r"""
args <- commandArgs(TRUE)
suppressPackageStartupMessages(library(lme4))
d <- read.csv(args[1]); d$school <- factor(d$school); d$class <- factor(d$class)
reps <- as.integer(args[4]); fam <- get(args[3])()
times <- numeric(reps)
for (k in seq_len(reps)) {
  gc()
  t0 <- proc.time()[["elapsed"]]
  m <- suppressWarnings(glmer(as.formula(args[2]), data = d, family = fam))
  times[k] <- proc.time()[["elapsed"]] - t0
}
cat(jsonlite::toJSON(list(times = times, m2ll = -2 * as.numeric(logLik(m)),
                          fixef = unname(fixef(m))), digits = NA, auto_unbox = TRUE))
"""

PY_CHILD = r"""
import json, sys, time, warnings
import numpy as np, pandas as pd
import twolevel as tl
warnings.simplefilter("ignore")
csv, formula, family, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
d = pd.read_csv(csv)
tl.glmer(formula, d.iloc[: min(len(d), 2000)], family=family)  # warm-up: kernels loaded
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    fit = tl.glmer(formula, d, family=family)
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "m2ll": fit.minus2loglik, "fixef": fit.beta.tolist(),
                  "se": fit.se().tolist()}))
"""


def simulate(S: int, C: int, n: int, seed: int) -> pd.DataFrame:
    """Three-level data: S schools × C classes (labels reused) × n students."""
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(1, S + 1), C * n)
    klass = np.tile(np.repeat(np.arange(1, C + 1), n), S)
    x = rng.normal(size=school.size)
    w = rng.normal(size=S)[school - 1]
    lin = (0.6 * x + 0.3 * w + rng.normal(0, 0.7, S)[school - 1]
           + rng.normal(0, 0.5, S * C)[(school - 1) * C + klass - 1])
    expo = rng.uniform(0.5, 3, school.size)
    return pd.DataFrame({
        "school": school, "class": klass, "x": x, "w": w, "expo": expo,
        "y": rng.binomial(1, 1 / (1 + np.exp(-(-0.2 + lin)))),
        "k": rng.poisson(expo * np.exp(0.1 + lin)),
    })


def _child(cmd: list[str]) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schools", type=int, default=200)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--students", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=20261206)
    a = ap.parse_args(argv)
    if shutil.which("Rscript") is None:
        print("Rscript not found: no anchor to compare with")
        return 1
    print(f"load average at start: {os.getloadavg()}")
    d = simulate(a.schools, a.classes, a.students, a.seed)
    print(f"design: {a.schools} schools x {a.classes} classes x {a.students} students "
          f"= {len(d)} rows; repeats {a.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "d.csv"
        d.to_csv(csv, index=False)
        rs, ps = Path(tmp) / "r.R", Path(tmp) / "p.py"
        rs.write_text(R_CHILD)
        ps.write_text(PY_CHILD)
        print(f"{'job':10s} {'lme4_s':>8s} {'ours_s':>8s} {'ratio':>7s} {'d_m2ll':>10s} "
              f"{'beta/SE':>9s}")
        for job, (formula, family) in JOBS.items():
            r = _child(["Rscript", str(rs), str(csv), formula, family, str(a.repeats)])
            o = _child([sys.executable, str(ps), str(csv), formula, family, str(a.repeats)])
            tr = statistics.median(np.atleast_1d(r["times"]).tolist())
            to = statistics.median(o["times"])
            db = np.max(np.abs(np.asarray(o["fixef"]) - r["fixef"]) / np.asarray(o["se"]))
            print(f"{job:10s} {tr:8.3f} {to:8.3f} {tr / to:7.2f} {o['m2ll'] - r['m2ll']:10.2e} "
                  f"{db:9.1e}")
    print("ratio = lme4 seconds / ours (higher is faster); target: none (issue 22 sets none)")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
