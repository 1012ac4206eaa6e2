"""Step 9's reproducibility record: the command line, the settings as JSON, the R code of the same
analysis, seeds, software versions, timings and the list of files.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twolevel.workflows.lecture.spec import RunSettings, WorkflowSpec


def software_versions() -> pd.DataFrame:
    """Versions of Python, the platform and the libraries used (and the git commit if any)."""
    rows = [("python", sys.version.split()[0]), ("platform", platform.platform())]
    for pkg in ("twolevel", "numpy", "scipy", "pandas", "formulae", "nlopt", "pymc", "pytensor",
                "arviz", "arviz-base", "arviz-stats", "arviz-plots", "xarray", "h5netcdf",
                "matplotlib"):
        try:
            rows.append((pkg, importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            rows.append(("git commit", sha + (" (with local changes)" if dirty else "")))
    except (OSError, subprocess.SubprocessError):
        pass
    return pd.DataFrame(rows, columns=["software", "version"])


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (``twolevel ...``)."""
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name if argv else "twolevel"
    if prog in ("cli.py", "__main__.py", "-m"):
        prog = "python -m twolevel.workflows.cli"
    elif prog != "twolevel":
        prog = "twolevel"
    return " ".join([prog, *map(shlex.quote, argv[1:])])


def jsonable(obj: Any) -> Any:
    """Numbers and containers made JSON-friendly (NaN → null)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def settings_record(spec: WorkflowSpec, settings: RunSettings) -> dict:
    """The specification and the settings as a JSON-friendly dict."""
    return jsonable({"spec": asdict(spec), "settings": asdict(settings.effective()),
                     "formula_m1": spec.formula_m1, "formula_m2": spec.formula_m2})


def dumps(obj: Any) -> str:
    """JSON text with sorted keys."""
    return json.dumps(jsonable(obj), indent=2, sort_keys=True)


def r_code(spec: WorkflowSpec) -> str:
    """The same REML analysis in R (lme4 + lmerTest), for readers who want to check."""
    return "\n".join([
        "library(lme4); library(lmerTest)",
        f"d <- read.csv('<your data>')  # {spec.data}",
        f"d${spec.xc} <- d${spec.x} - ave(d${spec.x}, d${spec.group})  # group-mean centering",
        f"m1 <- lmer({spec.formula_m1}, data = d)",
        f"m2 <- lmer({spec.formula_m2}, data = d)",
        "summary(m1); summary(m2)",
        "anova(m2, m1)  # refits with ML",
        "ranef(m1, condVar = TRUE)",
    ])


def add_repro_section(sec, spec, settings, eff, command, progress, rep, elapsed) -> None:
    """Commands, seeds, settings, software versions, timings and the list of files."""
    sec.text("Command that produced this report:")
    sec.pre(command)
    sec.text("The two models in R (lme4 + lmerTest) — the REML numbers above match lme4's:")
    sec.pre(r_code(spec))
    add_run_record(sec, settings, eff, ("prior_m1", "bayes_m1", "ppc_m1", "prior_m2", "bayes_m2",
                                        "ppc_m2", "predict"), progress, rep, elapsed)


def add_run_record(sec, settings, eff, steps: tuple[str, ...], progress, rep,
                   elapsed: float) -> None:
    """The run's seeds (of the random ``steps``), sampling settings, software versions, step
    timings and the report's files. Shared by the normal and the binary workflow."""
    seeds = pd.DataFrame([(k, eff.seed_for(k)) for k in steps], columns=["random step", "seed"])
    sec.text(f"Run seed: {settings.seed} (`--seed`); every random step uses a seed derived from "
             f"it. Sampling: {eff.chains} chains × {eff.draws} draws after {eff.tune} tuning steps"
             + (" (--quick: too few draws for reporting)" if eff.quick else "") + ".")
    sec.table("seeds", seeds, caption="Seeds of the random steps")
    sec.table("software", software_versions(), caption="Software")
    tim = pd.DataFrame(progress.timings, columns=["step", "seconds"])
    tim.loc[len(tim)] = ["total until the report was written", elapsed]
    sec.table("timings", tim, digits=1, caption="Wall time of each step")
    files = sorted(rep.files + ["index.html", "report.md"])
    sec.text("Files in this folder:\n\n" + "\n".join(f"- `{f}`" for f in files))
