"""Bayesian fits of plausible values: per-set fits, stacked draws (issue 23, item 3)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import DataError
from twolevel.data.loaders import load_data
from twolevel.models.bayes.fit import SamplerSettings, fit_bayes

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # tiny runs fail the gate


@pytest.fixture(scope="module")
def stacked():
    d = load_data("sleepstudy").copy()
    rng = np.random.default_rng(5)
    for m in range(1, 4):
        d[f"pv{m}"] = d["Reaction"] + rng.normal(0, 15, len(d))
    fit = fit_bayes("pv1 ~ Days + (1 | Subject)", d, pv=["pv1", "pv2", "pv3"], progress=False,
                    log_likelihood="none",
                    settings=SamplerSettings(chains=2, draws=200, tune=200, seed=7))
    return d, fit


def test_draws_are_stacked(stacked):
    _, fit = stacked
    assert fit.m == 3 and fit.labels == ("pv1", "pv2", "pv3")
    post = fit.posterior
    assert post.sizes["chain"] == 6 and list(post["chain"].values) == list(range(6))
    per_set = [f.posterior["beta"].isel(fixed=1).to_numpy().mean() for f in fit.fits]
    tab = fit.to_frame()
    # equal draws per set: the stacked mean is the mean of the per-set means
    assert tab.loc["fixef:Days", "mean"] == pytest.approx(np.mean(per_set), rel=1e-12)
    assert tab.loc["fixef:Days", "between_sd"] == pytest.approx(np.std(per_set, ddof=1))
    # the sets were sampled with different seeds
    assert len({f.settings.seed for f in fit.fits}) == 3
    s = fit.summary()
    assert "3 sets, draws stacked" in s and "pv3: " in s


def test_list_of_frames_and_refusals(stacked):
    d, _ = stacked
    with pytest.raises(DataError, match="plausible-value column 'nope' is not in the data"):
        fit_bayes("pv1 ~ Days + (1 | Subject)", d, pv=["pv1", "nope"], progress=False)
    with pytest.raises(DataError, match="take no sampling weights here"):
        fit_bayes("pv1 ~ Days + (1 | Subject)", d, pv=["pv1", "pv2"], weights="Days",
                  progress=False)
    sets = [d.assign(y=d[f"pv{m}"]) for m in (1, 2)]
    fit = fit_bayes("y ~ Days + (1 | Subject)", sets, progress=False, log_likelihood="none",
                    settings=SamplerSettings(chains=1, draws=100, tune=100, seed=3))
    assert fit.labels == ("set 1", "set 2") and isinstance(fit.to_frame(), pd.DataFrame)
