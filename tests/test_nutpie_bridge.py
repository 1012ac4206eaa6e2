"""The sampler bridge (:mod:`twolevel.models.bayes.nutpie_bridge`): nutpie's internals are used
only on the versions it knows; on any other version (simulated by emptying the list of known
versions, or forced with TWOLEVEL_NUTPIE_ROUTE=public) the default fit takes nutpie's public API
on the collapsed PyMC model, says so once, and still passes the diagnostic gate on the lecture
data with posterior means within 0.2 posterior SD of lme4's REML estimates (golden file)."""

from __future__ import annotations

import warnings

import pytest
from conftest import load_golden

from twolevel.data.loaders import load_data
from twolevel.models.bayes import nutpie_bridge, sampler
from twolevel.models.bayes.fit import fit_bayes


def test_version_check(monkeypatch):
    monkeypatch.delenv(nutpie_bridge.ROUTE_ENV, raising=False)
    v = nutpie_bridge.nutpie_version()
    assert v is not None and v.startswith(nutpie_bridge.SUPPORTED)
    assert nutpie_bridge.private_route()
    monkeypatch.setattr(nutpie_bridge, "SUPPORTED", ("0.0.",))
    assert not nutpie_bridge.private_route()
    monkeypatch.undo()
    monkeypatch.setenv(nutpie_bridge.ROUTE_ENV, "public")
    assert not nutpie_bridge.private_route()
    assert sampler.kernel_description().startswith("nutpie public API")


@pytest.mark.slow
def test_unknown_nutpie_version_falls_back_to_the_public_route(monkeypatch):
    g = load_golden("lecture_lme4.json")
    monkeypatch.delenv(nutpie_bridge.ROUTE_ENV, raising=False)
    monkeypatch.setattr(nutpie_bridge, "SUPPORTED", ("0.0.",))
    monkeypatch.setattr(nutpie_bridge, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match=r"^twolevel: fit_bayes samples through nutpie's "
                      r"public API .*: nutpie \S+ is not a version twolevel's sampler bridge "
                      r"knows \(0\.0\.x\); install 'nutpie>=0\.0\.0,<0\.17'"):
        fit = fit_bayes(g["formula_m1"], load_data("lecture"), progress=False)
    assert fit.sampler == "nutpie public API, collapsed PyMC model compiled by PyTensor/Numba"
    d = fit.diagnostics
    assert d.divergences == 0 and d.max_rhat <= 1.01
    assert d.min_ess_bulk >= 400 and d.min_ess_tail >= 400 and d.passed
    f = fit.to_frame()
    for name, reml in g["m1_reml"]["fixef"].items():
        row = f.loc[f"fixef:{name}"]
        assert abs(row["mean"] - reml) <= 0.2 * row["sd"], (name, row["mean"], reml, row["sd"])
    with warnings.catch_warnings():  # said once
        warnings.simplefilter("error")
        nutpie_bridge.warn_public("fit_bayes")


def test_data_swaps_need_the_private_route(monkeypatch):
    """``sample_nuts(data=...)`` swaps pm.Data values into the cached PyTensor functions, which
    only nutpie's private helpers give: on an unknown nutpie it says what to install."""
    from twolevel.data.errors import TwolevelError
    from twolevel.models.bayes.pymc_model import build_model, sample_nuts
    from twolevel.models.design import make_design

    built = build_model(make_design("g1rscore ~ 1 + famsesc + (1 | schid)",
                                    load_data("lecture").head(400)))
    monkeypatch.setattr(nutpie_bridge, "SUPPORTED", ("0.0.",))
    with pytest.raises(TwolevelError, match=r"^data= swaps need nutpie's private helpers, which "
                       r"this nutpie version does not have: install 'nutpie>=0\.16\.0,<0\.17'$"):
        sample_nuts(built, draws=10, tune=10, chains=1, cores=1, seed=1, target_accept=0.8,
                    progress=False, data={"c": None})
