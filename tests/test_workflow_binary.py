"""The lecture workflow for a binary or count outcome (issue 11, item 4), run as a user runs it.

The end-to-end run is ``twolevel run --family binomial --quick`` on the first 250 schools of the
lecture data's embedded binary outcome ``g1below`` (3,743 students: below the 5,000 rows from
which the GLMM sampler compiles a GIL-free callback, ~25 s in all; the whole data set takes ~70 s
with --quick). A small simulated count data set runs ``--family poisson``. Recovery of the
generating values is checked on the whole data set with glmer (seconds).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twolevel.data.lecture import BINARY_VALUES
from twolevel.data.loaders import load_lecture
from twolevel.workflows.cli import main

ROOT = Path(__file__).resolve().parents[1]
N_SCHOOLS = 250
SECTIONS = [
    "## Answers to the lecture's questions",
    "## 1. Data and per-school empirical log-odds",
    "## 2. Maximum-likelihood fits (glmer: Laplace and adaptive Gauss–Hermite)",
    "## 3. Bayesian fits (PyMC NUTS)",
    "## 4. Model comparison: random slope or not?",
    "## 5. Caterpillar plots of the school effects (log-odds, odds ratios)",
    "## 6. Shrinkage: empirical log-odds → conditional mode → posterior mean",
    "## 7. Level-2 residuals (conditional modes)",
    "## 8. The lecture's questions, Laplace and Bayes side by side",
    "## 9. Probability by school type, median odds ratio and effect sizes",
    "## 10. Reproducibility: commands, seeds, software, timings, files",
]
FIGURES = ["caterpillar_u0", "caterpillar_u1", "caterpillar_beta0", "caterpillar_beta1",
           "shrinkage", "level2_residuals", "pareto_k", "predictions"]
TABLES = ["data_description", "per_school_empirical", "fixef_m1", "varcorr_m1",
          "laplace_vs_agq_m2", "lrt", "bayes_diagnostics", "posterior_m1", "bayes_vs_laplace",
          "loo_compare_students", "loo_compare_schools", "pareto_k", "caterpillar_u0",
          "caterpillar_u0_extremes", "shrinkage_per_school", "lecture_answers", "predictions",
          "effect_sizes", "timings", "seeds", "software", "bayes_timings"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "twolevel.workflows.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)


def _subset() -> pd.DataFrame:
    d = load_lecture()
    keep = sorted(d["schid"].unique())[:N_SCHOOLS]
    return d[d["schid"].isin(keep)].reset_index(drop=True)


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("binary")
    data = folder / "lecture_250.csv"
    _subset().to_csv(data, index=False)
    out = folder / "report"
    proc = _cli("run", "--data", str(data), "--y", "g1below", "--x", "ses", "--group", "schid",
                "--family", "binomial", "--quick", "--seed", "7", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, data


def test_binary_report_is_complete(binary_run):
    out, stdout, _ = binary_run
    for k in range(1, 11):
        assert f"[{k}/10] " in stdout
    sub = _subset()
    n0 = int((sub.groupby("schid")["g1below"].sum() == 0).sum())
    assert f"N = {len(sub):,} students, J = {N_SCHOOLS} groups; {n0} schools with all outcomes " \
           "equal" in stdout
    md = (out / "report.md").read_text()
    pos = [md.index(s) for s in SECTIONS]
    assert pos == sorted(pos)
    html = (out / "index.html").read_text()
    for f in FIGURES:
        png = out / "figures" / f"{f}.png"
        assert png.stat().st_size > 10_000, f
        assert f'src="figures/{f}.png"' in html
    for t in TABLES:
        assert (out / "tables" / f"{t}.csv").exists(), t
    for m in ("m1", "m2"):
        assert (out / f"posterior_{m}.nc").stat().st_size > 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["spec"]["family"] == "binomial" and settings["spec"]["nagq"] == 12
    assert settings["settings"]["draws"] == 150 and settings["settings"]["chains"] == 2
    assert f"every g1below is 0 in {n0} of the {N_SCHOOLS} schools" in md
    assert "(complete separation)" in md
    assert "glmer(g1below ~ 1 + cses + (1 + cses | schid), data = d, family = " \
           "binomial(link = 'logit'))" in md
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_empirical_logits_and_separation_counts(binary_run):
    out, _, _ = binary_run
    emp = pd.read_csv(out / "tables" / "per_school_empirical.csv")
    sub = _subset()
    per = sub.groupby("schid")["g1below"].agg(["sum", "size"])
    assert len(emp) == N_SCHOOLS and emp["n_j"].sum() == len(sub)
    s, n = per["sum"].to_numpy(), per["size"].to_numpy()
    np.testing.assert_allclose(emp["empirical"], np.log((s + 0.5) / (n - s + 0.5)))
    assert emp["separated"].sum() == int(((s == 0) | (s == n)).sum())
    assert np.isneginf(emp.loc[emp["y_sum"] == 0, "ml"]).all()


def test_binary_numbers_are_those_of_the_fits(binary_run):
    """The report's Laplace numbers are glmer's on the same rows; the MOR is its formula of τ00;
    odds ratios are exp of the coefficients; the AGQ fit is the nAGQ = 12 one."""
    from scipy import stats

    from twolevel.models.glmm.glmer import glmer

    out, _, data = binary_run
    d = pd.read_csv(data)
    d["cses"] = d["ses"] - d.groupby("schid")["ses"].transform("mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m1 = glmer("g1below ~ 1 + cses + (1 + cses | schid)", d, family="binomial")
        m2a = glmer("g1below ~ 1 + cses + (1 | schid)", d, family="binomial", nAGQ=12)
    ans = pd.read_csv(out / "tables" / "lecture_answers.csv").set_index("symbol")
    tau00 = float(m1.VarCorr().variances["(Intercept)"])
    assert ans.loc["tau00", "ml"] == pytest.approx(tau00, rel=1e-6)
    assert ans.loc["mor", "ml"] == pytest.approx(np.exp(np.sqrt(2 * tau00) * stats.norm.ppf(0.75)),
                                                 rel=1e-6)
    assert ans.loc["or10", "ml"] == pytest.approx(np.exp(m1.fixef()["cses"]), rel=1e-6)
    fe = pd.read_csv(out / "tables" / "fixef_m1.csv").set_index("term")
    assert fe.loc["cses", "OR"] == pytest.approx(np.exp(fe.loc["cses", "Estimate"]))
    assert fe.loc["cses", "OR 97.5 %"] == pytest.approx(
        np.exp(fe.loc["cses", "Estimate"] + 1.959964 * fe.loc["cses", "Std. Error"]), rel=1e-6)
    agq = pd.read_csv(out / "tables" / "laplace_vs_agq_m2.csv").set_index("quantity")
    assert agq.loc["variance (Intercept)", "AGQ nAGQ = 12"] == pytest.approx(
        m2a.VarCorr().variances["(Intercept)"], rel=1e-6)
    es = pd.read_csv(out / "tables" / "effect_sizes.csv")
    mor_m2 = es[(es["model"] == "m2") & es["quantity"].str.startswith("median odds ratio")]
    assert mor_m2["AGQ (nAGQ = 12)"].item() == pytest.approx(
        np.exp(np.sqrt(2 * m2a.VarCorr().variances["(Intercept)"]) * stats.norm.ppf(0.75)),
        rel=1e-6)
    # the posterior OR is summarised from the saved draws
    import xarray as xr

    post = xr.open_datatree(out / "posterior_m1.nc")["posterior"]
    g10 = post["beta"].sel(fixed="cses").to_numpy().ravel()
    assert ans.loc["or10", "post_mean"] == pytest.approx(np.exp(g10).mean(), rel=1e-10)
    answers = json.loads((out / "answers.json").read_text())
    assert answers["answers"][0].startswith("What is the odds ratio of ses? Within a school, a "
                                            "student one unit of ses higher has "
                                            f"{np.exp(m1.fixef()['cses']):.3f} times the odds "
                                            "of g1below = 1")


def test_shrinkage_and_caterpillar_tables(binary_run):
    out, _, _ = binary_run
    shr = pd.read_csv(out / "tables" / "shrinkage_per_school.csv")
    cat = pd.read_csv(out / "tables" / "caterpillar_beta0.csv").set_index("school")
    # conditional modes pull every school towards γ00: less spread than the empirical logits
    assert shr["mode"].var() < shr["empirical"].var()
    assert shr["posterior"].var() < shr["empirical"].var()
    np.testing.assert_allclose(cat.loc[shr["schid"], "reml"].to_numpy(), shr["mode"], rtol=1e-12)
    np.testing.assert_allclose(cat["odds_reml"], np.exp(cat["reml"]))
    u0 = pd.read_csv(out / "tables" / "caterpillar_u0.csv")
    np.testing.assert_allclose(u0["or_bayes_hi"], np.exp(u0["bayes_hi"]))
    assert list(u0["rank"]) == list(range(1, N_SCHOOLS + 1))


@pytest.mark.parametrize("level", ["m1", "m2"])
def test_laplace_recovers_generating_values_on_full_data(level):
    """glmer on all 11,091 students (data/README.md's table): γ within 3 SE of the generating
    values; τ00 within 0.15 of 0.64 (the realised variance of the drawn effects is 0.608)."""
    from twolevel.models.glmm.glmer import glmer

    d = load_lecture()
    f = {"m1": "g1below ~ 1 + famsesc + (1 + famsesc | schid)",
         "m2": "g1below ~ 1 + famsesc + (1 | schid)"}[level]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = glmer(f, d, family="binomial", nAGQ=1 if level == "m1" else 12)
    fe, se = fit.fixef(), fit.se()
    assert abs(fe["(Intercept)"] - BINARY_VALUES["gamma00"]) < 3 * se["(Intercept)"]
    assert abs(fe["famsesc"] - BINARY_VALUES["gamma10"]) < 3 * se["famsesc"]
    assert abs(fit.VarCorr().variances["(Intercept)"] - BINARY_VALUES["tau00"]) < 0.15
    if level == "m1":
        assert 0.0 < fit.VarCorr().variances["famsesc"] < 0.4


@pytest.mark.slow
def test_lecture_family_binomial_on_the_embedded_data(tmp_path):
    """``twolevel lecture --family binomial --quick`` on all 11,091 students (~70 s): the printed
    description, the report, and the Laplace numbers near the generating values of
    data/README.md."""
    out = tmp_path / "lec"
    proc = _cli("lecture", "--family", "binomial", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "binary outcome g1below (1 = below proficiency): 3,253 of 11,091 students (29.3%)" \
        in proc.stdout
    assert "N = 11,091 students, J = 742 groups; 37 schools with all outcomes equal" in proc.stdout
    md = (out / "report.md").read_text()
    assert md.startswith("# Lecture 5 for a binary outcome")
    assert "every g1below is 0 in 37 of the 742 schools, and every g1below is 1 in 0 of them" in md
    fe = pd.read_csv(out / "tables" / "fixef_m1.csv").set_index("term")
    for term, key in (("(Intercept)", "gamma00"), ("famsesc", "gamma10")):
        assert abs(fe.loc[term, "Estimate"] - BINARY_VALUES[key]) < 3 * fe.loc[term, "Std. Error"]
    ans = pd.read_csv(out / "tables" / "lecture_answers.csv").set_index("symbol")
    assert ans.loc["mor", "ml"] == pytest.approx(2.0262, abs=1e-4)  # data/README.md: τ00 0.548
    assert ans.loc["or10", "ml"] == pytest.approx(np.exp(-0.64475), abs=1e-4)


# ----------------------------------------------------------------------------- counts


def _counts(path: Path) -> None:
    rng = np.random.default_rng(5)
    J = 80
    n = rng.integers(8, 16, J)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(0, 0.5, J)[g] + rng.normal(0, 0.7, g.size)
    xc = x - pd.Series(x).groupby(g).transform("mean").to_numpy()
    u0, u1 = rng.normal(0, 0.5, J), rng.normal(0, 0.2, J)
    y = rng.poisson(np.exp(0.2 + u0[g] + (0.4 + u1[g]) * xc))
    y[g == 0] = 0  # one school without any count: no finite ML log rate
    pd.DataFrame({"school": 100 + g, "absences": y, "ses": x}).to_csv(path, index=False)


def test_poisson_run(tmp_path):
    data = tmp_path / "counts.csv"
    _counts(data)
    out = tmp_path / "report"
    proc = _cli("run", "--data", str(data), "--y", "absences", "--x", "ses", "--group", "school",
                "--family", "poisson", "--nagq", "8", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    assert "## 1. Data and per-school empirical log rate" in md
    assert "## 9. Expected count by school type, median rate ratio and effect sizes" in md
    assert "In **1 of 80 schools every absences is 0**" in md
    ans = pd.read_csv(out / "tables" / "lecture_answers.csv").set_index("symbol")
    assert "icc_latent" not in ans.index and "odds00" not in ans.index
    agq = pd.read_csv(out / "tables" / "laplace_vs_agq_m2.csv")
    assert "AGQ nAGQ = 8" in agq.columns
    emp = pd.read_csv(out / "tables" / "per_school_empirical.csv").set_index("school")
    assert emp.loc[100, "empirical"] == pytest.approx(np.log(0.5 / emp.loc[100, "n_j"]))
    answers = json.loads((out / "answers.json").read_text())["answers"]
    assert answers[0].startswith("What is the rate ratio of ses?")
    assert answers[3].startswith("What is the median rate ratio? MRR = ")


# ----------------------------------------------------------------------------- bad input


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_binomial_with_non_binary_response_names_the_column(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("g,y,x\n1,0,2\n1,1,3\n2,2,4\n2,0,1\n3,1,1\n3,5,2\n")
    code, out, err = _run_cli(capsys, "run", "--data", str(path), "--y", "y", "--x", "x",
                              "--group", "g", "--family", "binomial", "--quick",
                              "--out", str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in out + err
    assert err == (f"twolevel run: error: column 'y' of file '{path}' must be 0 or 1 for family "
                   "binomial, but 2 row(s) have other values (2, 5); recode it as 0/1 (1 = the "
                   "event, e.g. below proficiency), or drop --family for a continuous outcome\n")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_lecture_poisson_is_refused_with_what_to_use(capsys, tmp_path):
    code, out, err = _run_cli(capsys, "lecture", "--family", "poisson", "--quick",
                              "--out", str(tmp_path / "o"))
    assert code == 2 and out == ""
    assert err == ("twolevel lecture: error: the lecture data have no count outcome for --family "
                   "poisson: use --family binomial (the binary outcome g1below), or twolevel run "
                   "--data FILE --y COUNT --x X --group G --family poisson on data with a count "
                   "column\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, message", [
    (["--nagq", "5"], "--nagq 5 applies to a binary or count outcome: add --family binomial or "
                      "--family poisson, or drop --nagq"),
    (["--family", "binomial", "--nagq", "40"], "--nagq 40 is outside 2-25 (glmer's adaptive "
                                               "Gauss-Hermite quadrature); use e.g. --nagq 12"),
])
def test_nagq_messages(capsys, tmp_path, extra, message):
    code, _, err = _run_cli(capsys, "run", "--data", "lecture", "--y", "g1below", "--x", "ses",
                            "--group", "schid", "--quick", "--out", str(tmp_path / "o"), *extra)
    assert code == 2
    assert err == f"twolevel run: error: {message}\n"


def test_glmm_spec_messages():
    from twolevel.data.errors import TwolevelError
    from twolevel.workflows.lecture_glmm import GlmmWorkflowSpec

    with pytest.raises(TwolevelError, match=re.escape(
            "family 'gamma' has no lecture workflow for a binary or count outcome; use one of "
            "binomial, poisson")):
        GlmmWorkflowSpec(data="lecture", y="g1below", x="ses", group="schid", family="gamma")
    with pytest.raises(TwolevelError, match=re.escape("nAGQ 1 is outside 2-25")):
        GlmmWorkflowSpec(data="lecture", y="g1below", x="ses", group="schid", nagq=1)
