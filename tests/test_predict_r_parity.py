"""Live parity of ``predict`` and the effect sizes with lme4 and performance (issue 12).

For sleepstudy, HSB (``mAch ~ meanses*cses + sector*cses + (1 + cses | school)``: a factor and
cross-level interactions) and freshly simulated data (a 3-level factor, a cross-level interaction,
new and existing groups), one Rscript call fits the model and returns:

=========================================================  =====================================
``predict(m, nd, re.form = NULL, allow.new.levels = TRUE)``  1e-8 relative
``predict(m, nd, re.form = NA | ~(1 | g))``, ``predict(m)``  1e-8 relative
PEV of known-group rows, dense σ²·[Z X] D A⁻¹ Dᵀ [Z X]ᵀ      1e-6 relative (evaluated in R)
``performance::icc``, ``r2_nakagawa``                        1e-6 relative
PRV, Snijders–Bosker from lme4's ``VarCorr`` (by hand)       1e-6 relative + 1e-8 absolute
=========================================================  =====================================

Nothing from R is stored; the tests are skipped when Rscript, lme4 or performance is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.models.inference.effect_sizes import icc, prv, r2_nakagawa, snijders_bosker
from twolevel.models.inference.predict import predict
from twolevel.models.lmm.lmer import lmer

pytestmark = pytest.mark.needs_r

R_SCRIPT = r"""
args <- commandArgs(TRUE)
csv <- args[1]; ndcsv <- args[2]; out <- args[3]; formula <- args[4]; group <- args[5]
null_f <- args[6]; ri_f <- args[7]
ok <- suppressWarnings(suppressPackageStartupMessages(
  requireNamespace("lme4", quietly = TRUE) && requireNamespace("performance", quietly = TRUE)))
if (!ok) quit(status = 3)
suppressPackageStartupMessages(library(lme4))
js <- function(x) {
  if (is.list(x)) {
    body <- paste(vapply(x, js, ""), collapse = ",")
    if (is.null(names(x))) return(paste0("[", body, "]"))
    return(paste0("{", paste0('"', names(x), '":', vapply(x, js, ""), collapse = ","), "}"))
  }
  v <- if (is.character(x)) paste0('"', x, '"')
       else ifelse(is.finite(x), sprintf("%.17g", x), "null")
  if (length(v) == 1) v else paste0("[", paste(v, collapse = ","), "]")
}
d <- read.csv(csv, stringsAsFactors = TRUE)
d[[group]] <- factor(as.character(d[[group]]))
nd <- read.csv(ndcsv, stringsAsFactors = FALSE)
nd[[group]] <- as.character(nd[[group]])
for (v in names(nd))
  if (is.factor(d[[v]]) && v != group) nd[[v]] <- factor(nd[[v]], levels = levels(d[[v]]))
m <- lmer(as.formula(formula), data = d)
# dense joint covariance of (b - b_hat, beta_hat - beta) (lme4 1.1-37's vcov_full,
# predict-simulate-r2.md §1)
X <- getME(m, "X"); Z <- getME(m, "Z"); Lam <- getME(m, "Lambda")
ZL <- as.matrix(Z %*% Lam)
A <- rbind(cbind(crossprod(ZL) + diag(ncol(ZL)), crossprod(ZL, X)),
           cbind(crossprod(X, ZL), crossprod(X)))
D <- as.matrix(Matrix::bdiag(Lam, diag(ncol(X))))
C <- sigma(m)^2 * D %*% solve(A) %*% t(D)
known <- nd[[group]] %in% levels(d[[group]])
ndk <- nd[known, , drop = FALSE]
ndk[[group]] <- factor(ndk[[group]], levels = levels(d[[group]]))
resp <- setNames(data.frame(0), all.vars(as.formula(formula))[1])
Xk <- model.matrix(terms(m), cbind(ndk, resp), contrasts.arg = attr(X, "contrasts"))
Xk <- Xk[, colnames(X), drop = FALSE]
rt <- lme4::mkReTrms(lme4::findbars(as.formula(formula)),
                     model.frame(lme4::subbars(as.formula(formula)), cbind(ndk, resp)),
                     drop.unused.levels = FALSE)
