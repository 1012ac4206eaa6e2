"""Start-up: what a user waits for, end to end, in fresh processes (issue 20, item 5). A script,
not a test.

Usage::

    nice .venv/bin/python benchmarks/startup.py [--repeats 3]

Jobs, each in fresh processes, median of ``--repeats``, all in one run (the machine is shared:
compare the ratios, not the seconds):

* ``twolevel fit lecture '<lecture formula>' --json`` (the console script) against the anchor
  ``Rscript`` loading lmerTest, reading the same CSV (``data/ecls_k_like.csv``), fitting the same
  model by REML and printing ``summary()``;
* the first ``tl.lmer`` call in a fresh process against the second (after ``import twolevel as tl;
  tl.lmer``, so the module import is counted separately and printed too);
* where the time of ``twolevel fit`` goes: ``python -c pass``, ``import twolevel.workflows.cli``
  plus the fit command's imports, and the rest.

Also prints ``uptime``'s load and which kernels are active (``twolevel info --json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "data" / "ecls_k_like.csv"
FORMULA = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"
R_CODE = ("suppressPackageStartupMessages(library(lmerTest)); d <- read.csv('{csv}'); "
          "m <- lmer({formula}, data = d); print(summary(m))")
FIRST_SECOND = f"""
import json, time
t0 = time.perf_counter()
import twolevel as tl
lmer = tl.lmer
d = tl.load_data("lecture")
t1 = time.perf_counter()
tl.lmer("{FORMULA}", d)
t2 = time.perf_counter()
tl.lmer("{FORMULA}", d)
t3 = time.perf_counter()
print(json.dumps({{"import_and_load": t1 - t0, "first": t2 - t1, "second": t3 - t2}}))
"""
IMPORTS = ("import time; t = time.perf_counter(); import twolevel.workflows.cli, "
           "twolevel.workflows.commands.fit; print(time.perf_counter() - t)")


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {r.stderr[-1500:]}")
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print("load:", os.getloadavg())
    twolevel_cmd = str(Path(sys.executable).with_name("twolevel"))
    info = json.loads(subprocess.run([twolevel_cmd, "info", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    print("kernels:", info["kernels"], "vector path:", info["vector_path"])
    rscript = shutil.which("Rscript")
    ours, anchor, first, second, imp_fit, pyenv, imports = [], [], [], [], [], [], []
    for _ in range(args.repeats):  # interleaved, so both sides see the same load
        ours.append(wall([twolevel_cmd, "fit", "lecture", FORMULA, "--json"]))
        if rscript:
            anchor.append(wall([rscript, "-e", R_CODE.format(csv=CSV, formula=FORMULA)]))
        r = json.loads(subprocess.run([sys.executable, "-c", FIRST_SECOND], capture_output=True,
                                      text=True, check=True).stdout)
        first.append(r["first"])
        second.append(r["second"])
        imp_fit.append(r["import_and_load"])
        pyenv.append(wall([sys.executable, "-c", "pass"]))
        imports.append(float(subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True,
                                            text=True, check=True).stdout))
    med = statistics.median
    rows = {"twolevel fit --json (s)": med(ours),
            "Rscript lmerTest summary (s)": med(anchor) if anchor else float("nan"),
            "Rscript / twolevel fit": med(anchor) / med(ours) if anchor else float("nan"),
            "python -c pass (s)": med(pyenv),
            "imports of twolevel fit (s)": med(imports),
            "import twolevel + tl.lmer + load_data (s)": med(imp_fit),
            "first tl.lmer (s)": med(first), "second tl.lmer (s)": med(second),
            "first - second (ms)": 1000 * (med(first) - med(second))}
    for k, v in rows.items():
        print(f"{k:<44}{v:.4g}")
    print("load:", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
