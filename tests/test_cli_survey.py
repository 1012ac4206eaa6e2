"""``twolevel fit … --weights L1 L2 [--conditional-weights] [--weight-scaling] [--pv …] --json``
(issue 23, item 6)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from twolevel.models.lmm.lmer import lmer
from twolevel.workflows.cli import main

PISA = str(Path(__file__).parent / "goldens" / "pisa2012.csv")
F = "pv1math ~ escs + (1|schoolid)"
W = ["--weights", "w_fstuwt", "w_fschwt"]
PV = ["--pv"] + [f"pv{m}math" for m in range(1, 6)]
BASE_KEYS = {"fixef", "se", "varcorr", "loglik", "nobs", "ngroups"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_weighted_json(capsys):
    code, out, _ = run_cli(capsys, "fit", PISA, F, *W, "--conditional-weights",
                           "--weight-scaling", "effective", "--json")
    assert code == 0
    js = json.loads(out)
    assert BASE_KEYS | {"weights", "varcorr_se"} <= set(js)
    assert js["weights"] == {"level1": "w_fstuwt", "level2": "w_fschwt", "conditional": True,
                             "scaling": "effective"}
    # survey-weights.md §1: method B with cWeights=TRUE on PV1 (WeMix):
    # τ₀₀ 1045.79, σ² 5380.19, β 470.20 / 29.66
    assert round(js["varcorr"]["variances"]["(Intercept)"], 2) == 1045.79
    assert round(js["varcorr"]["residual"], 2) == 5380.19
    assert [round(v, 2) for v in js["fixef"].values()] == [470.20, 29.66]
    assert set(js["varcorr_se"]) == {"variances", "covariances", "residual"}
    assert js["nobs"] == 3136 and js["ngroups"] == 157


def test_weighted_json_equals_python(capsys):
    import pandas as pd

    code, out, _ = run_cli(capsys, "fit", PISA, F, *W, "--json")
    js = json.loads(out)
    d = pd.read_csv(PISA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = lmer(F, d, weights=("w_fstuwt", "w_fschwt"), REML=False)
    assert js["loglik"] == pytest.approx(f.loglik, rel=1e-12)
    assert list(js["se"].values()) == pytest.approx(list(f.se()), rel=1e-10)
    assert js["weights"]["conditional"] is False and js["weights"]["scaling"] == "none"


def test_pv_json(capsys):
    code, out, _ = run_cli(capsys, "fit", PISA, F, *W, *PV, "--json")
    assert code == 0
    js = json.loads(out)
    assert BASE_KEYS | {"weights", "varcorr_se", "pv"} <= set(js)
    pv = js["pv"]
    assert pv["m"] == 5
    for key in ("within", "between", "total", "riv", "df_rubin", "df_barnard_rubin"):
        assert set(pv[key]) == {"(Intercept)", "escs"}
    for k in ("(Intercept)", "escs"):
        assert js["se"][k] == pytest.approx(np.sqrt(pv["total"][k]), rel=1e-12)
        assert pv["total"][k] == pytest.approx(pv["within"][k] + 1.2 * pv["between"][k])


def test_pv_unweighted_summary(capsys):
    code, out, _ = run_cli(capsys, "fit", PISA, F, *PV)
    assert code == 0
    assert "5 sets pooled by Rubin's rules (REML)" in out


@pytest.mark.parametrize("argv, message", [
    (["fit", PISA, F, "--weights", "w_fstuwt", "nope"],
     "twolevel fit: error: level-2 weight column 'nope' is not in the data"),
    (["fit", PISA, F, "--weights", "w_fstuwt", "st04q01"],
     "twolevel fit: error: level-2 weight column 'st04q01' is not numeric"),
    (["fit", PISA, F, "--pv", "pv1math", "pv9math"],
     "twolevel fit: error: plausible-value column 'pv9math' is not in the data"),
    (["fit", PISA, F, "--pv", "pv2math", "pv3math"],
     "twolevel fit: error: with --pv the formula's response must be the first PV column"),
    (["fit", PISA, F, *W, "--hlm"],
     "twolevel fit: error: --hlm cannot be combined with --weights/--pv"),
    (["fit", PISA, F, "--weight-scaling", "size"],
     "twolevel fit: error: --conditional-weights and --weight-scaling need --weights"),
])
def test_errors_one_line_exit_2(argv, message, capsys):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_weighted_glmm_json(capsys, tmp_path):
    from twolevel.data.loaders import load_data

    d = load_data("sleepstudy")
    d = d.assign(bin=(d["Reaction"] >= 300).astype(int),
                 W1=np.where(d["Subject"].isin([308, 309, 310]), 2.0, 1.0), W2=1.0)
    path = tmp_path / "ss.csv"
    d.to_csv(path, index=False)
    code, out, _ = run_cli(capsys, "fit", str(path), "bin ~ Days + (1|Subject)", "--weights",
                           "W1", "W2", "--family", "binomial", "--nagq", "13", "--json",
                           "--ranef", str(tmp_path / "re.csv"))
    assert code == 0
    js = json.loads(out)
    assert js["loglik"] == pytest.approx(-93.7516876503, rel=1e-8)  # WeMix, survey-weights.md
    assert BASE_KEYS | {"weights", "varcorr_se"} <= set(js)
    assert (tmp_path / "re.csv").exists()


def test_weighted_duckdb_engine_equals_memory(capsys, tmp_path):
    import pandas as pd

    path = tmp_path / "pisa.parquet"
    pd.read_csv(PISA).to_parquet(path, index=False)
    runs = []
    for engine in ("memory", "duckdb"):
        code, out, _ = run_cli(capsys, "fit", str(path), F, *W, "--engine", engine, "--json")
        assert code == 0
        runs.append(json.loads(out))
    assert runs[1]["loglik"] == pytest.approx(runs[0]["loglik"], rel=1e-9)
    assert list(runs[1]["fixef"].values()) == pytest.approx(list(runs[0]["fixef"].values()),
                                                            rel=1e-8)
