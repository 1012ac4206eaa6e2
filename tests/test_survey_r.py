"""Live R oracles for the survey path (issue 23; marker ``needs_r``).

* With integer weights, the pseudo-likelihood fit equals ``lme4::lmer(REML = FALSE)`` on the data
  with each row repeated a_ij times inside its school (level 1) or each school repeated w_j times
  as new schools (level 2), on freshly simulated data with a correlated random slope:
  log-likelihood 1e-8 relative, fixed effects 1e-6 of their SE, variance components 1e-5
  relative. R expands the rows itself from the weights in the CSV.
* Rubin's rules on the same five estimates and variances: ``mice::pool.scalar`` gives the
  Barnard–Rubin df, FMI, RIV and T of :func:`twolevel.models.survey.rubin.rubin_pool`, and
  ``mitools::MIcombine`` its Rubin df.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.models.lmm.lmer import lmer

pytestmark = pytest.mark.needs_r

MISSING = 3
R_LMER = r"""
args <- commandArgs(TRUE)
d <- read.csv(args[1]); out <- args[2]; formula <- args[3]
if (!suppressWarnings(requireNamespace("lme4", quietly = TRUE))) quit(status = 3)
# level 1: repeat row i a_i times inside its school; level 2: repeat school j w_j times as new ones
d <- d[rep(seq_len(nrow(d)), d$a), ]
parts <- lapply(split(d, d$g), function(s) {
  do.call(rbind, lapply(seq_len(s$w[1]), function(k) { s$g2 <- paste0(s$g[1], "_", k); s }))
})
e <- do.call(rbind, parts)
ctl <- lme4::lmerControl(optimizer = "nloptwrap", calc.derivs = FALSE,
  optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-14, xtol_rel = 1e-14, maxeval = 1e5))
m <- lme4::lmer(as.formula(formula), e, REML = FALSE, control = ctl)
vc <- as.data.frame(lme4::VarCorr(m))
num <- function(x) paste0("[", paste(sprintf("%.17g", x), collapse = ","), "]")
writeLines(paste0('{"loglik":', sprintf("%.17g", as.numeric(logLik(m))),
  ',"beta":', num(lme4::fixef(m)), ',"se":', num(sqrt(diag(as.matrix(vcov(m))))),
  ',"vcov":', num(vc$vcov), ',"nobs":', nrow(e), '}'), out)
"""

R_POOL = r"""
args <- commandArgs(TRUE)
d <- read.csv(args[1]); out <- args[2]; dfcom <- as.numeric(args[3])
ok <- suppressWarnings(requireNamespace("mitools", quietly = TRUE) &&
                       requireNamespace("mice", quietly = TRUE))
