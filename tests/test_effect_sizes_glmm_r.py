"""Live parity of the GLMM ICC and Nakagawa R² with R's ``performance::icc`` /
``performance::r2_nakagawa`` (performance 0.10.2 with insight 0.19.0, Debian's packages; issue 21)
on freshly simulated data: a Bernoulli logit model with a random slope, a binomial model with
trials (``cbind``), a probit model and a Poisson model with an offset (whose distribution-specific
variance needs insight's null-model refit). Tolerance 1e-6 absolute on every ICC and R².

Both sides fit with their default optimizers; the ICC and R² are smooth in the estimates, and
glmer's printed estimates are reproduced closely by ``optimizer="lme4"``. Skipped without Rscript,
lme4, performance and jsonlite (a failure with ``TWOLEVEL_REQUIRE_R=1``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest

import twolevel as tl

pytestmark = pytest.mark.needs_r

R_SCRIPT = r"""
args <- commandArgs(TRUE)
ok <- suppressWarnings(suppressPackageStartupMessages(
  requireNamespace("lme4", quietly = TRUE) && requireNamespace("performance", quietly = TRUE) &&
  requireNamespace("jsonlite", quietly = TRUE)))
if (!ok) quit(status = 3)
suppressPackageStartupMessages(library(lme4))
d <- read.csv(args[1]); d$g <- factor(d$g)
fam <- if (args[3] == "poisson") poisson(link = args[4]) else binomial(link = args[4])
m <- suppressWarnings(glmer(as.formula(args[2]), data = d, family = fam))
i <- suppressWarnings(performance::icc(m))
r <- suppressWarnings(performance::r2_nakagawa(m))
v <- suppressWarnings(insight::get_variance(m))
cat(jsonlite::toJSON(list(
  icc_adjusted = i$ICC_adjusted, icc_unadjusted = i$ICC_unadjusted,
  r2_marginal = unname(r$R2_marginal), r2_conditional = unname(r$R2_conditional),
  var_fixed = v$var.fixed, var_random = v$var.random, var_residual = v$var.residual,
  fixef = unname(fixef(m)), version = as.character(packageVersion("performance"))),
  digits = NA, auto_unbox = TRUE))
"""


def _simulate(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    J = 40
    nj = rng.integers(8, 30, J)
    g = np.repeat(np.arange(1, J + 1), nj)
    x = rng.normal(size=g.size)
    b0 = rng.normal(0, 0.8, J)
    b1 = 0.4 * b0 + rng.normal(0, 0.35, J)
    if kind == "bernoulli_slope":
        eta = -0.2 + 0.6 * x + b0[g - 1] + b1[g - 1] * x
        y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
        return pd.DataFrame({"y": y, "x": x, "g": g}), "y ~ x + (1 + x | g)", "binomial", "logit"
    if kind == "probit":
        y = rng.binomial(1, 1 / (1 + np.exp(-(0.5 * x + b0[g - 1]))))
        return pd.DataFrame({"y": y, "x": x, "g": g}), "y ~ x + (1 | g)", "binomial", "probit"
    if kind == "cbind":
        trials = rng.integers(1, 10, g.size)
        s = rng.binomial(trials, 1 / (1 + np.exp(-(0.4 * x - 0.3 + b0[g - 1]))))
        return (pd.DataFrame({"s": s, "f": trials - s, "x": x, "g": g}),
                "cbind(s, f) ~ x + (1 | g)", "binomial", "logit")
    expo = rng.uniform(0.5, 4, g.size)
    y = rng.poisson(expo * np.exp(1.2 + 0.3 * x + 0.6 * b0[g - 1]))
    return (pd.DataFrame({"y": y, "x": x, "g": g, "expo": expo}),
            "y ~ x + offset(log(expo)) + (1 | g)", "poisson", "log")


def _r(tmp_path, d, formula, family, link) -> dict:
    if shutil.which("Rscript") is None:
        pytest.skip("Rscript not found")
    csv, script = tmp_path / "d.csv", tmp_path / "es.R"
    d.to_csv(csv, index=False)
    script.write_text(R_SCRIPT)
    res = subprocess.run(["Rscript", str(script), str(csv), formula, family, link],
                         capture_output=True, text=True, timeout=300)
    if res.returncode == 3:
        pytest.skip("lme4, performance or jsonlite missing")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("kind, seed", [("bernoulli_slope", 2111), ("cbind", 2112),
                                        ("probit", 2113), ("poisson_offset", 2114)])
def test_icc_r2_equal_performance(tmp_path, kind, seed):
    d, formula, family, link = _simulate(kind, seed)
    r = _r(tmp_path, d, formula, family, link)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = tl.glmer(formula, d, family=family, link=link)
        i, r2 = tl.icc(fit), tl.r2_nakagawa(fit)
    assert r["version"] == "0.10.2"
    ours = {"icc_adjusted": i.adjusted, "icc_unadjusted": i.unadjusted,
            "r2_marginal": r2.marginal, "r2_conditional": r2.conditional}
    for k, v in ours.items():
        assert abs(v - r[k]) < 1e-6, (k, v, r[k])
