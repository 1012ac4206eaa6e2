"""Power and MDES: PowerUp!'s formulas (analytic), PowerUpR's published examples (goldens),
simulation-based power against the exact answer, the type I error, bad input, the command line."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats

import twolevel as tl
from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.power.analytic import StudyDesign, power_analytic, power_t
from twolevel.models.power.simulation import SimulationJob, design_population, run_simulations
from twolevel.workflows.cli import main

GOLDENS = Path(__file__).parent / "goldens"


# ------------------------------------------------------------ PowerUp!'s formulas, written out


def _powerup(design, J, n, rho, K=1, rho3=0.0, r21=0.0, r22=0.0, r23=0.0, omega=0.0,
             r2t=0.0, P=0.5, g=0):
    """(SSE, df) written out from PowerUpR 1.1.0's R/cra2.R, R/bira2.R, R/ira.R, R/cra3.R,
    R/bcra3r2.R (J schools in two-level designs, K = J schools of ``K`` classes in three)."""
    pq = P * (1 - P)
    if design == "cra2":
        return (math.sqrt(rho * (1 - r22) / (pq * J) + (1 - rho) * (1 - r21) / (pq * J * n)),
                J - g - 2)
    if design == "bira2":
        return (math.sqrt(rho * omega * (1 - r2t) / J + (1 - rho) * (1 - r21) / (pq * J * n)),
                J - g - 1)
    if design == "bira2c":
        return math.sqrt((1 - r21) / (pq * J * n)), J * (n - 1) - g - 1
    if design == "cra3":
        return math.sqrt(rho3 * (1 - r23) / (pq * J) + rho * (1 - r22) / (pq * K * J)
                         + (1 - rho - rho3) * (1 - r21) / (pq * K * J * n)), J - g - 2
    return math.sqrt(rho3 * omega * (1 - r2t) / J + rho * (1 - r22) / (pq * K * J)
                     + (1 - rho - rho3) * (1 - r21) / (pq * K * J * n)), J - g - 1


def _power_formula(es, sse, df, alpha=0.05):
    """1 − F_t(t_c; df, λ) + F_t(−t_c; df, λ) by one-dimensional integration over the χ²_df of
    T = (Z + λ)/√(W/df) (independent of scipy's ``nct``, which returns NaN far in its tails):
    E_W[Φ(λ − t_c√(W/df)) + Φ(−λ − t_c√(W/df))]."""
    lam = es / sse
    tc = stats.t.ppf(1 - alpha / 2, df)

    k = df / 2.0
    logc = -k * math.log(2.0) - special.gammaln(k)

    def f(w):
        s = tc * math.sqrt(w / df)
        dens = math.exp(logc + (k - 1.0) * math.log(w) - w / 2.0)  # the χ²_df density
        return (special.ndtr(lam - s) + special.ndtr(-lam - s)) * dens

    lo, hi = stats.chi2.ppf([1e-15, 1 - 1e-15], df)
    return integrate.quad(f, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200,
                          points=[df])[0]


GRID = list(itertools.product(
    ["cra2", "bira2", "bira2c", "cra3", "bcra3"], [6, 61], [5, 20], [0.05, 0.2],
    [((0.0, 0.0, 0.0), 0.5, 0), ((0.5, 0.3, 0.4), 0.3, 2)]))


@pytest.mark.parametrize("design,J,n,rho,setting", GRID)
def test_analytic_equals_powerup_formulas(design, J, n, rho, setting):
    (r21, r22, r23), P, g = setting
    kw = dict(schools=J, students=n, icc=rho, r2_1=r21, r2_2=r22, p=P, covariates=g)
    three = design in ("cra3", "bcra3")
    if three:
        kw.update(classes=3, icc3=0.1, r2_3=r23)
    if design in ("bira2", "bcra3"):
        kw.update(omega=0.4, r2_t=0.25)
    sd = StudyDesign(design=design, **kw)
    sse, df = _powerup(design, J, n, rho, K=3, rho3=0.1 if three else 0.0, r21=r21, r22=r22,
                       r23=r23, omega=0.4, r2t=0.25, P=P, g=g)
    assert sd.df == df
    assert sd.sse == pytest.approx(sse, rel=1e-12)
    for es in (0.15, 0.6):
        assert sd.power(es) == pytest.approx(_power_formula(es, sse, df), abs=1e-8)
        assert sd.ncp(es) == pytest.approx(es / sse, rel=1e-12)
    m = stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)
    assert sd.mdes(0.8) == pytest.approx(m * sse, abs=1e-8)
    exact = sd.mdes_exact(0.8)
    assert _power_formula(exact, sse, df) == pytest.approx(0.8, abs=1e-8)
    need = sd.schools_for_power(0.3, 0.8)
    assert sd.with_schools(need).power(0.3) >= 0.8
    if need > 3 and need - 1 - g - (2 if design in ("cra2", "cra3") else 1) >= 1:
        assert sd.with_schools(need - 1).power(0.3) < 0.8


def test_one_sided_and_below_half_power():
    sd = StudyDesign(design="cra2", schools=30, students=10, icc=0.15, two_tailed=False)
    sse, df = _powerup("cra2", 30, 10, 0.15)
    lam = 0.3 / sse
    assert sd.power(0.3) == pytest.approx(1 - stats.nct.cdf(stats.t.ppf(0.95, df), df, lam),
                                          abs=1e-10)
    # PowerUp!'s multiplier below power 0.5: t1 − |t2|
    assert sd.mdes(0.3) == pytest.approx(
        (stats.t.ppf(0.95, df) - abs(stats.t.ppf(0.3, df))) * sse, abs=1e-10)


def test_unequal_sizes_design_effect():
    """Van Breukelen, Candel & Berger (2007): RE = 1 − CV²λ(1−λ), λ = nρ/(nρ + 1 − ρ)."""
    base = StudyDesign(design="cra2", schools=40, students=20, icc=0.1)
    uneq = StudyDesign(design="cra2", schools=40, students=20, icc=0.1, cv=0.6)
    lam = 20 * 0.1 / (20 * 0.1 + 0.9)
    re = 1 - 0.36 * lam * (1 - lam)
    assert uneq.sse == pytest.approx(base.sse / math.sqrt(re), rel=1e-12)
    assert uneq.power(0.3) < base.power(0.3)


# ----------------------------------------------------------- PowerUpR's published examples


@pytest.mark.parametrize("row", pd.read_csv(GOLDENS / "powerup_examples.csv").to_dict("records"),
                         ids=lambda r: f"{r['example']}-{r['quantity']}")
def test_powerup_published_examples(row):
    sd = StudyDesign(design=row["design"], schools=int(row["schools"]),
                     students=int(row["students"]), classes=int(row["classes"]),
                     icc=row["icc"], icc3=row["icc3"], omega=row["omega"], r2_1=row["r2_1"],
                     r2_2=row["r2_2"], r2_3=row["r2_3"], p=row["p"],
                     covariates=int(row["covariates"]))
    q, want, tol = row["quantity"], row["value"], row["tolerance"]
    t1 = stats.t.ppf(0.975, sd.df)
    m = t1 + stats.t.ppf(0.8, sd.df)
    got = {"mdes": lambda: sd.mdes(0.8), "power": lambda: sd.power(row["effect"]),
           "df": lambda: sd.df, "sse": lambda: sd.sse,
           "mrss": lambda: sd.mrss_powerup(row["effect"]),
           "mdes_lcl": lambda: sd.mdes(0.8) * (1 - t1 / m),
           "mdes_ucl": lambda: sd.mdes(0.8) * (1 + t1 / m)}[q]()
    assert abs(got - want) <= tol + 1e-12, (q, got, want)


def test_powerup_mrss_table_cra3():
    """PowerUpR's vignette table of required schools (mrss.cra3), every cell."""
    for r in pd.read_csv(GOLDENS / "powerup_mrss_cra3.csv").itertuples():
        sd = StudyDesign(design="cra3", schools=50, students=10, classes=2, icc=0.06, icc3=0.18,
                         covariates=1, r2_1=0.55, r2_2=0.5, r2_3=r.r23, p=0.4)
        assert sd.mrss_powerup(r.es) == r.K, (r.es, r.r23)


def test_power_analytic_result_and_docstring_example():
    r = power_analytic("cra2", effect=0.629, schools=20, students=15, icc=0.17)
    assert (round(r.mdes, 3), round(r.power, 2), r.df) == (0.629, 0.8, 18)
    assert r.schools_needed == 20
    d = r.to_dict()
    assert d["powerup"] == "CRA2_2r" and d["parameters"]["icc"] == 0.17
    assert "mdes" in r.summary()
    assert tl.power_analytic is power_analytic


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw,msg", [
    (dict(icc=1.0), r"icc must be in \[0, 1\), got 1.0"),
    (dict(icc=-0.1), r"icc must be in \[0, 1\), got -0.1"),
    (dict(schools=2), r"schools must be a whole number of schools ≥ 3, got 2"),
    (dict(students=1), r"students must be a whole number of students per group ≥ 2, got 1"),
    (dict(p=1.0), r"p, the share treated, must be between 0 and 1"),
    (dict(alpha=0.0), r"alpha must be between 0 and 1"),
    (dict(omega=-1.0), r"omega, the treatment-effect variance .* must be ≥ 0"),
    (dict(design="cra4"), r"unknown design 'cra4'; choose one of cra2, bira2"),
    (dict(design="cra3", classes=3, icc=0.5, icc3=0.5), r"icc \+ icc3 must be below 1"),
    (dict(design="cra3", classes=1), r"classes must be a whole number of classes per school ≥ 2"),
    (dict(design="bira2", cv=0.3), r"cv \(unequal school sizes\) .* applies to design 'cra2'"),
    (dict(schools=4, covariates=2), r"has df = 0 < 1; add schools or drop covariates"),
    (dict(covariates=-1), r"covariates must be a whole number of covariates ≥ 0, got -1"),
    (dict(design="cra3", classes=2, icc3=1.5), r"icc3 must be in \[0, 1\), got 1.5"),
])
def test_bad_design_parameters(kw, msg):
    base = dict(design="cra2", schools=20, students=10, icc=0.1)
    with pytest.raises(TwolevelError, match=msg):
        StudyDesign(**{**base, **kw})


