"""``twolevel fit DATA FORMULA --family`` with several nested grouping factors: the JSON object
(``random`` keyed by lme4's factor names, ``ngroups`` per factor), ``--ranef`` as long rows, the
printout, Wald intervals, and the refusals on one line with exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from twolevel.workflows.cli import main


@pytest.fixture(scope="module")
def three_csv(tmp_path_factory):
    rng = np.random.default_rng(8)
    S, C, n = 12, 3, 6
    school = np.repeat(np.arange(1, S + 1), C * n)
    klass = np.tile(np.repeat(np.arange(1, C + 1), n), S)
    x = rng.normal(size=school.size)
    eta = 0.2 + 0.5 * x + rng.normal(0, 0.8, S)[school - 1] + rng.normal(
        0, 0.5, S * C)[(school - 1) * C + klass - 1]
    d = pd.DataFrame({"school": school, "class": klass, "x": x,
                      "y": rng.binomial(1, 1 / (1 + np.exp(-eta)))})
    path = tmp_path_factory.mktemp("three") / "three.csv"
    d.to_csv(path, index=False)
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_family_several_factors_json_and_ranef(capsys, tmp_path, three_csv):
    csv = tmp_path / "re.csv"
    code, out, _ = run_cli(capsys, "fit", three_csv, "y ~ x + (1 | school/class)", "--family",
                           "binomial", "--json", "--ranef", str(csv), "--confint", "wald")
    assert code == 0
    d = json.loads(out)
    assert d["ngroups"] == {"class:school": 36, "school": 12}
    assert set(d["random"]) == {"class:school", "school"}
    assert set(d["random"]["school"]) == {"ngroups", "variances", "covariances", "correlations"}
    assert list(d["confint"]) == ["(Intercept)", "x"]
    re = pd.read_csv(csv)
    assert list(re.columns) == ["factor", "level", "effect", "mode", "condsd"]
    assert len(re) == 48 and set(re["factor"]) == {"class:school", "school"}


def test_fit_family_several_factors_summary(capsys, three_csv):
    code, out, _ = run_cli(capsys, "fit", three_csv, "y ~ x + (1 | school) + (1 | school:class)",
                           "--family", "binomial")
    assert code == 0
    assert "Number of obs: 216, groups:  school:class, 36; school, 12" in out
    assert "(Laplace\n  Approximation) [glmerMod]" in out


def test_fit_family_several_factors_refusals(capsys, three_csv):
    code, _, err = run_cli(capsys, "fit", three_csv, "y ~ x + (1 | school/class)", "--family",
                           "binomial", "--nagq", "3")
    assert code == 2 and "nAGQ > 1 is only available" in err
    code, _, err = run_cli(capsys, "fit", three_csv, "y ~ x + (1 | school/class)", "--family",
                           "binomial", "--confint", "profile")
    assert code == 2 and "use method='Wald'" in err


def test_anova_family_several_factors(capsys, three_csv):
    code, out, _ = run_cli(capsys, "anova", three_csv, "y ~ x + (1 | school)",
                           "y ~ x + (1 | school/class)", "--family", "binomial", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["df"] == 1.0 and d["chisq"] >= 0
    assert [m["npar"] for m in d["models"]] == [3, 4]
