"""Tables for the binary/count lecture workflow (issue 11, item 4): empirical logits and log rates
per school, the median odds ratio, school ranges, the latent ICC, population averages and the
plain-words answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats

from twolevel.models.tables.empirical import (
    empirical_log_rate,
    empirical_logit,
    school_empirical_table,
)
from twolevel.models.tables.glmm_answers import (
    GlmmQuantities,
    glmm_answers,
    latent_icc,
    median_odds_ratio,
    population_average,
    school_range,
    wald_interval,
)

# ----------------------------------------------------------------------------- empirical logits


def test_empirical_logit_formula_and_separated_schools():
    est, se = empirical_logit([0, 3, 10], [10, 10, 10])
    np.testing.assert_allclose(est, [np.log(0.5 / 10.5), np.log(3.5 / 7.5), np.log(10.5 / 0.5)])
    np.testing.assert_allclose(se, np.sqrt([1 / 0.5 + 1 / 10.5, 1 / 3.5 + 1 / 7.5,
                                            1 / 10.5 + 1 / 0.5]))
    assert np.all(np.isfinite(est))
    # symmetric: s ↔ n − s flips the sign
    assert est[0] == pytest.approx(-est[2])


def test_empirical_logit_close_to_ml_logit_for_large_counts():
    est, se = empirical_logit([300], [1000])
    assert est[0] == pytest.approx(np.log(300 / 700), abs=2e-3)
    assert se[0] == pytest.approx(1 / np.sqrt(1000 * 0.3 * 0.7), rel=2e-3)


def test_empirical_log_rate_formula():
    est, se = empirical_log_rate([0, 4], [8, 8])
    np.testing.assert_allclose(est, [np.log(0.5 / 8), np.log(4.5 / 8)])
    np.testing.assert_allclose(se, [1 / np.sqrt(0.5), 1 / np.sqrt(4.5)])


@pytest.mark.parametrize("args, message", [
    (([1, 2], [3]), "counts and trials/exposure differ in shape: (2,) vs (1,)"),
    (([-1], [3]), "counts must be ≥ 0 and trials/exposure > 0 in every school"),
    (([4], [3]), "successes exceed trials in some school"),
])
def test_empirical_logit_bad_input(args, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        empirical_logit(*args)


def test_empirical_correction_must_be_positive():
    with pytest.raises(ValueError, match="correction must be > 0"):
        empirical_log_rate([1], [2], correction=0.0)


def test_school_empirical_table_counts_separation():
    y = [0, 0, 0, 1, 1, 1, 0, 1, 1, 0]
    g = ["a", "a", "a", "b", "b", "b", "c", "c", "c", "c"]
    t = school_empirical_table(y, g, "binomial", group_name="schid")
    assert (t.n_all_zero, t.n_all_one, t.n_separated) == (1, 1, 2)
    tab = t.table.set_index("schid")
    assert list(tab.index) == ["a", "b", "c"]
    assert tab.loc["a", "ml"] == -np.inf and tab.loc["b", "ml"] == np.inf
    assert tab.loc["c", "ml"] == pytest.approx(0.0)
    assert list(tab["separated"]) == [True, True, False]
    assert tab.loc["c", "empirical"] == pytest.approx(np.log(2.5 / 2.5))
    assert tab["y_sum"].dtype == np.int64 and list(tab["n_j"]) == [3, 3, 4]


def test_school_empirical_table_poisson():
    t = school_empirical_table([0, 0, 2, 5], [1, 1, 2, 2], "poisson")
    tab = t.table
    assert (t.n_all_zero, t.n_all_one) == (1, 0)
    assert tab["ml"].iloc[0] == -np.inf
    assert tab["empirical"].iloc[1] == pytest.approx(np.log(7.5 / 2))
    with pytest.raises(ValueError, match="family must be one of binomial, poisson, got 'gamma'"):
        school_empirical_table([0, 1], [1, 2], "gamma")


# ----------------------------------------------------------------------------- quantities


def test_median_odds_ratio_formula_and_definition():
    tau = 0.64
    assert median_odds_ratio(tau) == pytest.approx(np.exp(np.sqrt(2 * tau) * stats.norm.ppf(0.75)))
    assert median_odds_ratio(tau) == pytest.approx(2.1449, abs=1e-4)
    assert median_odds_ratio(0.0) == 1.0
    # by definition: the median of exp(|u_j − u_k|) over pairs of schools
    rng = np.random.default_rng(1)
    u = rng.normal(0, np.sqrt(tau), (2, 400_000))
    assert np.median(np.exp(np.abs(u[0] - u[1]))) == pytest.approx(median_odds_ratio(tau),
                                                                    rel=0.01)
    np.testing.assert_allclose(median_odds_ratio(np.array([0.5, 1.0])),
                               np.exp(np.sqrt(2 * np.array([0.5, 1.0])) * 0.6744897501960817))
    with pytest.raises(ValueError, match="tau00 is a variance and must be ≥ 0"):
        median_odds_ratio(-0.1)


def test_school_range_wald_and_icc():
    lo, hi = school_range(-1.0, 0.64)
    assert (lo, hi) == (pytest.approx(-1 - 1.959964 * 0.8), pytest.approx(-1 + 1.959964 * 0.8))
    lo, hi = wald_interval(2.0, 0.5, level=0.9)
    assert hi - 2.0 == pytest.approx(stats.norm.ppf(0.95) * 0.5)
    assert latent_icc(np.pi**2 / 3) == pytest.approx(0.5)


def test_population_average_equals_the_integral():
    eta, v = -1.0, 0.64
    exact = integrate.quad(lambda u: special.expit(eta + u) * stats.norm.pdf(u, 0, np.sqrt(v)),
                           -12, 12)[0]
    assert population_average(eta, v) == pytest.approx(exact, abs=1e-10)
    assert population_average(eta, 0.0) == pytest.approx(special.expit(eta))
    assert population_average(0.3, 0.5, "poisson") == pytest.approx(np.exp(0.3 + 0.25))
    # broadcasts over draws
    got = population_average(np.array([-1.0, 0.0]), np.array([0.64, 0.64]))
    assert got[1] == pytest.approx(0.5) and got[0] == pytest.approx(exact, abs=1e-10)


# ----------------------------------------------------------------------------- answers

ML = GlmmQuantities(gamma00=-1.0, gamma10=-0.6, se00=0.04, se10=0.05, tau00=0.64, tau11=0.16,
                    tau01=-0.3 * 0.8 * 0.4)


def test_answers_ml_numbers_and_words():
    a = glmm_answers(ML, family="binomial", y_label="being below proficiency", x_label="SES",
                     x_sd=0.63)
    assert a.value("or10") == pytest.approx(np.exp(-0.6))
    assert a.value("or10", "ml_lo") == pytest.approx(np.exp(-0.6 - 1.959964 * 0.05), rel=1e-6)
    assert a.value("mor") == pytest.approx(median_odds_ratio(0.64))
    assert a.value("mean00") == pytest.approx(special.expit(-1.0))
    assert a.value("odds_school_hi") == pytest.approx(np.exp(-1 + 1.959964 * 0.8), rel=1e-6)
    assert a.value("rho01") == pytest.approx(-0.3)
    assert a.value("icc_latent") == pytest.approx(0.64 / (0.64 + np.pi**2 / 3))
    assert len(a.answers) == 6 and np.isnan(a.prob_corr_negative)
    assert a.answers[0].startswith("What is the odds ratio of SES? Within a school, a student one "
                                   "unit of SES higher has 0.549 times the odds of being below "
                                   "proficiency (45% lower;")
    assert "Per within-school SD of SES (0.63): 0.685." in a.answers[0]
    assert "MOR = exp(√(2τ00)·Φ⁻¹(0.75)) = 2.145" in a.answers[3]
    assert ("That is larger than the odds ratio of one unit of SES turned above 1 as the MOR "
            "is (1/0.549 = 1.82), so which school a student attends matters more") in a.answers[3]
    assert "95% of schools have log-odds between -2.57 and 0.57" in a.answers[2]
    assert ("slope tends to be lower (more negative), which with γ10 = -0.600 means a stronger "
            "SES association there") in a.answers[5]


def test_answers_with_draws_and_poisson_words():
    rng = np.random.default_rng(0)
    S = 4000
    draws = {"gamma00": rng.normal(-1, 0.04, S), "gamma10": rng.normal(-0.6, 0.05, S),
             "tau00": rng.gamma(100, 0.0064, S), "tau11": rng.gamma(50, 0.0032, S),
             "tau01": rng.normal(-0.1, 0.02, S)}
    a = glmm_answers(ML, draws, family="binomial")
    t = a.table.set_index("symbol")
    assert t.loc["or10", "post_mean"] == pytest.approx(np.exp(draws["gamma10"]).mean())
    assert t.loc["mor", "post_q97.5"] == pytest.approx(
        np.quantile(median_odds_ratio(draws["tau00"]), 0.975))
    rho = draws["tau01"] / np.sqrt(draws["tau00"] * draws["tau11"])
    assert a.prob_corr_negative == pytest.approx(np.mean(rho < 0))
    assert "Bayes: posterior mean" in a.answers[0]
    p = glmm_answers(ML, family="poisson", y_label="absences", x_label="SES")
    assert "rate ratio of SES" in p.answers[0] and "median rate ratio? MRR" in p.answers[3]
    assert "icc_latent" not in set(p.table["symbol"]) and "odds00" not in set(p.table["symbol"])
    assert "rate 1" not in p.answers[1] and "expected count 0.368" in p.answers[1]
    with pytest.raises(ValueError, match="family must be one of binomial, poisson, got 'x'"):
        glmm_answers(ML, family="x")


def test_school_type_means():
    from twolevel.models.tables.glmm_answers import SCHOOL_TYPES, school_type_means

    m = school_type_means(-1.0, -0.6, 0.64, 0.16, -0.096, 0.5)
    assert list(m) == list(SCHOOL_TYPES)
    assert m["average school"] == pytest.approx(special.expit(-1.0 - 0.3))
    assert m["high-intercept school (97.5%)"] == pytest.approx(
        special.expit(-1.0 + 1.959964 * 0.8 - 0.3), rel=1e-6)
    var = 0.64 + 2 * 0.5 * -0.096 + 0.25 * 0.16
    assert m["new school (average over schools)"] == pytest.approx(
        population_average(-1.3, var))
    # over draws, and the log link
    d = school_type_means(np.array([0.0, 0.1]), np.array([0.2, 0.2]), np.array([0.5, 0.5]),
                          np.array([0.0, 0.0]), np.array([0.0, 0.0]), 1.0, family="poisson")
    np.testing.assert_allclose(d["new school (average over schools)"],
                               np.exp(np.array([0.2, 0.3]) + 0.25))


def test_empirical_shrinkage_table_and_words():
    from twolevel.models.tables.empirical import (
        describe_empirical_shrinkage,
        empirical_shrinkage_table,
    )

    y = [0] * 10 + [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] + [1] * 6 + [0] * 6
    g = ["a"] * 10 + ["b"] * 12 + ["c"] * 12
    emp = school_empirical_table(y, g, group_name="schid")
    modes = pd.Series([-2.0, -1.5, -0.1], index=pd.Index(["a", "b", "c"], name="schid"))
    post = pd.Series([-2.1, -1.4, -0.2], index=modes.index)
    t = empirical_shrinkage_table(emp, modes, post)
    assert list(t.index) == ["a", "b", "c"] and t.index.name == "schid"
    assert t.loc["a", "shift_mode"] == pytest.approx(-2.0 - np.log(0.5 / 10.5))
    assert t.loc["c", "posterior_minus_mode"] == pytest.approx(-0.1)
    words = describe_empirical_shrinkage(t, tau_ml=0.5, tau_post=0.6, event="failing")
    assert "The 1 school(s) where every outcome is the same have no finite ML estimate" in words
    assert "with 10–12 students" in words and "shrunk less" in words
    with pytest.raises(ValueError, match="the conditional modes name schools the empirical "
                                         "table does not have"):
        empirical_shrinkage_table(emp, pd.Series([0.0], index=["z"]))


def test_caterpillar_ratios():
    from twolevel.models.tables.shrinkage import caterpillar_ratios, caterpillar_table

    tab = caterpillar_ratios(caterpillar_table(["a", "b"], [0.5, -0.2], [0.1, 0.2], [0.4, -0.1],
                                               [0.2, -0.5], [0.7, 0.3]), prefix="or")
    np.testing.assert_allclose(tab["or_reml"], np.exp(tab["reml"]))
    sd = np.array([0.2, 0.1])  # sorted by the REML value: b first
    np.testing.assert_allclose(tab["or_reml_lo"], np.exp(tab["reml"] - 1.959963984540054 * sd))
    np.testing.assert_allclose(tab["or_bayes_hi"], np.exp(tab["bayes_hi"]))