def test_bad_power_and_effect():
    sd = StudyDesign(design="cra2", schools=20, students=10, icc=0.1)
    with pytest.raises(TwolevelError, match="the target power must be between 0 and 1, got 1.2"):
        sd.mdes(1.2)
    with pytest.raises(TwolevelError, match="effect must be positive to solve for schools"):
        sd.schools_for_power(0.0)
    with pytest.raises(TwolevelError, match="more than 50 schools would be needed"):
        sd.schools_for_power(0.05, max_schools=50)
    with pytest.raises(TwolevelError, match="PowerUp!'s iteration reached df ≤ 0; use "
                       "schools_for_power"):
        StudyDesign(design="cra2", schools=20, students=10, icc=0.1,
                    covariates=9).mrss_powerup(0.3)
    with pytest.raises(TwolevelError, match="BIRA2_1c's df depends on the students"):
        StudyDesign(design="bira2c", schools=20, students=10, icc=0.1).mrss_powerup(0.2)


# ------------------------------------------------------------------------------ simulation


def _sim(J, n, rho, delta, nsim, test="satterthwaite", seed=11, cv=0.0, n_jobs=1):
    sd = StudyDesign(design="cra2", schools=J, students=n, icc=rho, cv=cv)
    return tl.power(sd, effect=delta, nsim=nsim, test=test, seed=seed, n_jobs=n_jobs)


