"""Studentized parametric-bootstrap prediction intervals (bootstrap-t) for a fit with several
grouping factors: the one-factor construction of
:func:`twolevel.models.inference.simulate.bootstrap_predict` with nested (or crossed) factors.

The plug-in prediction interval ŷ₀ ± z·ŝ₀ of
:func:`twolevel.models.inference.predict_multi.predict_intervals_multi` treats θ̂ and σ̂ as the
truth, and falls short of its level by O(1/J) (J top-level groups). Per replicate r = 1…R:

1. effects b*_kℓ = σ̂T̂_k u_kℓ, u ~ N(0, I), for every level ℓ of every factor k, and
   y* = Xβ̂ + Σ_k Z_k b*_k + σ̂ε (lme4's ``simulate(use.u = FALSE)``);
2. the new student's score y₀* = x₀ᵀβ̂ + Σ_k z₀ₖᵀb₀ₖ + σ̂ε₀ with b₀ₖ = b*_k at the row's level of
   factor k when the fit has that level (and ``re_form`` keeps the factor), a fresh
   N(0, Σ̂_k = σ̂²T̂_kT̂_kᵀ) draw otherwise: a known class takes the replicate's school and class
   effects, a new class in a known school the school's effect and a fresh class effect, a new
   school fresh effects at both levels. Given the replicate, y₀* ~ N(μ₀*, v₀) with
   μ₀* = x₀ᵀβ̂ + Σ_{k known} z₀ₖᵀb*_k and v₀ = Σ_{k new} z₀ₖᵀΣ̂_kz₀ₖ + σ̂²
   (:func:`new_score_variance`);
3. the model is refitted on the same design with y* (the per-innermost-group statistics are
   recomputed, the optimizer starts at θ̂, lme4's ``refit``), giving the refit's point
   prediction ŷ₀* and plug-in prediction SD ŝ₀* (the same formulas as the fit's);
4. t*_r = (y₀* − ŷ₀*)/ŝ₀*, which given the replicate is N(c_r, s_r²) with
   c_r = (μ₀* − ŷ₀*)/ŝ₀* and s_r = √v₀/ŝ₀*.

The interval is ŷ₀ + ŝ₀·[q_a, q_{1−a}], a = (1 − level)/2, with q_p the p-quantile of the
bootstrap distribution of t*. ``quantiles="mixture"`` (the default) takes it as the mixture
(1/R) Σ_r N(c_r, s_r²) (:func:`twolevel.models.bayes.predict.mixture_quantile`): the same
distribution as the draws', its tails Rao–Blackwellised over ε₀ and the fresh effects, so the
interval's own Monte-Carlo noise is several times smaller than with drawn t* (the endpoints of
199 draws move by about 0.2 ŝ₀). ``quantiles="draws"`` is the one-factor construction of
:func:`twolevel.models.inference.simulate.bootstrap_predict`: t*_r = c_r + s_rξ_r drawn and
``boot:::norm.inter`` quantiles (:func:`twolevel.models.inference.simulate.norm_inter`). When T̂*
is underestimated, ŝ₀* is too small and t* has heavy tails, which widens the interval.
Replicates whose refit fails are left out (``n_failed``).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np

from twolevel.data.errors import TwolevelError

__all__ = ["QUANTILES", "BootPrediction", "bootstrap_predict_multi", "new_score_variance",
           "refit_multi"]


def _check_level(level) -> float:
    if not 0.0 < float(level) < 1.0:
        raise TwolevelError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    return float(level)


def refit_multi(fit, y: np.ndarray):
    """The fit's model refitted to the response ``y`` on the same design (lme4's ``refit``):
    the statistics of the fit's engine recomputed from the rows, the fit's criterion (REML or
    ML), lme4's optimizer path started at the fit's θ̂.

    Parameters
    ----------
    fit : a :class:`~twolevel.models.lmm.multi_results.MultiFit` with its rows in memory.
    y : (n,) the new response.

    Returns
    -------
    MultiFit

    Raises
    ------
    numpy.linalg.LinAlgError
        When the refit's blocks are not positive definite at its optimum.

    Examples
    --------
    >>> refit_multi(fit, simulate_multi(fit, 1, seed=1)[:, 0])   # doctest: +SKIP
    """
    from twolevel.models.design.multi_stats import crossed_stats, nested_stats
    from twolevel.models.lmm.multi import _deviance_fn, _state_fn
    from twolevel.models.lmm.multi_results import MultiFit
    from twolevel.models.lmm.optimize import optimize_theta

    des = dataclasses.replace(fit.design, y=np.asarray(y, dtype=float), notes=())
    st = nested_stats(des) if fit.engine == "nested" else crossed_stats(des)
    fn = _deviance_fn(fit.engine)(des, st, reml=fit.reml)
    opt = optimize_theta(fn, fit.theta, des.theta_lower)
    theta = np.asarray(opt.theta, dtype=float)
    state = _state_fn(fit.engine)(des, st, theta, modes=True)
    return MultiFit(design=des, stats=st, engine=fit.engine, reml=fit.reml, theta=theta,
                    state=state, optsum=opt, data_name=fit.data_name)


QUANTILES = ("mixture", "draws")


@dataclass(frozen=True)
class BootPrediction:
    """A bootstrap-t prediction interval per row (module docstring).

    Fields
    ------
    lwr, upr : (m,) the interval.  center, scale : (R, m) each replicate's conditional normal
    of t* (NaN rows: failed refits).  tstat : (R, m) the drawn t* = center + scale·ξ.
    s0 : (m,) the fit's plug-in prediction SD.  level : the level.  quantiles : "mixture" or
    "draws".  n_failed : refits that failed.
    """

    lwr: np.ndarray
    upr: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    tstat: np.ndarray
    s0: np.ndarray
    level: float
    quantiles: str
    n_failed: int


def _effect_draws(fit, rng: np.random.Generator) -> list[np.ndarray]:
    """b*_k = σ̂ U_k T̂_kᵀ, (ℓ_k, q_k) per factor, U_k ~ N(0, I)."""
    d = fit.design
    return [fit.sigma * rng.standard_normal((f.n_levels, f.q)) @ d.factor_T(fit.theta, k).T
            for k, f in enumerate(d.factors)]


def new_score_variance(fit, rows, use: list[np.ndarray]) -> np.ndarray:
    """v₀ = Σ_{k: level not used} z₀ₖᵀΣ̂ₖz₀ₖ + σ̂², the variance of a new student's score around
    x₀ᵀβ̂ + Σ_{k used} z₀ₖᵀb_k given the effects of the levels the row uses."""
    d = fit.design
    s2 = fit.sigma**2
    v = np.full(rows.X.shape[0], s2)
    for k in range(len(d.factors)):
        new = ~use[k]
        if new.any():
            T = d.factor_T(fit.theta, k)
            v[new] += np.einsum("mq,qr,mr->m", rows.Z[k][new], s2 * T @ T.T, rows.Z[k][new])
    return v


def bootstrap_predict_multi(fit, rows, *, nsim: int = 1000, rng=1, level: float = 0.95,
                            quantiles: str = "mixture") -> BootPrediction:
    """Bootstrap-t prediction intervals for new rows of a several-factor fit (module docstring).

    Parameters
    ----------
    fit : a :class:`~twolevel.models.lmm.multi_results.MultiFit` with its rows in memory.
    rows : :class:`~twolevel.models.inference.predict_multi.MultiNewRows` (``re_form`` None or
        "NA": every factor or none).
    nsim : bootstrap replicates R.
    rng : a seed or a ``numpy.random.Generator``.
    level : coverage.
    quantiles : "mixture" (default: the quantiles of the mixture of the replicates' conditional
        normals of t*) or "draws" (``norm.inter`` quantiles of drawn t*; 199, 399, 999
        replicates make the 95% quantiles order statistics).

    Returns
    -------
    BootPrediction

    Raises
    ------
    TwolevelError
        ``nsim`` not a positive whole number, ``level`` outside (0, 1), an unknown
        ``quantiles``, every refit failed, or a fit whose statistics came from DuckDB or Dask
        (no rows to simulate on).

    Examples
    --------
    >>> rows = multi_new_rows(fit, nd, allow_new_levels=True)   # doctest: +SKIP
    >>> bootstrap_predict_multi(fit, rows, nsim=200, rng=1).lwr   # doctest: +SKIP
    """
    from twolevel.models.bayes.predict import mixture_quantile
    from twolevel.models.fit_base import as_generator
    from twolevel.models.inference.predict_multi import (
        plugin_variance_multi,
        point_predictions_multi,
        raw_crossprods,
    )
    from twolevel.models.inference.simulate import _check_nsim, norm_inter

    nsim = _check_nsim(nsim)
    level = _check_level(level)
    if quantiles not in QUANTILES:
        raise TwolevelError(f"quantiles must be 'mixture' or 'draws', got {quantiles!r}")
    fit._need_rows("bootstrap prediction intervals")
    gen = as_generator(rng)
    d = fit.design
    m = rows.X.shape[0]
    use = [(rows.idx[k] >= 0) & bool(rows.masks[k].any()) for k in range(len(d.factors))]
    mean_rows = d.X @ fit.state.beta
    mean0 = rows.X @ fit.state.beta
    sd0 = np.sqrt(new_score_variance(fit, rows, use))
    raw = raw_crossprods(d)  # [Z X]ᵀ[Z X]: the same for every refit
    center = np.full((nsim, m), np.nan)
    scale = np.full((nsim, m), np.nan)
    for r in range(nsim):
        b = _effect_draws(fit, gen)
        y = mean_rows + fit.sigma * gen.standard_normal(d.n)
        mu0 = mean0.copy()  # the new score's mean given the replicate's effects it shares
        for k, f in enumerate(d.factors):
            y += np.einsum("nq,nq->n", f.Z, b[k][f.codes])
            mu0[use[k]] += np.einsum("mq,mq->m", rows.Z[k][use[k]],
                                     b[k][rows.idx[k][use[k]]])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = refit_multi(fit, y)
                yhat = point_predictions_multi(ref, rows)
                s_star = np.sqrt(plugin_variance_multi(ref, rows, "prediction", raw))
        except (TwolevelError, np.linalg.LinAlgError, ValueError, RuntimeError):
            continue
        center[r] = (mu0 - yhat) / s_star
        scale[r] = sd0 / s_star
    tstat = center + scale * gen.standard_normal((nsim, m))
    ok = np.all(np.isfinite(tstat), axis=1)
    if not ok.any():
        raise TwolevelError(f"all {nsim} bootstrap refits failed; the prediction interval "
                            "cannot be bootstrapped (use interval='prediction')")
    a = (1.0 - level) / 2.0
    if quantiles == "mixture":
        lo = mixture_quantile(center[ok], scale[ok], a)
        hi = mixture_quantile(center[ok], scale[ok], 1.0 - a)
    else:
        lo = np.array([norm_inter(tstat[ok, k], [a])[0] for k in range(m)])
        hi = np.array([norm_inter(tstat[ok, k], [1.0 - a])[0] for k in range(m)])
    pred = point_predictions_multi(fit, rows)
    s0 = np.sqrt(plugin_variance_multi(fit, rows, "prediction", raw))
    return BootPrediction(lwr=pred + s0 * lo, upr=pred + s0 * hi, center=center, scale=scale,
                          tstat=tstat, s0=s0, level=level, quantiles=quantiles,
                          n_failed=int(nsim - ok.sum()))
