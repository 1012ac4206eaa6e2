"""The three-level workflow (``twolevel run --group school --group class``) on a small simulated
data set, run as a user runs it (a subprocess of the real command line), and the tables it is
built from (:mod:`twolevel.models.tables.levels`)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import TwolevelError
from twolevel.models.lmm.lmer import lmer
from twolevel.models.lmm.multi import anova_multi
from twolevel.models.tables.levels import (
    modes_by_level,
    nested_order,
    variance_by_level,
    variance_reduction,
)

ROOT = Path(__file__).resolve().parents[1]


def simulate_three_levels(seed: int = 7, schools: int = 25, classes: int = 4,
                          students: int = 8) -> pd.DataFrame:
    """Students in classes in schools; class labels 1..classes restart in every school.
    σ_school = 1, σ_class = 0.6, σ = 1; y = 1 + 0.5 x + 0.4 w + effects + noise."""
    rng = np.random.default_rng(seed)
    s = np.repeat(np.arange(1, schools + 1), classes * students)
    c = np.tile(np.repeat(np.arange(1, classes + 1), students), schools)
    us = rng.normal(0, 1.0, schools)
    uc = rng.normal(0, 0.6, schools * classes)
    w = rng.normal(size=schools)
    x = rng.normal(size=s.size)
    cell = (s - 1) * classes + (c - 1)
    y = 1 + 0.5 * x + 0.4 * w[s - 1] + us[s - 1] + uc[cell] + rng.normal(size=s.size)
    return pd.DataFrame({"school": s, "class": c, "x": x, "w": w[s - 1], "y": y})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twolevel.workflows.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_three_level_run_writes_its_report(tmp_path):
    d = simulate_three_levels()
    path = tmp_path / "three.csv"
    d.to_csv(path, index=False)
    out = tmp_path / "report"
    proc = _cli("run", "--data", str(path), "--y", "y", "--x", "x", "--group", "school",
                "--group", "class", "--level2", "w", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[8/8]" in proc.stdout
    md = (out / "report.md").read_text()
    for s in ("1. Data", "2. Variance decomposition by level", "3. REML fit",
              "4. Likelihood-ratio test for the 'class' level",
              "5. Conditional modes and caterpillar plots per level",
              "6. Predictions for a new student", "7. Bayesian fit: every level integrated out",
              "8. Reproducibility"):
        assert s in md, s
    assert "REML criterion at convergence" in md and "Satterthwaite" in md
    assert "labels are reused across 'school' groups" in md
    for f in ("caterpillar_school", "caterpillar_class_in_school", "bayes_caterpillar_school",
              "bayes_caterpillar_class_in_school", "bayes_shrinkage_school",
              "bayes_shrinkage_class_in_school"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 1000, f
    # the numbers in the report are the library's, for the same formulas
    m1 = lmer("y ~ 1 + x + w + (1 | school/class)", d)
    m0 = lmer("y ~ 1 + (1 | school/class)", d)
    fe = pd.read_csv(out / "tables" / "fixed_effects_m1.csv").set_index("term")
    np.testing.assert_allclose(fe["Estimate"], m1.fixef()[fe.index], rtol=1e-10)
    dec = pd.read_csv(out / "tables" / "variance_by_level_m0.csv").set_index("level")
    ic = m0.icc()
    assert dec.loc["school", "share"] == pytest.approx(ic["school"], rel=1e-10)
    assert dec.loc["class:school", "share"] == pytest.approx(ic["class:school"], rel=1e-10)
    res = json.loads((out / "results.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = anova_multi(lmer("y ~ 1 + x + w + (1 | school)", d), m1)
    assert res["lrt"]["chisq"] == pytest.approx(a["chisq"], rel=1e-10)
    assert res["lrt"]["chisq"] > 10  # σ_class = 0.6 with 100 classes: clearly detected
    cat = pd.read_csv(out / "tables" / "caterpillar_class_in_school.csv")
    assert len(cat) == 100 and cat["reml"].is_monotonic_increasing
    pred = pd.read_csv(out / "tables" / "predictions.csv").set_index("case")
    nd = pd.DataFrame({"school": [1, 1, 999], "class": [1, 999, 999], "x": d["x"].median(),
                       "w": [d["w"].iloc[0]] * 2 + [d["w"].mean()]})
    want = m1.predict(nd, allow_new_levels=True)
    np.testing.assert_allclose(pred.loc[["known", "new_inner", "new_outer"], "fit"], want,
                               rtol=1e-9)
    se = pred["pred_se"]
    assert se["known"] < se["new_inner"] < se["new_outer"]
    modes = pd.read_csv(out / "tables" / "modes_by_level.csv")
    assert list(modes["level"]) == ["school", "class:school"]
    assert list(modes["ngroups"]) == [25, 100]
    # the Bayesian step: each level's variance beside the report's own REML estimate
    bv = pd.read_csv(out / "tables" / "bayes_variances_m1.csv").set_index("component")
    assert list(bv.index) == ["class:school:(Intercept)", "school:(Intercept)", "Residual"]
    vc = m1.VarCorr().to_frame()
    np.testing.assert_allclose(bv["reml"], vc["vcov"], rtol=1e-8)
    assert np.all((bv["q2.5"] < bv["posterior_mean"]) & (bv["posterior_mean"] < bv["q97.5"]))
    assert "Only the Bayesian step draws random numbers" in md


def test_several_groups_refuse_binary_outcomes_and_x_centered(tmp_path):
    path = tmp_path / "three.csv"
    simulate_three_levels(schools=4, classes=2, students=3).to_csv(path, index=False)
    common = ("run", "--data", str(path), "--y", "y", "--x", "x", "--group", "school",
              "--group", "class", "--out", str(tmp_path / "out"))
    proc = _cli(*common, "--family", "binomial")
    assert proc.returncode == 2
    assert proc.stderr.startswith("twolevel run: error: --family binomial is not available "
                                  "with several --group columns")
    proc = _cli(*common, "--x-centered", "cx")
    assert proc.returncode == 2
    assert "--x-centered applies to the two-level workflow" in proc.stderr
    proc = _cli("run", "--data", str(path), "--y", "y", "--x", "x", "--group", "school",
                "--group", "school", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "--group lists a column twice (school, school)" in proc.stderr
    proc = _cli("run", "--data", str(path), "--y", "y", "--x", "x", "--group", "school",
                "--group", "room", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "'room'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_variance_by_level_both_ways():
    d = simulate_three_levels(seed=3)
    m = lmer("y ~ x + (1 | school/class)", d)
    tab = variance_by_level(m).set_index("level")
    vc = m.VarCorr().to_frame().set_index("grp")["vcov"]
    total = vc.sum()
    assert list(tab.index) == ["school", "class:school", "Residual"]
    assert tab["share"].sum() == pytest.approx(1.0, rel=1e-12)
    assert tab.loc["school", "correlation"] == pytest.approx(vc["school"] / total, rel=1e-12)
    assert tab.loc["class:school", "correlation"] == pytest.approx(
        (vc["school"] + vc["class:school"]) / total, rel=1e-12)
    assert tab.loc["class:school", "ngroups"] == 100
    m0 = lmer("y ~ 1 + (1 | school/class)", d)
    red = variance_reduction(m0, m).set_index("level")
    assert red.loc["Residual", "reduction"] > 0.1  # x explains student-level variance
    modes = modes_by_level(m).set_index("level")
    assert (modes["ratio"] < 1).all()  # conditional modes are shrunk
    assert nested_order(m) == ["school", "class:school"]


def test_level_tables_refuse_slopes_and_different_levels():
    d = simulate_three_levels(seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slopes = lmer("y ~ x + (1 + x | school) + (1 | school:class)", d)
    with pytest.raises(TwolevelError, match="needs random intercepts only; this model has "
                                            "random slopes"):
        variance_by_level(slopes)
    d["room"] = d["class"]
    a = lmer("y ~ 1 + (1 | school/class)", d)
    b = lmer("y ~ x + (1 | school/room)", d)
    with pytest.raises(TwolevelError, match=r"the null model's levels \(school, class:school\) "
                                            r"differ from the model's \(school, room:school\)"):
        variance_reduction(a, b)