if (!ok) quit(status = 3)
res <- sapply(unique(d$par), function(p) {
  s <- d[d$par == p, ]
  a <- mitools::MIcombine(as.list(s$q), as.list(s$u))  # df.complete = Inf: Rubin's df
  b <- mice::pool.scalar(s$q, s$u, n = dfcom + 1, k = 1)
  c(a$df, b$df, b$fmi, b$r, b$t)
})
writeLines(paste0("[", paste(sprintf("%.17g", res), collapse = ","), "]"), out)
"""


def rscript(tmp_path, script: str, *args: str):
    exe = shutil.which("Rscript")
    if exe is None:
        pytest.skip("Rscript is not on PATH")
    path = tmp_path / "s.R"
    path.write_text(script)
    out = tmp_path / "out.json"
    proc = subprocess.run([exe, str(path), *args[:1], str(out), *args[1:]],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == MISSING:
        pytest.skip("R packages missing (scripts/install_r.sh installs them)")
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def simulate(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    J = 24
    nj = rng.integers(4, 12, J)
    g = np.repeat(np.arange(J), nj)
    n = g.size
    x = rng.normal(size=n)
    z = rng.normal(size=J)[g]
    u0 = rng.normal(0, 2.0, J)
    u1 = 0.4 * u0 + rng.normal(0, 0.8, J)
    y = 10 + 1.5 * x + 0.7 * z + u0[g] + u1[g] * x + rng.normal(0, 1.5, n)
    return pd.DataFrame({"y": y, "x": x, "z": z, "g": [f"s{j:02d}" for j in g],
                         "a": rng.integers(1, 4, n), "w": rng.integers(1, 4, J)[g]})


@pytest.mark.parametrize("level", ["level1", "level2", "both"])
def test_integer_weights_equal_lmer_on_repeated_data(tmp_path, level):
    d = simulate({"level1": 1, "level2": 2, "both": 3}[level])
    if level == "level1":
        d["w"] = 1
    elif level == "level2":
        d["a"] = 1
    d.to_csv(tmp_path / "d.csv", index=False)
    f = "y ~ x + z + (1 + x | g)"
    r = rscript(tmp_path, R_LMER, str(tmp_path / "d.csv"), f.replace("| g)", "| g2)"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = lmer(f, d, weights=("a", "w"), conditional_weights=True, REML=False)
    assert fit.loglik == pytest.approx(r["loglik"], rel=1e-8)
    assert np.all(np.abs(fit.beta - r["beta"]) < 1e-6 * np.array(r["se"]))
    vc = fit.VarCorr()
    ours = [vc.cov[0, 0], vc.cov[1, 1], vc.cov[0, 1], vc.residual]
    np.testing.assert_allclose(ours, r["vcov"], rtol=1e-5)


def test_barnard_rubin_df_against_mitools_and_mice(tmp_path):
    from twolevel.models.survey.rubin import rubin_pool

    d = simulate(4)
    for m in range(1, 6):  # five "plausible values": the response plus noise
        d[f"pv{m}"] = d["y"] + np.random.default_rng(10 + m).normal(0, 1.0, len(d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = lmer("pv1 ~ x + z + (1 | g)", d, weights=("a", "w"), REML=False,
                 pv=[f"pv{m}" for m in range(1, 6)], df_com=50.0)
    q = pd.DataFrame([f.beta for f in p.fits], columns=list(p.fixef().index))
    u = pd.DataFrame([f.se().to_numpy() ** 2 for f in p.fits], columns=q.columns)
    pool = rubin_pool(q, u, 50.0)
    long = pd.DataFrame({"par": np.repeat(q.columns, 5), "q": q.to_numpy().T.ravel(),
                         "u": u.to_numpy().T.ravel()})
    long.to_csv(tmp_path / "q.csv", index=False)
    r = np.array(rscript(tmp_path, R_POOL, str(tmp_path / "q.csv"), "50")).reshape(-1, 5)
    # mitools: Rubin's df (with a finite df.complete it uses Ū/(Ū + B) for 1 − λ, its own
    # variant, so the Barnard–Rubin df are compared with mice's pool.scalar)
    np.testing.assert_allclose(pool.df_rubin.to_numpy(), r[:, 0], rtol=1e-10)
    np.testing.assert_allclose(pool.df_barnard_rubin.to_numpy(), r[:, 1], rtol=1e-10)
    np.testing.assert_allclose(pool.fmi.to_numpy(), r[:, 2], rtol=1e-10)
    np.testing.assert_allclose(pool.riv.to_numpy(), r[:, 3], rtol=1e-10)
    np.testing.assert_allclose(pool.total.to_numpy(), r[:, 4], rtol=1e-10)
    np.testing.assert_allclose(p.pool.total.to_numpy(), r[:, 4], rtol=1e-10)


R_GLMER = r"""
args <- commandArgs(TRUE)
d <- read.csv(args[1]); out <- args[2]; nagq <- as.integer(args[3])
if (!suppressWarnings(requireNamespace("lme4", quietly = TRUE))) quit(status = 3)
d <- d[rep(seq_len(nrow(d)), d$a), ]
parts <- lapply(split(d, d$g), function(s) {
  do.call(rbind, lapply(seq_len(s$w[1]), function(k) { s$g2 <- paste0(s$g[1], "_", k); s }))
})
e <- do.call(rbind, parts)
m <- lme4::glmer(yb ~ x + z + (1 | g2), e, family = binomial, nAGQ = nagq,
  control = lme4::glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12,
                               optCtrl = list(maxfun = 1e5, rhoend = 1e-12)))
num <- function(x) paste0("[", paste(sprintf("%.17g", x), collapse = ","), "]")
writeLines(paste0('{"loglik":', sprintf("%.17g", as.numeric(logLik(m))),
  ',"beta":', num(lme4::fixef(m)), ',"se":', num(sqrt(diag(as.matrix(vcov(m))))),
  ',"theta":', num(lme4::getME(m, "theta")), '}'), out)
"""


@pytest.mark.parametrize("nagq", [1, 13])
def test_glmer_integer_weights_equal_glmer_on_repeated_data(tmp_path, nagq):
    """Binomial, integer weights at both levels: the pseudo-likelihood at glmer's estimates
    equals glmer's log-likelihood on the expanded data (1e-9 relative: the same objective), and
    our optimum is at least as high and equal to glmer's converged tightly (BOBYQA's rhoend
    1e-12): log-likelihood 1e-8 relative, β 1e-6 SE, τ 1e-5, the issue's tolerances."""
    from twolevel.models.glmm.glmer import glmer
    from twolevel.models.survey.glmm import school_loglik

    d = simulate(5)
    eta = -0.3 + 0.8 * d["x"] + 0.5 * d["z"] + (d["y"] - d["y"].mean()) / d["y"].std() * 0.5
    d["yb"] = (np.random.default_rng(6).uniform(size=len(d)) < 1 / (1 + np.exp(-eta))) * 1.0
    d.to_csv(tmp_path / "d.csv", index=False)
    r = rscript(tmp_path, R_GLMER, str(tmp_path / "d.csv"), str(nagq))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = glmer("yb ~ x + z + (1 | g)", d, family="binomial", nAGQ=nagq,
                    weights=("a", "w"), conditional_weights=True)
    at_r = float(fit.data.w @ school_loglik(np.array(r["beta"]), r["theta"][0], fit.data,
                                            nagq)[0])
    assert at_r == pytest.approx(r["loglik"], rel=1e-9)
    assert fit.loglik >= r["loglik"] - 1e-9 * abs(r["loglik"])
    assert fit.loglik == pytest.approx(r["loglik"], rel=1e-8)
    assert np.all(np.abs(fit.beta - r["beta"]) < 1e-6 * np.array(r["se"]))
    assert fit.tau == pytest.approx(r["theta"][0], rel=1e-5)
