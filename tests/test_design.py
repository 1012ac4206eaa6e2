"""Design stage: formula splitting, lme4 names, θ layout, per-group cross-products, checks."""

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import DataError, FormulaError
from twolevel.models.design import group_crossprods, make_design, parse_formula


def test_parse_formula_splits_bars():
    p = parse_formula("y ~ 1 + x + (1 + x | g)")
    assert p.response == "y" and p.fixed == "1 + x"
    assert len(p.bars) == 1 and p.bars[0].lhs == "1 + x" and p.bars[0].correlated


def test_parse_formula_double_bar_and_leading_term():
    p = parse_formula("y ~ (1 | g) + x + (0 + x || g)")
    assert p.fixed == "x"
    assert [b.correlated for b in p.bars] == [True, False]


def test_sim3re_names_and_theta_layout(sim_3re):
    d = make_design("y ~ x1*w + x2 + (1+x1+x2|g)", sim_3re)
    assert d.x_names == ("(Intercept)", "x1", "w", "x1:w", "x2")
    assert d.z_names == ("(Intercept)", "x1", "x2")
    # lme4: lower triangle column-wise, bounds 0 on the diagonal
    assert d.theta_names == (
        "g.(Intercept)", "g.x1.(Intercept)", "g.x2.(Intercept)", "g.x1", "g.x2.x1", "g.x2",
    )
    np.testing.assert_array_equal(d.theta_lower, [0, -np.inf, -np.inf, 0, -np.inf, 0])
    theta = np.arange(1.0, 7.0)
    T = d.theta_to_T(theta)
    np.testing.assert_array_equal(T, [[1, 0, 0], [2, 4, 0], [3, 5, 6]])
    np.testing.assert_array_equal(d.T_to_theta(T), theta)


def test_double_bar_gives_structural_zeros(sleepstudy):
    d = make_design("Reaction ~ Days + (Days || Subject)", sleepstudy)
    assert d.n_theta == 2
    np.testing.assert_array_equal(d.theta_template, [[0, -1], [-1, 1]])


def test_intercept_only_start_matches_lme4(sleepstudy):
    # lme4 1.1-31: sleepstudy (1|Subject) starts at theta0 = 0.88868 (lme4-algorithms.md §1.5)
    d = make_design("Reaction ~ Days + (1 | Subject)", sleepstudy)
    assert d.theta_start()[0] == pytest.approx(0.88868, abs=5e-6)


def test_crossprods_equal_dense_products(sim_3re):
    d = make_design("y ~ x1*w + x2 + (1+x1+x2|g)", sim_3re)
    cp = group_crossprods(d)
    for j in (0, 17, 39):
        rows = d.group_index == j
        Zj, Xj, yj = d.Z[rows], d.X[rows], d.y[rows]
        np.testing.assert_allclose(cp.A[j], Zj.T @ Zj, rtol=1e-13)
        np.testing.assert_allclose(cp.B[j], Zj.T @ Xj, rtol=1e-13)
        np.testing.assert_allclose(cp.c[j], Zj.T @ yj, rtol=1e-13)
    np.testing.assert_allclose(cp.XtX, d.X.T @ d.X)
    assert cp.n == 395 and cp.p == 5


def test_categorical_predictor_uses_r_names():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({
        "y": rng.normal(size=60), "x": rng.normal(size=60),
        "k": np.tile(["lo", "mid", "hi"], 20), "g": np.repeat(np.arange(6), 10),
    })
    d = make_design("y ~ x * k + (1 | g)", df)
    # R: levels sorted (hi, lo, mid), treatment contrasts against "hi"
    assert d.x_names == ("(Intercept)", "x", "klo", "kmid", "x:klo", "x:kmid")


def test_rank_deficient_column_dropped():
    rng = np.random.default_rng(2)
    df = pd.DataFrame(
        {"y": rng.normal(size=40), "x": rng.normal(size=40), "g": np.repeat(range(8), 5)}
    )
    df["x2"] = 2 * df["x"]
    d = make_design("y ~ x + x2 + (1 | g)", df)
    assert d.x_names == ("(Intercept)", "x") and d.dropped_columns == ("x2",)
    assert any("rank deficient" in n and "x2" in n for n in d.notes)


def test_missing_values_dropped_and_counted():
    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        {"y": rng.normal(size=40), "x": rng.normal(size=40), "g": np.repeat(range(8), 5)}
    )
    df.loc[[3, 7], "x"] = np.nan
    df.loc[11, "y"] = np.inf
    d = make_design("y ~ x + (1 | g)", df)
    assert d.n == 37 and d.n_na_dropped == 3
    assert d.notes[0] == "3 row(s) with missing or non-finite values removed (na.omit)"


def test_error_no_random_term():
    with pytest.raises(FormulaError, match=r"has no random-effects term such as '\(1 \| school\)'"):
        make_design("y ~ x", pd.DataFrame({"y": [1.0], "x": [1.0]}))


def test_error_two_grouping_factors():
    with pytest.raises(FormulaError, match=r"several grouping factors \(g, h\)"):
        make_design("y ~ x + (1 | g) + (1 | h)", pd.DataFrame({"y": [1.0]}))


def test_error_missing_column_lists_available():
    df = pd.DataFrame({"y": [1.0, 2.0], "x": [1.0, 2.0], "g": [1, 2]})
    with pytest.raises(DataError, match=r"column\(s\) 'famsesc' of formula .* not in the data; "
                       r"available columns: y, x, g"):
        make_design("y ~ famsesc + (1 | g)", df)


def test_error_single_group():
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0], "g": [1, 1, 1]})
    with pytest.raises(DataError, match=r"grouping column 'g' has only 1 group \(1\)"):
        make_design("y ~ 1 + (1 | g)", df)


def test_error_too_many_random_effects():
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "x": [0.0, 1.0, 0.0, 1.0], "g": [1, 1, 2, 2]})
    with pytest.raises(DataError,
                       match=r"number of observations \(4\) <= number of random effects \(4\)"):
        make_design("y ~ x + (1 + x | g)", df)


def test_error_bad_formula():
    with pytest.raises(FormulaError, match="exactly one '~'"):
        parse_formula("y + x")
