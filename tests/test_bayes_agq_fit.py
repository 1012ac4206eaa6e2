"""The integrated (AGQ) sampler inside ``fit_bayes(..., family=...)``
(:mod:`twolevel.models.bayes.agq_sampler`): the DataTree has the full non-centred sampler's
variables, dims and coordinates; the per-school log-likelihood stored by the sampler equals the
kernel at the draws; the posterior (hyperparameters and 10 named schools' effects) agrees with the
full sampler's within 4 Monte-Carlo SEs on a Poisson and a Bernoulli data set and on the
lecture's binary outcome (fixed seeds); what the sampler cannot fit falls back (or, asked for,
raises) with a message saying what to do."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest

from twolevel.data.errors import TwolevelError
from twolevel.models.bayes import agq
from twolevel.models.bayes.agq_sampler import _unconstrained
from twolevel.models.bayes.fit import SamplerSettings, fit_bayes


def _sim(seed=4, J=30, family="poisson"):
    rng = np.random.default_rng(seed)
    nj = rng.integers(4, 12, J)
    g = np.repeat(np.arange(J), nj)
    x = rng.normal(size=g.size)
    b = rng.normal(size=(J, 2)) * [0.6, 0.3]
    eta = -0.2 + 0.4 * x + b[g, 0] + b[g, 1] * x
    expo = rng.uniform(0.5, 2.0, g.size)
    return pd.DataFrame({"g": [f"s{k:02d}" for k in g], "x": x, "expo": expo,
                         "count": rng.poisson(expo * np.exp(eta)),
                         "y": rng.binomial(1, 1 / (1 + np.exp(-eta)))})


def _fit(formula, d, family, sampler, draws=1000, chains=4, seed=1):
    s = SamplerSettings(draws=draws, tune=1000, chains=chains, seed=seed, adaptation="diag",
                        target_accept=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_bayes(formula, d, family=family, sampler=sampler, settings=s,
                         progress=False)


def test_datatree_has_the_full_samplers_layout_and_stored_school_loglik():
    d = _sim(J=12)
    f = "count ~ 1 + x + offset(log(expo)) + (1 + x | g)"
    a = _fit(f, d, "poisson", "integrated", draws=100, chains=2)
    b = _fit(f, d, "poisson", "full", draws=100, chains=2)
    assert "integrated" in a.sampler and "integrated" not in b.sampler
    for grp in ("posterior", "log_likelihood"):
        da, db = a.datatree[grp].to_dataset(), b.datatree[grp].to_dataset()
        assert set(da.data_vars) == set(db.data_vars), grp
        for v in da.data_vars:
            assert da[v].dims == db[v].dims, (grp, v)
        for c in ("school", "effect", "fixed", "effect_nc"):
            if c in db.coords:
                assert list(da[c].to_numpy()) == list(db[c].to_numpy())
    # the stored per-school log-likelihood is the kernel's Q_j at the draw
    post = a.posterior
    xs = _unconstrained(post, "lkj")
    from twolevel.models.bayes.agq_sampler import compile_agq
    from twolevel.models.bayes.glmm_fit import glmer_design
    from twolevel.models.glmm.family import get_family

    design, resp = glmer_design(f, d, get_family("poisson"), None)
    model = compile_agq(design, resp.y, resp.w, resp.offset, "poisson", "log", a.priors)
    ll = a.datatree["log_likelihood"]["count_by_school"].to_numpy().reshape(-1, 12)
    for s in (0, 57, 199):
        np.testing.assert_allclose(ll[s], agq.agq_schools(xs[s], model.data), rtol=1e-12)
    # b_school = L z
    L = np.zeros((xs.shape[0], 2, 2))
    L[:, [0, 1, 1], [0, 0, 1]] = post["chol_cov"].to_numpy().reshape(-1, 3)
    z = post["z"].to_numpy().reshape(-1, 12, 2)
    np.testing.assert_allclose(post["b_school"].to_numpy().reshape(-1, 12, 2),
                               np.einsum("skl,sjl->sjk", L, z), rtol=1e-12)
    assert post.attrs["agq_nodes"] == agq.default_agq_nodes(2)


def _agree(a, b, names):
    """Means and 5%/95% quantiles of a and b within 4 combined Monte-Carlo SEs."""
    bad = []
    for var, sel in names:
        xa = a.posterior[var].sel(sel)
        xb = b.posterior[var].sel(sel)
        for stat, kw in (("mean", {"method": "mean"}), ("q05", {"method": "quantile",
                                                                  "prob": 0.05}),
                         ("q95", {"method": "quantile", "prob": 0.95})):
            ma = float(az.mcse(xa.to_numpy(), **kw))
            mb = float(az.mcse(xb.to_numpy(), **kw))
            if stat == "mean":
                va, vb = float(xa.mean()), float(xb.mean())
            else:
                p = kw["prob"]
                va, vb = float(np.quantile(xa, p)), float(np.quantile(xb, p))
            if abs(va - vb) > 4 * np.hypot(ma, mb):
                bad.append((var, sel, stat, va, vb, np.hypot(ma, mb)))
    return bad


@pytest.mark.slow
@pytest.mark.parametrize(("family", "formula"), [
    ("poisson", "count ~ 1 + x + offset(log(expo)) + (1 + x | g)"),
    ("binomial", "y ~ 1 + x + (1 + x | g)")])
def test_posterior_agrees_with_the_full_sampler(family, formula):
    d = _sim(J=30, seed=8)
    a = _fit(formula, d, family, "integrated")
    b = _fit(formula, d, family, "full")
    # (the agreement is judged in Monte-Carlo SEs, so a low ESS of a slope SD near 0 at this
    # small design widens the bounds rather than invalidating the comparison)
    assert a.diagnostics.divergences == 0 and a.diagnostics.max_rhat < 1.02, a.diagnostics
    names = [("beta", {"fixed": k}) for k in ("(Intercept)", "x")]
    names += [("sd", {"effect": k}) for k in ("(Intercept)", "x")]
    names += [("corr", {"effect": "x", "effect_b": "(Intercept)"})]
    schools = [f"s{k:02d}" for k in range(0, 30, 3)]  # 10 named schools
    names += [("b_school", {"school": s, "effect": e}) for s in schools
              for e in ("(Intercept)", "x")]
    bad = _agree(a, b, names)
    # 3 statistics × 25 quantities: at 4 SEs a single chance exceedance is ~0.5% likely
    assert len(bad) <= 1, bad


@pytest.mark.slow
def test_lecture_binary_outcome_agrees_with_the_full_sampler():
    """The lecture's binary outcome (``g1below``, 742 schools, random SES slope) with each
    sampler's default settings (integrated: 4 × 1,000 after 500; full: 4 × 2,000 after 1,000,
    diagonal adaptation): the means and 5%/95% quantiles of β, the SDs, the correlation and 10
    named schools' effects within 4 combined Monte-Carlo SEs."""
    import twolevel as tl

    d = tl.load_data("lecture")
    f = "g1below ~ 1 + famsesc + (1 + famsesc | schid)"
    fits = {}
    for sampler in ("integrated", "full"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[sampler] = fit_bayes(f, d, family="binomial", sampler=sampler, progress=False,
                                      log_likelihood="none")
        assert fits[sampler].diagnostics.divergences == 0, (sampler, fits[sampler].diagnostics)
    a, b = fits["integrated"], fits["full"]
    assert "integrated" in a.sampler and "integrated" not in b.sampler
    eff = ("(Intercept)", "famsesc")
    names = [("beta", {"fixed": k}) for k in eff] + [("sd", {"effect": k}) for k in eff]
    names += [("corr", {"effect": "famsesc", "effect_b": "(Intercept)"})]
    schools = [str(s) for s in a.posterior["school"].to_numpy()[::74][:10]]  # 10 named schools
    names += [("b_school", {"school": s, "effect": e}) for s in schools for e in eff]
    bad = _agree(a, b, names)
    assert len(bad) <= 1, bad  # 75 comparisons at 4 SEs: one chance exceedance ~0.5% likely


def test_what_the_integrated_sampler_cannot_fit():
    rng = np.random.default_rng(0)
    d = _sim(J=10)
    for k in (2, 3, 4):
        d[f"x{k}"] = rng.normal(size=len(d))
    f4 = "count ~ 1 + x + (1 + x + x2 + x3 | g)"
    with pytest.raises(TwolevelError, match="4 random effects per school: the integrated "
                                            "likelihood takes at most 3.*sampler='full'"):
        fit_bayes(f4, d, family="poisson", sampler="integrated", progress=False)
    with pytest.raises(TwolevelError, match="sampler 'quadrature' is not one of auto, "
                                            "integrated, full"):
        fit_bayes("count ~ 1 + (1 | g)", d, family="poisson", sampler="quadrature")
    s = SamplerSettings(draws=20, tune=20, chains=1, adaptation="diag")
    with pytest.warns(UserWarning, match="4 random effects per school.*sampling every school "
                                         "effect instead"):
        fit = fit_bayes(f4, d, family="poisson", settings=s, progress=False,
                        log_likelihood="none", sampler="auto")
    assert "integrated" not in fit.sampler


def test_without_log_likelihood_the_sampler_stores_the_draws_only():
    """``log_likelihood="none"``: nutpie's expand callback gets no room for the Q_j (no
    evaluation per draw), and the fit has the same posterior draws as with them."""
    d = _sim(J=12)
    f = "count ~ 1 + x + offset(log(expo)) + (1 + x | g)"
    s = SamplerSettings(draws=50, tune=50, chains=2, seed=3, adaptation="diag")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = fit_bayes(f, d, family="poisson", sampler="integrated", settings=s, progress=False,
                      log_likelihood="none")
        b = fit_bayes(f, d, family="poisson", sampler="integrated", settings=s, progress=False,
                      log_likelihood="school")
    assert "log_likelihood" not in a.datatree.children
    assert "_ll_school" not in a.posterior and "_ll_school" not in b.posterior
    assert b.datatree["log_likelihood"]["count_by_school"].sizes["school"] == 12
    np.testing.assert_array_equal(a.posterior["beta"].to_numpy(), b.posterior["beta"].to_numpy())
    np.testing.assert_array_equal(a.posterior["b_school"].to_numpy(),
                                  b.posterior["b_school"].to_numpy())
    # the schools are labelled either way (the labels do not come with the stored Q_j)
    for fit in (a, b):
        assert list(fit.posterior.indexes["school"]) == sorted(d["g"].unique())
        assert float(fit.posterior["b_school"].sel(school="s03", effect="x").mean()) == float(
            fit.posterior["b_school"].isel(school=3, effect=1).mean())
