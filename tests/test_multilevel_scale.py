"""Nested designs with several grouping factors from DuckDB and Dask (issue 22): the
per-innermost-group statistics come from one GROUP BY in the engine and give the in-memory
answer (criterion 1e-9 relative) on a 10⁴-row three-level Parquet set in two files
(``benchmarks/several_factors_scale.py`` runs 10⁶ rows)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.lmm.lmer import lmer

pytest.importorskip("duckdb")


def three_levels(seed: int, schools: int = 50, classes: int = 8, students: int = 25,
                 missing: bool = False) -> pd.DataFrame:
    """10⁴ students in 400 classes in 50 schools; class labels restart in every school; random
    intercepts and x-slopes at both levels; with ``missing`` a few NULL class labels and y."""
    rng = np.random.default_rng(seed)
    s = np.repeat(np.arange(1, schools + 1), classes * students)
    c = np.tile(np.repeat(np.arange(1, classes + 1), students), schools)
    cell = (s - 1) * classes + c - 1
    x = rng.normal(size=s.size)
    w = rng.normal(size=schools)[s - 1]
    u0, u1 = rng.normal(0, 1.0, schools), rng.normal(0, 0.3, schools)
    v0, v1 = rng.normal(0, 0.6, schools * classes), rng.normal(0, 0.2, schools * classes)
    y = (1 + 0.5 * x + 0.3 * w + u0[s - 1] + v0[cell] + (u1[s - 1] + v1[cell]) * x
         + rng.normal(size=s.size))
    d = pd.DataFrame({"school": s, "class": c.astype(float) if missing else c, "x": x, "w": w,
                      "y": y})
    if missing:
        d.loc[[3, 300, 700], "class"] = np.nan
        d.loc[[10, 11], "y"] = np.nan
    return d


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    d = three_levels(22)
    folder = tmp_path_factory.mktemp("three")
    half = len(d) // 2
    d.iloc[:half].to_parquet(folder / "part-0.parquet", index=False)
    d.iloc[half:].to_parquet(folder / "part-1.parquet", index=False)
    return d, str(folder / "*.parquet")


def _same(mem, other, rel: float = 1e-9, est: float = 1e-6) -> None:
    """The criterion to ``rel`` (the acceptance line); the estimates to ``est`` (relative, in SEs
    for β̂ and conditional SDs for the modes)."""
    assert other.criterion == pytest.approx(mem.criterion, rel=rel, abs=0)
    assert other.nobs == mem.nobs and other.ngroups == mem.ngroups
    se = mem.se().to_numpy()
    assert np.all(np.abs(other.fixef().to_numpy() - mem.fixef().to_numpy()) <= est * se)
    np.testing.assert_allclose(other.se(), mem.se(), rtol=est)
    a = mem.ranef_long().merge(other.ranef_long(), on=["factor", "level", "effect"])
    assert len(a) == len(mem.ranef_long())
    assert np.all(np.abs(a["mode_x"] - a["mode_y"]) <= est * a["condsd_x"])
    vc_m, vc_o = mem.VarCorr().to_frame(), other.VarCorr().to_frame()
    assert list(vc_m["grp"]) == list(vc_o["grp"])
    np.testing.assert_allclose(vc_o["vcov"], vc_m["vcov"], rtol=0,
                               atol=est * vc_m["vcov"].abs().max())


@pytest.mark.parametrize("engine", ["duckdb", "dask"])
@pytest.mark.parametrize("formula", ["y ~ x + w + (1 | school/class)",
                                     "y ~ x + w + (1 + x | school/class)",
                                     "y ~ x + (1 | school) + (1 | school:class)"])
def test_engines_give_the_in_memory_answer(parquet, engine, formula):
    if engine == "dask":
        pytest.importorskip("dask")
    d, glob = parquet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular slope fits: the same warning either way
        # the slope model is near-singular, its criterion flat: lme4's stopping rule leaves θ̂
        # uncertain in the 5th digit, so both fits are polished ("tight") to compare the stats
        opt = "tight" if "1 + x" in formula else "lme4"
        mem = lmer(formula, d, optimizer=opt)
        other = lmer(formula, glob, engine=engine, optimizer=opt)
    assert other.engine == "nested" and other.design.engine == engine
    assert other.design.rows_read == len(d)
    _same(mem, other)


def test_missing_values_are_dropped_and_counted_as_in_memory(tmp_path):
    d = three_levels(23, schools=20, classes=4, students=10, missing=True)
    path = tmp_path / "m.parquet"
    d.to_parquet(path, index=False)
    with pytest.warns(UserWarning, match="5 row\\(s\\) with missing or non-finite values"):
        other = lmer("y ~ x + (1 | school/class)", str(path), engine="duckdb")
    with pytest.warns(UserWarning, match="5 row\\(s\\) with missing"):
        mem = lmer("y ~ x + (1 | school/class)", d)
    _same(mem, other)
    assert other.nobs == len(d) - 5


def test_rowless_fit_says_what_it_cannot_do(parquet):
    _, glob = parquet
    fit = lmer("y ~ x + (1 | school/class)", glob, engine="duckdb")
    assert "Scaled residuals: not computed (statistics from duckdb" in fit.summary()
    assert "REML criterion at convergence" in fit.summary()
    with pytest.raises(TwolevelError, match="fitted values need the rows, and this fit's "
                                            "statistics came from duckdb without them"):
        fit.fitted()
    with pytest.raises(TwolevelError, match="predictions on the fitted rows need the rows"):
        fit.predict()
    from twolevel.models.inference.simulate_multi import bootstrap_multi

    with pytest.raises(TwolevelError, match="simulated responses \\(and bootstrap refits\\) "
                                            "need the rows"):
        bootstrap_multi(fit, 5)
    with pytest.raises(FormulaError, match="not nested that way: use engine='memory'"):
        lmer("y ~ x + (1 | school) + (1 | class)", glob, engine="duckdb")
    with pytest.raises(TwolevelError, match="grouping column\\(s\\) 'room' of formula"):
        lmer("y ~ x + (1 | school/room)", glob, engine="duckdb")


def test_four_levels_from_duckdb(tmp_path):
    """a/b/c: the innermost key pastes three columns; labels restart within each parent."""
    rng = np.random.default_rng(3)
    n = 3000
    d = pd.DataFrame({"a": rng.integers(1, 16, n), "b": rng.integers(1, 5, n),
                      "c": rng.integers(1, 4, n), "x": rng.normal(size=n)})
    ua, ub, uc = rng.normal(size=20), rng.normal(0, 0.7, 200), rng.normal(0, 0.5, 2000)
    d["y"] = (1 + 0.5 * d.x + ua[d.a] + ub[d.a * 10 + d.b] + uc[d.a * 100 + d.b * 10 + d.c]
              + rng.normal(size=n))
    d["a"] = d["a"].astype(np.uint64)  # DuckDB UBIGINT: labels "3", not "3.0", as in memory
    d.to_parquet(tmp_path / "four.parquet", index=False)
    mem = lmer("y ~ x + (1 | a/b/c)", d)
    other = lmer("y ~ x + (1 | a/b/c)", str(tmp_path / "four.parquet"), engine="duckdb")
    assert list(other.ngroups) == ["c:(b:a)", "b:a", "a"]
    _same(mem, other)


def test_cli_fit_with_engine_duckdb(parquet, tmp_path):
    """``twolevel fit FILES FORMULA --engine duckdb --json`` with several factors: the in-memory
    fit's numbers and lme4's factor names."""
    import json
    import subprocess
    import sys

    d, glob = parquet
    formula = "y ~ x + (1 | school/class)"
    proc = subprocess.run([sys.executable, "-m", "twolevel.workflows.cli", "fit", glob, formula,
                           "--engine", "duckdb", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    mem = lmer(formula, d)
    assert out["criterion"] == pytest.approx(mem.criterion, rel=1e-9, abs=0)
    assert set(out["random"]) == {"class:school", "school"}
    assert out["random"]["class:school"]["ngroups"] == 400


def test_cli_json_names_the_engine_and_the_rows_read(parquet, capsys):
    import json

    from twolevel.workflows.cli import main

    d, glob = parquet
    assert main(["fit", glob, "y ~ x + (1 | school/class)", "--json", "--engine", "duckdb"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"] == "duckdb" and out["rows_read"] == len(d)
    assert list(out["random"]) == ["class:school", "school"]


def test_predictions_on_new_data_from_a_duckdb_fit(parquet, tmp_path):
    """Plain numeric columns are rebuilt by name (the in-memory predictions to 1e-10); a side the
    engine built in SQL (a text column's dummies) is refused with what to do."""
    d, glob = parquet
    f = "y ~ x + (1 | school/class)"
    duck, mem = lmer(f, glob, engine="duckdb"), lmer(f, d)
    nd = d.iloc[:6].copy()
    nd.loc[nd.index[0], "class"] = 999  # a new class in a known school
    np.testing.assert_allclose(duck.predict(nd, allow_new_levels=True),
                               mem.predict(nd, allow_new_levels=True), rtol=0, atol=1e-10)
    d2 = d.assign(g=np.where(d["x"] > 0, "hi", "lo"))
    path = tmp_path / "g.parquet"
    d2.to_parquet(path, index=False)
    fg = lmer("y ~ x + g + (1 | school/class)", str(path), engine="duckdb")
    with pytest.raises(FormulaError, match="cannot rebuild 'x \\+ g' on new data: duckdb built "
                                           "its columns in the query .*\\(engine='memory'\\)"):
        fg.predict(d2.iloc[:3], allow_new_levels=True)
