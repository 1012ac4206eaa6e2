"""Fit speed and memory against lme4 / lmerTest (issue 3, item 9). A script, not a test.

Usage::

    .venv/bin/python benchmarks/fit_speed.py [--repeats 5] [--big-repeats 5] [--no-big]
        [--no-big-lmertest] [--rows 1000000] [--schools 50000] [--seed 20251125]

Jobs
----
* lecture fit: ``lmer("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", lecture, REML=True)`` on
  ``data/ecls_k_like.csv`` (11,091 students, 742 schools) loaded with
  ``twolevel.data.loaders.load_lecture``.
* lecture fit + Satterthwaite: the same fit then the coefficient table with Satterthwaite df and p
  (``fit.coef_table()``: numDeriv Hessian of D(θ, σ), analytic Jacobian of vcov(β̂)); R's anchor is
  ``summary(lmerTest::lmer(...))`` (lmerTest's fit, its Hessian/Jacobian, and the table).
* 1M fit (and 1M fit + Satterthwaite): the same model simulated with seeded NumPy
  (``--rows`` rows in ``--schools`` schools; see :func:`simulate`), fitted from a pandas DataFrame
  already in memory; R fits from a data.frame already in memory (read from a temporary CSV
  before the clock starts).

Timing
------
Every job is run once as a warm-up and then ``--repeats`` times (``--big-repeats`` for the 1M
jobs) in the same process; the median wall-clock time is reported. R's timings are taken inside
one R session with ``proc.time()`` around each call, so R's start-up, package loading and CSV
reading are excluded. The R anchors are measured in the same run of this script (the ratio
column is R's median / ours). Before each timed call both sides collect garbage (``gc.collect()``,
R's ``gc()``), which leaves the CPU caches cold for the call; the lecture jobs are also timed back
to back without it (``--warm-repeats`` calls on each side, as ``timeit`` and R's
``microbenchmark`` do).

Memory
------
* ours: a fresh Python subprocess imports the package, loads the 1M-row data (from a ``.npy``
  file, about 24 MB of columns) into a DataFrame, records its resident set size (RSS), fits, and
  reports its peak RSS (``ru_maxrss`` of that child from ``os.wait4``). The "peak" column is the
  whole process's peak (interpreter, NumPy/SciPy/pandas/formulae, the data and the fit); the RSS
  after loading is printed too so the fit's own increase is visible.
* R: the same for an ``Rscript`` child (peak RSS of the R process that reads the CSV and fits once;
  its RSS after reading the data is printed from ``/proc/self/status``).

statsmodels ``MixedLM`` is timed on the lecture data only if ``import statsmodels`` works.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORMULA = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"

# Population values of the simulation: the lecture fit's REML estimates (rounded).
SIM = {
    "beta": (94.92, 7.65),
    "sd_int": 7.64,
    "sd_slope": 2.37,
    "corr": -0.16,
    "sigma": 15.29,
    "sd_x": 0.8,
}


# ----------------------------------------------------------------------------- data


def simulate(
    n_rows: int = 1_000_000, n_schools: int = 50_000, seed: int = 20251125
) -> pd.DataFrame:
    """``g1rscore = β0 + β1·famsesc + u0_j + u1_j·famsesc + e`` with (u0, u1) bivariate normal
    (the lecture fit's estimates, :data:`SIM`); famsesc is school-mean-centred; school sizes are
    2 + multinomial (every school has ≥ 2 students, mean n/J); rows are ordered by school."""
    rng = np.random.default_rng(seed)
    sizes = 2 + rng.multinomial(n_rows - 2 * n_schools, np.full(n_schools, 1.0 / n_schools))
    schid = np.repeat(np.arange(1, n_schools + 1, dtype=np.int64), sizes)
    g = schid - 1
    x = rng.normal(0.0, SIM["sd_x"], n_rows)
    x -= (np.bincount(g, weights=x, minlength=n_schools) / sizes)[g]
    s0, s1, r = SIM["sd_int"], SIM["sd_slope"], SIM["corr"]
    cov = np.array([[s0 * s0, r * s0 * s1], [r * s0 * s1, s1 * s1]])
    u = rng.multivariate_normal(np.zeros(2), cov, size=n_schools)
    y = (SIM["beta"][0] + SIM["beta"][1] * x + u[g, 0] + u[g, 1] * x
         + rng.normal(0.0, SIM["sigma"], n_rows))
    return pd.DataFrame({"schid": schid, "famsesc": np.round(x, 6), "g1rscore": np.round(y, 4)})


# ----------------------------------------------------------------------------- ours


def _fit(df: pd.DataFrame):
    from twolevel.models.lmm.lmer import lmer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmer(FORMULA, df, REML=True)


def _fit_satterthwaite(df: pd.DataFrame):
    fit = _fit(df)
    return fit, fit.coef_table(ddf="Satterthwaite")


def time_median(fn, repeats: int, collect: bool = True) -> tuple[float, list[float]]:
    """One warm-up call, then ``repeats`` timed calls, each after a full garbage collection
    (``collect``, as R's side calls ``gc()``) or back to back; (median, all times) in seconds. The
    warm-up's time is appended last (not part of the median)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        if collect:
            gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times + [first]


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS:")


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0: writing 5 to
    /proc/self/clear_refs); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _memory_child(npy: str) -> None:
    """Run in a fresh interpreter: load the data, print RSS after loading, fit, print RSS."""
    import resource

    import twolevel.models.lmm.lmer  # noqa: F401  (imports counted in the baseline, not in the fit)
    import twolevel.models.lmm.satterthwaite  # noqa: F401

    base = _rss_mb()
    arr = np.load(npy)
    df = pd.DataFrame({"schid": arr[:, 0].astype(np.int64), "famsesc": arr[:, 1],
                       "g1rscore": arr[:, 2]})
    del arr
    gc.collect()
    loaded = _rss_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    hwm_reset = _reset_peak_rss()  # so the peak below is the fit's, not the loading's
    t0 = time.perf_counter()
    fit = _fit(df)
    t1 = time.perf_counter()
    after_fit = _rss_mb()
    peak_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    hwm_fit = _status_mb("VmHWM:") if hwm_reset else float("nan")
    fit.coef_table()
    t2 = time.perf_counter()
    print(json.dumps({
        "rss_imports_mb": base, "rss_loaded_mb": loaded, "peak_before_fit_mb": peak_before,
        "rss_after_fit_mb": after_fit, "peak_fit_mb": peak_fit, "hwm_fit_mb": hwm_fit,
        "peak_satt_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "fit_s": t1 - t0, "satt_s": t2 - t1, "fixef": list(map(float, fit.state.beta)),
    }))


def _run_child(cmd: list[str], **kw) -> tuple[str, str, float]:
    """Run ``cmd``; return (stdout, stderr, peak RSS in MB of that child, from wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    # read the pipes in threads so a chatty child cannot block, then reap it with wait4
    import threading

    out: dict[str, str] = {}

    def reader(name, stream):
        out[name] = stream.read()

    threads = [threading.Thread(target=reader, args=(k, s))
               for k, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{out.get('err', '')[-3000:]}")
    return out["out"], out["err"], usage.ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- R

R_TIMING = r"""
suppressPackageStartupMessages({library(lme4); library(lmerTest)})
args <- commandArgs(trailingOnly = TRUE)
csv <- args[1]; reps <- as.integer(args[2]); satt <- args[3] == "1"; warm <- as.integer(args[4])
dat <- read.csv(csv)
f <- g1rscore ~ 1 + famsesc + (1 + famsesc | schid)
tm <- function(fun, reps, label, collect = TRUE) {
  t0 <- proc.time()[["elapsed"]]; invisible(fun())   # warm-up (first call), reported apart
  cat(sprintf("%s_FIRST %s\n", label, proc.time()[["elapsed"]] - t0))
  t <- numeric(reps)
  for (i in seq_len(reps)) { if (collect) gc(); t0 <- proc.time()[["elapsed"]]; invisible(fun())
                             t[i] <- proc.time()[["elapsed"]] - t0 }
  t
}
fit_t <- tm(function() lme4::lmer(f, data = dat, REML = TRUE), reps, "FIT")
cat(sprintf("FIT %s\n", paste(fit_t, collapse = " ")))
m <- lme4::lmer(f, data = dat, REML = TRUE)
cat(sprintf("FIXEF %s\n", paste(format(fixef(m), digits = 10), collapse = " ")))
if (satt) {
  s_t <- tm(function() summary(lmerTest::lmer(f, data = dat, REML = TRUE)), reps, "SATT")
  cat(sprintf("SATT %s\n", paste(s_t, collapse = " ")))
  cf <- coef(summary(lmerTest::lmer(f, data = dat, REML = TRUE)))
  cat(sprintf("DF %s\n", paste(format(cf[, "df"], digits = 10), collapse = " ")))
}
if (warm > 0) {  # back to back, no gc() before each call, `warm` repeats
  cat(sprintf("FITW %s\n", paste(tm(function() lme4::lmer(f, data = dat, REML = TRUE), warm,
                                     "FITW", FALSE), collapse = " ")))
  cat(sprintf("SATTW %s\n", paste(tm(function() summary(lmerTest::lmer(f, data = dat,
                                      REML = TRUE)), warm, "SATTW", FALSE), collapse = " ")))
}
"""

R_MEMORY = r"""
suppressPackageStartupMessages({library(lme4)})
rss <- function() { s <- readLines("/proc/self/status"); as.numeric(sub("[^0-9]*([0-9]+).*", "\\1",
  s[grepl("^VmRSS:", s)])) / 1024 }
dat <- read.csv(commandArgs(trailingOnly = TRUE)[1])
invisible(gc())
cat(sprintf("LOADED %f\n", rss()))
m <- lme4::lmer(g1rscore ~ 1 + famsesc + (1 + famsesc | schid), data = dat, REML = TRUE)
cat(sprintf("AFTER %f\n", rss()))
"""


def r_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    res = subprocess.run(["Rscript", "-e", "library(lme4); library(lmerTest)"],
                         capture_output=True, text=True)
    return res.returncode == 0


def r_timings(csv: Path, reps: int, satt: bool, workdir: Path, warm: int = 0) -> dict:
    script = workdir / "timing.R"
    script.write_text(R_TIMING)
    out, _, peak = _run_child(["Rscript", str(script), str(csv), str(reps), "1" if satt else "0",
                               str(warm)])
    res: dict = {"peak_mb": peak}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        if key in ("FIT", "SATT", "FIXEF", "DF", "FIT_FIRST", "SATT_FIRST", "FITW", "SATTW"):
            res[key.lower()] = [float(v) for v in rest.split()]
    return res


def r_memory(csv: Path, workdir: Path) -> dict:
    script = workdir / "memory.R"
    script.write_text(R_MEMORY)
    out, _, peak = _run_child(["Rscript", str(script), str(csv)])
    res = {"peak_mb": peak}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        if key in ("LOADED", "AFTER"):
            res[key.lower() + "_mb"] = float(rest)
    return res


# ----------------------------------------------------------------------------- statsmodels


def statsmodels_time(df: pd.DataFrame, repeats: int) -> float | None:
    try:
        import statsmodels.formula.api as smf
    except ImportError:
        return None

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smf.mixedlm("g1rscore ~ 1 + famsesc", df, groups=df["schid"],
                        re_formula="~famsesc").fit(reml=True)

    return time_median(run, repeats)[0]


# ----------------------------------------------------------------------------- table


def _fmt_s(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.4f}" if x < 1 else f"{x:.2f}"


def _fmt_ratio(theirs: float | None, ours: float | None) -> str:
    if theirs is None or ours is None or not np.isfinite(theirs):
        return "n/a"
    return f"{theirs / ours:.0f}×" if theirs / ours >= 10 else f"{theirs / ours:.1f}×"


def _fmt_mb(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return ""
    return f"{x / 1024:.2f} GB" if x >= 1024 else f"{x:.0f} MB"


def print_tables(rows: list[dict], notes: list[str]) -> None:
    head = ["job", "ours (s)", "lme4/lmerTest (s)", "ratio (theirs/ours)", "peak memory ours",
            "peak memory R"]
    body = [[r["job"], _fmt_s(r["ours"]), _fmt_s(r.get("theirs")),
             _fmt_ratio(r.get("theirs"), r["ours"]), _fmt_mb(r.get("mem_ours")),
             _fmt_mb(r.get("mem_r"))] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for b in body:
        print("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)))
    print()
    for n in notes:
        print(n)
    print("\nMarkdown:\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for b in body:
        print("| " + " | ".join(b) + " |")
    print()
    for n in notes:
        print(f"- {n}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per lecture job (≥5)")
    ap.add_argument("--big-repeats", type=int, default=5, help="timed repeats per 1M job")
    ap.add_argument("--warm-repeats", type=int, default=20,
                    help="timed repeats of the back-to-back lecture jobs (both sides)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--schools", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=20251125)
    ap.add_argument("--no-big", action="store_true", help="skip the simulated large data set")
    ap.add_argument("--no-big-lmertest", action="store_true",
                    help="skip lmerTest's summary on the large data (slow in R)")
    ap.add_argument("--no-r", action="store_true", help="skip R (ratios become n/a)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child)
        return 0

    from twolevel.data.lecture import LECTURE_CSV
    from twolevel.data.loaders import load_lecture

    use_r = not args.no_r and r_available()
    rows: list[dict] = []
    notes: list[str] = []
    lecture = load_lecture()
    print(f"lecture data: {len(lecture)} rows, {lecture['schid'].nunique()} schools; "
          f"formula {FORMULA}", flush=True)

    t_fit, all_fit = time_median(lambda: _fit(lecture), args.repeats)
    t_satt, all_satt = time_median(lambda: _fit_satterthwaite(lecture), args.repeats)
    t_fitw, _ = time_median(lambda: _fit(lecture), args.warm_repeats, collect=False)
    t_sattw, _ = time_median(lambda: _fit_satterthwaite(lecture), args.warm_repeats, collect=False)
    fit, tab = _fit_satterthwaite(lecture)
    print(f"ours lecture fit: {[round(t, 4) for t in all_fit[:-1]]} (first call "
          f"{all_fit[-1]:.4f})", flush=True)
    print(f"ours lecture fit + Satterthwaite: {[round(t, 4) for t in all_satt[:-1]]} (first call "
          f"{all_satt[-1]:.4f})", flush=True)
    print(tab.to_string(), flush=True)
    r_lect = None
    with tempfile.TemporaryDirectory(prefix="fit_speed_") as tmp:
        tmpdir = Path(tmp)
        if use_r:
            r_lect = r_timings(Path(LECTURE_CSV), args.repeats, True, tmpdir,
                               warm=args.warm_repeats)
            print(f"R lecture lme4 fit: {r_lect['fit']} (first call {r_lect['fit_first']})",
                  flush=True)
            print(f"R lecture lmerTest summary: {r_lect['satt']} (first call "
                  f"{r_lect['satt_first']})", flush=True)
            notes.append(
                f"lecture, first call in the session (not in the medians): ours fit "
                f"{all_fit[-1]:.4f} s, fit + Satterthwaite {all_satt[-1]:.4f} s; lme4 "
                f"{r_lect['fit_first'][0]:.3f} s, lmerTest {r_lect['satt_first'][0]:.3f} s")
            dfix = np.max(np.abs(np.array(r_lect["fixef"]) - fit.state.beta))
            ddf = np.max(np.abs(np.array(r_lect["df"]) - tab["df"].to_numpy()))
            notes.append(f"lecture: max |fixef ours − lme4| = {dfix:.1e}, "
                         f"max |Satterthwaite df ours − lmerTest| = {ddf:.1e}")
        med = lambda v: float(np.median(v)) if v else None  # noqa: E731
        rows.append({"job": f"lecture fit ({len(lecture):,} rows, 742 schools)", "ours": t_fit,
                     "theirs": med(r_lect["fit"]) if r_lect else None})
        rows.append({"job": "lecture fit + Satterthwaite table", "ours": t_satt,
                     "theirs": med(r_lect["satt"]) if r_lect else None})
        rows.append({"job": "lecture fit, back to back (no forced gc)", "ours": t_fitw,
                     "theirs": med(r_lect.get("fitw")) if r_lect else None})
        rows.append({"job": "lecture fit + Satterthwaite, back to back", "ours": t_sattw,
                     "theirs": med(r_lect.get("sattw")) if r_lect else None})
        t_sm = statsmodels_time(lecture, args.repeats)
        if t_sm is not None:
            rows.append({"job": "lecture fit, statsmodels MixedLM (REML)", "ours": t_fit,
                         "theirs": t_sm})
        else:
            notes.append("statsmodels is not installed: MixedLM not timed")

        if not args.no_big:
            big = simulate(args.rows, args.schools, args.seed)
            label = f"{args.rows / 1e6:g}M rows, {args.schools:,} schools"
            print(f"simulated {label} (seed {args.seed})", flush=True)
            t_big, all_big = time_median(lambda: _fit(big), args.big_repeats)
            print(f"ours {label} fit: {[round(t, 3) for t in all_big[:-1]]} (first call "
                  f"{all_big[-1]:.3f})", flush=True)
            t_bigs, all_bigs = time_median(lambda: _fit_satterthwaite(big), args.big_repeats)
            print(f"ours {label} fit + Satterthwaite: {[round(t, 3) for t in all_bigs[:-1]]}",
                  flush=True)
            bigfit, bigtab = _fit_satterthwaite(big)
            npy = tmpdir / "big.npy"
            np.save(npy, np.column_stack([big["schid"].to_numpy(float), big["famsesc"],
                                          big["g1rscore"]]))
            out, _, peak = _run_child([sys.executable, str(Path(__file__).resolve()),
                                       "--memory-child", str(npy)], cwd=str(ROOT))
            mem = json.loads(out.strip().splitlines()[-1])
            fit_peak = mem["hwm_fit_mb"] if np.isfinite(mem["hwm_fit_mb"]) else mem["peak_fit_mb"]
            notes.append(
                f"ours, {label}, fresh process: RSS {mem['rss_imports_mb']:.0f} MB after imports, "
                f"{mem['rss_loaded_mb']:.0f} MB after loading the data (the loading itself "
                f"peaked at {mem['peak_before_fit_mb']:.0f} MB); peak RSS during the fit "
                f"{fit_peak:.0f} MB (VmHWM reset after loading; +"
                f"{fit_peak - mem['rss_loaded_mb']:.0f} MB over the loaded data; fit "
                f"{mem['fit_s']:.3f} s cold); whole process peak incl. loading and the "
                f"Satterthwaite table {peak:.0f} MB (wait4 ru_maxrss)")
            r_big = r_mem = None
            if use_r:
                csv = tmpdir / "big.csv"
                big.to_csv(csv, index=False)
                r_mem = r_memory(csv, tmpdir)
                notes.append(
                    f"R, {label}, fresh Rscript: RSS {r_mem.get('loaded_mb', float('nan')):.0f} MB "
                    f"after read.csv, peak {r_mem['peak_mb']:.0f} MB through lme4::lmer "
                    "(wait4 ru_maxrss)")
                r_big = r_timings(csv, args.big_repeats, not args.no_big_lmertest, tmpdir)
                print(f"R {label} lme4 fit: {r_big['fit']} (first call {r_big['fit_first']})",
                      flush=True)
                dfix = np.max(np.abs(np.array(r_big["fixef"]) - bigfit.state.beta))
                msg = f"{label}: max |fixef ours − lme4| = {dfix:.1e}"
                if "satt" in r_big:
                    print(f"R {label} lmerTest summary: {r_big['satt']} (first call "
                          f"{r_big['satt_first']})", flush=True)
                    ddf = np.max(np.abs(np.array(r_big["df"]) - bigtab["df"].to_numpy()))
                    msg += f", max |Satterthwaite df ours − lmerTest| = {ddf:.1e}"
                notes.append(msg)
            rows.append({"job": f"{label}: fit", "ours": t_big,
                         "theirs": med(r_big["fit"]) if r_big else None,
                         "mem_ours": fit_peak,
                         "mem_r": r_mem["peak_mb"] if r_mem else None})
            rows.append({"job": f"{label}: fit + Satterthwaite table", "ours": t_bigs,
                         "theirs": med(r_big.get("satt")) if r_big else None,
                         "mem_ours": peak})
    notes.append(
        f"medians of {args.repeats} (lecture) / {args.big_repeats} (large) repeats after one "
        "warm-up, same process; R timed inside one R session with proc.time() (R start-up, "
        "package loading and read.csv excluded); ours from a pandas DataFrame in memory, R from "
        "a data.frame in memory")
    notes.append(f"machine: {os.cpu_count()} CPUs; load average at the end "
                 f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print_tables(rows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
