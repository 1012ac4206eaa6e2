"""Live parity of the several-factor profile intervals with lme4's ``confint(fit)`` (method
"profile", its default; names ``.sig01`` …, ``.sigma``, then the fixed effects) on freshly
simulated data: three levels with a random slope at the school level, and partially crossed
factors.

Two comparisons, because lme4's interval is a spline through its own profile points:

* **the profile itself**: at every point lme4 lists in ``as.data.frame(profile(fit))`` our ζ
  (:func:`~twolevel.models.inference.profile_core.profile_zeta`, an exact minimisation with the
  parameter held) is never a worse optimum than lme4's (|ζ| ≤ |ζ_lme4| + 1e-5); per parameter
  the median gap is ≤ 1e-4 and the largest ≤ 2e-2 (lme4's inner optimisations stop early at a
  few points, by up to 8.1e-3 in ζ, differently from run to run; observed 2026-12-07);
* **the interval ends**, within 2e-3 of the interval's width (the one-factor acceptance,
  ``tests/test_profile.py``). Where a correlation's profile reaches ±1, lme4's ζ at that singular
  point is not reproducible from run to run of the same script (3.21 or 4.48 on the first model;
  measured 2026-12-07, lme4 1.1-31 on R 4.2.2), and the spline through it moves the upper end of
  ``.sig03`` by up to 1.1e-2 of the width (0.8572 or 0.8643; the exact crossing is 0.8646,
  ours 0.8645): there the tolerance is 2e-2 and our end is checked instead against the exact
  profile, |ζ(end)| within 5e-3 of the normal quantile.

Skipped without Rscript + lme4 + jsonlite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from test_multilevel_r_parity import crossed, three_levels

from twolevel.models.inference.profile_core import profile_zeta
from twolevel.models.inference.profile_multi import multi_profile_problem
from twolevel.models.lmm.lmer import lmer

pytestmark = pytest.mark.needs_r

R_SCRIPT = r"""
args <- commandArgs(TRUE)
ok <- suppressWarnings(suppressPackageStartupMessages(
  requireNamespace("lme4", quietly = TRUE) && requireNamespace("jsonlite", quietly = TRUE)))
if (!ok) quit(status = 3)
suppressPackageStartupMessages(library(lme4))
d <- read.csv(args[1])
for (v in c("school", "class", "a", "b")) if (!is.null(d[[v]])) d[[v]] <- factor(d[[v]])
m <- lmer(as.formula(args[2]), data = d)
p <- suppressMessages(suppressWarnings(profile(m)))
ci <- suppressMessages(suppressWarnings(confint(p)))
pts <- as.data.frame(p)
val <- vapply(seq_len(nrow(pts)), function(i) pts[i, as.character(pts$.par[i])], 0)
cat(jsonlite::toJSON(list(names = rownames(ci), lo = unname(ci[, 1]), hi = unname(ci[, 2]),
                          par = as.character(pts$.par), value = val, zeta = pts$.zeta),
                     digits = NA))
"""


def _r_confint(tmp_path, data, formula: str) -> dict:
    if shutil.which("Rscript") is None:
        pytest.skip("Rscript not found")
    csv = tmp_path / "d.csv"
    data.to_csv(csv, index=False)
    script = tmp_path / "ci.R"
    script.write_text(R_SCRIPT)
    res = subprocess.run(["Rscript", str(script), str(csv), formula], capture_output=True,
                         text=True, timeout=600)
    if res.returncode == 3:
        pytest.skip("R packages lme4/jsonlite not installed")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("case, formula", [
    ("three", "y ~ x + w + (1 + x | school) + (1 | school:class)"),
    ("three", "y ~ x + (1 | school/class)"),
    ("partial", "y ~ x + (1 | a) + (1 | b)"),
])
def test_profile_intervals_match_lme4(tmp_path, case, formula):
    data = three_levels(11, reuse_labels=True) if case == "three" else crossed(12, partial=True)
    r = _r_confint(tmp_path, data, formula)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = lmer(formula, data)
        ci = fit.confint("profile")
    assert list(ci.index) == r["names"]
    prob = multi_profile_problem(fit)
    bounds = dict(zip(prob.variance_names, zip(prob.sv_lower, prob.sv_upper, strict=True),
                      strict=True))

    # the profile at lme4's own points (observed 2026-12-07: ours never above lme4's |ζ|; per
    # parameter the median gap ≤ 2e-5, the largest 8.1e-3, where lme4's optimiser stopped early)
    singular, gaps = set(), {}
    for name, value, z_r in zip(r["par"], r["value"], r["zeta"], strict=True):
        if abs(z_r) < 1e-3:      # the estimate itself
            continue
        lo_b, hi_b = bounds.get(name, (-np.inf, np.inf))
        if name in bounds and lo_b == -1.0 and value in (-1.0, 1.0):
            singular.add(name)   # a correlation at ±1: lme4's ζ there is not reproducible
        z = profile_zeta(prob, name, value)
        assert abs(z) <= abs(z_r) + 1e-5, (name, value, z, z_r)
        if lo_b < value < hi_b:
            gaps.setdefault(name, []).append(abs(z - z_r))
    for name, g in gaps.items():
        assert np.median(g) <= 1e-4 and max(g) <= 2e-2, (name, np.median(g), max(g))

    # the interval ends (observed 2026-12-07: ≤ 4e-6 of the width for every parameter whose
    # profile stays inside its bounds)
    lo, hi = np.asarray(r["lo"], dtype=float), np.asarray(r["hi"], dtype=float)
    err = np.maximum(np.abs(ci.iloc[:, 0] - lo), np.abs(ci.iloc[:, 1] - hi)) / (hi - lo)
    tol = np.array([2e-2 if n in singular else 2e-3 for n in r["names"]])
    assert np.all(err <= tol), dict(zip(r["names"], err, strict=True))
    zq = 1.959963984540054
    for name in singular:
        for end, sign in zip(ci.loc[name], (-1.0, 1.0), strict=True):
            if bounds[name][0] < end < bounds[name][1]:
                assert abs(profile_zeta(prob, name, float(end)) - sign * zq) <= 5e-3, (name, end)
