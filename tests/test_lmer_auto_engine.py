"""``tl.lmer``'s default engine on a large pandas frame: DuckDB's statistics, the frame kept so
that per-student quantities (residuals, predictions, simulations) are built from it when asked;
the in-memory design below the threshold, with ``engine="memory"`` or without DuckDB. The
threshold is lowered here so that the test data stay small."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

import twolevel as tl
from twolevel.models.design.scale_design import ScaleDesign
from twolevel.models.lmm import lmer as lmer_mod

pytest.importorskip("duckdb")

F = "y ~ x * w + f + (1 + x | school)"


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n, j = 8000, 160
    school = rng.integers(0, j, n)
    w = rng.normal(size=j)
    x = rng.normal(size=n)
    f = rng.choice(np.array(["a", "b", "c"]), n)
    y = (1 + 2 * x + w[school] + 0.3 * x * w[school] + (f == "b") + rng.normal(size=j)[school]
         + rng.normal(size=j)[school] * 0.5 * x + rng.normal(size=n) * 2)
    return pd.DataFrame({"y": y, "x": x, "w": w[school], "f": f, "school": school})


@pytest.fixture
def low_threshold(monkeypatch):
    monkeypatch.setattr(lmer_mod, "AUTO_DUCKDB_ROWS", 5000)


def test_large_frame_goes_through_duckdb_with_the_memory_answer(data, low_threshold):
    auto = tl.lmer(F, data)
    mem = tl.lmer(F, data, engine="memory")
    assert isinstance(auto.design, ScaleDesign) and auto.design.engine == "duckdb"
    assert not isinstance(mem.design, ScaleDesign)
    assert abs(auto.criterion - mem.criterion) / abs(mem.criterion) < 1e-9
    assert np.allclose(auto.fixef(), mem.fixef(), rtol=1e-7)
    # per-student quantities come from the kept frame
    assert np.allclose(auto.residuals(), mem.residuals(), rtol=1e-6, atol=1e-8)
    assert np.allclose(auto.fitted(), mem.fitted(), rtol=1e-7)
    new = data.iloc[:5].assign(school=[0, 1, 2, 10_000, 3])
    assert np.allclose(auto.predict(new, allow_new_levels=True),
                       mem.predict(new, allow_new_levels=True), rtol=1e-7)
    assert auto.simulate(2, rng=1).shape == mem.simulate(2, rng=1).shape


def test_small_frame_explicit_memory_or_no_duckdb_stay_in_memory(data, low_threshold,
                                                                  monkeypatch):
    assert not isinstance(tl.lmer(F, data.iloc[:4000]).design, ScaleDesign)
    assert not isinstance(tl.lmer(F, data, engine="memory").design, ScaleDesign)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "duckdb" else real(name, *a))
    assert not isinstance(tl.lmer(F, data).design, ScaleDesign)


def test_changed_frame_is_refused_when_rows_are_built(data, low_threshold):
    d = data.copy()
    fit = tl.lmer(F, d)
    d.loc[d.index[:10], "y"] = np.nan  # the frame edited in place after the fit
    with pytest.raises(tl.ScaleError, match="no longer matches this fit"):
        fit.residuals()


def test_rows_of_a_fit_from_files_are_refused_with_what_to_do(data, tmp_path):
    path = tmp_path / "d.parquet"
    data.to_parquet(path)
    fit = tl.lmer("y ~ x + (1 | school)", str(path), engine="duckdb")
    with pytest.raises(tl.ScaleError, match="stay in .*refit with engine='memory'"):
        _ = fit.design.rows_design
    with pytest.raises(tl.ScaleError, match="per-student quantity"):
        _ = fit.design.X