def test_simulation_close_to_exact_quick():
    """Balanced CRA2, random intercept, Satterthwaite: the t test is exact (df J − 2) unless τ̂²
    hits 0; 400 simulations within 3 Monte-Carlo SEs of the noncentral-t power."""
    res = _sim(12, 10, 0.2, 0.6, 400)
    exact = res.table["power_analytic"].iloc[0]
    assert abs(res.power - exact) < 3 * math.sqrt(exact * (1 - exact) / 400)
    assert res.table["failed"].iloc[0] == 0


@pytest.mark.slow
@pytest.mark.parametrize("J,n,rho,delta", [(10, 20, 0.2, 0.8), (10, 5, 0.3, 1.0),
                                           (30, 10, 0.1, 0.4), (60, 20, 0.15, 0.3)])
def test_simulation_agrees_with_analytic_2000(J, n, rho, delta):
    """Acceptance: within 3 Monte-Carlo SEs at 2,000 simulations, incl. J = 10 (two workers)."""
    res = _sim(J, n, rho, delta, 2000, seed=2026, n_jobs=2)
    exact = res.table["power_analytic"].iloc[0]
    se = math.sqrt(exact * (1 - exact) / 2000)
    assert abs(res.power - exact) < 3 * se, (res.power, exact, se)


@pytest.mark.parametrize("test", ["satterthwaite", "kenward-roger"])
def test_type_one_error_unbalanced(test):
    """δ = 0, unequal school sizes (CV 0.5): rejections within 3.5 MC SEs of α (300 sims)."""
    res = _sim(14, 8, 0.2, 0.0, 300, test=test, seed=5, cv=0.5)
    assert abs(res.power - 0.05) < 3.5 * math.sqrt(0.05 * 0.95 / 300)


