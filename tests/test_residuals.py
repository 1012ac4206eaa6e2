"""Level-2 residual summary (the lecture's skim table) and the per-school table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import load_golden

from twolevel.models.design import group_crossprods, make_design
from twolevel.models.inference.residuals import (
    format_residual_summary,
    level2_residual_summary,
    school_table,
    sparkline,
    write_csv_atomic,
)

HSB = "mAch ~ 1 + cses + (1 + cses | school)"


def test_sparkline():
    assert sparkline(np.arange(8.0)) == "████████"
    assert sparkline([0, 0, 0, 0, 1, 7]) == "█▂     ▂"
    assert sparkline([1.0, 1.0]) == "█"
    x = np.random.default_rng(0).standard_normal(5000)
    s = sparkline(x)
    assert len(s) == 8 and s[3] in "▇█" and s[0] in "▁▂ "


@pytest.fixture(scope="module")
def hsb_table(hsb):
    g = load_golden("hsb82_lme4.json")["m1_reml"]
    des = make_design(HSB, hsb)
    return school_table(des, group_crossprods(des), np.asarray(g["theta"]), g["sigma"]), g


def test_school_table_matches_lme4(hsb_table):
    tab, g = hsb_table
    assert len(tab) == 160 and tab["n_j"].sum() == 7185
    for k, ref in enumerate(g["ranef_first3"]):  # lme4 ranef(condVar=TRUE), goldens
        row = tab.iloc[k]
        assert float(row["school"]) == float(ref["group"])
        assert [row["BLUP_(Intercept)"], row["BLUP_cses"]] == pytest.approx(ref["u"], rel=1e-6)
        assert row["condSD_(Intercept)"] == pytest.approx(np.sqrt(ref["cond_var"][0]), rel=1e-6)
        assert row["condSD_cses"] == pytest.approx(np.sqrt(ref["cond_var"][2]), rel=1e-6)
    # mean school reliability = HLM's reliability (.9076, .2637); EB = γ + u
    assert tab["reliability_(Intercept)"].mean() == pytest.approx(0.9076, abs=5e-5)
    assert tab["reliability_cses"].mean() == pytest.approx(0.2637, abs=5e-5)
    np.testing.assert_allclose(tab["EB_cses"], g["fixef"]["cses"] + tab["BLUP_cses"])
    # users-needs §5.4: var(EB) < τ < var(OLS), for both coefficients
    assert tab["EB_cses"].var() < 0.694 < tab["OLS_cses"].var()
    assert tab["EB_(Intercept)"].var() < 8.681 < tab["OLS_(Intercept)"].var()
    # smallest school (n = 14): λ0 ≈ .77, λ1 ≈ .12
    small = tab.loc[tab["n_j"].idxmin()]
    assert small["reliability_(Intercept)"] == pytest.approx(0.77, abs=0.01)
    assert small["reliability_cses"] == pytest.approx(0.12, abs=0.01)
    # intercept weight is 1/(τ00 + σ²/n_j) for a group-mean-centred slope
    tau00, s2 = g["varcorr"]["school:(Intercept):"], g["sigma"] ** 2
    np.testing.assert_allclose(tab["weight_(Intercept)"], 1 / (tau00 + s2 / tab["n_j"]), rtol=1e-6)


def test_residual_summary(hsb_table):
    tab, _ = hsb_table
    u = tab[["BLUP_(Intercept)", "BLUP_cses"]].to_numpy()
    s = level2_residual_summary(u)
    assert list(s.columns) == ["variable", "mean", "sd", "p0", "p25", "p50", "p75", "p100", "hist"]
    assert list(s["variable"]) == ["u0j", "u1j"]
    assert s.loc[0, "mean"] == pytest.approx(0.0, abs=1e-8)  # BLUPs sum to zero here
    assert s.loc[0, "p0"] == pytest.approx(u[:, 0].min()) and s.loc[1, "p100"] == u[:, 1].max()
    assert s.loc[1, "sd"] == pytest.approx(np.std(u[:, 1], ddof=1))
    text = format_residual_summary(s)
    assert text.splitlines()[0].split() == list(s.columns)
    assert text.splitlines()[1].split()[1] == "0"  # mean prints as 0, like the slide
    assert len(s.loc[0, "hist"]) == 8


def test_csv_atomic(tmp_path, hsb_table):
    tab, _ = hsb_table
    out = write_csv_atomic(tab, tmp_path / "sub" / "schools.csv")
    back = pd.read_csv(out)
    assert back.shape == tab.shape and list(tmp_path.joinpath("sub").iterdir()) == [out]

    class Boom(pd.DataFrame):
        def to_csv(self, *a, **k):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_csv_atomic(Boom(tab), tmp_path / "sub" / "other.csv")
    assert list(tmp_path.joinpath("sub").iterdir()) == [out]  # nothing half-written left
