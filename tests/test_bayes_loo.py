"""PSIS-LOO over all observations at once (twolevel.models.bayes.loo) equals ArviZ's ``az.loo`` to
1e-10: elpd, se, p, good_k, the warning, elpd_i, Pareto k and the smoothed log weights; and
``az.compare`` takes its result."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from twolevel.models.bayes.loo import loo


def _datatree(seed=0, C=4, D=300, N=60):
    """Posterior draws (with repeated draws, as NUTS produces) and a pointwise log-likelihood with
    well-behaved, heavy-tailed (high Pareto k) and tied columns."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(C, D, 3)).cumsum(axis=1) * 0.05 + rng.normal(size=(C, D, 3))
    rep = rng.random((C, D)) < 0.15  # repeat the previous draw
    for t in range(1, D):
        theta[:, t][rep[:, t]] = theta[:, t - 1][rep[:, t]]
    y = rng.normal(size=N)
    y[:3] = [6.0, -7.0, 9.0]  # outliers: large k
    mu = theta[..., 0:1]
    sd = np.exp(0.3 * theta[..., 1:2])
    ll = -0.5 * ((y - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)
    post = xr.Dataset({"a": (("chain", "draw", "k"), theta),
                       "s": (("chain", "draw"), theta[..., 2])})
    lik = xr.Dataset({"y": (("chain", "draw", "obs"), ll)}, coords={"obs": np.arange(N)})
    return xr.DataTree.from_dict({"posterior": post, "log_likelihood": lik})


@pytest.mark.parametrize("seed, D", [(0, 300), (1, 1000), (2, 57)])
def test_loo_equals_arviz(seed, D):
    import arviz as az

    dt = _datatree(seed, D=D)
    with warnings.catch_warnings(record=True) as w_ref:
        warnings.simplefilter("always")
        want = az.loo(dt, var_name="y", pointwise=True)
    with warnings.catch_warnings(record=True) as w_got:
        warnings.simplefilter("always")
        got = loo(dt, var_name="y")
    for f in ("elpd", "se", "p", "good_k"):
        assert getattr(got, f) == pytest.approx(getattr(want, f), rel=1e-10, abs=1e-12), f
    assert (got.warning, got.n_samples, got.n_data_points) == (
        want.warning, want.n_samples, want.n_data_points)
    assert want.warning  # the outliers have k above the threshold, and both warn
    assert [str(w.message) for w in w_got if "Pareto" in str(w.message)] == [
        str(w.message) for w in w_ref if "Pareto" in str(w.message)]
    for f in ("elpd_i", "pareto_k"):
        g, r = getattr(got, f), getattr(want, f)
        assert g.dims == r.dims
        np.testing.assert_allclose(g.to_numpy(), r.to_numpy(), rtol=1e-10, atol=1e-12, err_msg=f)
    g = got.log_weights.transpose(*want.log_weights.dims).to_numpy()
    r = want.log_weights.to_numpy()
    # draws with equal log-likelihood (repeated draws) may swap their smoothed weights: ArviZ's
    # order among ties is its unstable argsort's; compare each observation's sorted weights
    S = r.shape[-2] * r.shape[-1]
    np.testing.assert_allclose(np.sort(g.reshape(-1, S), axis=1), np.sort(r.reshape(-1, S), axis=1),
                               rtol=1e-10, atol=1e-12)


def test_compare_takes_the_result():
    import arviz as az

    dt = _datatree(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = az.compare({"ours": loo(dt, var_name="y"), "arviz": az.loo(dt, var_name="y",
                                                                      pointwise=True)})
    assert abs(float(c["elpd_diff"].max())) < 1e-8


def test_too_few_draws_is_refused():
    dt = _datatree(4, C=1, D=20)
    with pytest.raises(ValueError, match="at least 5"):
        loo(dt, var_name="y", reff=0.5)
