"""``twolevel fit/anova --family`` (issue 11): exact JSON keys, --ranef, the printout, and user
errors on one line with exit status 2 (nothing written)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import GOLDENS, load_golden

from twolevel.workflows.cli import main

KEYS = ["formula", "family", "link", "nagq", "nobs", "ngroups", "deviance", "loglik", "aic", "bic",
        "theta", "fixef", "se", "z", "p", "varcorr", "singular", "converged"]
SIM = str(GOLDENS / "glmer_sim_slope.csv")
G = load_golden("glmer_lme4.json")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_family_json_keys_and_values(capsys, tmp_path):
    csv = tmp_path / "re.csv"
    code, out, err = run_cli(capsys, "fit", SIM, "y ~ 1 + x + (1 + x | g)", "--family",
                             "binomial", "--json", "--ranef", str(csv))
    assert code == 0 and err == ""
    d = json.loads(out)
    assert list(d) == KEYS
    g = G["fits"]["sim_slope"]
    assert d["family"] == "binomial" and d["link"] == "logit" and d["nagq"] == 1
    assert d["nobs"] == 1115 and d["ngroups"] == 60
    assert d["deviance"] == pytest.approx(g["m2ll"], abs=1e-6)
    assert d["aic"] == pytest.approx(g["aic"], abs=1e-6)
    assert set(d["varcorr"]) == {"variances", "covariances", "correlations"}
    assert list(d["varcorr"]["covariances"]) == ["(Intercept):x"]
    for k, (name, v) in enumerate(g["fixef"].items()):
        assert d["fixef"][name] == pytest.approx(v, abs=1e-3 * g["se"][k])
        assert d["se"][name] == pytest.approx(g["se"][k], rel=1e-4)
    re = pd.read_csv(csv)
    assert list(re.columns) == ["g", "(Intercept)", "x", "condsd_(Intercept)", "condsd_x"]
    assert re["(Intercept)"].iloc[0] == pytest.approx(g["ranef"]["(Intercept)"][0], abs=1e-5)


def test_fit_family_newton_json_within_glmer_tolerances(capsys):
    """--optimizer newton: the same JSON keys, glmer's deviance to 1e-5 and β within 0.01 SE."""
    code, out, err = run_cli(capsys, "fit", SIM, "y ~ 1 + x + (1 + x | g)", "--family",
                             "binomial", "--optimizer", "newton", "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    assert list(d) == KEYS
    g = G["fits"]["sim_slope"]
    assert d["deviance"] <= g["m2ll"] + 1e-5
    for k, (name, v) in enumerate(g["fixef"].items()):
        assert d["fixef"][name] == pytest.approx(v, abs=1e-2 * g["se"][k])
        assert d["se"][name] == pytest.approx(g["se"][k], rel=1e-3)


def test_fit_family_prints_glmer_summary_with_agq(capsys):
    code, out, _ = run_cli(capsys, "fit", SIM, "y ~ x + (1 | g)", "--family", "binomial",
                           "--nagq", "12")
    assert code == 0
    assert "Adaptive\n  Gauss-Hermite Quadrature, nAGQ = 12) [glmerMod]" in out
    assert " Family: binomial  ( logit )" in out and "z value Pr(>|z|)" in out


def test_anova_family_json(capsys):
    code, out, _ = run_cli(capsys, "anova", SIM, "y ~ x + (1 | g)", "y ~ x + (1 + x | g)",
                           "--family", "binomial", "--json")
    assert code == 0
    d = json.loads(out)
    assert {"chisq", "df", "p", "p_mixture"} <= set(d)
    assert d["chisq"] == pytest.approx(G["anova_sim"]["chisq"], abs=1e-3)
    assert d["df"] == 2 and d["p_mixture"] < d["p"]


@pytest.mark.parametrize("argv, message", [
    (["--family", "poisson", "--link", "logit"],
     "link 'logit' does not exist for family 'poisson'"),
    (["--family", "binomial", "--nagq", "3"], "nAGQ = 3 > 1 needs a single scalar random effect"),
    (["--link", "probit"], "--link and --nagq need --family"),
    (["--family", "binomial", "--ml"], "--ml apply to linear mixed models only"),
    (["--optimizer", "newton"], "--optimizer newton is for --family fits (glmer); a linear "
     "mixed model follows lme4's path (--optimizer lme4) or polishes it (--optimizer tight)"),
])
def test_fit_family_errors_one_line_nothing_written(capsys, tmp_path, argv, message):
    csv = tmp_path / "re.csv"
    code, out, err = run_cli(capsys, "fit", SIM, "y ~ x + (1 + x | g)", *argv, "--json",
                             "--ranef", str(csv))
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
    assert not csv.exists()