def test_lrt_runs_and_rejects():
    res = _sim(16, 10, 0.1, 1.0, 60, test="lrt", seed=3)
    assert res.power > 0.7 and res.test == "lrt"


def test_seeds_reproducible_and_independent_of_workers():
    a = _sim(10, 6, 0.2, 0.5, 60, seed=7)
    b = _sim(10, 6, 0.2, 0.5, 60, seed=7, n_jobs=2)
    c = _sim(10, 6, 0.2, 0.5, 60, seed=8)
    np.testing.assert_array_equal(a.p_values[0], b.p_values[0])
    assert not np.array_equal(a.p_values[0], c.p_values[0])
    g1 = tl.power(StudyDesign(design="cra2", schools=10, students=6, icc=0.2), effect=0.5,
                  nsim=20, seed=np.random.default_rng(3))
    g2 = tl.power(StudyDesign(design="cra2", schools=10, students=6, icc=0.2), effect=0.5,
                  nsim=20, seed=np.random.default_rng(3))
    np.testing.assert_array_equal(g1.p_values[0], g2.p_values[0])


def test_early_stop_and_progress(capsys):
    sd = StudyDesign(design="cra2", schools=20, students=10, icc=0.1)
    res = tl.power(sd, effect=2.0, nsim=1000, tol=0.02, progress=True)
    assert res.table["nsim"].iloc[0] < 1000
    assert "simulations, power" in capsys.readouterr().err


def test_bira2_random_slope_simulation():
    sd = StudyDesign(design="bira2", schools=12, students=20, icc=0.2, omega=0.5)
    design, theta, sigma, beta, col = design_population(sd, 0.4, np.random.default_rng(1))
    assert design.z_names == ("(Intercept)", "treat") and theta.shape == (3,)
    res = tl.power(sd, effect=0.4, nsim=40, seed=2)
    assert 0 <= res.power <= 1 and res.table["nsim"].iloc[0] == 40


def test_wilson_and_summary():
    res = _sim(10, 5, 0.1, 0.5, 30)
    r = res.table.iloc[0]
    assert r.lower <= r.power <= r.upper
    assert "Wilson" in res.summary() and res.to_frame().shape[0] == 1


# --------------------------------------------------------------------- from a fitted model


@pytest.fixture(scope="module")
def pilot():
    rng = np.random.default_rng(4)
    J, n = 12, 8
    school = np.repeat(np.arange(J), n)
    treat = (school % 2).astype(float)
    x = rng.standard_normal(J * n)
    y = 0.3 * treat + 0.5 * x + rng.standard_normal(J)[school] * 0.5 + rng.standard_normal(J * n)
    grade = np.array(["a", "b", "c"])[rng.integers(0, 3, J * n)]
    d = pd.DataFrame({"y": y, "treat": treat, "x": x, "school": school, "grade": grade})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.lmer("y ~ treat + x + grade + (1 | school)", d)


def test_power_from_fit_curve(pilot):
    res = tl.power(pilot, term="treat", effect=0.5, n_schools=[12, 24], nsim=40, seed=1)
    assert list(res.table["schools"]) == [12, 24]
    assert res.table["power"].iloc[1] >= res.table["power"].iloc[0] - 0.25
    ext = tl.extend(pilot.design, n_schools=30, n_students=5)
    assert ext.n_groups == 30 and ext.n == 150
    res = tl.power(pilot, term="x", effect=0.0, n_students=10, nsim=30, seed=1)
    assert res.table["students"].iloc[0] == 10


