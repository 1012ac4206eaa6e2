"""Live parity with lme4::glmer on freshly simulated data (issue 11: "on data sets nobody here
has seen"). Each case simulates a seeded data set in NumPy, fits it here and in one Rscript call,
and checks the issue's tolerances: −2 log L ≤ glmer's + 1e-4; fixed effects within 0.01 SE; SEs
1e-3 relative; variance components 1e-2 relative to the largest; conditional modes within 0.01
conditional SD; conditional SDs 1e-2 relative. The "tight" mode is compared with glmer refitted
to convergence (tolPwrss = 1e-12, a 1e-9-wide simplex) with the same tolerances except the SEs
(1e-2): even at tolPwrss = 1e-12 glmer's log-determinant keeps a lag of order √(1e-12·pdev) in ũ,
which left glmer's refit 1e-5 above our converged optimum on the Poisson case (two R optimizers
agreed on 3200.6337862941, ours 3200.6337766673) and puts noise of that size into its δ = 1e-4
finite-difference Hessian. Skipped without Rscript + lme4 + jsonlite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.models.glmm.glmer import glmer

pytestmark = pytest.mark.needs_r

R_SCRIPT = r"""
args <- commandArgs(TRUE)
ok <- suppressWarnings(suppressPackageStartupMessages(
  requireNamespace("lme4", quietly = TRUE) && requireNamespace("jsonlite", quietly = TRUE)))
if (!ok) quit(status = 3)
suppressPackageStartupMessages(library(lme4))
d <- read.csv(args[1]); fam <- get(args[3])(link = args[4]); nagq <- as.integer(args[5])
d$g <- factor(d$g)
one <- function(m) {
  re <- ranef(m, condVar = TRUE)[[1]]; pv <- attr(re, "postVar")
  list(m2ll = -2 * as.numeric(logLik(m)), fixef = unname(fixef(m)),
       se = unname(sqrt(diag(as.matrix(vcov(m))))), vcov = as.data.frame(VarCorr(m))$vcov,
       ranef = unname(as.matrix(re)),
       condsd = t(sapply(seq_len(dim(pv)[3]), function(j) sqrt(diag(as.matrix(pv[, , j]))))))
}
m <- suppressWarnings(glmer(as.formula(args[2]), data = d, family = fam, nAGQ = nagq))
n <- length(getME(m, "theta")) + length(fixef(m))
mt <- suppressWarnings(glmer(as.formula(args[2]), data = d, family = fam, nAGQ = nagq,
        control = glmerControl(tolPwrss = 1e-12, optCtrl = list(xt = rep(1e-9, n)))))
cat(jsonlite::toJSON(list(default = one(m), tight = one(mt)), digits = NA, auto_unbox = TRUE))
"""


def _simulate(kind: str, seed: int) -> tuple[pd.DataFrame, str, str, str, int]:
    rng = np.random.default_rng(seed)
    J = 45
    nj = rng.integers(4, 30, J)
    g = np.repeat(np.arange(1, J + 1), nj)
    x = rng.normal(size=g.size)
    b0 = rng.normal(0, 0.8, J)
    b1 = 0.5 * b0 + rng.normal(0, 0.3, J)
    if kind == "bernoulli_slope":
        eta = -0.3 + 0.7 * x + b0[g - 1] + b1[g - 1] * x
        y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
        return pd.DataFrame({"y": y, "x": x, "g": g}), "y ~ x + (1 + x | g)", "binomial", "logit", 1
    if kind == "poisson_offset":
        expo = rng.uniform(0.5, 4, g.size)
        y = rng.poisson(expo * np.exp(0.2 + 0.3 * x + b0[g - 1]))
        return (pd.DataFrame({"y": y, "x": x, "g": g, "expo": expo}),
                "y ~ x + offset(log(expo)) + (1 | g)", "poisson", "log", 1)
    trials = rng.integers(1, 12, g.size)
    s = rng.binomial(trials, 1 / (1 + np.exp(-(0.4 * x - 0.5 + b0[g - 1]))))
    return (pd.DataFrame({"s": s, "f": trials - s, "x": x, "g": g}),
            "cbind(s, f) ~ x + (1 | g)", "binomial", "logit", 12)


def _r_fit(tmp_path, d, formula, family, link, nagq) -> dict:
    if shutil.which("Rscript") is None:
        pytest.skip("Rscript not found")
    csv, script = tmp_path / "d.csv", tmp_path / "fit.R"
    d.to_csv(csv, index=False)
    script.write_text(R_SCRIPT)
    res = subprocess.run(["Rscript", str(script), str(csv), formula, family, link, str(nagq)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode == 3:
        pytest.skip("lme4 or jsonlite missing")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _check(fit, r: dict, se_rel: float = 1e-3) -> None:
    se = fit.se().to_numpy()
    assert fit.minus2loglik <= r["m2ll"] + 1e-4
    assert np.max(np.abs(fit.beta - r["fixef"]) / se) < 0.01
    assert np.max(np.abs(se / np.asarray(r["se"]) - 1)) < se_rel
    vg = np.asarray(r["vcov"], dtype=float)
    vo = fit.VarCorr().to_frame()["vcov"].to_numpy()
    assert np.max(np.abs(vo - vg)) / np.max(np.abs(vg)) < 1e-2
    zn = list(fit.design.z_names)
    re = fit.ranef()
    modes = np.asarray(r["ranef"], dtype=float).reshape(len(re), len(zn))
    csd = np.asarray(r["condsd"], dtype=float).reshape(len(re), len(zn))
    assert np.max(np.abs(re[zn].to_numpy() - modes) / csd) < 0.01
    assert np.max(np.abs(re[[f"condsd_{z}" for z in zn]].to_numpy() / csd - 1)) < 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("kind, seed", [("bernoulli_slope", 20261201), ("poisson_offset", 7),
                                        ("cbind_agq12", 99)])
def test_glmer_live_parity(tmp_path, kind, seed):
    d, formula, family, link, nagq = _simulate(kind, seed)
    r = _r_fit(tmp_path, d, formula, family, link, nagq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = glmer(formula, d, family=family, link=link, nAGQ=nagq)
        tight = glmer(formula, d, family=family, link=link, nAGQ=nagq, optimizer="tight")
    _check(ours, r["default"])
    _check(tight, r["tight"], se_rel=1e-2)
