"""glmer predictions for new rows (issue 12 item 1 for glmer fits): lme4's
``predict(m, newdata, re.form = NULL | NA, allow.new.levels = TRUE, type = "link" | "response")``
with offsets, factors and ``I()`` terms rebuilt on the new rows; live parity with lme4."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import twolevel as tl
from twolevel.data.errors import DataError, TwolevelError
from twolevel.models.glmm.glmer import glmer

F_POIS = "y ~ x * f + I(x^2) + offset(log(expo)) + (1 + x | g)"
F_BIN = "cbind(s, n - s) ~ x + f + (1 | g)"


def _sim(seed=3, J=30):
    rng = np.random.default_rng(seed)
    nj = rng.integers(5, 25, J)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size)
    f = rng.choice(["lo", "mid", "hi"], size=g.size)
    expo = rng.uniform(0.5, 3.0, g.size)
    b = rng.multivariate_normal([0, 0], [[0.3, 0.05], [0.05, 0.1]], size=J)
    eff = {"hi": 0.3, "lo": 0.0, "mid": -0.2}
    eta = 0.2 + 0.4 * x + np.vectorize(eff.get)(f) + 0.05 * x**2 + b[g, 0] + b[g, 1] * x
    y = rng.poisson(expo * np.exp(eta))
    n = rng.integers(1, 8, g.size)
    s = rng.binomial(n, 1 / (1 + np.exp(-(eta - 0.5))))
    return pd.DataFrame({"y": y, "s": s, "n": n, "x": x, "f": f, "expo": expo,
                         "g": [f"k{j:02d}" for j in g]})


def _newdata():
    return pd.DataFrame({"x": [0.5, -1.0, 1.5, 0.0], "f": ["mid", "lo", "hi", "hi"],
                         "expo": [1.0, 2.0, 0.7, 1.3], "n": [4, 2, 6, 1],
                         "g": ["k03", "k10", "new1", "k03"]})


@pytest.fixture(scope="module")
def data():
    return _sim()


@pytest.fixture(scope="module")
def pois(data):
    return glmer(F_POIS, data, family="poisson")


def test_newdata_equal_to_the_fitted_rows_reproduces_the_fit(pois, data):
    np.testing.assert_allclose(pois.predict(data), pois.predict(), rtol=1e-10)
    np.testing.assert_allclose(pois.predict(data, type="response"), pois.fitted(), rtol=1e-10)
    np.testing.assert_allclose(pois.predict(data, re_form="NA"), pois.predict(re_form="NA"),
                               rtol=1e-12)
    np.testing.assert_allclose(tl.predict(pois, data, type="response"), pois.fitted(),
                               rtol=1e-10)


def test_new_rows_by_hand(pois):
    nd = _newdata()
    eta = pois.predict(nd, allow_new_levels=True)
    fe, b = pois.fixef(), pois.ranef(cond_var=False)
    x, f = nd["x"].to_numpy(), nd["f"].to_numpy()
    by_hand = (fe["(Intercept)"] + fe["x"] * x + fe["flo"] * (f == "lo") + fe["fmid"] * (f == "mid")
               + fe["I(x^2)"] * x**2 + fe["x:flo"] * x * (f == "lo")
               + fe["x:fmid"] * x * (f == "mid")
               + np.log(nd["expo"].to_numpy()))
    for i, gname in enumerate(nd["g"]):
        if gname in b.index:
            by_hand[i] += b.loc[gname, "(Intercept)"] + b.loc[gname, "x"] * x[i]
    np.testing.assert_allclose(eta, by_hand, rtol=1e-12)
    np.testing.assert_allclose(pois.predict(nd, allow_new_levels=True, type="response"),
                               np.exp(by_hand), rtol=1e-12)


def test_bad_input_messages(pois):
    nd = _newdata()
    with pytest.raises(DataError, match=r"new level\(s\) of 'g' in newdata: 'new1'"):
        pois.predict(nd)
    with pytest.raises(DataError, match=r"newdata lacks column\(s\) 'expo'"):
        pois.predict(nd.drop(columns="expo"), allow_new_levels=True)
    with pytest.raises(DataError,
                       match=r"offset 'offset\(log\(expo\)\)' is not finite in newdata row 1"):
        pois.predict(nd.assign(expo=[1.0, 0.0, 1.0, 1.0]), allow_new_levels=True)
    with pytest.raises(DataError, match="newdata lacks the grouping column 'g'"):
        pois.predict(nd.drop(columns="g"))
    with pytest.raises(DataError, match="level"):
        pois.predict(nd.assign(f=["zz", "lo", "hi", "hi"]), allow_new_levels=True)
    with pytest.raises(TwolevelError, match="type must be 'link' or 'response', got 'probability'"):
        pois.predict(nd, allow_new_levels=True, type="probability")
    with pytest.raises(TwolevelError, match="not available for glmer fits"):
        tl.predict(pois, nd, allow_new_levels=True, interval="confidence")


R_SCRIPT = r"""
args <- commandArgs(TRUE)
ok <- suppressWarnings(suppressPackageStartupMessages(
  requireNamespace("lme4", quietly = TRUE) && requireNamespace("jsonlite", quietly = TRUE)))
