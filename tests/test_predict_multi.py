"""Predictions with intervals for several grouping factors (issue 22): the prediction error
variance against the marginal (GLS + BLUP) formula computed densely, the variance added for new
levels at each level, a seeded simulation of the coverage, lme4's partial ``re.form``, and the
error messages."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import TwolevelError
from twolevel.models.inference.predict import predict
from twolevel.models.inference.predict_multi import (
    multi_new_rows,
    predict_intervals_multi,
    prediction_error_variance_multi,
)
from twolevel.models.lmm.lmer import lmer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _three(seed: int = 5, schools: int = 15) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, schools + 1):
        u0, u1 = rng.normal(0, 1.0), rng.normal(0, 0.4)
        for c in range(1, rng.integers(2, 5) + 1):
            v = rng.normal(0, 0.6)
            for _ in range(rng.integers(3, 9)):
                x = rng.normal()
                rows.append((s, c, x, 1 + 0.5 * x + u0 + u1 * x + v + rng.normal()))
    return pd.DataFrame(rows, columns=["school", "class", "x", "y"])


def _dense_pev(fit, rows) -> np.ndarray:
    """Var(x₀ᵀβ̂ + m'b̃ − x₀ᵀβ − m'b) from the marginal model, densely: with V = ZGZᵀ + σ²I,
    the predictor is L y, L = x₀ᵀP + m'GZᵀV⁻¹(I − XP), P = (XᵀV⁻¹X)⁻¹XᵀV⁻¹; as LX = x₀ᵀ the
    error is (LZ − m')b + Le, of variance (LZ − m')G(LZ − m')ᵀ + σ²LLᵀ."""
    d = fit.design
    s2 = fit.sigma**2
    Zs, Gs, ms = [], [], []
    for k, f in enumerate(d.factors):
        Zk = np.zeros((d.n, f.n_levels * f.q))
        for j in range(f.q):
            Zk[np.arange(d.n), f.codes * f.q + j] = f.Z[:, j]
        T = d.factor_T(fit.theta, k)
        Zs.append(Zk)
        Gs.append(np.kron(np.eye(f.n_levels), s2 * T @ T.T))
        m = np.zeros((rows.X.shape[0], f.n_levels * f.q))
        for r in range(rows.X.shape[0]):
            if rows.idx[k][r] >= 0 and rows.masks[k].any():
                m[r, rows.idx[k][r] * f.q + np.arange(f.q)] = rows.Z[k][r] * rows.masks[k]
        ms.append(m)
    Z, M = np.hstack(Zs), np.hstack(ms)
    G = np.zeros((Z.shape[1], Z.shape[1]))
    o = 0
    for g in Gs:
        G[o:o + g.shape[0], o:o + g.shape[0]] = g
        o += g.shape[0]
    X = d.X
    V = Z @ G @ Z.T + s2 * np.eye(d.n)
    Vi = np.linalg.inv(V)
    P = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    L = rows.X @ P + M @ G @ Z.T @ Vi @ (np.eye(d.n) - X @ P)
    E = L @ Z - M
    return np.einsum("mi,ij,mj->m", E, G, E) + s2 * np.einsum("mi,mi->m", L, L)


NEW = pd.DataFrame({"school": [1, 1, 2, 99], "class": [1, 77, 2, 1], "x": [0.5, -1.0, 2.0, 0.3]})


@pytest.mark.filterwarnings("ignore:boundary")
@pytest.mark.parametrize("formula", ["y ~ x + (1 | school/class)",
                                     "y ~ x + (1 + x | school) + (1 | school:class)"])
def test_pev_equals_the_marginal_formula(formula):
    fit = lmer(formula, _three())
    for re_form in (None, "NA", "~(1 | school)"):
        rows = multi_new_rows(fit, NEW, re_form, allow_new_levels=True)
        np.testing.assert_allclose(prediction_error_variance_multi(fit, rows),
                                   _dense_pev(fit, rows), rtol=1e-8)


def test_intervals_add_the_variance_of_each_new_level():
    fit = lmer("y ~ x + (1 | school/class)", _three())
    vc = fit.VarCorr().to_frame().set_index("grp")["vcov"]
    s2c, s2s, s2 = vc["class:school"], vc["school"], vc["Residual"]
    pi = predict(fit, NEW, allow_new_levels=True, interval="prediction")
    ci = predict(fit, NEW, allow_new_levels=True, interval="confidence")
    np.testing.assert_allclose(pi["fit"], fit.predict(NEW, allow_new_levels=True), rtol=1e-12)
    x0 = np.column_stack([np.ones(4), NEW["x"]])
    xvx = np.einsum("mp,pk,mk->m", x0, fit.vcov().to_numpy(), x0)
    # a new school: population mean ± (x₀ᵀV̂x₀ + σ²_school + σ²_class + σ²)
    assert ci["se"].iloc[3] ** 2 == pytest.approx(xvx[3], rel=1e-9)
    assert pi["se"].iloc[3] ** 2 == pytest.approx(xvx[3] + s2s + s2c + s2, rel=1e-9)
    # a new class in a known school: the school's PEV + σ²_class + σ²
    assert pi["se"].iloc[1] ** 2 == pytest.approx(ci["se"].iloc[1] ** 2 + s2c + s2, rel=1e-9)
    # a known class: only σ² is added, and its PEV is below the new class's
    assert pi["se"].iloc[0] ** 2 == pytest.approx(ci["se"].iloc[0] ** 2 + s2, rel=1e-9)
    assert ci["se"].iloc[0] < ci["se"].iloc[1] < ci["se"].iloc[3] + 1.0
    assert (pi["lwr"] < pi["fit"]).all() and (pi["upr"] > pi["fit"]).all()
    pop = predict(fit, NEW, re_form="NA", interval="prediction")
    assert pop["se"].iloc[0] ** 2 == pytest.approx(xvx[0] + s2s + s2c + s2, rel=1e-9)


def test_coverage_by_simulation_is_nominal():
    """Seeded: 40 data sets of 40 schools × 4 classes × 6 students; the exact conditional
    coverage of the 95% prediction interval, for a known class, a new class in a known school
    and a new school, averaged (benchmarks/prediction_coverage_multi.py runs 1000)."""
    from prediction_coverage_multi import simulate_coverage

    res = simulate_coverage(nsim=40, seed=11, schools=40)
    for case in ("known class", "new class, known school", "new school"):
        r = res[case]
        assert abs(r["coverage"] - 0.95) < max(4 * r["mc_se"], 0.01), (case, r)
    # leaving out the class variance would under-cover the new class clearly
    assert res["new class, known school"]["coverage_without_class_variance"] < 0.93


def test_interval_messages():
    fit = lmer("y ~ x + (1 | school/class)", _three())
    with pytest.raises(TwolevelError, match="unknown interval 'wide' for several grouping "
                                            "factors; choose one of: confidence, prediction, "
                                            "bootstrap"):
        predict_intervals_multi(fit, NEW, interval="wide", allow_new_levels=True)
    with pytest.raises(TwolevelError, match="level must be between 0 and 1"):
        predict_intervals_multi(fit, NEW, level=95, allow_new_levels=True)
    with pytest.raises(TwolevelError, match=r"intervals need re_form=None \(every factor\) or "
                                            r"'NA' \(none\), not '~\(1 \| school\)'"):
        predict(fit, NEW, re_form="~(1 | school)", interval="prediction",
                allow_new_levels=True)


R_PREDICT = r"""
args <- commandArgs(TRUE)
ok <- suppressWarnings(suppressPackageStartupMessages(
  requireNamespace("lme4", quietly = TRUE) && requireNamespace("jsonlite", quietly = TRUE)))
if (!ok) quit(status = 3)
suppressPackageStartupMessages(library(lme4))
d <- read.csv(args[1]); nd <- read.csv(args[2])
for (v in c("school", "class")) { d[[v]] <- factor(d[[v]]); nd[[v]] <- factor(nd[[v]]) }
m <- lmer(as.formula(args[3]), data = d)
p <- function(rf) unname(predict(m, newdata = nd, re.form = rf, allow.new.levels = TRUE))
out <- list(all = p(NULL), none = p(NA), school = p(~(1 | school)),
            fitted_school = unname(predict(m, re.form = ~(1 | school))))
cat(jsonlite::toJSON(out, digits = NA))
"""


@pytest.mark.needs_r
@pytest.mark.parametrize("formula", ["y ~ x + (1 | school/class)",
                                     "y ~ x + (1 + x | school) + (1 | school:class)"])
def test_predictions_match_lme4_with_new_levels(tmp_path, formula):
    """lme4's predict(allow.new.levels = TRUE): a known class, a new class in a known school, a
    known class in another school, a new school; re.form NULL, NA and ~(1 | school); 1e-8."""
    import json
    import shutil
    import subprocess

    if shutil.which("Rscript") is None:
        pytest.skip("Rscript not found")
    d = _three(seed=8)
    d.to_csv(tmp_path / "d.csv", index=False)
    NEW.to_csv(tmp_path / "nd.csv", index=False)
    (tmp_path / "p.R").write_text(R_PREDICT)
    res = subprocess.run(["Rscript", str(tmp_path / "p.R"), str(tmp_path / "d.csv"),
                          str(tmp_path / "nd.csv"), formula], capture_output=True, text=True,
                         timeout=300)
    if res.returncode == 3:
        pytest.skip("R packages lme4/jsonlite not installed")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    fit = lmer(formula, d)
    tol = 1e-8 * max(1.0, float(np.max(np.abs(r["all"]))))
    for key, rf in (("all", None), ("none", "NA"), ("school", "~(1 | school)")):
        np.testing.assert_allclose(fit.predict(NEW, re_form=rf, allow_new_levels=True), r[key],
                                   rtol=0, atol=tol, err_msg=key)
    np.testing.assert_allclose(fit.predict(re_form="~(1 | school)"), r["fitted_school"], rtol=0,
                               atol=tol)


def test_cli_predict_with_several_factors(tmp_path):
    """``twolevel predict`` writes the same intervals as the library for a nested model."""
    import subprocess

    d = _three()
    d.to_csv(tmp_path / "d.csv", index=False)
    NEW.to_csv(tmp_path / "nd.csv", index=False)
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "twolevel.workflows.cli", "predict",
                           str(tmp_path / "d.csv"), "y ~ x + (1 | school/class)", "--newdata",
                           str(tmp_path / "nd.csv"), "--out", str(out), "--allow-new-levels"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out)
    want = predict(lmer("y ~ x + (1 | school/class)", d), NEW, allow_new_levels=True,
                   interval="prediction")
    np.testing.assert_allclose(got[["fit", "lwr", "upr", "se"]], want[["fit", "lwr", "upr", "se"]],
                               rtol=1e-9)
