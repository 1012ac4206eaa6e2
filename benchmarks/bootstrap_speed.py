"""Parametric bootstrap of the lecture model: ``twolevel.bootstrap`` against lme4's ``bootMer``
in the same run (a script, not a test).

Model: ``g1rscore ~ 1 + famsesc + (1 + famsesc | schid)`` on the lecture data (742 schools,
11,091 students), REML. Ours: ``bootstrap(fit, nsim)`` (responses simulated in batches, each refit
from the per-school cross-products, warm start at θ̂). R: ``bootMer(m, FUN, nsim = nsim_r,
use.u = FALSE)`` with FUN returning the variance components and β̂ (the same statistic), timed in
the same process that fitted the model; lme4's profile interval for sd_(Intercept) (squared: τ00)
is computed in the same R call. With ``--nsim-r`` below ``--nsim`` the R time is per refit and
the ratio is per refit (stated in the output).

Also printed: the 95% percentile interval of τ00 (boot.ci's ``norm.inter``) from our replicates
against lme4's profile interval, as relative differences of the endpoints.

Usage::

    nice -n 10 .venv/bin/python benchmarks/bootstrap_speed.py --nsim 1000 --nsim-r 1000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twolevel.data.lecture import LECTURE_CSV  # noqa: E402
from twolevel.data.loaders import load_lecture  # noqa: E402
from twolevel.models.inference.simulate import bootstrap, norm_inter  # noqa: E402
from twolevel.models.lmm.lmer import lmer  # noqa: E402

FORMULA = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"

R_SCRIPT = r"""
args <- commandArgs(TRUE)
csv <- args[1]; nsim <- as.integer(args[2]); out <- args[3]; formula <- args[4]
suppressPackageStartupMessages(library(lme4))
d <- read.csv(csv)
d$schid <- factor(d$schid)
m <- lmer(as.formula(formula), data = d)
stat <- function(x) c(as.data.frame(VarCorr(x))$vcov, fixef(x))
t0 <- proc.time()[["elapsed"]]
b <- bootMer(m, stat, nsim = nsim, seed = 1, use.u = FALSE, type = "parametric")
secs <- proc.time()[["elapsed"]] - t0
t1 <- proc.time()[["elapsed"]]
ci <- suppressMessages(confint(m, parm = "sd_(Intercept)|schid", method = "profile",
                               oldNames = FALSE))
psecs <- proc.time()[["elapsed"]] - t1
tau <- b$t[, 1]
fmt <- paste0('{"secs": %.6f, "nsim": %d, "failed": %d, "profile_sd": [%.10g, %.10g], ',
              '"profile_secs": %.3f, "boot_tau00_perc": [%.10g, %.10g]}')
writeLines(sprintf(fmt, secs, nsim, sum(!is.finite(tau)), ci[1, 1], ci[1, 2], psecs,
                   quantile(tau, 0.025, na.rm = TRUE), quantile(tau, 0.975, na.rm = TRUE)), out)
"""


def run_r(nsim_r: int) -> dict | None:
    rscript = shutil.which("Rscript")
    if rscript is None:
        print("Rscript not found: no lme4 comparison")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "b.R", Path(tmp) / "out.json"
        script.write_text(R_SCRIPT)
        proc = subprocess.run([rscript, str(script), str(LECTURE_CSV), str(nsim_r), str(out),
                               FORMULA], capture_output=True, text=True)
        if proc.returncode != 0:
            print("Rscript failed:\n" + proc.stderr)
            return None
        return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nsim", type=int, default=1000, help="our bootstrap replicates")
    ap.add_argument("--nsim-r", type=int, default=1000, help="lme4 bootMer replicates")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = lmer(FORMULA, load_lecture())
    bootstrap(fit, 2, seed=0)  # compile the kernels outside the timing
    t0 = time.perf_counter()
    b = bootstrap(fit, args.nsim, seed=args.seed)
    ours = time.perf_counter() - t0
    tau = b.table["sd_(Intercept)|schid"].to_numpy() ** 2
    perc = norm_inter(tau, [0.025, 0.975])
    print(f"lecture model, REML; machine load at start: {open('/proc/loadavg').read().split()[:3]}")
    print(f"twolevel.bootstrap: {args.nsim} refits in {ours:.2f} s "
          f"({1000 * ours / args.nsim:.2f} ms per refit; {b.n_failed} failed)")
    print(f"  tau00 = {fit.VarCorr().cov[0, 0]:.4f}; 95% percentile interval "
          f"[{perc[0]:.4f}, {perc[1]:.4f}]")
    r = run_r(args.nsim_r)
    if r is None:
        return 0
    per_r = r["secs"] / r["nsim"]
    print(f"lme4 bootMer: {r['nsim']} refits in {r['secs']:.2f} s ({1000 * per_r:.1f} ms per "
          f"refit; {r['failed']} failed)")
    scope = "" if r["nsim"] == args.nsim else " (per refit: the runs have different nsim)"
    print(f"speed ratio lme4 / twolevel{scope}: {per_r / (ours / args.nsim):.1f}x")
    prof = np.asarray(r["profile_sd"]) ** 2
    rel = perc / prof - 1.0
    print(f"lme4 profile interval for tau00 (sd squared): [{prof[0]:.4f}, {prof[1]:.4f}] "
          f"({r['profile_secs']:.1f} s)")
    print(f"  percentile vs profile: lower {100 * rel[0]:+.2f}%, upper {100 * rel[1]:+.2f}%")
    print(f"  lme4's own bootMer percentile interval (quantile): "
          f"[{r['boot_tau00_perc'][0]:.4f}, {r['boot_tau00_perc'][1]:.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
