"""Profile-likelihood confidence intervals for a glmer fit (``confint(fit, method = "profile")``).

For a parameter ψ (a fixed effect β_k, or a standard deviation or correlation of the random
effects: lme4's ``.sig01``, ``.sig02``, … on the "sdcor" scale, named ``sd_<effect>|<group>``
and ``cor_<effect>.<effect>|<group>`` as for lmer) the profiled objective is d(ψ) = min over the
other parameters of glmer's objective with ψ held fixed (the variance parameters on the sdcor
scale, mapped to θ by lme4's ``Sv_to_Cv``, when ψ is one of them; θ otherwise); the signed
root ζ(ψ) = sign(ψ − ψ̂)·√(d(ψ) − d(ψ̂)) is found equal to ±z_{(1+level)/2} by bracketing and
Brent's method (lme4 interpolates a spline through a grid of ζ instead; the two agree to the grid's
interpolation error). The objective is the fit's own (lme4's lagged Laplace/AGQ value by default,
the converged one for ``optimizer="tight"``). An end beyond which d never rises far enough is
reported as the bound (0 for a standard deviation, ±1 for a correlation).
"""

from __future__ import annotations

import nlopt
import numpy as np
import pandas as pd
from scipy import optimize, stats

__all__ = ["confint_profile"]


def _profiled(fit, k: int):
    """d(ψ) for parameter k of (variance parameters, β), minimising over the others from the last
    optimum; ψ on the sdcor scale for a variance parameter (k < n_θ), then the variance
    parameters are all on that scale, else on θ's. Returns (d, ψ̂, lower bound, upper bound)."""
    # lme4's sdcor mapping, shared with lmer's profile (a higher stage of models: imported here)
    from twolevel.models.inference.profile import _sv_bounds, cv_to_sv, sv_to_cv

    exact = fit.optinfo.optimizer == "tight"
    design = fit.design
    n_t = design.n_theta
    sdcor = k < n_t
    if sdcor:
        sv_lo, sv_hi = _sv_bounds(design)
        lower = np.concatenate([sv_lo[:-1], np.full(design.p, -np.inf)])
        upper = np.concatenate([sv_hi[:-1], np.full(design.p, np.inf)])
        x_hat = np.concatenate([cv_to_sv(design, fit.theta, 1.0)[:-1], fit.beta])
    else:
        lower = np.concatenate([design.theta_lower, np.full(design.p, -np.inf)])
        upper = np.full(lower.size, np.inf)
        x_hat = np.concatenate([fit.theta, fit.beta])
    others = [i for i in range(x_hat.size) if i != k]
    state = {"x": x_hat[others].copy()}
    step = np.concatenate([np.full(n_t, 0.02), 0.2 * fit.se().to_numpy()])[others]

    def to_par(x):
        if not sdcor:
            return x
        theta = sv_to_cv(design, np.append(x[:n_t], 1.0))
        return None if theta is None else np.concatenate([theta, x[n_t:]])

    def d(psi: float) -> float:
        def full(z):
            x = np.empty(x_hat.size)
            x[others] = z
            x[k] = psi
            return x

        def obj(z, grad):
            par = to_par(full(np.asarray(z)))
            if par is None:  # correlations that are not a correlation matrix
                return np.inf
            try:
                return float(fit.problem.stage2(par, exact=exact))
            except Exception:  # PIRLS failure far from the optimum
                return np.inf

        if not others:
            return obj(np.zeros(0), None)
        opt = nlopt.opt(nlopt.LN_BOBYQA, len(others))
        opt.set_lower_bounds(lower[others])
        opt.set_upper_bounds(upper[others])
        opt.set_min_objective(obj)
        opt.set_initial_step(np.maximum(step, 1e-4))
        opt.set_xtol_rel(1e-8)
        opt.set_ftol_abs(1e-10)
        opt.set_maxeval(5000)
        start = np.clip(state["x"], lower[others], upper[others])
        try:
            z = np.asarray(opt.optimize(start))
            f = float(opt.last_optimum_value())
        except (nlopt.RoundoffLimited, RuntimeError, ValueError):
            z, f = start, obj(start, None)
        state["x"] = z
        return f

    return d, x_hat[k], lower[k], upper[k]


def _endpoint(d, psi_hat: float, d_hat: float, lo_bound: float, se: float, z: float,
              side: int, hi_bound: float = np.inf) -> float:
    """ψ on ``side`` (−1, +1) where ζ(ψ)² = z² (the bound on that side when d stays below)."""
    def g(psi):
        return d(psi) - d_hat - z * z

    a, step = psi_hat, max(se, 1e-3)
    b = psi_hat + side * z * step
    for _ in range(30):
        bound = lo_bound if side < 0 else hi_bound
        if (side < 0 and b <= lo_bound) or (side > 0 and b >= hi_bound):
            b = bound
            if g(b) < 0:
                return bound
            break
        if g(b) > 0:
            break
        a, b = b, b + side * step
        step *= 1.6
    else:
        return side * np.inf
    return float(optimize.brentq(g, min(a, b), max(a, b), xtol=1e-7, rtol=1e-10))


def confint_profile(fit, level: float = 0.95) -> pd.DataFrame:
    """Profile intervals for the standard deviations and correlations of the random effects
    (lme4's ``.sig01`` …, here ``sd_<effect>|<group>`` and ``cor_<effect>.<effect>|<group>``)
    and the fixed effects."""
    from twolevel.models.inference.profile import parameter_names

    z = float(stats.norm.ppf(0.5 + level / 2))
    lo_name, hi_name = f"{100 * (1 - level) / 2:.1f} %", f"{100 * (1 + level) / 2:.1f} %"
    d_hat = float(fit.problem.stage2(np.concatenate([fit.theta, fit.beta]),
                                     exact=fit.optinfo.optimizer == "tight"))
    rows = []
    names = parameter_names(fit.design)[:-1]
    for k in range(fit.design.n_theta):
        d, psi, lb, ub = _profiled(fit, k)
        se = max(0.2 * abs(psi), 0.05) if np.isinf(ub) else 0.1  # an SD, or a correlation
        rows.append((_endpoint(d, psi, d_hat, lb, se, z, -1, ub),
                     _endpoint(d, psi, d_hat, lb, se, z, 1, ub)))
    se_b = fit.se().to_numpy()
    for j, nm in enumerate(fit.design.x_names):
        k = fit.design.n_theta + j
        d, psi, lb, ub = _profiled(fit, k)
        rows.append((_endpoint(d, psi, d_hat, lb, se_b[j], z, -1, ub),
                     _endpoint(d, psi, d_hat, lb, se_b[j], z, 1, ub)))
        names.append(nm)
    return pd.DataFrame(rows, index=names, columns=[lo_name, hi_name])
