"""The lecture's answers carry exactly the fitted model's numbers; the verdict follows its rules."""

from __future__ import annotations

import numpy as np
import pytest

from twolevel.data.loaders import load_lecture
from twolevel.models.lmm.lmer import lmer
from twolevel.models.tables.lecture_answers import comparison_verdict, lecture_answers
from twolevel.workflows.lecture import reml_quantities, reml_view


@pytest.fixture(scope="module")
def m1():
    return lmer("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", load_lecture())


def test_reml_answers_equal_the_fit(m1):
    a = lecture_answers(reml_quantities(reml_view(m1), "famsesc"), None, "reading score", "SES")
    fe, se, vc = m1.fixef(), m1.se(), m1.VarCorr()
    v, sd, R = vc.variances, vc.sds, vc.correlations
    assert a.value("gamma00") == fe["(Intercept)"]
    assert a.value("gamma10") == fe["famsesc"]
    assert a.table.set_index("symbol").loc["gamma00", "reml_se"] == se["(Intercept)"]
    assert a.value("tau00") == v["(Intercept)"]
    assert a.value("tau11") == v["famsesc"]
    assert a.value("tau01") == vc.cov[0, 1]
    assert a.value("slope_minus_1sd") == pytest.approx(fe["famsesc"] - sd["famsesc"], rel=1e-14)
    assert a.value("slope_plus_1sd") == pytest.approx(fe["famsesc"] + sd["famsesc"], rel=1e-14)
    assert a.value("rho01") == pytest.approx(R.loc["(Intercept)", "famsesc"], rel=1e-14)
    # the sentences quote those numbers (lme4 golden of this data set: 94.9237, 58.38, 7.6501)
    assert "γ00 = 94.9237 (SE 0.3171)" in a.answers[0]
    assert "τ00 = 58.38" in a.answers[1]
    assert "γ10 = 7.6501" in a.answers[2]
    assert "τ11 = 5.617" in a.answers[3]
    assert f"γ10 − √τ11 = {fe['famsesc'] - sd['famsesc']:.4g}" in a.answers[4]
    assert "Weaker (flatter)" in a.answers[5] and "-0.16" in a.answers[5]
    assert np.isnan(a.prob_corr_negative)


def test_bayes_answers_are_draw_summaries(m1):
    rng = np.random.default_rng(0)
    n = 4000
    draws = {"gamma00": rng.normal(95, 0.3, n), "gamma10": rng.normal(7.6, 0.25, n),
             "tau00": rng.normal(58, 3, n), "tau11": rng.gamma(9, 0.6, n),
             "tau01": rng.normal(-3, 1.5, n)}
    a = lecture_answers(reml_quantities(reml_view(m1), "famsesc"), draws, "reading score", "SES")
    rho = draws["tau01"] / np.sqrt(draws["tau00"] * draws["tau11"])
    assert a.prob_corr_negative == np.mean(rho < 0)
    assert a.value("rho01", "post_mean") == pytest.approx(rho.mean(), rel=1e-12)
    assert a.value("slope_plus_1sd", "post_q97.5") == pytest.approx(
        np.quantile(draws["gamma10"] + np.sqrt(draws["tau11"]), 0.975), rel=1e-12)
    assert f"posterior probability that it is negative {a.prob_corr_negative:.3f}" in a.answers[5]


def test_verdict_rules():
    v = comparison_verdict(8.87, 2, 0.0118, 0.0074, (10.0, 3.0), (1.0, 3.0), (0, 0))
    assert "boundary-corrected p = 0.0074" in v and "keep the random slope" in v
    assert "more than 2 SE: the random-slope model m1 predicts better" in v
    assert "within 2 SE: the two models predict about equally well" in v
    assert "every student and school below the reliability threshold" in v
    v = comparison_verdict(1.2, 2, 0.55, None, (-7.0, 3.0))
    assert "naive p = 0.55" in v and "does not show that the slopes vary" in v
    assert "the random-intercept model m2 predicts better" in v
