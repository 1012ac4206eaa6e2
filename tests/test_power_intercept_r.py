"""Live R oracle for the one-random-effect refit of power simulations (marker ``needs_r``): on
simulated cluster-randomised data sets, the fast route's REML fit from lme4's start and its
Satterthwaite test of ``treat`` equal ``lmerTest::lmer`` + ``summary`` (θ̂ 1e-5 relative, the
lme4 optimizer's tolerance; df 1e-4 relative; t and p 1e-5 relative)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import twolevel as tl
from twolevel.models.design import group_crossprods
from twolevel.models.inference.simulate import _NoiseBasis
from twolevel.models.power.intercept import InterceptModel

pytestmark = pytest.mark.needs_r

MISSING = 3
R_SCRIPT = r"""
args <- commandArgs(TRUE)
d <- read.csv(args[1]); out <- args[2]
if (!suppressWarnings(requireNamespace("lmerTest", quietly = TRUE))) quit(status = 3)
suppressPackageStartupMessages(library(lmerTest))
d$school <- factor(d$school)
ys <- grep("^y", names(d), value = TRUE)
res <- do.call(rbind, lapply(ys, function(v) {
  f <- as.formula(paste(v, "~ treat + x + (1 | school)"))
  m <- suppressMessages(suppressWarnings(lmer(f, data = d)))
  co <- summary(m)$coefficients
  data.frame(y = v, theta = getME(m, "theta")[[1]], sigma = sigma(m),
             b_treat = co["treat", "Estimate"], df = co["treat", "df"],
             t = co["treat", "t value"], p = co["treat", "Pr(>|t|)"])
}))
write.csv(res, out, row.names = FALSE)
"""


def test_fast_refit_and_satterthwaite_equal_lmertest(tmp_path):
    exe = shutil.which("Rscript")
    if exe is None:
        pytest.skip("Rscript is not on PATH")
    rng = np.random.default_rng(25)
    sizes = np.concatenate([np.full(10, 12), rng.integers(3, 25, 14)])  # a few sizes, then many
    J = sizes.size
    school = np.repeat(np.arange(J), sizes)
    d = pd.DataFrame({"school": school, "treat": (np.arange(J) % 2)[school].astype(float),
                      "x": rng.standard_normal(school.size)})
    for k, tau in enumerate([0.5, 0.3, 0.1, 0.0, 0.8]):
        d[f"y{k}"] = (0.4 * d["treat"] + 0.5 * d["x"] + tau * rng.standard_normal(J)[school]
                      + rng.standard_normal(school.size))
    csv, out = tmp_path / "d.csv", tmp_path / "out.csv"
    d.to_csv(csv, index=False, float_format="%.17g")
    script = tmp_path / "s.R"
    script.write_text(R_SCRIPT)
    proc = subprocess.run([exe, str(script), str(csv), str(out)], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode == MISSING:
        pytest.skip("R packages missing (scripts/install_r.sh installs them)")
    assert proc.returncode == 0, proc.stderr
    r = pd.read_csv(out)
    for row in r.itertuples():
        design = tl.make_design(f"{row.y} ~ treat + x + (1 | school)", d)
        cp = group_crossprods(design)
        model = InterceptModel.of(cp, _NoiseBasis.of(design, cp), [1.0], 1.0,
                                  np.zeros(design.p))
        prof = model.profile(cp.c[:, 0], cp.Xty, cp.yty)
        theta, beta, sigma = prof.fit(design.theta_start(), design.theta_lower)
        t, nu, p = prof.satterthwaite(theta, beta, sigma, 1)
        assert theta == pytest.approx(row.theta, rel=1e-5, abs=1e-6), row.y
        assert sigma == pytest.approx(row.sigma, rel=1e-6), row.y
        assert beta[1] == pytest.approx(row.b_treat, rel=1e-6), row.y
        assert nu == pytest.approx(row.df, rel=1e-4), row.y
        assert t == pytest.approx(row.t, rel=1e-5), row.y
        assert p == pytest.approx(row.p, rel=1e-4), row.y
