"""glmer's bad-input messages (issue 11): each names the column or value and what to do, and is
raised before anything is fitted or written."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import DataError, FormulaError
from twolevel.models.glmm.glmer import glmer


def _bin(seed=1, J=12, n=10):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    y = rng.binomial(1, 1 / (1 + np.exp(-(0.3 * x + rng.normal(size=J)[g]))))
    return pd.DataFrame({"y": y, "x": x, "g": g, "k": rng.poisson(3, J * n),
                         "expo": rng.uniform(0.5, 2, J * n)})


def test_binary_response_with_other_values():
    d = _bin()
    d.loc[5, "y"] = 2
    with pytest.raises(DataError, match=r"response 'y' has values other than 0/1 in "
                                        r"row 5 \(value 2"):
        glmer("y ~ x + (1 | g)", d)


def test_poisson_negative_and_non_integer_counts():
    d = _bin()
    d.loc[7, "k"] = -1
    with pytest.raises(DataError, match=r"count response 'k' is negative in row 7 \(value -1"):
        glmer("k ~ x + (1 | g)", d, family="poisson")
    d = _bin().astype({"k": float})
    d.loc[3, "k"] = 2.5
    with pytest.raises(DataError, match=r"'k' is not a whole number in row 3 \(value 2.5.*round"):
        glmer("k ~ x + (1 | g)", d, family="poisson")


def test_cbind_successes_exceed_trials_and_negative_counts():
    d = _bin().assign(n=lambda t: t.k + 1, s=lambda t: t.k)
    d.loc[4, "s"] = d.loc[4, "n"] + 2
    with pytest.raises(DataError, match=r"failures 'n - s' .* negative in row 4 \(value -2.*"
                                        r"successes exceed trials"):
        glmer("cbind(s, n - s) ~ x + (1 | g)", d)
    d = _bin().assign(s=lambda t: t.k, f=2)
    d.loc[9, "s"] = -3
    with pytest.raises(DataError, match=r"successes 's' .* negative in row 9 \(value -3"):
        glmer("cbind(s, f) ~ x + (1 | g)", d)


def test_offset_not_finite():
    d = _bin()
    d.loc[11, "expo"] = 0.0
    with pytest.raises(DataError, match=r"offset\(log\(expo\)\)' is not finite in "
                                        r"row 11 \(value -inf"):
        glmer("k ~ x + offset(log(expo)) + (1 | g)", d, family="poisson")


def test_family_and_link_that_do_not_exist():
    d = _bin()
    with pytest.raises(FormulaError, match="link 'logit' does not exist for family 'poisson'"):
        glmer("k ~ x + (1 | g)", d, family="poisson", link="logit")
    with pytest.raises(FormulaError, match="family 'gamma' is not supported"):
        glmer("y ~ x + (1 | g)", d, family="gamma")


def test_nagq_above_one_with_several_random_effects():
    with pytest.raises(FormulaError, match=r"nAGQ = 5 > 1 needs a single scalar random effect.*"
                                           r"2 random effects \(\(Intercept\), x\)"):
        glmer("y ~ x + (1 + x | g)", _bin(), nAGQ=5)
    with pytest.raises(FormulaError, match="nAGQ = 26 is not allowed"):
        glmer("y ~ x + (1 | g)", _bin(), nAGQ=26)


def test_complete_separation_within_every_group_warns_and_reports():
    d = _bin()
    d["y"] = (d["g"] % 2).astype(int)  # every school all 0 or all 1
    msg = (r"complete separation within every group: in each of the 12 groups of 'g' the "
           r"response 'y' is all 0 or all 1")
    with pytest.warns(UserWarning, match=msg):
        fit = glmer("y ~ x + (1 | g)", d)
    assert any("complete separation" in n for n in fit.notes)
    assert "complete separation" in fit.summary()


def test_constant_response_and_factor_responses():
    d = _bin()
    d["y"] = 1
    with pytest.raises(DataError, match="response 'y' is constant"):
        glmer("y ~ x + (1 | g)", d)
    d = _bin()
    three = d.assign(y=np.array(["a", "b", "c"])[np.arange(len(d)) % 3])
    with pytest.raises(DataError, match="has 3 distinct value"):
        glmer("y ~ x + (1 | g)", three)
    # a two-level factor and a logical give the 0/1 fit (first level = failure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = glmer("y ~ x + (1 | g)", d)
        b = glmer("y ~ x + (1 | g)", d.assign(y=np.where(d.y == 1, "yes", "no")))
        c = glmer("y ~ x + (1 | g)", d.assign(y=d.y.astype(bool)))
    assert a.minus2loglik == pytest.approx(b.minus2loglik, abs=1e-10)
    assert a.minus2loglik == pytest.approx(c.minus2loglik, abs=1e-10)


def test_unknown_optimizer_is_named_with_the_choices():
    with pytest.raises(FormulaError, match=r"^optimizer 'bfgs' is not one of lme4, newton, "
                                           r"tight$"):
        glmer("y ~ x + (1 | g)", _bin(), optimizer="bfgs")
