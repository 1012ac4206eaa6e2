"""Simulation-based power: ``twolevel.power`` against simr's procedure in R — a loop of
``simulate`` + ``lmer`` (refit) + lmerTest's ``summary`` (Satterthwaite t test) — on the same
design, in the same run (a script, not a test; simr itself is not packaged here). Wall-time ratios
for 1 and 2 worker processes, and the ratio of CPU time per simulation (one process each),
which a loaded machine distorts less.

Design: cluster-randomised, 40 schools × 20 students, half the schools treated, ICC 0.1, effect
0.3 SD; model ``y ~ treat + (1 | school)``, REML, Satterthwaite t test of ``treat`` at α = 0.05.
Ours: ``tl.power(design, nsim)`` with 1 and 2 worker processes (each simulation draws the
response's cross-products and refits from them). R: a fitted ``lmerTest::lmer`` model is
simulated from (``simulate(m, nsim)``), each column refitted with ``refit`` and tested with
``summary(...)$coefficients``, timed inside R (start-up excluded). With ``--nsim-r`` below
``--nsim`` R's time is scaled per simulation (stated in the output). Also printed: the analytic
power (PowerUp!'s CRA2_2r) and both simulated powers with their Monte-Carlo SEs, and the load.

Acceptance (issue 25): R's time / ours ≥ 50 (``TARGET``), wall time, same run; the last lines say
whether each configuration meets it. A one-random-effect model's Satterthwaite refits take the
scalar route of :mod:`twolevel.models.power.intercept`; the general route (``fast=False``, the
J per-school blocks of every other model) is timed on ``--nsim-general`` simulations for
reference (0 skips it).

Usage::

    nice -n 10 .venv/bin/python benchmarks/power_speed.py --nsim 1000 --nsim-r 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import twolevel as tl  # noqa: E402
from twolevel.models.power.simulation import (  # noqa: E402
    SimulationJob,
    design_population,
    run_simulations,
)

TARGET = 50.0  # issue 25's acceptance: at least 50× R's simulate + lmer + lmerTest loop

R_SCRIPT = r"""
args <- commandArgs(TRUE)
csv <- args[1]; nsim <- as.integer(args[2]); theta <- as.numeric(args[3])
sigma <- as.numeric(args[4]); effect <- as.numeric(args[5])
suppressPackageStartupMessages({library(lme4); library(lmerTest)})
d <- read.csv(csv); d$school <- factor(d$school)
m <- lmer(y ~ treat + (1 | school), data = d)
newparams <- list(theta = c("school.(Intercept)" = theta), sigma = sigma,
                  beta = c("(Intercept)" = 0, treat = effect))
t0 <- proc.time()[["elapsed"]]
c0 <- sum(proc.time()[c("user.self", "sys.self")])
ys <- suppressMessages(simulate(m, nsim = nsim, seed = 1, newparams = newparams,
                                use.u = FALSE))
p <- numeric(nsim)
for (i in seq_len(nsim)) {
  mi <- suppressMessages(suppressWarnings(as_lmerModLmerTest(refit(m, ys[[i]]))))
  p[i] <- summary(mi)$coefficients["treat", "Pr(>|t|)"]
}
secs <- proc.time()[["elapsed"]] - t0
cpu <- sum(proc.time()[c("user.self", "sys.self")]) - c0
cat(sprintf('{"secs": %.6f, "cpu": %.6f, "nsim": %d, "power": %.6f}\n', secs, cpu, nsim,
            mean(p < 0.05)))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--nsim-r", type=int, default=100)
    ap.add_argument("--schools", type=int, default=40)
    ap.add_argument("--students", type=int, default=20)
    ap.add_argument("--icc", type=float, default=0.1)
    ap.add_argument("--effect", type=float, default=0.3)
    ap.add_argument("--nsim-general", type=int, default=200)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    sd = tl.study_design("cra2", schools=args.schools, students=args.students, icc=args.icc)
    analytic = sd.power(args.effect)
    tl.power(sd, effect=args.effect, nsim=20)  # warm-up: imports, compiled kernels
    times = {}
    cpu1 = 0.0
    for jobs in (1, 2):
        c0 = time.process_time()
        t0 = time.perf_counter()
        res = tl.power(sd, effect=args.effect, nsim=args.nsim, n_jobs=jobs, seed=1)
        times[jobs] = time.perf_counter() - t0
        if jobs == 1:
            cpu1 = time.process_time() - c0
        print(f"twolevel, {jobs} process(es): {args.nsim} simulations in {times[jobs]:.2f} s "
              f"({1e3 * times[jobs] / args.nsim:.2f} ms each); power {res.power:.4f} "
              f"(MC se {res.se:.4f}); analytic {analytic:.4f}")
    design, theta, sigma, beta, col = design_population(sd, args.effect,
                                                        np.random.default_rng(0))
    general = None
    if args.nsim_general > 0:
        job = SimulationJob(design=design, theta=theta, sigma=sigma, beta=beta, column=col,
                            fast=False)
        t0 = time.perf_counter()
        run_simulations(job, args.nsim_general, seed=1)
        general = (time.perf_counter() - t0) / args.nsim_general
        print(f"twolevel general route (fast=False, for reference), 1 process: "
              f"{1e3 * general:.2f} ms per simulation ({args.nsim_general} simulations)")
    if shutil.which("Rscript") is None:
        print("Rscript not found: no R comparison")
        return
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "d.csv"
        rng = np.random.default_rng(1)
        y = (args.effect * design.X[:, 1] + np.sqrt(args.icc) * rng.standard_normal(
            design.n_groups)[design.group_index] + sigma * rng.standard_normal(design.n))
        pd.DataFrame({"y": y, "treat": design.X[:, 1], "school": design.group_index}
                     ).to_csv(csv, index=False, float_format="%.17g")
        script = Path(tmp) / "r.R"
        script.write_text(R_SCRIPT)
        out = subprocess.run(["Rscript", str(script), str(csv), str(args.nsim_r),
                              repr(float(theta[0])), repr(sigma), repr(args.effect)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"R failed: {out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
    per_r = r["secs"] / r["nsim"]
    r_total = per_r * args.nsim
    scaled = "" if r["nsim"] == args.nsim else f" (scaled from {r['nsim']} simulations)"
    print(f"R simulate + lmer refit + lmerTest summary: {r['nsim']} simulations in "
          f"{r['secs']:.2f} s ({1e3 * per_r:.1f} ms each), power {r['power']:.3f}; "
          f"{args.nsim} simulations ≈ {r_total:.1f} s{scaled}")
    if general is not None:
        print(f"ratio R / twolevel general route (1 process, for reference): "
              f"{per_r / general:.1f}x")
    print(f"ratio of CPU time per simulation (1 process; robust to the machine's load): "
          f"{(r['cpu'] / r['nsim']) / (cpu1 / args.nsim):.1f}x "
          f"(R {1e3 * r['cpu'] / r['nsim']:.1f} ms, twolevel {1e3 * cpu1 / args.nsim:.2f} ms)")
    print(f"load average at end: {os.getloadavg()}")
    for jobs in (1, 2):
        ratio = r_total / times[jobs]
        print(f"ACCEPTANCE ratio R / twolevel, {jobs} process(es), wall time: {ratio:.1f}x "
              f"(target >= {TARGET:g}x: {'met' if ratio >= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
