"""Centering helper (issue 2): reproduces HSB's cses and meanses."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest

from twolevel.data import DataError, center, load_hsb


def test_hsb_group_mean_centering_reproduces_cses_and_meanses():
    hsb = load_hsb()
    c = center(hsb, "ses", by="school")
    assert c.centered.name == "cses" and c.means.name == "meanses"
    assert np.max(np.abs(c.centered.to_numpy() - hsb["cses"].to_numpy())) < 1e-12
    assert np.max(np.abs(c.means.to_numpy() - hsb["meanses"].to_numpy())) < 1e-12
    assert c.n_groups == 160 and c.n == 7185 and c.method == "group-mean"
    assert c.group_means.loc[1224] == pytest.approx(-0.434383, abs=1e-6)
    assert c.describe() == (
        "'cses' = ses − mean of ses within school (group-mean centering over 160 groups, "
        "7185 rows; the means are 'meanses')"
    )


def test_grand_mean_centering():
    df = pd.DataFrame({"x": [1.0, 2.0, 6.0], "g": [1, 1, 2]})
    c = center(df, "x")
    np.testing.assert_allclose(c.centered, [-2.0, -1.0, 3.0])
    assert c.method == "grand-mean" and c.by is None and c.n_groups == 1
    assert c.describe() == (
        "'x_gmc' = x − 3 (grand-mean centering: the overall mean of x over 3 rows)"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.column = "y"  # type: ignore[misc]


def test_group_mean_centering_preserves_row_order_and_index():
    df = pd.DataFrame({"x": [1.0, 10.0, 3.0, 20.0], "g": ["b", "a", "b", "a"]}, index=[7, 3, 5, 1])
    c = center(df, "x", by="g", name="xc", means_name="xm")
    assert list(c.centered.index) == [7, 3, 5, 1]
    np.testing.assert_allclose(c.centered, [-1.0, -5.0, 1.0, 5.0])
    np.testing.assert_allclose(c.means, [2.0, 15.0, 2.0, 15.0])
    assert list(c.group_means.index) == ["a", "b"]


def test_centering_errors():
    df = pd.DataFrame({"x": [1.0, np.nan], "s": ["a", "b"], "g": [1, 2]})
    with pytest.raises(DataError, match=re.escape("column 'z' is not in the data; available "
                                                  "columns: x, s, g")):
        center(df, "z")
    with pytest.raises(DataError, match=re.escape("column 's' is not numeric (dtype")):
        center(df, "s")
    msg = "column 'x' has 1 missing or non-finite value(s); remove those rows"
    with pytest.raises(DataError, match=re.escape(msg)):
        center(df, "x", by="g")
