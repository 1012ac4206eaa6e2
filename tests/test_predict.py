"""predict, simulate, bootstrap and the effect sizes without R (issue 12): golden values from
lme4 1.1-31 / performance 0.10.2 (``tests/goldens/predict_lme4.json``, made by
``predict_lme4.R``), the moments of simulated data, the bootstrap's structure, the CLI, and every
bad-input message."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import load_golden

from twolevel.data.errors import DataError, TwolevelError
from twolevel.models.design.newdata import center_new_rows
from twolevel.models.inference.effect_sizes import icc, icc_at, r2_nakagawa, variance_components
from twolevel.models.inference.intervals import confint
from twolevel.models.inference.predict import predict
from twolevel.models.inference.simulate import bootstrap, norm_inter, simulate
from twolevel.models.lmm.lmer import lmer
from twolevel.workflows.cli import main

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def m1(sleepstudy):
    return lmer(SLEEP, sleepstudy)


G = load_golden("predict_lme4.json")


def test_predict_reference_values(m1):
    g = G["sleepstudy"]
    np.testing.assert_allclose(predict(m1)[:5], g["fitted_1_5"], rtol=1e-9)
    np.testing.assert_allclose(predict(m1, re_form="~0")[:5], g["population_1_5"], rtol=1e-9)
    new = predict(m1, pd.DataFrame({"Days": [0, 5, 9], "Subject": "new"}), allow_new_levels=True)
    np.testing.assert_allclose(new, g["new_days_0_5_9"], rtol=1e-9)
    # a missing school label is a new level too (lme4 with allow.new.levels)
    nd = pd.DataFrame({"Days": [5, 5, 5], "Subject": [308, "new", None]})
    np.testing.assert_allclose(predict(m1, nd, allow_new_levels=True),
                               [g["s308_day5"], g["new_days_0_5_9"][1], g["new_days_0_5_9"][1]],
                               rtol=1e-9)
    assert np.array_equal(m1.predict(nd, allow_new_levels=True),
                          predict(m1, nd, allow_new_levels=True))


def test_prediction_intervals_reference_values(m1):
    g = G["sleepstudy"]
    z = 1.959963984540054
    nd = pd.DataFrame({"Days": [5, 5], "Subject": ["308", "new"]})
    tab = predict(m1, nd, allow_new_levels=True, interval="prediction")
    x0 = np.array([1.0, 5.0])
    V, T = np.reshape(g["vcov_fixed"], (2, 2)), np.reshape(g["T"], (2, 2))
    var = [g["pev_308_day5"] + g["sigma2"], x0 @ V @ x0 + x0 @ T @ x0 + g["sigma2"]]
    # predict-simulate-r2.md §6: 719.197, 2331.678
    np.testing.assert_allclose(tab["se"] ** 2, var, rtol=1e-7)
    np.testing.assert_allclose(tab["upr"] - tab["fit"], z * np.sqrt(var), rtol=1e-7)
    # the joint PEV is below condVar + vcov without their covariance
    # (predict-simulate-r2.md §6: 810.80851)
    assert tab["se"].iloc[0] ** 2 < 810.80851
    # confidence: lme4 1.1-37's se.fit², conditional (PEV) and population (x₀ᵀV̂x₀)
    conf = predict(m1, pd.DataFrame({"Days": np.arange(5.0), "Subject": "308"}),
                   interval="confidence")
    np.testing.assert_allclose(conf["se"] ** 2, g["pev_308_days_0_4"], rtol=1e-6)
    X0 = np.column_stack([np.ones(5), np.arange(5.0)])
    pop = predict(m1, pd.DataFrame({"Days": np.arange(5.0)}), re_form="NA",
                  interval="confidence", level=0.9)
    np.testing.assert_allclose(pop["se"] ** 2, np.einsum("mp,pk,mk->m", X0, V, X0), rtol=1e-6)
    assert (pop["upr"] - pop["fit"]).to_numpy() == pytest.approx(1.6448536 * pop["se"], rel=1e-6)


def test_hsb_reference_values(hsb):
    g = G["hsb82"]
    data = hsb.assign(school=hsb["school"].astype(str))
    m2 = lmer("mAch ~ 1 + cses + (1 + cses | school)", data)
    nd = pd.DataFrame({"cses": [1.0, 0.0, 1.0, 0.0], "school": ["1224", "1224", "new", "new"]})
    tab = predict(m2, nd, allow_new_levels=True, interval="prediction")
    np.testing.assert_allclose(tab["fit"], g["fit_1224_cses_1_0"] + g["new_cses_1_0"], rtol=1e-8)
    np.testing.assert_allclose(tab["se"][:2] ** 2, np.add(g["pev_1224_cses_1_0"], g["sigma2"]),
                               rtol=1e-6)  # predict-simulate-r2.md §6: 37.948759, 37.417007
    i, r2 = icc(m2), r2_nakagawa(m2)
    np.testing.assert_allclose([i.adjusted, i.unadjusted], g["icc"], rtol=1e-6)
    np.testing.assert_allclose([r2.marginal, r2.conditional], g["r2"], rtol=1e-6)


def test_effect_sizes_reference_values(m1):
    g = G["sleepstudy"]
    vc = variance_components(m1)  # predict-simulate-r2.md §4.5: 908.95336, 1698.0837, 654.94001
    assert vc.residual == pytest.approx(g["sigma2"], rel=1e-7)
    np.testing.assert_allclose([icc(m1).adjusted, icc(m1).unadjusted], g["icc"], rtol=1e-6)
    r2 = r2_nakagawa(m1)
    np.testing.assert_allclose([r2.marginal, r2.conditional], g["r2"], rtol=1e-6)
    assert m1.effect_sizes()["icc"] == pytest.approx(g["icc"][0], rel=1e-6)
    assert "ICC adjusted 0.7217" in m1.summary(effect_sizes=True)
    # ρ(x) with a random slope: at Days = 0 it is τ00/(τ00 + σ²)
    t00 = g["T"][0]
    assert icc_at(m1, [1.0, 0.0])[0] == pytest.approx(t00 / (t00 + g["sigma2"]), rel=1e-5)
    with pytest.raises(TwolevelError, match="z must have 2 columns"):
        icc_at(m1, [1.0])


def test_effect_sizes_singular_and_missing_fixed_slope(sleepstudy):
    rng = np.random.default_rng(5)
    d = pd.DataFrame({"g": np.repeat(np.arange(30), 6), "x": rng.normal(size=180)})
    e = rng.normal(size=180)
    e -= pd.Series(e).groupby(d["g"]).transform("mean").to_numpy()  # group means 0: singular
    d["y"] = 1 + 0.5 * d["x"] + e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = lmer("y ~ x + (1 | g)", d)
        assert m.is_singular()
        assert np.isnan(icc(m).adjusted)
        r2 = r2_nakagawa(m)
    assert np.isnan(r2.conditional)
    vc = variance_components(m)
    assert r2.marginal == pytest.approx(vc.fixed / (vc.fixed + vc.residual))
    m2 = lmer("Reaction ~ 1 + (Days | Subject)", sleepstudy)
    with pytest.warns(UserWarning, match="'Days' not present as fixed effects"):
        icc(m2)


def test_bad_input_messages(m1):
    with pytest.raises(DataError, match=r"newdata lacks column\(s\) 'Days'"):
        predict(m1, pd.DataFrame({"Subject": ["308"]}))
    with pytest.raises(DataError, match=r"new level\(s\) of 'Subject' in newdata: 'zzz'.*"
                                        r"allow_new_levels=True"):
        predict(m1, pd.DataFrame({"Days": [1], "Subject": ["zzz"]}))
    with pytest.raises(DataError, match=r"newdata column 'Days' has a missing or non-finite "
                                        r"value in row\(s\) 1"):
        predict(m1, pd.DataFrame({"Days": [1.0, np.nan], "Subject": ["308", "308"]}))
    with pytest.raises(DataError, match="lacks the grouping column 'Subject'"):
        predict(m1, pd.DataFrame({"Days": [1.0]}))
    with pytest.raises(TwolevelError, match="re_form='~Days' is not supported"):
        predict(m1, re_form="~Days")
    with pytest.raises(TwolevelError, match="names random effect 'x', which the model does not"):
        predict(m1, re_form="~(x | Subject)")
    with pytest.raises(TwolevelError, match="intervals need re_form=None"):
        predict(m1, re_form="~(1 | Subject)", interval="prediction")
    with pytest.raises(TwolevelError, match="unknown interval 'credible'"):
        predict(m1, interval="credible")
    with pytest.raises(TwolevelError, match="level must be between 0 and 1"):
        predict(m1, interval="prediction", level=95)
    for bad in (0, -3, 2.5):
        with pytest.raises(TwolevelError, match="nsim must be a positive whole number"):
            simulate(m1, nsim=bad)
        with pytest.raises(TwolevelError, match="nsim must be a positive whole number"):
            bootstrap(m1, nsim=bad)


def test_factor_level_never_seen():
    rng = np.random.default_rng(3)
    d = pd.DataFrame({"g": np.repeat(np.arange(20), 5), "k": rng.choice(["a", "b"], 100),
                      "x": rng.normal(size=100)})
    d["y"] = d["x"] + (d["k"] == "b") + rng.normal(size=20)[d["g"]] + rng.normal(size=100)
    m = lmer("y ~ x + k + (1 | g)", d)
    ok = predict(m, pd.DataFrame({"x": [0.0], "k": ["b"], "g": [3]}))
    assert ok[0] == pytest.approx(m.beta[0] + m.beta[2] + m.state.b[3, 0])
    with pytest.raises(DataError, match=r"factor level the model never saw: The levels \(c\) in "
                                        r"'k'"):
        predict(m, pd.DataFrame({"x": [0.0], "k": ["c"], "g": [3]}))


def test_stateful_transform_uses_fitted_mean():
    rng = np.random.default_rng(8)
    d = pd.DataFrame({"g": np.repeat(np.arange(25), 8), "x": rng.normal(5.0, 2.0, 200)})
    d["y"] = 2 * d["x"] + rng.normal(size=25)[d["g"]] + rng.normal(size=200)
    m = lmer("y ~ center(x) + (1 | g)", d)
    one = predict(m, pd.DataFrame({"x": [d["x"].mean() + 1.0]}), re_form="NA")
    assert one[0] == pytest.approx(m.beta[0] + m.beta[1])  # centred on the fitted mean, not 0


def test_center_new_rows(hsb):
    from twolevel.data.centering import center

    c = center(hsb, "ses", by="school")
    nd = pd.DataFrame({"ses": [0.5, 0.5], "school": [1224, "new"], "meanses": [np.nan, 0.2]})
    out = center_new_rows(_design_stub(hsb), nd, "ses", c.group_means, name="cses",
                          means_column="meanses")
    assert out["cses"].iloc[0] == pytest.approx(0.5 - c.group_means.loc[1224])
    assert out["cses"].iloc[1] == pytest.approx(0.3)
    with pytest.raises(DataError, match=r"school\(s\) 'new' are new: their mean of 'ses' is "
                                        "unknown"):
        center_new_rows(_design_stub(hsb), nd.drop(columns="meanses"), "ses", c.group_means,
                        name="cses")


def _design_stub(hsb):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmer("mAch ~ cses + (1 | school)", hsb).design


def test_simulate_moments(m1):
    nd = pd.DataFrame({"Days": [5], "Subject": ["308"]})
    s = simulate(m1, 4000, seed=11, newdata=nd).iloc[0].to_numpy()
    # use_u=False: Var = z₀ᵀT̂z₀ + σ̂² = 2239.877 (predict-simulate-r2.md §2.1);
    # 4000 draws: SE of the var ≈ 50
    assert s.mean() == pytest.approx(303.74153, abs=4 * np.sqrt(2239.877 / 4000))
    assert s.var(ddof=1) == pytest.approx(2239.877, abs=4 * 2239.877 * np.sqrt(2 / 4000))
    u = simulate(m1, 4000, seed=11, newdata=nd, use_u=True).iloc[0].to_numpy()
    assert u.mean() == pytest.approx(351.99496, abs=4 * np.sqrt(654.94 / 4000))
    assert u.var(ddof=1) == pytest.approx(654.94, abs=4 * 654.94 * np.sqrt(2 / 4000))
    full = simulate(m1, 3, seed=1)
    assert full.shape == (180, 3) and list(full.columns) == ["sim_1", "sim_2", "sim_3"]
    assert np.array_equal(full.to_numpy(), simulate(m1, 3, seed=1).to_numpy())
    with pytest.raises(DataError, match="new level"):
        simulate(m1, 2, newdata=pd.DataFrame({"Days": [1], "Subject": ["nope"]}))
    with pytest.raises(DataError, match="newdata lacks the grouping column 'Subject'"):
        simulate(m1, 2, newdata={"Days": [1]})
    # two rows of one new subject share its effect: their difference has variance 2σ̂² + τ11·1
    two = simulate(m1, 4000, seed=5, allow_new_levels=True,
                   newdata={"Days": [0, 1], "Subject": ["nn", "nn"]}).to_numpy()
    diff = two[1] - two[0]
    expect = 2 * 654.94 + 35.071714
    assert diff.var(ddof=1) == pytest.approx(expect, abs=4 * expect * np.sqrt(2 / 4000))


def test_bootstrap_table_and_intervals(m1):
    b = bootstrap(m1, 60, seed=3)
    assert b.nsim == 60 and b.n_failed == 0
    assert list(b.table.columns[:4]) == ["objective", "(Intercept)", "Days", "sigma"]
    assert b.estimate["objective"] == pytest.approx(m1.criterion)
    assert b.lme4_columns() == ["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject",
                                "sd_Days|Subject", "sigma", "(Intercept)", "Days"]
    # each row is a genuine refit: its objective is the REML criterion of its own θ̂
    assert np.all(b.table["objective"] > 1500) and b.table["sigma"].std() > 0
    for kind in ("perc", "basic", "norm", "shortest"):
        ci = b.confint(type=kind)
        assert np.all(ci.iloc[:, 0] < ci.iloc[:, 1])
    # the bootstrap SD of σ̂ is near its asymptotic SE (about 1.5 on sleepstudy)
    assert b.table["sigma"].std() == pytest.approx(1.5, rel=0.4)
    # confint(method="boot") is the same bootstrap with the same seed
    ci = confint(m1, "boot", nsim=60, seed=3)
    np.testing.assert_allclose(ci.to_numpy(), b.confint().to_numpy(), rtol=1e-12)


def test_norm_inter_is_boot_ci_perc():
    t = np.arange(1.0, 100.0)  # R = 99: (R+1)·0.025 = 2.5 is interpolated, 0.5 → t(50)
    lo, mid = norm_inter(t, [0.025, 0.5])
    assert mid == 50.0 and 2.0 < lo < 3.0
    assert norm_inter(np.arange(1.0, 20.0), [0.001])[0] == 1.0  # k = 0: the smallest


def test_bootstrap_prediction_interval_wider_with_few_schools(sleepstudy):
    small = sleepstudy[sleepstudy["Subject"].isin([308, 309, 310, 330, 331, 332])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = lmer(SLEEP, small)
    nd = pd.DataFrame({"Days": [5], "Subject": ["new"]})
    plug = predict(m, nd, allow_new_levels=True, interval="prediction")
    boot = predict(m, nd, allow_new_levels=True, interval="bootstrap", nsim=200, seed=4)
    assert boot["fit"].iloc[0] == plug["fit"].iloc[0]
    assert boot["lwr"].iloc[0] < boot["fit"].iloc[0] < boot["upr"].iloc[0]
    # with 6 subjects T̂ is uncertain: the bootstrap interval is not narrower than the plug-in
    assert (boot["upr"] - boot["lwr"]).iloc[0] > 0.9 * (plug["upr"] - plug["lwr"]).iloc[0]


def test_cli_predict_and_fit_json(tmp_path, capsys):
    nd = tmp_path / "nd.csv"
    pd.DataFrame({"Days": [5, 5], "Subject": ["308", "new"]}).to_csv(nd, index=False)
    out = tmp_path / "p.csv"
    rc = main(["predict", "sleepstudy", SLEEP, "--newdata", str(nd), "--out", str(out),
               "--allow-new-levels"])
    assert rc == 0
    got = pd.read_csv(out)
    assert list(got.columns) == ["Days", "Subject", "fit", "lwr", "upr", "se"]
    np.testing.assert_allclose(got[["lwr", "upr"]].to_numpy(),
                               [[299.43294, 404.55699], [209.09987, 398.38320]], rtol=1e-7)
    rc = main(["predict", "sleepstudy", SLEEP, "--newdata", str(nd), "--out", str(out),
               "--re-form", "NA", "--interval", "confidence", "--level", "0.9"])
    assert rc == 0 and pd.read_csv(out)["fit"].nunique() == 1
    rc = main(["predict", "sleepstudy", SLEEP, "--newdata", str(nd), "--out", str(out)])
    assert rc == 2
    assert "new level(s) of 'Subject' in newdata: 'new'" in capsys.readouterr().err
    pd.DataFrame({"Subject": ["308"]}).to_csv(nd, index=False)
    assert main(["predict", "sleepstudy", SLEEP, "--newdata", str(nd), "--out", str(out)]) == 2
    assert "newdata lacks column(s) 'Days'" in capsys.readouterr().err
    assert main(["fit", "sleepstudy", SLEEP, "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["icc"] == pytest.approx(0.72166026, rel=1e-7)
    assert js["icc_unadjusted"] == pytest.approx(0.52056886, rel=1e-7)
    assert [js["r2_marginal"], js["r2_conditional"]] == pytest.approx([0.27865106, 0.79921992],
                                                                      rel=1e-7)


def test_simulated_crossprods_have_the_exact_moments(m1):
    from twolevel.models.inference.simulate import _NoiseBasis, simulate_crossprods

    d, cp = m1.design, m1.crossprods
    basis = _NoiseBasis.of(d, cp)
    rng = np.random.default_rng(2)
    b = rng.standard_normal((d.n_groups, 2)) * [20.0, 5.0]
    sig, beta = m1.sigma, m1.beta
    draws = [simulate_crossprods(d, cp, basis, b, sig, beta, rng) for _ in range(4000)]
    c0 = np.array([x.c[0] for x in draws])
    xty = np.array([x.Xty for x in draws])
    yty = np.array([x.yty for x in draws])
    mean = d.X @ beta + np.einsum("nq,nq->n", d.Z, b[d.group_index])
    # E c_j = B_jβ + A_jb_j, Cov c_j = σ²A_j; Cov Xᵀy = σ²XᵀX; E yᵀy = ‖Xβ + Zb‖² + nσ²
    se = np.sqrt(np.diag(sig**2 * cp.A[0]) / 4000)
    assert np.all(np.abs(c0.mean(0) - (cp.B[0] @ beta + cp.A[0] @ b[0])) < 4 * se)
    np.testing.assert_allclose(np.cov(c0.T), sig**2 * cp.A[0], rtol=0.1)
    np.testing.assert_allclose(np.cov(xty.T), sig**2 * cp.XtX, rtol=0.1)
    e_yty = mean @ mean + d.n * sig**2
    assert abs(yty.mean() - e_yty) < 4 * yty.std() / np.sqrt(4000)
    # Var yᵀy = 4σ²‖μ‖² + 2nσ⁴ for y ~ N(μ, σ²I)
    assert yty.var() == pytest.approx(4 * sig**2 * (mean @ mean) + 2 * d.n * sig**4, rel=0.1)


def test_pickled_design_cannot_rebuild_transforms():
    import pickle

    from twolevel.data.errors import FormulaError
    from twolevel.models.design import make_design
    from twolevel.models.design.newdata import new_model_matrices

    rng = np.random.default_rng(1)
    d = pd.DataFrame({"g": np.repeat(np.arange(20), 5), "k": rng.choice(["a", "b"], 100),
                      "x": rng.normal(size=100), "y": rng.normal(size=100)})
    des = make_design("y ~ center(x) + k + (1 | g)", d)
    assert new_model_matrices(des, d.head(2)).X == pytest.approx(des.X[:2])
    again = pickle.loads(pickle.dumps(des))
    with pytest.raises(FormulaError, match="restored from a pickle.*refit the model"):
        new_model_matrices(again, d.head(2))
