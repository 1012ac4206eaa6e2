"""The ``fit`` and ``anova`` subcommands (issue 3): exact JSON keys, printed output, --ranef, and
user errors on one line with exit status 2."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import GOLDENS, load_golden

from twolevel.workflows.cli import main

FIT_KEYS = ["formula", "reml", "nobs", "ngroups", "criterion", "loglik", "aic", "bic", "theta",
            "sigma", "fixef", "se", "df", "t", "p", "varcorr", "singular", "converged",
            "icc", "icc_unadjusted", "r2_marginal", "r2_conditional", "engine", "rows_read"]
SS = "Reaction ~ Days + (Days | Subject)"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_json_keys_and_values(capsys):
    code, out, err = run_cli(capsys, "fit", "sleepstudy", SS, "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    assert list(d) == FIT_KEYS
    g = load_golden("sleepstudy_lme4.json")["m1_reml"]
    assert d["reml"] is True and d["nobs"] == 180 and d["ngroups"] == 18
    assert d["criterion"] == pytest.approx(g["reml_criterion"], abs=1e-6)
    assert d["loglik"] == pytest.approx(g["loglik_restricted"], abs=1e-6)
    assert list(d["fixef"]) == ["(Intercept)", "Days"]
    for k, gk in [("fixef", "fixef"), ("se", "se"), ("df", "satterthwaite_df"), ("t", "t"),
                  ("p", "p")]:
        for name, v in g[gk].items():
            assert d[k][name] == pytest.approx(v, rel=1e-4), (k, name)
    vc = d["varcorr"]
    assert set(vc) == {"variances", "covariances", "correlations", "residual"}
    assert vc["variances"]["(Intercept)"] == pytest.approx(612.100158024769, rel=2e-3)
    assert vc["covariances"]["(Intercept):Days"] == pytest.approx(9.60440895115776, rel=2e-3)
    assert vc["correlations"]["(Intercept):Days"] == pytest.approx(0.06555124, rel=2e-3)
    assert vc["residual"] == pytest.approx(654.940008259961, rel=2e-3)
    assert d["singular"] is False and d["converged"] is True and len(d["theta"]) == 3


def test_fit_ml_json(capsys):
    code, out, _ = run_cli(capsys, "fit", "sleepstudy", SS, "--ml", "--json")
    d = json.loads(out)
    assert code == 0 and d["reml"] is False
    assert d["criterion"] == pytest.approx(1751.93934448899, abs=1e-6)  # deviance (lme4 golden)


def test_fit_prints_summary_and_writes_ranef(tmp_path, capsys):
    csv = tmp_path / "out" / "re.csv"
    code, out, err = run_cli(capsys, "fit", "sleepstudy", SS, "--ranef", str(csv))
    assert code == 0 and err == ""
    assert out.startswith("Linear mixed model fit by REML. t-tests use Satterthwaite's method [")
    assert "   Data: sleepstudy" in out and "REML criterion at convergence: 1743.6" in out
    re = pd.read_csv(csv)
    assert list(re.columns) == ["Subject", "(Intercept)", "Days", "condsd_(Intercept)",
                                "condsd_Days"]
    assert len(re) == 18 and re.loc[0, "Subject"] == 308
    assert re.loc[0, "Days"] == pytest.approx(9.1989757655659, rel=1e-3)
    assert re.loc[0, "condsd_Days"] == pytest.approx(5.31228291226458**0.5, rel=1e-3)


def test_fit_csv_file(tmp_path, capsys, sim_3re):
    path = tmp_path / "sim.csv"
    sim_3re.to_csv(path, index=False)
    code, out, _ = run_cli(capsys, "fit", str(path), "y ~ x1*w + x2 + (1+x1+x2|g)", "--json")
    assert code == 0
    assert json.loads(out)["criterion"] == pytest.approx(1323.42585736, abs=1e-6)
    code, out, _ = run_cli(capsys, "fit", str(path), "y ~ x1 + (1 | g)")
    assert "   Data: sim" in out


def test_anova_json_keys(capsys):
    code, out, err = run_cli(capsys, "anova", "sleepstudy", "Reaction ~ Days + (1 | Subject)", SS,
                             "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    assert list(d) == ["models", "chisq", "df", "p", "p_mixture", "mixture"]
    assert [list(m) for m in d["models"]] == [["formula", "npar", "aic", "bic", "loglik",
                                               "deviance"]] * 2
    g = load_golden("sleepstudy_lme4.json")["anova_m2_m1"]
    assert d["chisq"] == pytest.approx(g["Chisq"], abs=1e-3) and d["df"] == 2
    assert d["p_mixture"] == pytest.approx(g["p_mixture_half_chi2_1_2"], rel=1e-3)
    assert d["mixture"] == "0.5*chi2(1) + 0.5*chi2(2)"


def test_anova_prints_table(capsys):
    code, out, _ = run_cli(capsys, "anova", "sleepstudy", "Reaction ~ Days + (1 | Subject)", SS)
    assert code == 0
    assert out.splitlines()[0] == "refitting model(s) with ML (instead of REML)"
    assert "big      6 1763.9 1783.1 -875.97   1751.9 42.139  2  7.072e-10 ***" in out


@pytest.mark.parametrize("argv, message", [
    (["fit", "sleepstudy", "Reaction ~ Days"],
     "twolevel fit: error: formula 'Reaction ~ Days' has no random-effects term"),
    (["fit", "sleepstudy", "Reaction ~ Days + (1 | school)"],
     "twolevel fit: error: grouping column 'school' is not in the data"),
    (["anova", "sleepstudy", "Reaction ~ Days + (1 | Subject)", "Reaction ~ 1 + (Days | Subject)"],
     "twolevel anova: error: model 'small' is not nested in 'big'"),
])
def test_errors_one_line_exit_2(argv, message, capsys):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_ranef_unwritable_path_is_user_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "fit", "sleepstudy", SS, "--ranef", str(blocker / "re.csv"))
    assert code == 2 and "cannot write" in err


def test_goldens_dir_exists():
    assert (GOLDENS / "summaries_lme4.txt").exists()
