"""The default Bayesian fit on the lecture data and on HSB, as the issue's acceptance states it:
4 chains × 1000 draws, 0 divergences, max R-hat ≤ 1.01 and bulk and tail ESS ≥ 400 over every
parameter including each school effect; posterior means of γ within 0.2 posterior SD of lme4's
REML estimates (golden files). Speed is measured by benchmarks/bayes_speed.py, not here."""

from __future__ import annotations

import pytest
from conftest import load_golden

from twolevel.data.loaders import load_data
from twolevel.models.bayes.fit import fit_bayes


@pytest.mark.slow
@pytest.mark.parametrize("data, golden", [("lecture", "lecture_lme4.json"),
                                          ("hsb", "hsb82_lme4.json")])
def test_default_fit_passes_the_gate_and_agrees_with_reml(data, golden):
    g = load_golden(golden)
    fit = fit_bayes(g["formula_m1"], load_data(data), progress=False)
    d = fit.diagnostics
    assert d.divergences == 0
    assert d.max_rhat <= 1.01
    assert d.min_ess_bulk >= 400 and d.min_ess_tail >= 400
    assert d.passed and not d.problems
    f = fit.to_frame()
    for name, reml in g["m1_reml"]["fixef"].items():
        row = f.loc[f"fixef:{name}"]
        assert abs(row["mean"] - reml) <= 0.2 * row["sd"], (name, row["mean"], reml, row["sd"])
