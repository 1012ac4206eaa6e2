"""A data file whose header names a column twice is refused, naming the column (issue 21): CSV
and Parquet, on every engine (memory through ``read_table``/``load_data``, DuckDB, Dask). Without
the check pandas renames the second column ``famsesc.1`` and DuckDB ``famsesc_1``, and the model
is fitted on one of the two without a word."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import twolevel as tl
from twolevel.data.errors import DataError
from twolevel.data.loaders import header_names, require_unique_header

FORMULA = "g1rscore ~ 1 + famsesc + (1 | schid)"


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(21)
    g = np.repeat(np.arange(1, 13), 8)
    x = rng.normal(size=g.size)
    return pd.DataFrame({"g1rscore": 50 + 3 * x + rng.normal(size=g.size), "famsesc": x,
                         "famsesc_other": rng.normal(size=g.size), "schid": g})


def _csv(tmp_path):
    f = tmp_path / "dup.csv"
    body = _frame().to_csv(index=False).replace("famsesc_other", "famsesc")
    f.write_text(body)
    return f


def _parquet(tmp_path):
    d = _frame()
    table = pa.Table.from_arrays([pa.array(d[c]) for c in d.columns],
                                 names=["g1rscore", "famsesc", "famsesc", "schid"])
    f = tmp_path / "dup.parquet"
    pq.write_table(table, f)
    return f


MESSAGE = r"names column 'famsesc' twice"


@pytest.mark.parametrize("make", [_csv, _parquet], ids=["csv", "parquet"])
def test_header_is_read_as_written(tmp_path, make):
    assert header_names(make(tmp_path)) == ["g1rscore", "famsesc", "famsesc", "schid"]


@pytest.mark.parametrize("make", [_csv, _parquet], ids=["csv", "parquet"])
def test_memory_engine_refuses(tmp_path, make):
    f = make(tmp_path)
    with pytest.raises(DataError, match=MESSAGE):
        tl.read_table(f)
    with pytest.raises(DataError, match=MESSAGE):
        tl.load_data(str(f))


@pytest.mark.parametrize("engine", ["duckdb", "dask"])
@pytest.mark.parametrize("make", [_csv, _parquet], ids=["csv", "parquet"])
def test_scale_engines_refuse(tmp_path, make, engine):
    f = make(tmp_path)
    with pytest.raises(DataError, match=MESSAGE):
        tl.lmer(FORMULA, str(f), engine=engine)


def test_three_times_and_clean_file(tmp_path):
    f = tmp_path / "three.csv"
    f.write_text("y,x,x,x,g\n1,2,3,4,5\n")
    with pytest.raises(DataError, match=r"names column 'x' 3 times in its header"):
        require_unique_header(f)
    ok = tmp_path / "ok.csv"
    _frame().to_csv(ok, index=False)
    require_unique_header(ok)  # no error
    fit = tl.lmer(FORMULA, str(ok), engine="duckdb")
    assert fit.nobs == 96
