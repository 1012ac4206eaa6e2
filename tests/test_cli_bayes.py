"""``twolevel bayes``: the JSON object's keys, the saved posterior, and user errors on one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from twolevel.workflows.cli import main

KEYS = ["divergences", "max_rhat", "min_ess_bulk", "min_ess_tail", "wall_seconds", "draws",
        "chains", "posterior", "engine", "rows_read"]


def _data(tmp_path, J=25, seed=3):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), rng.integers(4, 10, J))
    x = rng.normal(size=g.size)
    b = rng.normal(size=(J, 2)) * [2.0, 0.7]
    y = 5 + 1.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(size=g.size)
    path = tmp_path / "d.csv"
    pd.DataFrame({"school": g, "x": x, "w": rng.normal(size=g.size), "y": y}).to_csv(
        path, index=False
    )
    return path


def test_bayes_json_and_saved_posterior(tmp_path, capsys):
    import arviz as az

    path = _data(tmp_path)
    out = tmp_path / "fit"
    code = main(["bayes", str(path), "y ~ 1 + x + (1 + x | school)", "--chains", "2", "--draws",
                 "200", "--tune", "200", "--seed", "5", "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    d = json.loads(captured.out)  # one JSON object on stdout (the gate's warnings go to stderr)
    assert list(d) == KEYS
    assert d["draws"] == 200 and d["chains"] == 2 and d["divergences"] == 0
    assert set(d["posterior"]) == {"fixef:(Intercept)", "fixef:x", "sd:(Intercept)", "sd:x",
                                   "corr:(Intercept):x", "sigma"}
    for v in d["posterior"].values():
        assert list(v) == ["mean", "sd", "q2.5", "q97.5"] and v["q2.5"] < v["q97.5"]
    dt = az.from_netcdf(out / "posterior.nc")
    assert dt["posterior"]["b_school"].shape == (2, 200, 25, 2)
    assert float(dt["posterior"]["beta"].sel(fixed="x").mean()) == pytest.approx(
        d["posterior"]["fixef:x"]["mean"], rel=1e-12)
    assert "Gate:" in (out / "summary.txt").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("argv, message", [
    (["--draws", "0"], "twolevel bayes: error: --draws must be at least 1, got 0"),
    (["--target-accept", "1.2"], "twolevel bayes: error: --target-accept must be in [0.5, 1), "
                                 "got 1.2"),
])
def test_bad_settings(tmp_path, capsys, argv, message):
    path = _data(tmp_path)
    code = main(["bayes", str(path), "y ~ 1 + x + (1 + x | school)", *argv,
                 "--out", str(tmp_path / "fit")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == message
    assert not (tmp_path / "fit").exists()


def test_formula_without_random_term(tmp_path, capsys):
    path = _data(tmp_path)
    code = main(["bayes", str(path), "y ~ 1 + x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("twolevel bayes: error: formula 'y ~ 1 + x' has no "
                                        "random-effects term")
    assert len(err.strip().splitlines()) == 1


def test_formula_the_builders_cannot_express(tmp_path, capsys):
    path = _data(tmp_path)
    code = main(["bayes", str(path), "y ~ 1 + x + w + (1 + x | school) + (0 + w | school)"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(
        "twolevel bayes: error: formula 'y ~ 1 + x + w + (1 + x | school) + (0 + w | school)' "
        "splits the random effects into blocks ((Intercept) + x | school) + (w | school)")
    assert len(err.strip().splitlines()) == 1
