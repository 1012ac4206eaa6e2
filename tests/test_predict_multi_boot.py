"""Bootstrap-t prediction intervals for several grouping factors (issue 22): the warm-started
refit against a fresh fit, the intervals' shape and ordering (a known class narrower than a new
school), reproducibility with a seed, agreement with the plug-in interval when θ̂ is well
determined, the command line, and the error messages. The coverage is measured by
``benchmarks/prediction_coverage_multi.py --interval bootstrap``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import TwolevelError
from twolevel.models.inference.predict import predict
from twolevel.models.inference.predict_multi import multi_new_rows, predict_intervals_multi
from twolevel.models.inference.predict_multi_boot import bootstrap_predict_multi, refit_multi
from twolevel.models.lmm.lmer import lmer

NEW = pd.DataFrame({"school": [1, 1, 10**6], "class": [1, 99, 1], "x": [1.0, 1.0, 1.0]})


def _three(seed: int = 3, schools: int = 30) -> pd.DataFrame:
    """Schools × 4 classes × 6 students, class labels reused in every school."""
    rng = np.random.default_rng(seed)
    s = np.repeat(np.arange(1, schools + 1), 24)
    c = np.tile(np.repeat(np.arange(1, 5), 6), schools)
    x = rng.normal(size=s.size)
    y = (1 + 0.5 * x + rng.normal(0, 1.0, schools)[s - 1]
         + rng.normal(0, 0.6, 4 * schools)[(s - 1) * 4 + c - 1] + rng.normal(size=s.size))
    return pd.DataFrame({"school": s, "class": c, "x": x, "y": y})


@pytest.fixture(scope="module")
def fit():
    return lmer("y ~ x + (1 | school/class)", _three())


def test_refit_on_the_same_response_is_the_fit(fit):
    ref = refit_multi(fit, fit.design.y)
    np.testing.assert_allclose(ref.theta, fit.theta, rtol=1e-5)
    np.testing.assert_allclose(ref.state.beta, fit.state.beta, rtol=1e-7)
    assert ref.criterion == pytest.approx(fit.criterion, rel=1e-10)
    assert ref.engine == fit.engine and ref.reml == fit.reml


def test_refit_of_a_new_response_matches_a_fresh_fit(fit):
    d = _three()
    d["y"] = _three(seed=8)["y"]
    fresh = lmer("y ~ x + (1 | school/class)", d)
    ref = refit_multi(fit, d["y"].to_numpy())
    assert ref.criterion == pytest.approx(fresh.criterion, rel=1e-8)
    np.testing.assert_allclose(ref.state.beta, fresh.state.beta, rtol=1e-5)


def test_bootstrap_intervals_shape_order_and_seed(fit):
    bp = predict(fit, NEW, allow_new_levels=True, interval="bootstrap", nsim=39, rng=5)
    assert list(bp.columns) == ["fit", "se", "lwr", "upr"]
    assert bp.shape == (3, 4) and bp.index.equals(NEW.index)
    assert bp["se"].isna().all()
    np.testing.assert_allclose(bp["fit"], fit.predict(NEW, allow_new_levels=True), rtol=1e-12)
    # the plug-in point prediction lies inside, and the intervals widen from a known class to a
    # new class in a known school to a new school
    assert (bp["lwr"] < bp["fit"]).all() and (bp["fit"] < bp["upr"]).all()
    width = (bp["upr"] - bp["lwr"]).to_numpy()
    assert width[0] < width[1] < width[2]
    # reproducible with a seed (rng= or seed=, the method and the function agree)
    again = fit.predict(NEW, allow_new_levels=True, interval="bootstrap", nsim=39, seed=5)
    pd.testing.assert_frame_equal(bp, again)
    gen = predict_intervals_multi(fit, NEW, allow_new_levels=True, interval="bootstrap",
                                  nsim=39, rng=np.random.default_rng(5))
    pd.testing.assert_frame_equal(bp, gen)
    other = predict(fit, NEW, allow_new_levels=True, interval="bootstrap", nsim=39, rng=6)
    assert not np.allclose(other["lwr"], bp["lwr"])


def test_bootstrap_is_near_the_plug_in_when_theta_is_well_determined(fit):
    """With 30 schools the bootstrap-t interval is the plug-in one widened a little: the
    studentized errors are close to N(0, 1)."""
    rows = multi_new_rows(fit, NEW, allow_new_levels=True)
    res = bootstrap_predict_multi(fit, rows, nsim=199, rng=2)
    pi = predict(fit, NEW, allow_new_levels=True, interval="prediction")
    assert res.tstat.shape == res.center.shape == (199, 3) and res.n_failed == 0
    assert res.level == 0.95 and res.quantiles == "mixture"
    np.testing.assert_allclose(res.s0, pi["se"], rtol=1e-12)
    np.testing.assert_allclose(res.tstat.std(axis=0), 1.0, atol=0.15)
    # the mixture's interval is the plug-in's within a few per cent, a little wider
    ratio = (res.upr - res.lwr) / (pi["upr"] - pi["lwr"]).to_numpy()
    assert np.all((ratio > 0.99) & (ratio < 1.05)), ratio
    np.testing.assert_allclose((res.upr + res.lwr) / 2, pi["fit"], atol=0.1 * pi["se"].min())
    # the known class's t* is centred on the refit's error in the replicate's class mean, with
    # spread σ̂/ŝ₀* (ŝ₀*² = PEV* + σ̂*²); the new school's on the error in x₀ᵀβ̂ (a small part of
    # ŝ₀*), with spread near 1: the refit's error is a larger share of the known class's SD
    med = np.median(res.scale, axis=0)
    assert 0.75 < med[0] < med[1] < med[2] < 1.02, med
    spread = res.center.std(axis=0)
    assert spread[0] > spread[1] > spread[2], spread
    # the draws' quantiles (one-factor construction) give the same interval up to their noise
    dr = bootstrap_predict_multi(fit, rows, nsim=199, rng=2, quantiles="draws")
    np.testing.assert_allclose(dr.center, res.center)
    np.testing.assert_allclose(dr.lwr, res.lwr, atol=0.5 * pi["se"].max())
    np.testing.assert_allclose(dr.upr, res.upr, atol=0.5 * pi["se"].max())
    lo, hi = np.sort(dr.tstat, axis=0)[[4, 194]]  # (R + 1)·0.025 = 5: order statistics
    np.testing.assert_allclose(dr.lwr, pi["fit"] + dr.s0 * lo, rtol=1e-12)
    np.testing.assert_allclose(dr.upr, pi["fit"] + dr.s0 * hi, rtol=1e-12)


def test_population_level_and_level_argument(fit):
    pop = predict(fit, NEW, re_form="NA", interval="bootstrap", nsim=39, rng=1)
    cond = predict(fit, NEW, allow_new_levels=True, interval="bootstrap", nsim=39, rng=1)
    # population level: every row is a new school's student (x is the same in all three rows),
    # so the known class's row is as wide as a new school's, wider than conditioned on its class
    np.testing.assert_allclose(pop["fit"], pop["fit"].iloc[0])
    wp, wc = (pop["upr"] - pop["lwr"]).to_numpy(), (cond["upr"] - cond["lwr"]).to_numpy()
    np.testing.assert_allclose(wp, wc[2], rtol=0.25)
    assert wp[0] > 1.3 * wc[0]
    b80 = predict(fit, NEW, allow_new_levels=True, interval="bootstrap", nsim=39, rng=1,
                  level=0.8)
    b95 = predict(fit, NEW, allow_new_levels=True, interval="bootstrap", nsim=39, rng=1)
    assert ((b80["upr"] - b80["lwr"]) < (b95["upr"] - b95["lwr"])).all()


def test_crossed_factors():
    rng = np.random.default_rng(4)
    d = pd.DataFrame({"a": rng.integers(0, 12, 300), "b": rng.integers(0, 8, 300)})
    d["x"] = rng.normal(size=300)
    d["y"] = (0.3 * d["x"] + rng.normal(0, 1, 12)[d["a"]] + rng.normal(0, 1.2, 8)[d["b"]]
              + rng.normal(size=300))
    with pytest.warns(UserWarning, match="8 of 8 'b' labels occur in several 'a' groups"):
        fit = lmer("y ~ x + (1 | a) + (1 | b)", d)
    assert fit.engine == "crossed"
    nd = pd.DataFrame({"a": [0, 0, 99], "b": [0, 99, 99], "x": [0.0, 0.0, 0.0]})
    bp = predict(fit, nd, allow_new_levels=True, interval="bootstrap", nsim=39, rng=1)
    width = (bp["upr"] - bp["lwr"]).to_numpy()
    assert width[0] < width[1] < width[2]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_nsim(fit, bad):
    with pytest.raises(TwolevelError, match=f"nsim must be a positive whole number of "
                                            f"simulations, got {bad!r}"):
        predict(fit, NEW, allow_new_levels=True, interval="bootstrap", nsim=bad)


def test_bad_level(fit):
    with pytest.raises(TwolevelError, match="level must be between 0 and 1 \\(e.g. 0.95\\), "
                                            "got 95"):
        predict(fit, NEW, allow_new_levels=True, interval="bootstrap", level=95)
    rows = multi_new_rows(fit, NEW, allow_new_levels=True)
    with pytest.raises(TwolevelError, match="level must be between 0 and 1 \\(e.g. 0.95\\), "
                                            "got 1.0"):
        bootstrap_predict_multi(fit, rows, nsim=5, level=1.0)


def test_bad_quantiles(fit):
    rows = multi_new_rows(fit, NEW, allow_new_levels=True)
    with pytest.raises(TwolevelError, match="quantiles must be 'mixture' or 'draws', got 'perc'"):
        bootstrap_predict_multi(fit, rows, nsim=5, quantiles="perc")


def test_partial_re_form_and_rng_with_seed(fit):
    with pytest.raises(TwolevelError, match=r"intervals need re_form=None \(every factor\) or "
                                            r"'NA' \(none\), not '~\(1 \| school\)'"):
        predict(fit, NEW, re_form="~(1 | school)", interval="bootstrap", allow_new_levels=True)
    with pytest.raises(TwolevelError, match="give either rng= \\(a seed or a numpy Generator\\) "
                                            "or seed=, not both"):
        predict(fit, NEW, interval="bootstrap", allow_new_levels=True, rng=1, seed=1)


def test_all_refits_failing(fit):
    """A fit whose residual scale is not finite simulates responses no refit can use."""
    broken = dataclasses.replace(fit, state=dataclasses.replace(fit.state, r2=float("nan")))
    rows = multi_new_rows(fit, NEW, allow_new_levels=True)
    with pytest.raises(TwolevelError, match="all 3 bootstrap refits failed; the prediction "
                                            "interval cannot be bootstrapped \\(use "
                                            "interval='prediction'\\)"):
        bootstrap_predict_multi(broken, rows, nsim=3)


def test_rowless_fit(tmp_path):
    pytest.importorskip("duckdb")
    path = tmp_path / "d.parquet"
    _three().to_parquet(path, index=False)
    fit = lmer("y ~ x + (1 | school/class)", str(path), engine="duckdb")
    # (new rows cannot be rebuilt from a DuckDB design: take them from the in-memory fit)
    rows = multi_new_rows(lmer("y ~ x + (1 | school/class)", _three()), NEW,
                          allow_new_levels=True)
    with pytest.raises(TwolevelError, match="bootstrap prediction intervals need the rows, and "
                                            "this fit's statistics came from duckdb"):
        bootstrap_predict_multi(fit, rows, nsim=3)


def test_cli_bootstrap_with_several_factors(tmp_path):
    """``twolevel predict --interval bootstrap`` writes the library's bootstrap intervals."""
    d = _three()
    d.to_csv(tmp_path / "d.csv", index=False)
    NEW.to_csv(tmp_path / "nd.csv", index=False)
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "twolevel.workflows.cli", "predict",
                           str(tmp_path / "d.csv"), "y ~ x + (1 | school/class)", "--newdata",
                           str(tmp_path / "nd.csv"), "--out", str(out), "--allow-new-levels",
                           "--interval", "bootstrap", "--nsim", "19", "--seed", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out)
    want = predict(lmer("y ~ x + (1 | school/class)", d), NEW, allow_new_levels=True,
                   interval="bootstrap", nsim=19, seed=3)
    np.testing.assert_allclose(got[["fit", "lwr", "upr"]], want[["fit", "lwr", "upr"]],
                               rtol=1e-9)
    assert got["se"].isna().all()
