"""The whole lecture workflow, run as a user runs it (a subprocess of the real command line).

``--quick`` keeps the sampling short; the numbers are still real fits of the shipped data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [
    "## Answers to the lecture's questions",
    "## 1. Data",
    "## 2. REML fits (lme4 + lmerTest)",
    "## 3. Bayesian fits (PyMC NUTS)",
    "## 4. Model comparison: random slope or not?",
    "## 5. Caterpillar plots of the school effects",
    "## 6. Shrinkage: OLS → REML BLUP → posterior mean",
    "## 7. Level-2 residuals",
    "## 8. The lecture's questions, REML and Bayes side by side",
    "## 9. Predictions for new students, and effect sizes",
    "## 10. Reproducibility: commands, seeds, software, timings, files",
]
FIGURES = [
    "caterpillar_u0", "caterpillar_u1", "caterpillar_beta0", "caterpillar_beta1", "shrinkage",
    "shrinkage_by_size", "level2_residuals", "prior_predictive_students",
    "prior_predictive_schools", "posterior_predictive_students", "posterior_predictive_schools",
    "pareto_k", "predictions",
]


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "twolevel.workflows.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=900, env=env, **kw)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lecture") / "report"
    proc = _cli("lecture", "--quick", "--seed", "7", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_progress_sections_figures(quick):
    out, stdout = quick
    for k in range(1, 11):
        assert f"[{k}/10] " in stdout
    assert "N = 11,091 students, J = 742 schools" in stdout
    md = (out / "report.md").read_text()
    pos = [md.index(s) for s in SECTIONS]
    assert pos == sorted(pos)
    html = (out / "index.html").read_text()
    for f in FIGURES:
        png = out / "figures" / f"{f}.png"
        assert png.stat().st_size > 10_000, f
        assert f"figures/{f}.png" in md and f'src="figures/{f}.png"' in html
    for t in ("per_school_ols", "lrt", "lecture_answers", "shrinkage_per_school",
              "level2_residual_summary", "bayes_diagnostics", "loo_compare_students",
              "loo_compare_schools", "caterpillar_u0", "timings", "software", "seeds"):
        assert (out / "tables" / f"{t}.csv").exists(), t
    ols = pd.read_csv(out / "tables" / "per_school_ols.csv")
    assert len(ols) == 742 and ols["n_j"].sum() == 11_091
    assert ("twolevel lecture --quick --seed 7" in md
            or "twolevel.workflows.cli lecture --quick" in md)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_answers_equal_the_fitted_models(quick):
    """Refit m1 by REML and reopen the saved posterior: the report's answers are those numbers."""
    import xarray as xr

    from twolevel.data.loaders import load_lecture
    from twolevel.models.lmm.lmer import lmer

    out, _ = quick
    ans = pd.read_csv(out / "tables" / "lecture_answers.csv").set_index("symbol")
    m1 = lmer("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", load_lecture())
    fe, vc = m1.fixef(), m1.VarCorr()
    assert ans.loc["gamma00", "reml"] == fe["(Intercept)"]
    assert ans.loc["gamma10", "reml"] == fe["famsesc"]
    assert ans.loc["tau00", "reml"] == vc.variances["(Intercept)"]
    assert ans.loc["tau11", "reml"] == vc.variances["famsesc"]
    assert ans.loc["rho01", "reml"] == pytest.approx(vc.correlations.iloc[0, 1], rel=1e-13)
    assert ans.loc["slope_plus_1sd", "reml"] == pytest.approx(
        fe["famsesc"] + vc.sds["famsesc"], rel=1e-13)

    dt = xr.open_datatree(out / "posterior_m1.nc")
    post = dt["posterior"]
    beta = post["beta"].sel(fixed="(Intercept)").to_numpy().ravel()
    sd = post["sd"].to_numpy().reshape(-1, 2)
    corr = post["corr"].to_numpy().reshape(-1, 2, 2)[:, 0, 1]
    assert ans.loc["gamma00", "post_mean"] == pytest.approx(beta.mean(), rel=1e-12)
    assert ans.loc["tau11", "post_mean"] == pytest.approx((sd[:, 1] ** 2).mean(), rel=1e-12)
    assert ans.loc["rho01", "post_mean"] == pytest.approx(corr.mean(), rel=1e-10)
    answers = json.loads((out / "answers.json").read_text())
    assert answers["prob_corr_negative"] == pytest.approx(np.mean(corr < 0), abs=1e-12)
    assert f"γ00 = {fe['(Intercept)']:.4f}" in answers["answers"][0]


def test_posterior_reopens_with_arviz(quick):
    import arviz as az

    out, _ = quick
    for m in ("m1", "m2"):
        dt = az.from_netcdf(out / f"posterior_{m}.nc")
        s = az.summary(dt, var_names=["beta", "sigma"])
        assert len(s) == 3 and np.isfinite(s["mean"]).all()


def test_killed_run_leaves_previous_report_untouched(quick, tmp_path):
    out, _ = quick
    before = _snapshot(out)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "twolevel.workflows.cli", "lecture", "--quick", "--seed", "8",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    try:
        t0 = time.time()
        for line in proc.stdout:
            if line.startswith("[3/10]"):  # the REML step is done, sampling starts
                break
            assert time.time() - t0 < 300
        partial = [p for p in out.parent.iterdir() if p.name.startswith(".report.partial-")]
        assert len(partial) == 1 and any(partial[0].rglob("*.csv"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _snapshot(out) == before


@pytest.mark.slow
def test_same_seed_reproduces_every_number(quick, tmp_path):
    out, _ = quick
    proc = _cli("lecture", "--quick", "--seed", "7", "--out", str(tmp_path / "again"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _snapshot(out), _snapshot(tmp_path / "again")
    varying = {"tables/timings.csv", "report.md", "index.html"}
    assert set(a) == set(b)
    for name in sorted(set(a) - varying):
        if name.endswith(".csv") or name.endswith(".json"):
            assert a[name] == b[name], name
    import xarray as xr

    for m in ("m1", "m2"):
        p1 = xr.open_datatree(out / f"posterior_{m}.nc")["posterior"].to_dataset()
        p2 = xr.open_datatree(tmp_path / "again" / f"posterior_{m}.nc")["posterior"].to_dataset()
        xr.testing.assert_equal(p1, p2)


@pytest.mark.slow
def test_hsb_run_produces_a_complete_report(tmp_path):
    out = tmp_path / "hsb"
    proc = _cli("run", "--data", "hsb", "--y", "mAch", "--x", "ses", "--group", "school",
                "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    for s in SECTIONS:
        assert s in md
    for f in FIGURES:
        assert (out / "figures" / f"{f}.png").exists(), f
    ans = pd.read_csv(out / "tables" / "lecture_answers.csv").set_index("symbol")
    # lme4 on Hsb82, mAch ~ cses + (cses | school) (users-needs.md §5.2): γ00 12.6362, γ10 2.1932
    assert ans.loc["gamma00", "reml"] == pytest.approx(12.6362, abs=1e-4)
    assert ans.loc["gamma10", "reml"] == pytest.approx(2.1932, abs=1e-4)
    assert "'cses' = ses − mean of ses within school" in md


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("g,y,x\n1,1,2\n1,2,3\n2,3,4\n2,5,1\n")
    proc = _cli("run", "--data", str(path), "--y", "y", "--x", "nope", "--group", "g",
                "--quick", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("twolevel run: error: column 'nope' is not in file")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
