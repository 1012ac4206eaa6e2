"""School-level statistics of the predictive checks (workflows/school_stats.py) against pandas and
the per-school OLS of models/tables/ols.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twolevel.workflows.school_stats import predictive_pvalues, school_statistics


def _data(seed=0):
    rng = np.random.default_rng(seed)
    g = rng.permutation(np.repeat(np.arange(6), [1, 2, 5, 7, 3, 4]))
    x = rng.normal(size=g.size)
    x[g == 4] = 1.5  # x constant in school 4: no slope
    y = 50 + 3 * x + rng.normal(size=g.size)
    return g, x, y


def test_matches_pandas_groupby():
    g, x, y = _data()
    s = school_statistics(y, g, x)
    df = pd.DataFrame({"g": g, "x": x, "y": y})
    np.testing.assert_allclose(s["mean"], df.groupby("g")["y"].mean(), rtol=1e-13)
    np.testing.assert_allclose(s["sd"], df.groupby("g")["y"].std(), rtol=1e-12)
    assert np.isnan(s["sd"][0])  # one student
    for j, d in df.groupby("g"):
        if j in (0, 4):
            assert np.isnan(s["slope"][j])
        else:
            assert s["slope"][j] == pytest.approx(np.polyfit(d.x, d.y, 1)[0], rel=1e-10)


def test_replicates_row_by_row():
    g, x, y = _data(1)
    Y = np.vstack([y, y + 1.0, 2 * y])
    s = school_statistics(Y, g, x)
    for r in range(3):
        one = school_statistics(Y[r], g, x)
        for k in one:
            np.testing.assert_allclose(s[k][r], one[k], rtol=1e-12)
    assert "slope" not in school_statistics(Y, g)


def test_lecture_slopes_equal_group_ols():
    from twolevel.data.loaders import load_lecture
    from twolevel.models.tables.ols import group_ols

    df = load_lecture()
    codes, levels = pd.factorize(df["schid"], sort=True)
    s = school_statistics(df["g1rscore"].to_numpy(), codes, df["famsesc"].to_numpy())
    ols = group_ols("g1rscore ~ famsesc", df, "schid").to_frame().set_index("schid")
    np.testing.assert_allclose(s["slope"], ols.loc[levels, "B1_hat"], rtol=1e-9)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="y has 3 columns but group_index has 2"):
        school_statistics(np.ones(3), np.array([0, 1]))
    with pytest.raises(ValueError, match="group code 1 has no student"):
        school_statistics(np.ones(2), np.array([0, 2]))


def test_predictive_pvalues():
    obs = {"mean": np.array([0.0, 1.0, 2.0])}
    rep = {"mean": np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 4.0], [0.0, 1.0, 2.0]])}
    (row,) = predictive_pvalues(obs, rep)
    assert row["sd_across_schools_data"] == 1.0
    assert row["p_replicated_ge_data"] == pytest.approx(2 / 3)
