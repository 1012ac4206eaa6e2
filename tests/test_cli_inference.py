"""``twolevel fit`` with --ddf, --confint, --hlm, --schools: JSON keys, printout, error messages."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import load_golden

from twolevel.workflows.cli import main

SLEEP = "Reaction ~ 1 + Days + (1 + Days | Subject)"
HSB = "mAch ~ 1 + cses + (1 + cses | school)"


def _json(capsys, *argv):
    assert main(["fit", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_kr_json(capsys):
    out = _json(capsys, "sleepstudy", SLEEP, "--ddf", "kenward-roger")
    assert out["kr_df"] == pytest.approx({"(Intercept)": 17.0, "Days": 17.0}, rel=1e-9)
    assert out["df"] == out["kr_df"] and out["se"] == pytest.approx(out["kr_se"])


def test_hsb_all_inference_flags_json(capsys):
    """Issue 5 through the CLI's own REML fit (not lme4's θ̂), all three flags at once: pbkrtest's
    SE and df within 1e-4 relative, lme4's profile intervals within 2e-3, HLM's keys."""
    assert main(["fit", "hsb", HSB, "--ddf", "kenward-roger", "--confint", "profile", "--hlm",
                 "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    # lme4 warns the same; here it is one line on stderr, not a Python warning with a traceback
    assert "twolevel fit: note: bad spline fit for cor_cses.(Intercept)|school: falling back to " \
           "linear interpolation" in captured.err.splitlines()
    assert {"kr_se", "kr_df", "confint", "reliability", "chi2_tau", "plausible_range"} <= set(out)
    g = load_golden("hsb82_lme4.json")["m1_reml"]["profile_ci95"]
    assert list(out["confint"]) == list(g)
    for name, (lo, hi) in g.items():
        assert out["confint"][name] == pytest.approx([lo, hi], abs=2e-3), name
    assert set(out["chi2_tau"]["cses"]) == {"chisq", "df", "p"}
    assert out["chi2_tau"]["cses"]["p"] == pytest.approx(0.0026, abs=5e-5)
    assert out["plausible_range"]["cses"] == pytest.approx([0.56, 3.83], abs=5e-3)
    assert out["kr_se"] == pytest.approx(
        {"(Intercept)": 0.244508689672, "cses": 0.128413946658}, rel=1e-4)
    assert out["kr_df"] == pytest.approx({"(Intercept)": 158.845291, "cses": 148.490414}, rel=1e-4)
    assert out["df"] == out["kr_df"]


def test_hlm_json_and_text(capsys, tmp_path):
    csv = tmp_path / "schools.csv"
    out = _json(capsys, "hsb", HSB, "--hlm", "--schools", str(csv))
    assert out["reliability"] == pytest.approx({"(Intercept)": 0.9076, "cses": 0.2637}, abs=5e-5)
    assert out["chi2_tau"]["cses"]["chisq"] == pytest.approx(213.46, abs=0.005)
    assert out["chi2_tau"]["cses"]["df"] == 159
    assert out["chi2_tau"]["cses"]["p"] == pytest.approx(0.0026, abs=5e-5)
    assert out["plausible_range"]["(Intercept)"] == pytest.approx([6.86, 18.41], abs=5e-3)
    assert out["plausible_range"]["cses"] == pytest.approx([0.56, 3.83], abs=5e-3)
    c0 = out["chi2_tau"]["(Intercept)"]
    assert c0["chisq"] == pytest.approx(1771.01, abs=0.005) and c0["df"] == 159 and c0["p"] < 1e-250
    assert out["hlm_df"] == {"(Intercept)": 159.0, "cses": 159.0}
    tab = pd.read_csv(csv)
    assert len(tab) == 160 and "reliability_cses" in tab.columns
    assert main(["fit", "hsb", HSB, "--hlm", "--ddf", "hlm"]) == 0
    text = capsys.readouterr().out
    assert "t-tests use HLM's J - S - 1 df rule" in text
    assert "1771.01" in text and "u1j" in text


def test_confint_json(capsys):
    g = load_golden("sleepstudy_lme4.json")["m1_reml"]["profile_ci95"]
    out = _json(capsys, "sleepstudy", SLEEP, "--confint", "profile")
    assert list(out["confint"]) == list(g)
    for name, (lo, hi) in g.items():
        assert out["confint"][name] == pytest.approx([lo, hi], abs=2e-3), name
    w = _json(capsys, "sleepstudy", SLEEP, "--confint", "wald", "--level", "0.9")
    assert w["confint"]["sigma"] == [None, None]
    assert w["confint"]["Days"][0] > 7.4376  # narrower than the 95% interval


def test_kr_on_ml_fit_is_a_one_line_error(capsys):
    assert main(["fit", "sleepstudy", SLEEP, "--ml", "--ddf", "kenward-roger"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err == ("twolevel fit: error: Kenward-Roger's method is only available for REML "
                       "model fits; refit with REML=True (or use ddf='Satterthwaite')\n")


def test_bootstrap_nsim_error(capsys, tmp_path):
    csv = tmp_path / "schools.csv"
    assert main(["fit", "sleepstudy", SLEEP, "--confint", "boot", "--nsim", "1",
                 "--schools", str(csv)]) == 2
    cap = capsys.readouterr()
    assert cap.err == ("twolevel fit: error: --nsim must be at least 2 for bootstrap intervals, "
                       "got 1\n")
    assert cap.out == "" and not csv.exists()


def test_bad_ddf_choice(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "sleepstudy", SLEEP, "--ddf", "kr"])
    assert e.value.code == 2
    assert "invalid choice: 'kr'" in capsys.readouterr().err