def test_power_from_fit_bad_terms(pilot):
    with pytest.raises(FormulaError, match="term 'z' is not a fixed effect of 'y ~ treat"):
        tl.power(pilot, term="z", effect=0.2, nsim=5)
    with pytest.raises(FormulaError, match="term 'grade' is a factor with coefficients gradeb, "
                       "gradec; power is for one coefficient"):
        tl.power(pilot, term="grade", effect=0.2, nsim=5)
    with pytest.raises(TwolevelError, match="n_schools must be a whole number of schools ≥ 3"):
        tl.power(pilot, term="treat", effect=0.2, n_schools=2, nsim=5)
    with pytest.raises(TwolevelError, match="n_students must be a whole number of students "
                       "per school ≥ 2"):
        tl.power(pilot, term="treat", effect=0.2, n_students=1, nsim=5)
    with pytest.raises(TwolevelError, match="unknown test 'wald'; choose one of"):
        tl.power(pilot, term="treat", effect=0.2, test="wald", nsim=5)
    with pytest.raises(TwolevelError, match="nsim must be a whole number of simulations ≥ 1"):
        tl.power(pilot, term="treat", effect=0.2, nsim=0)
    with pytest.raises(TwolevelError, match="extend method must be 'cycle' or 'resample'"):
        tl.extend(pilot.design, 20, method="bootstrap")
    with pytest.raises(TwolevelError,
                       match="power needs a fitted lmer or glmer model or a StudyDesign"):
        tl.power("cra2", effect=0.2, nsim=5)
    with pytest.raises(FormulaError, match="term 'x' is not a fixed effect of a planned design"):
        tl.power(StudyDesign(design="cra2", schools=10, students=5, icc=0.1), term="x")
    with pytest.raises(TwolevelError, match="simulation of the three-level design CRA3_3r needs "
                       "nested grouping factors"):
        tl.power(StudyDesign(design="cra3", schools=10, students=5, classes=2, icc=0.1),
                 nsim=5)


def test_run_simulations_resample_extend(pilot):
    d = tl.extend(pilot.design, n_schools=15, method="resample", rng=np.random.default_rng(1))
    job = SimulationJob(design=d, theta=pilot.theta, sigma=pilot.sigma, beta=pilot.beta,
                        column=1)
    p = run_simulations(job, 10, seed=1)
    assert p.shape == (10,) and np.all((p >= 0) & (p <= 1))
    assert power_t(0.0, 0.2, 10) == pytest.approx(0.05, abs=1e-12)


# --------------------------------------------------------------------------- command line


