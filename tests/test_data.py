"""The lecture data set, the loaders and their validation messages (issue 2)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pytest

from twolevel.data import (
    DataError,
    load_data,
    load_hsb,
    load_lecture,
    load_sleepstudy,
    read_table,
    require_columns,
    require_outcome,
    simulate_lecture_data,
)
from twolevel.data.lecture import (
    BINARY_SEED,
    BINARY_VALUES,
    LECTURE_CSV,
    LECTURE_SEED,
    lecture_csv_text,
    simulate_binary_outcome,
)


@pytest.fixture(scope="module")
def lecture() -> pd.DataFrame:
    return load_lecture()


# ----------------------------------------------------------------------------- lecture data


def test_lecture_design(lecture):
    assert len(lecture) == 11_091
    sizes = lecture.groupby("schid").size()
    assert sizes.size == 742
    assert sizes.min() == 10 and sizes.max() == 25
    assert sizes.mean() == pytest.approx(14.95, abs=0.005)
    assert list(lecture.columns[:6]) == ["schid", "stuid", "g1rscore", "ses", "meanses", "famsesc"]
    # school ids like the lecture's table
    assert sorted(lecture["schid"].unique())[:5] == [1002, 1003, 1006, 1014, 1015]


def test_lecture_famsesc_is_ses_minus_school_mean(lecture):
    sums = lecture.groupby("schid")["famsesc"].sum()
    assert np.abs(sums).max() < 1e-9
    np.testing.assert_allclose(lecture["famsesc"], lecture["ses"] - lecture["meanses"], atol=1e-11)
    means = lecture.groupby("schid")["ses"].transform("mean")
    np.testing.assert_allclose(lecture["meanses"], means, atol=1e-11)


def test_lecture_regeneration_is_byte_identical():
    shipped = LECTURE_CSV.read_bytes()
    regenerated = lecture_csv_text(LECTURE_SEED).encode("ascii")
    assert hashlib.sha256(regenerated).hexdigest() == hashlib.sha256(shipped).hexdigest()


def test_simulate_equals_shipped_file(lecture):
    pd.testing.assert_frame_equal(simulate_lecture_data(), lecture, check_like=False)


def test_other_seed_gives_other_data_same_design():
    other = simulate_lecture_data(seed=1)
    assert len(other) == 11_091 and other["schid"].nunique() == 742
    assert not np.allclose(other["g1rscore"].to_numpy(), load_lecture()["g1rscore"].to_numpy())


def test_binary_outcome_is_the_documented_model(lecture):
    """g1below is stored in the CSV and equals the documented draw (data/README.md)."""
    assert BINARY_SEED == LECTURE_SEED + 1
    assert BINARY_VALUES == {"gamma00": -1.0, "gamma10": -0.6, "tau00": 0.64, "tau11": 0.16,
                             "corr_v0_v1": -0.3}
    y = lecture["g1below"].to_numpy()
    assert set(np.unique(y)) == {0, 1} and int(y.sum()) == 3253  # README: 3,253 of 11,091
    school = pd.factorize(lecture["schid"], sort=True)[0]
    again = simulate_binary_outcome(school, lecture["famsesc"].to_numpy(), BINARY_SEED)
    np.testing.assert_array_equal(again, y)
    per = lecture.groupby("schid")["g1below"].agg(["sum", "size"])
    assert int((per["sum"] == 0).sum()) == 37 and int((per["sum"] == per["size"]).sum()) == 0


def test_binary_outcome_follows_its_values():
    """Large simulated design: the sample log-odds and the SES effect land on the values."""
    rng = np.random.default_rng(3)
    school = np.repeat(np.arange(4000), 50)
    x = rng.normal(0, 0.6, school.size)
    y = simulate_binary_outcome(school, x, seed=11, values={**BINARY_VALUES, "tau00": 0.0,
                                                               "tau11": 0.0})
    # without school variation: logistic regression of y on x recovers γ00 and γ10
    from scipy.optimize import minimize

    def nll(b):
        eta = b[0] + b[1] * x
        return float(np.sum(np.logaddexp(0, eta) - y * eta))

    fit = minimize(nll, [0.0, 0.0], method="BFGS")
    assert fit.x[0] == pytest.approx(-1.0, abs=0.03)
    assert fit.x[1] == pytest.approx(-0.6, abs=0.03)


def test_lecture_golden_matches_design():
    """The lme4 golden was made on this very file (same N, J) and lands near the lecture."""
    from conftest import load_golden

    g = load_golden("lecture_lme4.json")
    assert g["nobs"] == 11_091 and g["ngroups"] == 742
    se = g["m1_reml"]["se"]
    assert se["(Intercept)"] == pytest.approx(0.3094, abs=0.02)
    assert se["famsesc"] == pytest.approx(0.2523, abs=0.02)


# ----------------------------------------------------------------------------- built-in loaders


def test_builtin_loaders():
    hsb = load_hsb()
    assert hsb.shape == (7185, 8) and hsb["school"].nunique() == 160
    assert "rownames" not in hsb.columns
    sleep = load_sleepstudy()
    assert sleep.shape == (180, 3) and sleep["Subject"].nunique() == 18
    assert load_data("hsb").shape == hsb.shape
    assert load_hsb().attrs["n_dropped"] == 0


def test_read_table_csv_and_parquet(tmp_path):
    df = pd.DataFrame({"g": [1, 1, 2, 2], "y": [1.0, 2.0, 3.0, 4.5], "x": [0.1, 0.2, 0.3, 0.4]})
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    df.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    for name in ("d.csv", "d.parquet", "d.tsv"):
        pd.testing.assert_frame_equal(read_table(tmp_path / name), df)
    assert load_data(str(tmp_path / "d.csv")).shape == (4, 3)


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(
        DataError,
        match=re.escape(f"file '{path}' does not exist; give the path of a CSV or Parquet file"),
    ):
        read_table(path)


def test_unreadable_csv(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"a,b\n\xff\xfe\x00,1\n")
    with pytest.raises(
        DataError,
        match=re.escape(f"cannot read file '{path}' as CSV: 'utf-8' codec can't decode byte 0xff")
        + r".*; check that it is a CSV file \(UTF-8 text with a header row\)$",
    ):
        read_table(path)


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(
        DataError,
        match=re.escape(f"cannot read file '{path}' as Parquet: ")
        + r".*; check that it is a Parquet file$",
    ):
        read_table(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_bytes(b"x")
    with pytest.raises(
        DataError,
        match=re.escape(
            f"file '{path}' has extension '.xlsx'; twolevel reads CSV (.csv, .txt), TSV (.tsv) "
            "and Parquet (.parquet, .pq) files: convert it to one of these"
        ),
    ):
        read_table(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(
        DataError,
        match=re.escape(f"file '{path}' is empty; give a table with a header row and data rows"),
    ):
        read_table(path)


def test_header_only_file(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("g,y,x\n")
    with pytest.raises(
        DataError,
        match=re.escape(
            f"file '{path}' has no data rows (columns: g, y, x); give a table with a header row "
            "and data rows"
        ),
    ):
        read_table(path)


def test_empty_frame():
    with pytest.raises(
        DataError, match=re.escape("the data has no rows; give a table with a header row")
    ):
        require_columns(pd.DataFrame({"y": []}), ["y"])


def test_missing_column():
    df = pd.DataFrame({"g": [1, 2], "y": [1.0, 2.0], "x": [3.0, 4.0]})
    with pytest.raises(
        DataError,
        match=re.escape("column 'famsesc' is not in file 'a.csv'; available columns: g, y, x"),
    ):
        require_columns(df, ["y", "famsesc"], group="g", source="file 'a.csv'")


def test_non_numeric_values_shows_offending_rows():
    df = pd.DataFrame(
        {"g": [1, 1, 2, 2, 2, 2, 1], "y": [1, 2, 3, 4, 5, 6, 7],
         "x": ["1.5", "abc", "2", "n/a?", "x", "3", "yy"]}  # fmt: skip
    )
    with pytest.raises(
        DataError,
        match=re.escape(
            "column 'x' of the data must be numeric but has 4 non-numeric value(s): "
            "data row 2: 'abc', data row 4: 'n/a?', data row 5: 'x' and 1 more; "
            "fix or remove these rows"
        ),
    ):
        require_columns(df, ["y", "x"], group="g")


def test_numeric_text_is_converted():
    df = pd.DataFrame({"g": [1, 1, 2, 2], "y": [1.0, 2, 3, 4], "x": ["1.5", "2", "3", "4e1"]})
    out = require_columns(df, ["y", "x"], group="g").frame
    assert out["x"].tolist() == [1.5, 2.0, 3.0, 40.0]


def test_nan_and_inf_listwise_deletion_is_counted():
    df = pd.DataFrame(
        {"g": [1, 1, 1, 2, 2, 2, None], "y": [1.0, np.nan, 3, 4, 5, 6, 7],
         "x": [1.0, 2, np.inf, 4, 5, 6, 7], "other": [np.nan] * 7}  # fmt: skip
    )
    checked = require_columns(df, ["y", "x"], group="g", source="file 'd.csv'")
    assert checked.n_dropped == 3
    assert len(checked.frame) == 4
    assert checked.notes == (
        "3 of 7 row(s) of file 'd.csv' removed because of missing or non-finite values in "
        "y, x, g (listwise deletion, as lme4's na.omit)",
    )
    assert checked.frame.attrs["twolevel_notes"] == checked.notes
    assert checked.frame.attrs["n_dropped"] == 3


def test_nothing_left_after_deletion():
    df = pd.DataFrame({"g": [1, 2], "y": [np.nan, np.inf]})
    with pytest.raises(
        DataError,
        match=re.escape(
            "every row of the data has a missing or non-finite value in y, g; nothing is left"
        ),
    ):
        require_columns(df, ["y"], group="g")


def test_single_group():
    df = pd.DataFrame({"school": ["A", "A", "A"], "y": [1.0, 2, 3]})
    with pytest.raises(
        DataError,
        match=re.escape(
            "grouping column 'school' of file 's.csv' has only 1 group (school = A); "
            "a two-level model needs at least 2 groups"
        ),
    ):
        require_columns(df, ["y"], group="school", source="file 's.csv'")


# ----------------------------------------------------------------------------- outcome families


def test_require_outcome_accepts_binary_and_counts():
    df = pd.DataFrame({"y": [0.0, 1, 1, 0], "c": [0.0, 3, 1, 0], "z": [0.3, -1, 2, 5]})
    require_outcome(df, "y", "binomial")
    require_outcome(df, "c", "poisson")
    require_outcome(df, "z", "gaussian")


def test_require_outcome_binary_names_column_and_values():
    df = pd.DataFrame({"score": [0.0, 1, 2, 3.5, 2]})
    with pytest.raises(DataError, match=re.escape(
            "column 'score' of file 'd.csv' must be 0 or 1 for family binomial, but 3 row(s) "
            "have other values (2, 3.5); recode it as 0/1 (1 = the event, e.g. below "
            "proficiency), or drop --family for a continuous outcome")):
        require_outcome(df, "score", "binomial", source="file 'd.csv'")


def test_require_outcome_binary_constant():
    df = pd.DataFrame({"y": [0.0, 0, 0]})
    with pytest.raises(DataError, match=re.escape(
            "column 'y' of the data is 0 for every row; a binary outcome needs both 0s and 1s "
            "to be modelled")):
        require_outcome(df, "y", "binomial")


def test_require_outcome_counts():
    df = pd.DataFrame({"n": [0.0, 1, -2, 1.5, 3, 4, 7.25]})
    with pytest.raises(DataError, match=re.escape(
            "column 'n' of the data must be a whole number ≥ 0 (a count) for family poisson, "
            "but 3 row(s) have other values (-2, 1.5, 7.25); give counts, or drop --family for "
            "a continuous outcome")):
        require_outcome(df, "n", "poisson")
    with pytest.raises(DataError, match=re.escape(
            "column 'n' of the data is 0 for every row; a count outcome needs some counts "
            "above 0 to be modelled")):
        require_outcome(pd.DataFrame({"n": [0.0, 0.0]}), "n", "poisson")
    with pytest.raises(DataError, match=re.escape(
            "family 'gamma' is not one of gaussian, binomial, poisson; use one of those")):
        require_outcome(df, "n", "gamma")
