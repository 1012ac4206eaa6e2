"""Scale-out statistics sources (issue 13): the memory, DuckDB and Dask engines give the same fit,
and bad inputs get clear messages."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.models.design import group_crossprods, make_design
from twolevel.models.design.sources import ScaleError, crossprods_from
from twolevel.models.lmm.lmer import lmer

FORMULA = "y ~ x*f + w + (1 + x | g)"


def simulate(n: int, J: int, seed: int = 7) -> pd.DataFrame:
    """y = 1 + 0.5x + 0.3[f=b] − 0.4[f=c] + 0.2x[f=c] + 0.8w + b0_j + b1_j x + e, w a level-2
    predictor, f a 3-level factor, g integer school ids."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, J, n)
    f = rng.choice(np.array(["a", "b", "c"]), n)
    x = rng.normal(size=n)
    w = rng.normal(size=J)[g]
    b0 = rng.normal(0, 1.0, J)[g]
    b1 = rng.normal(0, 0.4, J)[g]
    y = (1 + 0.5 * x + 0.3 * (f == "b") - 0.4 * (f == "c") + 0.2 * x * (f == "c") + 0.8 * w
         + b0 + b1 * x + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "f": f, "g": g, "w": w})


def write_parts(df: pd.DataFrame, folder, k: int) -> str:
    for i, part in enumerate(np.array_split(np.arange(len(df)), k)):
        df.iloc[part].to_parquet(folder / f"part{i:02d}.parquet", index=False)
    return str(folder / "*.parquet")


def assert_same_fit(a, b):
    assert abs(a.criterion - b.criterion) <= 1e-9 * abs(a.criterion)
    np.testing.assert_allclose(b.fixef().to_numpy(), a.fixef().loc[b.fixef().index].to_numpy(),
                               rtol=1e-8, atol=1e-8)
    va, vb = a.VarCorr(), b.VarCorr()
    np.testing.assert_allclose(vb.cov, va.cov, rtol=1e-7, atol=1e-7 * np.max(np.abs(va.cov)))
    assert vb.residual == pytest.approx(va.residual, rel=1e-7)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    df = simulate(20_000, 150, seed=3)
    folder = tmp_path_factory.mktemp("small")
    return df, write_parts(df, folder, 3)


# ------------------------------------------------------------------ statistics and the formula


@pytest.mark.parametrize("formula", [
    FORMULA,
    "y ~ x + I(x**2) + np.log(x + 10) + (1 | g)",
    "y ~ 0 + f + x:f + (1 + x || g)",
    "y ~ w*f + (1 | g)",
])
def test_duckdb_crossprods_match_numpy(small, formula):
    df, _ = small
    d0 = make_design(formula.replace("np.log(x + 10)", "np.log(x + 10)"), df)
    c0 = group_crossprods(d0)
    d1, c1 = crossprods_from(formula, df, engine="duckdb")
    assert d1.x_names == d0.x_names and d1.z_names == d0.z_names
    for name in ("A", "B", "c", "XtX", "Xty"):
        u, v = getattr(c0, name), getattr(c1, name)
        assert np.max(np.abs(u - v)) <= 1e-13 * np.max(np.abs(u)), name
    assert c1.yty == pytest.approx(c0.yty, rel=1e-14)


def test_fsum_runs_are_bitwise_reproducible(small):
    _, files = small
    _, c1 = crossprods_from(FORMULA, files, engine="duckdb")
    _, c2 = crossprods_from(FORMULA, files, engine="duckdb", threads=1)
    for name in ("A", "B", "c", "XtX", "Xty"):
        assert np.array_equal(getattr(c1, name), getattr(c2, name)), name


def test_complete_cases_and_centred_names(small):
    df, _ = small
    df = df.copy()
    df.loc[[3, 10], "x"] = np.nan
    df.loc[[5], "f"] = None
    df.loc[[8], "g"] = np.nan
    ok = df.dropna().reset_index(drop=True)
    from twolevel.data.centering import center
    c = center(ok, "x", by="g")
    ok["cx"], ok["meanx"] = c.centered, c.means
    with pytest.warns(UserWarning, match="4 row"):
        fit_d = lmer("y ~ cx + meanx + f + (1 + cx | g)", df, engine="duckdb")
    assert "1 of them with a NULL 'g'" in fit_d.design.notes[0]
    fit_m = lmer("y ~ cx + meanx + f + (1 + cx | g)", ok)
    assert fit_d.nobs == fit_m.nobs == len(df) - 4
    assert_same_fit(fit_m, fit_d)


def test_level_without_complete_rows_is_dropped_like_lme4(small):
    df, _ = small
    d = df.iloc[:3000].copy()
    d.loc[d.index[:5], "f"] = "0first"  # would be the reference level, but x is missing there
    d.loc[d.index[:5], "x"] = np.nan
    d0 = make_design(FORMULA, d)
    d1, c1 = crossprods_from(FORMULA, d, engine="duckdb")
    assert d1.x_names == d0.x_names and "f0first" not in " ".join(d1.x_names)
    np.testing.assert_allclose(c1.B, group_crossprods(d0).B, rtol=1e-13, atol=1e-10)


