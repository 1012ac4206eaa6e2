"""Per-group OLS (issue 2): R's lm on each school, flagged non-estimable groups."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from twolevel.data import FormulaError, load_hsb, load_lecture
from twolevel.models.tables.ols import group_ols


def test_hsb_school_1224_matches_r_lm():
    # R 4.2.2: summary(lm(mAch ~ cses, data = subset(mlmRev::Hsb82, school == 1224)))
    res = group_ols("mAch ~ cses", load_hsb(), "school")
    row = res.table.set_index("school").loc[1224]
    assert row["n_j"] == 47 and row["df_resid"] == 45
    assert row["B0_hat"] == pytest.approx(9.71544680851, abs=1e-9)
    assert row["SE_B0"] == pytest.approx(1.09544784980, abs=1e-9)
    assert row["B1_hat"] == pytest.approx(2.50858170331, abs=1e-9)
    assert row["SE_B1"] == pytest.approx(1.76521629712, abs=1e-9)
    assert res.coef_names == ("(Intercept)", "cses")
    assert res.n_groups == 160 and res.n == 7185 and res.table["estimable"].all()


def test_vectorised_path_equals_per_group_lstsq():
    df = load_lecture()
    res = group_ols("g1rscore ~ famsesc + ses", df.assign(ses=df["ses"] ** 2), "schid")
    t = res.table.set_index("schid")
    for sid in [1002, 1039, int(t.index[-1])]:
        sub = df[df["schid"] == sid]
        X = np.column_stack([np.ones(len(sub)), sub["famsesc"], sub["ses"] ** 2])
        beta, rss, *_ = np.linalg.lstsq(X, sub["g1rscore"].to_numpy(), rcond=None)
        se = np.sqrt(rss[0] / (len(sub) - 3) * np.diag(np.linalg.inv(X.T @ X)))
        np.testing.assert_allclose(t.loc[sid, ["B0_hat", "B1_hat", "B2_hat"]], beta, rtol=1e-9)
        np.testing.assert_allclose(t.loc[sid, ["SE_B0", "SE_B1", "SE_B2"]], se, rtol=1e-9)


def test_non_estimable_groups_are_flagged_not_dropped():
    d = pd.DataFrame({
        "g": [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 5, 5],
        "x": [1, 2, 3, 5, 5, 5, 1, 2, 4, 7, 1, 2],
        "y": [1, 3, 2, 4, 6, 1, 1, 5, 3, 2, 1, 2.0],
    })
    res = group_ols("y ~ x", d, "g")
    t = res.table.set_index("g")
    assert list(t.index) == [1, 2, 3, 4, 5]
    assert t["estimable"].tolist() == [True, False, True, False, False]
    assert t.loc[2, "note"] == (
        "no variation in x within the group (aliased with the other columns): not estimable"
    )
    assert t.loc[2, "B0_hat"] == pytest.approx(11 / 3) and np.isnan(t.loc[2, "B1_hat"])
    assert t.loc[4, "note"] == (
        "too few rows (n_j = 1) for 2 coefficients: x not estimable, no residual df for SEs"
    )
    assert t.loc[5, "note"] == (
        "no residual degrees of freedom (n_j = 2 = number of coefficients): exact fit, "
        "SEs not estimable"
    )
    assert t.loc[5, "B1_hat"] == pytest.approx(1.0) and np.isnan(t.loc[5, "SE_B1"])
    assert res.notes[-1] == (
        "3 of 5 group(s) have a coefficient or SE that is not estimable; they are kept with NaN "
        "and the reason in 'note'"
    )
    assert "3 group(s) flagged" in res.summary()


def test_to_frame_r_names_and_summary():
    res = group_ols("mAch ~ cses", load_hsb(), "school")
    cols = res.to_frame(r_names=True).columns
    assert {"(Intercept)", "cses", "SE (Intercept)", "SE cses"} <= set(cols)
    text = res.summary(rows=2)
    assert "B0_hat = (Intercept), B1_hat = cses" in text
    assert "   1224    9.72    2.51" in text


def test_missing_values_are_counted():
    d = pd.DataFrame({"g": [1, 1, 1, 2, 2, 2], "x": [1, 2, np.nan, 1, 2, 3.0],
                      "y": [1, 2, 3, 1, 3, 2.0]})
    res = group_ols("y ~ x", d, "g")
    assert res.n_na_dropped == 1 and res.n == 5
    assert "1 row(s) with missing or non-finite values removed (na.omit)" in res.notes


def test_random_effects_formula_is_refused():
    with pytest.raises(FormulaError, match=re.escape(
        "formula 'y ~ x + (1 | g)' has a random-effects term; per-group OLS takes a level-1 "
        "formula such as 'y ~ x' and the grouping column separately"
    )):
        group_ols("y ~ x + (1 | g)", pd.DataFrame({"y": [1.0], "x": [1.0], "g": [1]}), "g")
