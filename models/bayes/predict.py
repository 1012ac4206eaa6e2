"""Posterior predictions and Bayesian effect sizes from a
:class:`~twolevel.models.bayes.fit.BayesFit` (NumPy on the fit's posterior DataTree; no PyMC).

For each posterior draw s with (β_s, T_s = L_sL_sᵀ, σ_s) (§5.4 of ``predict-simulate-r2.md``):

* a new student in an **existing school** j uses that draw's school effects b_j^(s)
  (``b_school``: for the collapsed model the exact conditional draws b_j | y, β_s, T_s, σ_s), so
  μ^(s) = x₀ᵀβ_s + z₀ᵀb_j^(s) and ỹ^(s) = μ^(s) + σ_s·η;
* a student in a **new school** gets b_new^(s) = L_s·ξ ~ N(0, T_s) (brms' ``sample_new_levels =
  "gaussian"``), one draw per new school and posterior draw, shared by that school's rows;
  ``re_form="NA"`` gives every row its own fresh school (the population-level prediction).

The draws are returned as an ArviZ ``predictions`` group, dims (chain, draw, pred), with the new
rows in ``predictions_constant_data``; :meth:`BayesPredictions.summary` gives intervals.

Intervals (``summary(method=)``). Given a draw's parameters the predictive distribution is normal,
ỹ | θ_s ~ N(m_s, v_s) with m_s = x₀ᵀβ_s + z₀ᵀb_j^(s), v_s = σ_s² for an existing school and
m_s = x₀ᵀβ_s, v_s = z₀ᵀT_sz₀ + σ_s² for a new one (stored as ``pred_loc`` and ``pred_scale``). The
posterior predictive CDF is then the mixture F(y) = (1/S) Σ_s Φ((y − m_s)/√v_s), and the default
``"mixture"`` interval solves F(y) = α/2 and 1 − α/2 (Rao–Blackwellised quantiles). ``"draws"``
takes the sample quantiles of the S draws ỹ^(s) instead, as brms' ``predictive_interval`` does; for
S independent draws those cover ≈ level·(S − 1)/(S + 1) on average (0.9481 for 2 × 500 draws at
level 0.95), the mixture quantiles cover ``level`` up to the posterior's own Monte-Carlo error.

Bayesian R² (Gelman, Goodrich, Gabry & Vehtari 2019) and Nakagawa's R² and the ICC per draw are
in :func:`bayes_r2` and :func:`bayes_icc`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from scipy import special

from twolevel.data.errors import TwolevelError
from twolevel.models.design.newdata import (
    check_new_levels,
    new_model_matrices,
    newdata_frame,
    parse_re_form,
)

__all__ = ["BayesPredictions", "bayes_icc", "bayes_r2", "mixture_cdf", "mixture_quantile",
           "predict_bayes"]


def _flat(da: xr.DataArray, *dims: str) -> np.ndarray:
    return da.transpose("chain", "draw", *dims).to_numpy().reshape(
        -1, *[da.sizes[d] for d in dims])


def _chol(post: xr.Dataset, q: int) -> np.ndarray:
    """L_s (S, q, q) with T_s = L_sL_sᵀ (from ``chol_cov`` or, for independent effects, sd)."""
    from twolevel.models.bayes.fit import cholesky_draws

    return cholesky_draws(post, q)


@dataclass(frozen=True)
class BayesPredictions:
    """Posterior predictive draws for new rows.

    Fields
    ------
    datatree : groups ``predictions`` (``<response>`` the draws ỹ and ``mu`` the expected values,
        dims chain, draw, pred) and ``predictions_constant_data`` (the new rows).
    index : the newdata index (one ``pred`` per row).
    """

    datatree: xr.DataTree
    index: pd.Index
    response: str

    def summary(self, level: float = 0.95, method: str = "mixture") -> pd.DataFrame:
        """Per row: ``fit`` (posterior mean of ỹ), ``sd``, ``lwr`` and ``upr`` (equal-tailed
        ``level`` interval of ỹ: ``method="mixture"`` the quantiles of the normal mixture
        (1/S) Σ_s N(m_s, v_s), ``"draws"`` the sample quantiles of the draws; module docstring),
        and ``mu`` (posterior mean of the expected value)."""
        if not 0.0 < level < 1.0:
            raise TwolevelError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
        if method not in ("mixture", "draws"):
            raise TwolevelError(f"method must be 'mixture' or 'draws', got {method!r}")
        ds = self.datatree["predictions"].to_dataset()
        y = _flat(ds[self.response], "pred")
        a = (1.0 - level) / 2.0
        if method == "draws":
            lo, hi = np.quantile(y, [a, 1.0 - a], axis=0)
        else:
            loc, scale = _flat(ds["pred_loc"], "pred"), _flat(ds["pred_scale"], "pred")
            lo, hi = (mixture_quantile(loc, scale, p) for p in (a, 1.0 - a))
        return pd.DataFrame({"fit": y.mean(axis=0), "sd": y.std(axis=0, ddof=1), "lwr": lo,
                             "upr": hi, "mu": _flat(ds["mu"], "pred").mean(axis=0)},
                            index=self.index)


def mixture_cdf(y: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """F(y_i) = (1/S) Σ_s Φ((y_i − m_si)/s_si) for each column i of ``loc``/``scale`` (S, m)."""
    return special.ndtr((y[None, :] - loc) / scale).mean(axis=0)


def mixture_quantile(loc: np.ndarray, scale: np.ndarray, p: float, tol: float = 1e-10
                     ) -> np.ndarray:
    """The p-quantile of each column's normal mixture (1/S) Σ_s N(m_si, s_si²): the root of
    F(y) = p (:func:`mixture_cdf`) by Newton steps F/f, f(y) = (1/S) Σ_s φ(z_si)/s_si, kept inside
    the bracket [min_s q_s, max_s q_s] of the components' own p-quantiles q_s = m_s + s_sΦ⁻¹(p)
    (F(min q_s) ≤ p ≤ F(max q_s)) and bisected whenever a step would leave it."""
    qs = loc + scale * special.ndtri(p)  # each component's own p-quantile
    lo, hi = qs.min(axis=0), qs.max(axis=0)  # F(lo) ≤ p ≤ F(hi)
    y = np.median(qs, axis=0)
    for _ in range(100):
        zz = (y[None, :] - loc) / scale
        g = special.ndtr(zz).mean(axis=0) - p
        lo, hi = np.where(g < 0, y, lo), np.where(g > 0, y, hi)
        dens = (np.exp(-0.5 * zz**2) / scale).mean(axis=0) / np.sqrt(2 * np.pi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = y - g / dens
        bad = ~np.isfinite(step) | (step < lo) | (step > hi)
        new = np.where(bad, 0.5 * (lo + hi), step)
        done = np.abs(new - y) <= tol * (1.0 + np.abs(y))
        y = new
        if done.all():
            break
    return y


def predict_bayes(
    fit,
    newdata,
    re_form=None,
    allow_new_levels: bool = False,
    seed: int = 1,
) -> BayesPredictions:
    """Posterior predictive draws of ``newdata``'s rows (module docstring). ``re_form`` and
    ``allow_new_levels`` as :func:`twolevel.models.inference.predict.predict`.

    Parameters
    ----------
    fit : BayesFit
    newdata : DataFrame
        Rows with the formula's columns and the school.
    re_form, allow_new_levels : as :func:`predict`.
    seed : int
        Random seed of the new schools' effects and the students' noise.

    Returns
    -------
    BayesPredictions
        Draws of the mean and of a new student's outcome; ``.summary(level)`` gives intervals.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> d = d[d.schid.isin(sorted(d.schid.unique())[:40])]   # 40 schools, for speed
    >>> s = tl.SamplerSettings(chains=2, draws=100, tune=100, seed=1)
    >>> b = tl.fit_bayes("g1rscore ~ 1 + famsesc + (1 | schid)", d, settings=s, progress=False)
    >>> import pandas as pd
    >>> new = pd.DataFrame({"famsesc": [0.0], "schid": ["a new school"]})
    >>> list(tl.predict_bayes(b, new, allow_new_levels=True).summary().columns)[:2]
    ['fit', 'sd']
    """
    cond = parse_re_form(re_form)
    d = fit.design
    nd = newdata_frame(d, newdata, cond)
    rows = new_model_matrices(d, nd)
    if cond:
        check_new_levels(rows, allow_new_levels, d.group)
    post = fit.posterior
    C, D = post.sizes["chain"], post.sizes["draw"]
    beta, sigma = _flat(post["beta"], "fixed"), _flat(post["sigma"])
    L = _chol(post, d.q)
    S, m, q = beta.shape[0], rows.X.shape[0], d.q
    rng = np.random.default_rng([seed, 3])
    known = (rows.group_index >= 0) & cond
    # one new-school effect per (draw, new school); population rows are each their own school
    if cond:
        labels = pd.Series(nd[d.group].astype(str).to_numpy())
        new_code = np.full(m, -1)
        if (~known).any():
            new_code[~known] = pd.factorize(labels[~known])[0]
    else:
        new_code = np.arange(m)
    n_new = int(new_code.max()) + 1 if (~known).any() else 0
    mu = rows.X @ beta.T  # (m, S)
    if known.any():
        b = post["b_school"].transpose("chain", "draw", "school", "effect").to_numpy()
        b = b.reshape(S, d.n_groups, q)
        mu[known] += np.einsum("mq,smq->ms", rows.Z[known], b[:, rows.group_index[known], :])
    if n_new:
        xi = rng.standard_normal((S, n_new, q))
        b_new = np.einsum("skl,sjl->sjk", L, xi)  # N(0, T_s)
        nk = ~known
        mu[nk] += np.einsum("mq,smq->ms", rows.Z[nk], b_new[:, new_code[nk], :])
    y = mu + sigma[None, :] * rng.standard_normal((m, S))
    # ỹ | θ_s ~ N(loc, scale²): the new school's effect integrated out (module docstring)
    loc, scale = mu.copy(), np.broadcast_to(sigma[None, :], (m, S)).copy()
    if n_new:
        T = L @ np.swapaxes(L, 1, 2)
        Zn = rows.Z[nk]
        loc[nk] = rows.X[nk] @ beta.T
        scale[nk] = np.sqrt(np.einsum("mk,skl,ml->ms", Zn, T, Zn) + sigma[None, :] ** 2)
    coords = {"chain": post["chain"].to_numpy(), "draw": post["draw"].to_numpy(),
              "pred": np.arange(m)}
    pred = xr.Dataset(
        {d.response: (("chain", "draw", "pred"), y.T.reshape(C, D, m)),
         "mu": (("chain", "draw", "pred"), mu.T.reshape(C, D, m)),
         "pred_loc": (("chain", "draw", "pred"), loc.T.reshape(C, D, m)),
         "pred_scale": (("chain", "draw", "pred"), scale.T.reshape(C, D, m))}, coords=coords,
        attrs={"re_form": "NULL" if cond else "NA", "new_school_effects": "N(0, T_s) per draw",
               "seed": seed})
    const = xr.Dataset({str(c): ("pred", nd[c].to_numpy()) for c in nd.columns},
                       coords={"pred": np.arange(m)})
    dt = xr.DataTree.from_dict({"predictions": pred, "predictions_constant_data": const})
    return BayesPredictions(datatree=dt, index=nd.index, response=d.response)


def _fixed_variance(fit, beta: np.ndarray) -> np.ndarray:
    """σ²_f per draw: var(Xβ_s) = β_sᵀ cov(X) β_s (sample covariance, denominator n − 1)."""
    X = fit.design.X
    Xc = X - X.mean(axis=0)
    SX = Xc.T @ Xc / (X.shape[0] - 1)
    return np.einsum("sa,ab,sb->s", beta, SX, beta)


def _random_variance(fit, T: np.ndarray) -> np.ndarray:
    """σ²_r per draw as insight computes it: mean_i z_iᵀT_sz_i with z_i the fixed-effects
    columns named like the random effects (see :mod:`twolevel.models.inference.effect_sizes`)."""
    d = fit.design
    X, names = d.X, list(d.x_names)
    if "(Intercept)" not in names:
        X, names = np.column_stack([np.ones(d.n), X]), ["(Intercept)", *names]
    keep = [k for k, nm in enumerate(d.z_names) if nm in names]
    Zx = X[:, [names.index(d.z_names[k]) for k in keep]]
    ZtZ = Zx.T @ Zx / d.n
    return np.einsum("ab,sab->s", ZtZ, T[:, keep][:, :, keep])


def _as_draws(fit, v: np.ndarray) -> xr.DataArray:
    post = fit.posterior
    return xr.DataArray(v.reshape(post.sizes["chain"], post.sizes["draw"]),
                        dims=("chain", "draw"),
                        coords={"chain": post["chain"], "draw": post["draw"]})


def bayes_icc(fit) -> xr.Dataset:
    """The ICC per posterior draw, adjusted σ²_r/(σ²_r + σ²) and unadjusted
    σ²_r/(σ²_f + σ²_r + σ²), with σ²_f = var(Xβ_s) (the REML definitions at each draw).

    Parameters
    ----------
    fit : BayesFit

    Returns
    -------
    xarray.Dataset
        ``icc`` (adjusted) and ``icc_unadjusted`` per (chain, draw).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> d = d[d.schid.isin(sorted(d.schid.unique())[:40])]   # 40 schools, for speed
    >>> s = tl.SamplerSettings(chains=2, draws=100, tune=100, seed=1)
    >>> b = tl.fit_bayes("g1rscore ~ 1 + famsesc + (1 | schid)", d, settings=s, progress=False)
    >>> sorted(tl.bayes_icc(b).data_vars)
    ['icc', 'icc_unadjusted']
    """
    d, post = fit.design, fit.posterior
    L = _chol(post, d.q)
    T = L @ np.swapaxes(L, 1, 2)
    beta, sigma = _flat(post["beta"], "fixed"), _flat(post["sigma"])
    r = _random_variance(fit, T)
    f = _fixed_variance(fit, beta)
    e = sigma**2
    return xr.Dataset({"icc": _as_draws(fit, r / (r + e)),
                       "icc_unadjusted": _as_draws(fit, r / (f + r + e))})


def bayes_r2(fit) -> xr.Dataset:
    """R² per posterior draw: Gelman et al.'s Bayesian R² var(μ_s)/(var(μ_s) + σ_s²), with
    μ_s = Xβ_s + Zb_s the draw's fitted values (school effects included), and Nakagawa's
    marginal and conditional R² at the draw.

    Parameters
    ----------
    fit : BayesFit

    Returns
    -------
    xarray.Dataset
        The R²s per (chain, draw).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> d = d[d.schid.isin(sorted(d.schid.unique())[:40])]   # 40 schools, for speed
    >>> s = tl.SamplerSettings(chains=2, draws=100, tune=100, seed=1)
    >>> b = tl.fit_bayes("g1rscore ~ 1 + famsesc + (1 | schid)", d, settings=s, progress=False)
    >>> "r2_bayes" in tl.bayes_r2(b)
    True
    """
    d, post = fit.design, fit.posterior
    beta, sigma = _flat(post["beta"], "fixed"), _flat(post["sigma"])
    S = beta.shape[0]
    b = post["b_school"].transpose("chain", "draw", "school", "effect").to_numpy()
    b = b.reshape(S, d.n_groups, d.q)
    gelman = np.empty(S)
    for s in range(S):  # one pass over the rows per draw, O(n) memory
        mu = d.X @ beta[s] + np.einsum("nq,nq->n", d.Z, b[s, d.group_index])
        v = np.var(mu, ddof=1)
        gelman[s] = v / (v + sigma[s] ** 2)
    L = _chol(post, d.q)
    r = _random_variance(fit, L @ np.swapaxes(L, 1, 2))
    f = _fixed_variance(fit, beta)
    e = sigma**2
    return xr.Dataset({"r2_bayes": _as_draws(fit, gelman),
                       "r2_marginal": _as_draws(fit, f / (f + r + e)),
                       "r2_conditional": _as_draws(fit, (f + r) / (f + r + e))})
