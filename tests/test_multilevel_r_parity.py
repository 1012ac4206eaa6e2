"""Live parity with lme4 + lmerTest for several grouping factors, on freshly simulated data
(issue 22): three levels with random slopes at two levels, reused class labels (crossed by
mistake, and nested), fully and partially crossed factors, four levels of nesting.

Tolerances (the issue's): REML criterion ≤ lme4's + 1e-6 relative; fixed effects within 1e-6
SE; SEs 1e-5 relative; variance components 1e-4 relative to the largest; Satterthwaite df 1e-4
relative; conditional modes within 1e-4 of their conditional SD (conditional SDs 1e-4
relative); the ML likelihood-ratio χ² within 1e-5. Skipped without Rscript + lme4 + lmerTest +
jsonlite.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.models.lmm.lmer import lmer
from twolevel.models.lmm.multi import anova_multi
from twolevel.models.lmm.multi_results import MultiFit

pytestmark = pytest.mark.needs_r

R_SCRIPT = r"""
args <- commandArgs(TRUE)
ok <- suppressWarnings(suppressPackageStartupMessages(
  requireNamespace("lme4", quietly = TRUE) && requireNamespace("lmerTest", quietly = TRUE) &&
  requireNamespace("jsonlite", quietly = TRUE)))
if (!ok) quit(status = 3)
suppressPackageStartupMessages(library(lmerTest))
d <- read.csv(args[1])
for (v in c("school", "class", "a", "b", "child")) if (!is.null(d[[v]])) d[[v]] <- factor(d[[v]])
m <- suppressMessages(suppressWarnings(lmer(as.formula(args[2]), data = d)))
co <- summary(m)$coefficients
re <- as.data.frame(ranef(m, condVar = TRUE))
modes <- list(factor = as.character(re$grpvar), effect = as.character(re$term),
              level = as.character(re$grp), mode = re$condval, condsd = re$condsd)
out <- list(reml = as.numeric(REMLcrit(m)), fixef = unname(fixef(m)),
            se = unname(co[, "Std. Error"]), df = unname(co[, "df"]),
            vc = as.data.frame(VarCorr(m))$vcov, grp = as.data.frame(VarCorr(m))$grp,
            ranef = modes)