Zk <- as.matrix(t(rt$Zt))
W <- cbind(Zk, Xk)
pev <- rowSums((W %*% C) * W)
vn <- as.data.frame(VarCorr(lmer(as.formula(null_f), data = d)))
vr <- as.data.frame(VarCorr(lmer(as.formula(ri_f), data = d)))
res <- list(
  pred_cond = unname(predict(m, nd, re.form = NULL, allow.new.levels = TRUE)),
  pred_pop = unname(predict(m, nd, re.form = NA)),
  pred_int = unname(predict(m, nd, re.form = as.formula(paste0("~(1 | ", group, ")")),
                            allow.new.levels = TRUE)),
  fitted = unname(predict(m)),
  pev = unname(pev), known = which(known) - 1,
  icc = unname(unlist(performance::icc(m)[c("ICC_adjusted", "ICC_unadjusted")])),
  r2 = unname(unlist(performance::r2_nakagawa(m)[c("R2_marginal", "R2_conditional")])),
  null_vc = vn$vcov, ri_vc = vr$vcov, sizes = unname(as.vector(table(d[[group]])))
)
writeLines(js(res), out)
"""


def run_r(tmp_path, data: pd.DataFrame, nd: pd.DataFrame, formula: str, group: str,
          null_f: str, ri_f: str) -> dict:
    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.skip("Rscript is not on PATH")
    csv, ndcsv, out = tmp_path / "d.csv", tmp_path / "nd.csv", tmp_path / "out.json"
    data.to_csv(csv, index=False)
    nd.to_csv(ndcsv, index=False)
    script = tmp_path / "p.R"
    script.write_text(R_SCRIPT)
    proc = subprocess.run([rscript, str(script), str(csv), str(ndcsv), str(out), formula, group,
                           null_f, ri_f], capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip("R packages lme4 and/or performance cannot be loaded")
    assert proc.returncode == 0, f"Rscript failed:\n{proc.stderr}"
    return json.loads(out.read_text())


def simulated(seed: int = 912) -> pd.DataFrame:
    """Fresh two-level data: level-1 x, level-2 w, a 3-level factor k, random intercept and slope,
    a cross-level interaction x:w; unbalanced groups."""
    rng = np.random.default_rng(seed)
    J = 45
    nj = rng.integers(3, 14, J)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size) + 0.4 * rng.normal(size=J)[g]
    w = rng.normal(size=J)[g]
    k = rng.choice(np.array(["lo", "mid", "hi"]), size=g.size)
    b = rng.multivariate_normal([0, 0], [[1.0, 0.2], [0.2, 0.3]], size=J)[g]
    y = (3 + b[:, 0] + (0.7 + b[:, 1]) * x + 0.5 * w + 0.4 * x * w + 0.6 * (k == "mid")
         - 0.3 * (k == "lo") + rng.normal(size=g.size))
    return pd.DataFrame({"y": y, "x": x, "w": w, "k": k, "g": [f"s{j:02d}" for j in g]})


def _check(tmp_path, data, nd, formula, group, null_f, ri_f):
    r = run_r(tmp_path, data, nd, formula, group, null_f, ri_f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = lmer(formula, data)
        m0, mi = lmer(null_f, data), lmer(ri_f, data)
    np.testing.assert_allclose(predict(m, nd, allow_new_levels=True), r["pred_cond"], rtol=1e-8)
    np.testing.assert_allclose(predict(m, nd, re_form="NA"), r["pred_pop"], rtol=1e-8)
    np.testing.assert_allclose(predict(m, nd, re_form=f"~(1 | {group})", allow_new_levels=True),
                               r["pred_int"], rtol=1e-8)
    np.testing.assert_allclose(predict(m), r["fitted"], rtol=1e-8)
    # prediction-error variance of the known-group rows: the prediction interval's variance less σ²
    known = np.asarray(r["known"], dtype=int)
    tab = predict(m, nd.iloc[known], interval="prediction")
    np.testing.assert_allclose(tab["se"].to_numpy() ** 2 - m.sigma**2, r["pev"], rtol=1e-6)
    conf = predict(m, nd.iloc[known], interval="confidence")
    np.testing.assert_allclose(conf["se"].to_numpy() ** 2, r["pev"], rtol=1e-6)
    i, r2 = icc(m), r2_nakagawa(m)
    np.testing.assert_allclose([i.adjusted, i.unadjusted], r["icc"], rtol=1e-6)
    np.testing.assert_allclose([r2.marginal, r2.conditional], r["r2"], rtol=1e-6)
    # PRV and Snijders–Bosker by hand from lme4's VarCorr (τ00, σ²) of the two fits
    t0, s0 = r["null_vc"]
    t1, s1 = r["ri_vc"]
    n_h = 1.0 / np.mean(1.0 / np.asarray(r["sizes"], float))
    np.testing.assert_allclose(prv(m0, mi)[["sigma2", "tau_(Intercept)"]].to_numpy(),
                               [(s0 - s1) / s0, (t0 - t1) / t0], rtol=1e-6, atol=1e-8)
    sb = snijders_bosker(m0, mi)
    np.testing.assert_allclose(
        sb[["R2_1", "R2_2"]].to_numpy(),
        [1 - (s1 + t1) / (s0 + t0), 1 - (s1 / n_h + t1) / (s0 / n_h + t0)], rtol=1e-6,
        atol=1e-8)  # absolute floor: a ratio near 0 (sleepstudy's R²₂) is a difference


def test_sleepstudy(tmp_path, sleepstudy):
    nd = pd.DataFrame({"Days": [0, 5, 9, 5, 2], "Subject": ["308", "308", "335", "new", "new2"]})
    _check(tmp_path, sleepstudy, nd, "Reaction ~ Days + (Days | Subject)", "Subject",
           "Reaction ~ 1 + (1 | Subject)", "Reaction ~ Days + (1 | Subject)")


def test_hsb_factor_and_cross_level(tmp_path, hsb):
    data = hsb[["mAch", "meanses", "cses", "sector", "school"]].copy()
    data["school"] = data["school"].astype(str)
    data["sector"] = data["sector"].astype(str)
    nd = pd.DataFrame({"meanses": [0.1, -0.5, 0.0, 0.3], "cses": [1.0, 0.0, -1.0, 0.5],
                       "sector": ["Public", "Catholic", "Public", "Catholic"],
                       "school": ["1224", "8367", "new", "9586"]})
    _check(tmp_path, data, nd,
           "mAch ~ meanses*cses + sector*cses + (1 + cses | school)", "school",
           "mAch ~ 1 + (1 | school)", "mAch ~ meanses + (1 | school)")


def test_simulated_factor_cross_level(tmp_path):
    data = simulated()
    nd = pd.DataFrame({"x": [-1.0, 0.0, 1.5, 0.3, 2.0], "w": [0.2, 0.2, -1.0, 0.0, 1.0],
                       "k": ["lo", "mid", "hi", "mid", "lo"],
                       "g": ["s00", "s07", "s44", "brand-new", "s13"]})
    _check(tmp_path, data, nd, "y ~ x*w + k + (1 + x | g)", "g", "y ~ 1 + (1 | g)",
           "y ~ x + w + k + (1 | g)")