def test_cli_design_json(capsys):
    rc = main(["power", "--design", "cra2", "--schools", "20", "--students", "15", "--icc",
               "0.17", "--effect", "0.629", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["df"] == 18 and round(out["mdes"], 3) == 0.629
    assert abs(out["power"] - 0.8) < 0.002 and out["ncp"] > 0


def test_cli_text_three_level_and_simulate(capsys):
    rc = main(["power", "--design", "bcra3", "--schools", "24", "--classes", "6", "--students",
               "10", "--icc", "0.1", "--icc3", "0.13", "--omega", "0.4", "--effect", "0.246"])
    out = capsys.readouterr().out
    assert rc == 0 and "BCRA3_2r" in out and "mdes: 0.246" in out and "df: 23" in out
    rc = main(["power", "--design", "cra2", "--schools", "10", "--students", "5", "--icc", "0.2",
               "--effect", "0.8", "--simulate", "40", "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "power_sim: " in out and "se: " in out
    rc = main(["power", "--design", "bira2", "--constant-effect", "--schools", "10",
               "--students", "10", "--icc", "0.2", "--effect", "0.3", "--json"])
    assert json.loads(capsys.readouterr().out)["powerup"] == "BIRA2_1c"


def test_cli_curve_writes_table_and_figure(tmp_path, capsys):
    out = tmp_path / "curve"
    rc = main(["power", "--design", "cra2", "--students", "20", "--icc", "0.1", "--effect",
               "0.3", "--schools", "20", "--curve", "schools=20:60:20", "--simulate", "20",
               "--out", str(out)])
    assert rc == 0
    tab = pd.read_csv(f"{out}.csv")
    assert list(tab["schools"]) == [20, 40, 60] and {"power", "power_sim", "se"} <= set(tab)
    assert Path(f"{out}.png").stat().st_size > 1000


def test_cli_fit(tmp_path, capsys, pilot):
    f = tmp_path / "pilot.csv"
    d = pd.DataFrame({"y": pilot.design.y, "treat": pilot.design.X[:, 1],
                      "school": pilot.design.group_index})
    d.to_csv(f, index=False)
    rc = main(["power", "--fit", str(f), "y ~ treat + (1 | school)", "--term", "treat",
               "--effect", "0.5", "--schools", "20", "--simulate", "30", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["schools"] == 20 and 0 <= out["power_sim"] <= 1 and out["se"] >= 0


@pytest.mark.parametrize("argv,msg", [
    (["--design", "cra2", "--schools", "20", "--students", "10", "--icc", "1.2"],
     "icc must be in [0, 1), got 1.2"),
    (["--design", "cra2", "--schools", "2", "--students", "10", "--icc", "0.1"],
     "schools must be a whole number of schools ≥ 3, got 2"),
    (["--design", "cra2", "--schools", "20", "--students", "1", "--icc", "0.1"],
     "students must be a whole number of students per group ≥ 2, got 1"),
    (["--design", "cra2", "--schools", "20", "--icc", "0.1"], "--design cra2 needs --students"),
    (["--design", "cra3", "--schools", "20", "--students", "5", "--icc", "0.1"],
     "--design cra3 needs --classes"),
    (["--design", "cra2", "--schools", "20", "--students", "5", "--icc", "0.1", "--curve",
      "pupils=1:2:1"], "--curve varies 'schools' or 'students'"),
    (["--design", "cra2", "--schools", "20", "--students", "5", "--icc", "0.1", "--curve",
      "schools=20-40"], "--curve expects SIZE=FROM:TO:BY"),
    (["--design", "cra2", "--schools", "20", "--students", "5", "--icc", "0.1", "--curve",
      "schools=40:20:5"], "--curve needs FROM ≤ TO and a positive step"),
    (["--design", "cra2", "--schools", "20", "--students", "5", "--icc", "0.1", "--simulate",
      "0"], "--simulate needs a positive number of simulations"),
    (["--fit", "lecture", "g1rscore ~ famsesc + (1 | schid)"],
     "--fit needs --term, the fixed effect whose power is wanted"),
    (["--fit", "lecture", "g1rscore ~ famsesc + (1 | schid)", "--term", "treat"],
     "term 'treat' is not a fixed effect of 'g1rscore ~ famsesc + (1 | schid)'"),
])
def test_cli_errors_one_line(argv, msg, capsys):
    rc = main(["power", *argv, "--effect", "0.3"])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_power_from_glmer_pilot():
    """Binary outcomes: simulate from a glmer pilot, refit by glmer, Wald z test."""
    rng = np.random.default_rng(12)
    J, n = 16, 12
    school = np.repeat(np.arange(J), n)
    treat = (school % 2).astype(float)
    eta = -0.3 + 0.8 * treat + 0.5 * rng.standard_normal(J)[school]
    y = (rng.random(J * n) < 1 / (1 + np.exp(-eta))).astype(float)
    d = pd.DataFrame({"y": y, "treat": treat, "school": school})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = tl.glmer("y ~ treat + (1 | school)", d, family="binomial")
    res = tl.power(g, term="treat", effect=1.2, n_schools=20, nsim=12, seed=3)
    r = res.table.iloc[0]
    assert r.schools == 20 and r.nsim == 12 and 0 <= r.power <= 1
    with pytest.raises(TwolevelError, match="a glmer fit is tested by glmer's Wald z test"):
        tl.power(g, term="treat", effect=1.2, nsim=2, test="lrt")
    d["k"] = 3
    d["s"] = (rng.random(J * n) < 0.4) * 1 + (rng.random(J * n) < 0.4) * 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gb = tl.glmer("cbind(s, k - s) ~ treat + (1 | school)", d, family="binomial")
        d["ex"] = 2.0
        gp = tl.glmer("s ~ treat + offset(log(ex)) + (1 | school)", d, family="poisson")
    with pytest.raises(TwolevelError, match="supports 0/1 responses; this pilot has binomial "
                       "trials"):
        tl.power(gb, term="treat", effect=1.0, nsim=2)
    with pytest.raises(TwolevelError, match="from a glmer fit with an offset is not supported"):
        tl.power(gp, term="treat", effect=1.0, nsim=2)


def test_satterthwaite_p_is_lmertest_contest1d(pilot):
    from twolevel.models.lmm.satterthwaite import contest1d
    from twolevel.models.power.satterthwaite import satterthwaite_p

    for k in range(pilot.design.p):
        L = np.eye(pilot.design.p)[k]
        assert satterthwaite_p(pilot, k) == pytest.approx(contest1d(pilot, L)["Pr(>|t|)"],
                                                          rel=1e-9, abs=1e-15)


def test_variance_test_of_a_random_slope():
    """χ̄² mixture test of a random slope's variance: level near α at SD 0, power at SD 0.5."""
    rng = np.random.default_rng(21)
    J, n = 20, 10
    school = np.repeat(np.arange(J), n)
    x = rng.standard_normal(J * n)
    u = rng.standard_normal((J, 2)) * [0.6, 0.4]
    y = u[school, 0] + (0.3 + u[school, 1]) * x + rng.standard_normal(J * n)
    d = pd.DataFrame({"y": y, "x": x, "school": school})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = tl.lmer("y ~ x + (1 + x | school)", d)
    null = tl.power(m, term="x", effect=0.0, test="variance", nsim=150, seed=4)
    assert null.power < 0.05 + 3.5 * math.sqrt(0.05 * 0.95 / 150)
    alt = tl.power(m, term="x", effect=0.6, test="variance", nsim=60, seed=4)
    assert alt.power > 0.6
    with pytest.raises(FormulaError, match="test='variance' needs a random slope: 'w' is not"):
        tl.power(m, term="w", effect=0.3, test="variance", nsim=2)
    import dataclasses

    th = m.theta.copy()
    th[1:] = 0.0  # the slope's row of T: no SD, no correlation
    flat = dataclasses.replace(m, theta=th)
    with pytest.raises(TwolevelError, match="the pilot's SD of the random effect 'x' is 0, so "
                       "its correlations are unknown"):
        tl.power(flat, term="x", effect=0.3, test="variance", nsim=2)
    with pytest.raises(TwolevelError, match="test='variance' tests a random slope of a pilot"):
        tl.power(StudyDesign(design="cra2", schools=10, students=5, icc=0.1), test="variance")


def test_hessian_batched_is_numderiv():
    from twolevel.models.lmm.satterthwaite import devfun_vp, numderiv_hessian
    from twolevel.models.power.satterthwaite import hessian_batched

    d = tl.load_data("lecture")
    m = tl.lmer("g1rscore ~ famsesc + (1 + famsesc | schid)", d)
    D = devfun_vp(m)
    vp = np.append(m.theta, m.sigma)
    np.testing.assert_allclose(hessian_batched(D.batch, vp), numderiv_hessian(D, vp),
                               rtol=1e-12, atol=0)


def test_devfun_vp_batch_is_lmertest_devfun(pilot):
    from twolevel.models.lmm.lmer import refit_ml
    from twolevel.models.lmm.satterthwaite import devfun_vp
    from twolevel.models.power.satterthwaite import devfun_vp_batch

    rng = np.random.default_rng(0)
    for fit in (pilot, refit_ml(pilot)):
        vp = np.append(fit.theta, fit.sigma)
        pts = vp * (1 + 0.1 * rng.standard_normal((7, vp.size)))
        pts[3] = pts[1]  # a repeated θ
        D = devfun_vp(fit)
        np.testing.assert_allclose(devfun_vp_batch(fit, pts), [D(p) for p in pts], rtol=1e-13)


def test_power_takes_the_rng_convention():
    sd = tl.study_design("cra2", schools=10, students=5, icc=0.2)
    a = tl.power(sd, effect=0.8, nsim=12, rng=5)
    b = tl.power(sd, effect=0.8, nsim=12, seed=5)
    c = tl.power(sd, effect=0.8, nsim=12, rng=np.random.default_rng(5))
    assert a.table["rejections"].tolist() == b.table["rejections"].tolist()
    assert c.table["nsim"].tolist() == [12]
    assert tl.power(sd, effect=0.8, nsim=12).table.equals(
        tl.power(sd, effect=0.8, nsim=12, rng=1).table)  # the default stays seed 1
    with pytest.raises(TwolevelError, match="either rng= .* or seed=, not both"):
        tl.power(sd, effect=0.8, nsim=2, rng=1, seed=1)