if (args[3] != "-") {
  s <- suppressMessages(suppressWarnings(lmer(as.formula(args[3]), data = d)))
  a <- suppressMessages(anova(s, m))
  out$chisq <- a$Chisq[2]; out$chidf <- a$Df[2]
}
if (args[4] != "-") {
  nd <- read.csv(args[4])
  for (v in c("school", "class")) nd[[v]] <- factor(nd[[v]])
  out$pred <- unname(predict(m, newdata = nd, allow.new.levels = TRUE))
}
if (args[5] == "kr") out$kr_df <- unname(summary(m, ddf = "Kenward-Roger")$coefficients[, "df"])
if (args[5] == "icc") {
  ic <- performance::icc(m, by_group = TRUE)
  out$icc <- setNames(as.list(ic$ICC), ic$Group)
}
cat(jsonlite::toJSON(out, digits = NA, auto_unbox = TRUE))
"""


def _r(tmp_path, data: pd.DataFrame, formula: str, small: str | None = None,
       newdata: pd.DataFrame | None = None, extra: str = "-") -> dict:
    if shutil.which("Rscript") is None:
        pytest.skip("Rscript not found")
    csv = tmp_path / "d.csv"
    data.to_csv(csv, index=False)
    script = tmp_path / "fit.R"
    script.write_text(R_SCRIPT)
    nd = "-"
    if newdata is not None:
        nd = str(tmp_path / "nd.csv")
        newdata.to_csv(nd, index=False)
    cmd = ["Rscript", str(script), str(csv), formula, small or "-", nd, extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode == 3:
        pytest.skip("R packages lme4/lmerTest/jsonlite not installed")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def three_levels(seed: int, reuse_labels: bool = True) -> pd.DataFrame:
    """Students in classes in schools; class labels 1..k restart in every school when
    ``reuse_labels``; random intercepts and x-slopes at the class and the school level."""
    rng = np.random.default_rng(seed)
    rows = []
    cid = 0
    for s in range(1, 31):
        u0, u1 = rng.multivariate_normal([0, 0], [[1.0, 0.3], [0.3, 0.4]])
        w = rng.normal()
        for c in range(1, rng.integers(2, 6) + 1):
            cid += 1
            v0, v1 = rng.normal(0, 0.7), rng.normal(0, 0.35)
            n = rng.integers(3, 12)
            x = rng.normal(size=n)
            y = 1 + 0.5 * x + 0.3 * w + u0 + v0 + (u1 + v1) * x + rng.normal(0, 1, n)
            for xi, yi in zip(x, y, strict=True):
                rows.append((s, c if reuse_labels else cid, xi, w, yi))
    return pd.DataFrame(rows, columns=["school", "class", "x", "w", "y"])


def crossed(seed: int, partial: bool) -> pd.DataFrame:
    """Factors a (40 levels) and b (12 levels), fully crossed with one row per cell, or
    partially crossed (each a meets 2–4 b's, 1–3 rows per cell)."""
    rng = np.random.default_rng(seed)
    ua, ub = rng.normal(0, 0.8, 40), rng.normal(0, 0.5, 12)
    rows = []
    for a in range(40):
        bs = rng.choice(12, size=rng.integers(2, 5), replace=False) if partial else range(12)
        for b in bs:
            for _ in range(rng.integers(1, 4) if partial else 1):
                x = rng.normal()
                rows.append((a + 1, b + 1, x, 2 + 0.4 * x + ua[a] + ub[b] + rng.normal()))
    return pd.DataFrame(rows, columns=["a", "b", "x", "y"])


def _check(fit: MultiFit, r: dict) -> None:
    assert fit.criterion <= r["reml"] + 1e-6 * abs(r["reml"])
    se = fit.se().to_numpy()
    assert np.all(np.abs(fit.state.beta - np.asarray(r["fixef"])) <= 1e-6 * se)
    np.testing.assert_allclose(se, r["se"], rtol=1e-5)
    vc = fit.VarCorr().to_frame()
    # as.data.frame(VarCorr()) writes "child:(class:school)" as "child..class.school."
    assert [re.sub(r"[:()]", ".", g) for g in vc["grp"]] == [re.sub(r"[:()]", ".", g)
                                                           for g in r["grp"]]
    np.testing.assert_allclose(vc["vcov"], r["vc"], rtol=0, atol=1e-4 * max(np.abs(r["vc"])))
    df = fit.coef_table()["df"].to_numpy()
    np.testing.assert_allclose(df, r["df"], rtol=1e-4)
    ours = fit.ranef_long().set_index(["factor", "effect", "level"])
    rr = pd.DataFrame(r["ranef"]).set_index(["factor", "effect", "level"])
    assert len(ours) == len(rr)
    ours = ours.loc[rr.index]
    np.testing.assert_allclose(ours["condsd"], rr["condsd"], rtol=1e-4)
    assert np.all(np.abs(ours["mode"] - rr["mode"]) <= 1e-4 * rr["condsd"])


def test_three_levels_slopes_at_two_levels(tmp_path):
    d = three_levels(2201)
    formula = "y ~ x + w + (1 + x | school/class)"
    small = "y ~ x + w + (1 + x | school)"
    fit = lmer(formula, d)
    assert fit.engine == "nested"
    assert [f.name for f in fit.design.factors] == ["class:school", "school"]
    nd = pd.DataFrame({"school": [1, 1, 2, 99], "class": [1, 77, 2, 1],
                       "x": [0.5, -1.0, 2.0, 0.3], "w": [0.1, 0.2, -0.4, 1.0]})
    r = _r(tmp_path, d, formula, small, newdata=nd, extra="kr")
    _check(fit, r)
    # a new class in a known school keeps the school's effect; a new school gets none
    np.testing.assert_allclose(fit.predict(nd, allow_new_levels=True), r["pred"], rtol=0,
                               atol=1e-8 * max(1.0, np.max(np.abs(r["pred"]))))
    np.testing.assert_allclose(fit.coef_table("Kenward-Roger")["df"], r["kr_df"], rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = anova_multi(lmer(small, d), fit)
    assert a["df"] == r["chidf"]
    assert abs(a["chisq"] - r["chisq"]) <= 1e-5 * max(1.0, r["chisq"])


def test_reused_labels_crossed_by_mistake_warns_and_matches_lme4(tmp_path):
    d = three_levels(2202)
    formula = "y ~ x + (1 | school) + (1 | class)"
    with pytest.warns(UserWarning, match=r"'class' labels occur in several 'school' groups.*"
                      r"write '\(1 \| school/class\)'"):
        fit = lmer(formula, d)
    assert fit.engine == "crossed"
    _check(fit, _r(tmp_path, d, formula))
    nested = lmer("y ~ x + (1 | school/class)", d)
    assert nested.engine == "nested"
    rn = _r(tmp_path, d, "y ~ x + (1 | school/class)", extra="icc")
    _check(nested, rn)
    icc = nested.icc()
    assert icc == pytest.approx(rn["icc"], rel=1e-4)
    assert nested.criterion != pytest.approx(fit.criterion, rel=1e-3)


def test_explicit_interaction_equals_slash(tmp_path):
    d = three_levels(2203, reuse_labels=False)
    a = lmer("y ~ x + (1 | school) + (1 | school:class)", d)
    b = lmer("y ~ x + (1 | school/class)", d)
    c = lmer("y ~ x + (1 | school) + (1 | class)", d)  # unique labels: the same model
    assert a.criterion == pytest.approx(b.criterion, rel=1e-10)
    assert c.criterion == pytest.approx(b.criterion, rel=1e-10)
    assert c.engine == "nested" and not c.design.notes
    _check(a, _r(tmp_path, d, "y ~ x + (1 | school) + (1 | school:class)"))


@pytest.mark.parametrize("partial", [False, True])
def test_crossed_and_partially_crossed(tmp_path, partial):
    d = crossed(2204 + partial, partial)
    formula = "y ~ x + (1 | a) + (1 | b)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no reused-labels note for a genuinely crossed design
        fit = lmer(formula, d)
    assert fit.engine == "crossed"
    _check(fit, _r(tmp_path, d, formula, "y ~ x + (1 | a)"))


def test_four_levels_and_uncorrelated_slopes(tmp_path):
    rng = np.random.default_rng(2206)
    d = three_levels(2207)
    d["child"] = rng.integers(1, 4, len(d))
    d = pd.concat([d.assign(y=d["y"] + rng.normal(0, 0.8, len(d))) for _ in range(2)],
                  ignore_index=True)
    formula = "y ~ x + (1 | school/class/child) + (0 + x || school)"
    fit = lmer(formula, d)
    assert fit.engine == "nested"
    assert fit.design.term_group_names == ("child:(class:school)", "class:school", "school",
                                           "school.1")
    _check(fit, _r(tmp_path, d, formula))


def test_crossed_with_random_slopes_on_both_factors(tmp_path):
    rng = np.random.default_rng(2208)
    d = crossed(2209, partial=True)
    slope = rng.normal(0, 0.5, 41)[d["a"]] + rng.normal(0, 0.4, 13)[d["b"]]
    d["y"] = d["y"] + slope * d["x"]
    formula = "y ~ x + (1 + x | a) + (1 + x | b)"
    fit = lmer(formula, d)
    assert fit.engine == "crossed"
    _check(fit, _r(tmp_path, d, formula))