if (!ok) quit(status = 3)
suppressPackageStartupMessages(library(lme4))
d <- read.csv(args[1]); nd <- read.csv(args[2])
d$f <- factor(d$f); nd$f <- factor(nd$f, levels = levels(d$f))
fit <- function(f, fam) suppressWarnings(glmer(as.formula(f), data = d, family = fam))
mp <- fit(args[3], poisson); mb <- fit(args[4], binomial)
pr <- function(m, re, type) unname(predict(m, newdata = nd, re.form = re,
                                            allow.new.levels = TRUE, type = type))
out <- list(
  pois_link = pr(mp, NULL, "link"), pois_resp = pr(mp, NULL, "response"),
  pois_na = pr(mp, NA, "response"),
  bin_link = pr(mb, NULL, "link"), bin_resp = pr(mb, NULL, "response"),
  bin_na = pr(mb, NA, "link"))
cat(jsonlite::toJSON(out, digits = NA))
"""


@pytest.mark.needs_r
@pytest.mark.parametrize("seed", [11, 12])
def test_predict_matches_lme4_live(tmp_path, seed):
    """Both sides' default fits (glmer's digits, issue 11) predict the same new rows, 1e-5
    relative: the fits agree to glmer's optimiser tolerance, not to machine precision."""
    if shutil.which("Rscript") is None:
        pytest.skip("Rscript not found")
    d, nd = _sim(seed), _newdata()
    csv, ndcsv, script = tmp_path / "d.csv", tmp_path / "nd.csv", tmp_path / "p.R"
    d.to_csv(csv, index=False)
    nd.to_csv(ndcsv, index=False)
    script.write_text(R_SCRIPT)
    res = subprocess.run(["Rscript", str(script), str(csv), str(ndcsv), F_POIS, F_BIN],
                         capture_output=True, text=True, timeout=300)
    if res.returncode == 3:
        pytest.skip("lme4/jsonlite not installed")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    mp, mb = glmer(F_POIS, d, family="poisson"), glmer(F_BIN, d, family="binomial")
    kw = {"allow_new_levels": True}
    np.testing.assert_allclose(mp.predict(nd, **kw), r["pois_link"], rtol=1e-5)
    np.testing.assert_allclose(mp.predict(nd, type="response", **kw), r["pois_resp"], rtol=1e-5)
    np.testing.assert_allclose(mp.predict(nd, re_form="NA", type="response"), r["pois_na"],
                               rtol=1e-5)
    np.testing.assert_allclose(mb.predict(nd, **kw), r["bin_link"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mb.predict(nd, type="response", **kw), r["bin_resp"], rtol=1e-5)
    np.testing.assert_allclose(mb.predict(nd, re_form="NA"), r["bin_na"], rtol=1e-5, atol=1e-6)