@pytest.mark.slow
def test_dask_dataframe_source(small):
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    df, _ = small
    fit_m = lmer(FORMULA, df)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        fit_k = lmer(FORMULA, dd.from_pandas(df, npartitions=3), scheduler=client)
    assert fit_k.design.engine == "dask" and fit_k.design.rows_read == len(df)
    assert_same_fit(fit_m, fit_k)


def test_cli_engine_json_and_errors(small, capsys, tmp_path):
    import json

    from twolevel.workflows.cli import main

    _, files = small
    assert main(["fit", files, FORMULA, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"] == "duckdb" and out["rows_read"] == 20_000
    assert main(["fit", files.replace("*", "nomatch*"), FORMULA]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twolevel fit: error: the pattern") and err.count("\n") <= 1
    assert main(["fit", "lecture", FORMULA, "--engine", "duckdb"]) == 2
    assert "built-in data set" in capsys.readouterr().err
    blups = str(tmp_path / "blups.parquet")
    assert main(["fit", files, FORMULA, "--engine", "dask", "--ranef", blups]) == 0
    capsys.readouterr()
    re = pd.read_parquet(blups)
    assert len(re) == 150 and "condvar_x" in re and "condcov_(Intercept):x" in re


def test_scaled_residual_quantiles_are_exact(small):
    df, files = small
    fit_m = lmer(FORMULA, df)
    fit_d = lmer(FORMULA, files, engine="duckdb")
    q, note = fit_d.scaled_residual_quantiles()
    assert "exact" in note
    np.testing.assert_allclose(q, fit_m.scaled_residual_quantiles()[0], rtol=1e-7, atol=1e-9)


def test_per_student_quantities_are_refused(small):
    _, files = small
    fit = lmer(FORMULA, files, engine="duckdb")
    with pytest.raises(ScaleError, match="'X' is a per-student quantity.*fit.fixef"):
        fit.fitted()
    assert fit.ranef().shape == (150, 2 + 2 + 2 + 1)


# ------------------------------------------------------------------ bad input


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        crossprods_from(FORMULA, str(tmp_path / "nothing*.parquet"), engine="duckdb")


def test_files_with_different_schemas(tmp_path, small):
    df, _ = small
    df.iloc[:100].to_parquet(tmp_path / "a.parquet", index=False)
    df.iloc[100:200].drop(columns="w").to_parquet(tmp_path / "b.parquet", index=False)
    with pytest.raises(DataError, match="schemas differ: '.*b.parquet' has no column 'w'"):
        crossprods_from(FORMULA, str(tmp_path / "*.parquet"), engine="duckdb")


def test_text_in_one_file_numeric_in_another(tmp_path, small):
    df, _ = small
    df.iloc[:100].to_parquet(tmp_path / "a.parquet", index=False)
    b = df.iloc[100:200].copy()
    b["x"] = b["x"].astype(str)
    b.to_parquet(tmp_path / "b.parquet", index=False)
    with pytest.raises(DataError, match="column 'x' is numeric .* but text"):
        crossprods_from(FORMULA, str(tmp_path / "*.parquet"), engine="dask")


def test_null_school_ids_are_dropped_and_counted(tmp_path, small):
    df, _ = small
    d = df.iloc[:2000].copy()
    d["g"] = d["g"].astype("Int64")
    d.loc[d.index[:7], "g"] = pd.NA
    d.to_parquet(tmp_path / "a.parquet", index=False)
    design, _ = crossprods_from(FORMULA, str(tmp_path / "a.parquet"), engine="duckdb")
    assert design.n == 1993 and "7 of them with a NULL 'g'" in design.notes[0]


def test_inexpressible_term(small):
    df, _ = small
    with pytest.raises(FormulaError, match="term 'poly\\(x, 2\\)' cannot be expressed"):
        crossprods_from("y ~ poly(x, 2) + (1 | g)", df, engine="duckdb")
    with pytest.raises(FormulaError, match="cannot express"):
        crossprods_from("y ~ I(x % 2) + (1 | g)", df, engine="duckdb")


def test_memory_limit_too_small(small):
    _, files = small
    with pytest.raises(TwolevelError, match="not a size"):
        crossprods_from(FORMULA, files, engine="duckdb", memory_limit="lots")
    with pytest.raises(TwolevelError, match="out of memory.*raise --memory-limit"):
        crossprods_from(FORMULA, files, engine="duckdb", memory_limit="64KB")


def test_grouped_pass_threads_fit_the_memory_limit():
    from twolevel.models.design.duckdb_source import grouped_threads

    # 10⁶ groups × 17 Kahan states ≈ 0.6 GB per thread: one thread under 1.5 GB, two under 4 GB
    assert grouped_threads(2, "1500MB", 10**6, 17) == 1
    assert grouped_threads(2, "4GB", 10**6, 17) == 2
    assert grouped_threads(4, None, 10**6, 17) == 4
    assert grouped_threads(2, "1MB", 10**7, 17) == 1


def test_infinite_values_are_refused(small):
    df, _ = small
    d = df.copy()
    d.loc[4, "x"] = np.inf
    with pytest.raises(DataError, match="column 'x' has 1 infinite"):
        crossprods_from(FORMULA, d, engine="duckdb")


# ------------------------------------------------------------------ the acceptance fit


@pytest.mark.slow
def test_memory_duckdb_dask_same_fit_1m_rows(tmp_path):
    from distributed import Client, LocalCluster

    df = simulate(1_000_000, 2_000, seed=11)
    files = write_parts(df, tmp_path, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no notes: nothing dropped, full rank, not singular
        fit_m = lmer(FORMULA, df)
        fit_d = lmer(FORMULA, files, engine="duckdb")
    assert fit_d.design.engine == "duckdb" and fit_d.design.rows_read == 1_000_000
    assert_same_fit(fit_m, fit_d)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        fit_k = lmer(FORMULA, files, engine="dask", scheduler=client)
    finally:
        client.close()
        cluster.close()
    assert fit_k.design.engine == "dask"
    assert_same_fit(fit_m, fit_k)


# ------------------------------------------------------------------ Bayesian pieces at scale


def test_bayes_inputs_from_statistics_match_memory(small):
    """Priors, centring reliabilities, per-school residual sums and the school-effect summary
    computed from the statistics equal the in-memory ones (no sampling: fixed draws)."""
    from twolevel.models.bayes.collapsed import draw_school_effects
    from twolevel.models.bayes.fit import school_residual_ss
    from twolevel.models.bayes.priors import default_priors
    from twolevel.models.bayes.pymc_model import reliabilities
    from twolevel.models.bayes.scale import bayes_statistics, school_effect_summary

    df, files = small
    d0, c0 = bayes_statistics(FORMULA, df)
    d1, c1 = bayes_statistics(FORMULA, files)
    assert d1.engine == "duckdb" and d1.group_moments is not None
    p0, p1 = default_priors(d0), default_priors(d1)
    for block in ("beta", "sd", "sigma"):
        a, b = getattr(p0, block).params, getattr(p1, block).params
        for k in a:
            np.testing.assert_allclose(np.asarray(b[k], float), np.asarray(a[k], float),
                                       rtol=1e-10, err_msg=f"{block}.{k}")
    np.testing.assert_allclose(reliabilities(d1, c1), reliabilities(d0, c0), rtol=1e-9)
    rng = np.random.default_rng(0)
    S = 40
    beta = c0.shifted[2][None] + 0.01 * rng.standard_normal((S, d0.p))
    L = np.tile(np.array([[1.0, 0.0], [0.1, 0.4]]), (S, 1, 1))
    sigma = np.full(S, 1.0)
    np.testing.assert_allclose(school_residual_ss(d1, beta), school_residual_ss(d0, beta),
                               rtol=1e-9)
    mean, sd = school_effect_summary(c1.A, c1.B, c1.c, beta, L, sigma)
    draws = np.stack([draw_school_effects(c0.A, c0.B, c0.c, beta, L, sigma,
                                          np.random.default_rng(k)) for k in range(50)])
    np.testing.assert_allclose(mean, draws.mean(axis=(0, 1)), atol=0.05)
    np.testing.assert_allclose(sd, draws.std(axis=(0, 1)), rtol=0.1)


def test_per_student_bayes_refused_at_scale(small):
    from twolevel.models.bayes.fit import fit_bayes

    _, files = small
    with pytest.raises(TwolevelError, match="likelihood='student' needs every row"):
        fit_bayes(FORMULA, files, likelihood="student")


def test_parametric_bootstrap_from_statistics(tmp_path, capsys):
    """--confint boot works without the rows (per-school X_jᵀX_j from the sums) and gives the
    in-memory intervals for the same seed."""
    import json

    from twolevel.data.loaders import load_data
    from twolevel.workflows.cli import main

    path = tmp_path / "sleep.parquet"
    load_data("sleepstudy").to_parquet(path)
    out = {}
    for engine in ("memory", "duckdb"):
        assert main(["fit", str(path), "Reaction ~ Days + (Days | Subject)", "--confint", "boot",
                     "--nsim", "40", "--json", "--engine", engine]) == 0
        out[engine] = json.loads(capsys.readouterr().out)["confint"]
    for name, (lo, hi) in out["memory"].items():
        assert out["duckdb"][name] == pytest.approx([lo, hi], rel=1e-4, abs=1e-6), name
