"""Profile-likelihood confidence intervals for a glmer fit (``confint(fit, method = "profile")``).

For a parameter ψ (a fixed effect β_k, or the standard deviation θ_k of a scalar random-effect
term) the profiled objective is d(ψ) = min over the other parameters of glmer's objective with
ψ held fixed; the signed root ζ(ψ) = sign(ψ − ψ̂)·√(d(ψ) − d(ψ̂)) is found equal to ±z_{(1+level)/2}
by bracketing and Brent's method (lme4 interpolates a spline through a grid of ζ instead; the
two agree to the grid's interpolation error). The objective is the fit's own (lme4's lagged
Laplace/AGQ value by default, the converged one for ``optimizer="tight"``). A lower end below
which d never rises far enough is reported as the bound (0 for a standard deviation).
Correlated terms' standard deviations and correlations are not profiled (NaN).
"""

from __future__ import annotations

import nlopt
import numpy as np
import pandas as pd
from scipy import optimize, stats

__all__ = ["confint_profile"]


def _profiled(fit, k: int):
    """d(ψ) for parameter k of (θ, β), minimising over the others from the last optimum."""
    exact = fit.optinfo.optimizer == "tight"
    n_t = fit.design.n_theta
    lower = np.concatenate([fit.design.theta_lower, np.full(fit.design.p, -np.inf)])
    x_hat = np.concatenate([fit.theta, fit.beta])
    others = [i for i in range(x_hat.size) if i != k]
    state = {"x": x_hat[others].copy()}
    step = np.concatenate([np.full(n_t, 0.02), 0.2 * fit.se().to_numpy()])[others]

    def d(psi: float) -> float:
        def full(z):
            x = np.empty(x_hat.size)
            x[others] = z
            x[k] = psi
            return x

        def obj(z, grad):
            try:
                return float(fit.problem.stage2(full(np.asarray(z)), exact=exact))
            except Exception:  # PIRLS failure far from the optimum
                return np.inf

        if not others:
            return obj(np.zeros(0), None)
        opt = nlopt.opt(nlopt.LN_BOBYQA, len(others))
        opt.set_lower_bounds(lower[others])
        opt.set_upper_bounds(np.full(len(others), np.inf))
        opt.set_min_objective(obj)
        opt.set_initial_step(np.maximum(step, 1e-4))
        opt.set_xtol_rel(1e-8)
        opt.set_ftol_abs(1e-10)
        opt.set_maxeval(5000)
        start = np.maximum(state["x"], lower[others])
        try:
            z = np.asarray(opt.optimize(start))
            f = float(opt.last_optimum_value())
        except (nlopt.RoundoffLimited, RuntimeError, ValueError):
            z, f = start, obj(start, None)
        state["x"] = z
        return f

    return d, x_hat[k], lower[k]


def _endpoint(d, psi_hat: float, d_hat: float, lo_bound: float, se: float, z: float,
              side: int) -> float:
    """ψ on ``side`` (−1, +1) where ζ(ψ)² = z²."""
    def g(psi):
        return d(psi) - d_hat - z * z

    a, step = psi_hat, max(se, 1e-3)
    b = psi_hat + side * z * step
    for _ in range(30):
        if side < 0 and b <= lo_bound:
            b = lo_bound
            if g(b) < 0:
                return lo_bound
            break
        if g(b) > 0:
            break
        a, b = b, b + side * step
        step *= 1.6
    else:
        return side * np.inf
    return float(optimize.brentq(g, min(a, b), max(a, b), xtol=1e-7, rtol=1e-10))


def confint_profile(fit, level: float = 0.95) -> pd.DataFrame:
    """Profile intervals for the standard deviations of scalar random-effect terms
    (``.sig01`` … in lme4's naming, here ``sd_<effect>|<group>``) and the fixed effects."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    lo_name, hi_name = f"{100 * (1 - level) / 2:.1f} %", f"{100 * (1 + level) / 2:.1f} %"
    d_hat = float(fit.problem.stage2(np.concatenate([fit.theta, fit.beta]),
                                     exact=fit.optinfo.optimizer == "tight"))
    rows, names = [], []
    tmpl = fit.design.theta_template
    scalar = {int(tmpl[t.columns[0], t.columns[0]]): t.names[0] for t in fit.design.terms
              if len(t.columns) == 1}
    for k in range(fit.design.n_theta):
        names.append(f"sd_{fit.design.z_names[0] if k not in scalar else scalar[k]}|"
                     f"{fit.design.group}" if k in scalar else fit.design.theta_names[k])
        if k not in scalar:
            rows.append((np.nan, np.nan))
            continue
        d, psi, lb = _profiled(fit, k)
        se = max(0.2 * psi, 0.05)
        rows.append((_endpoint(d, psi, d_hat, lb, se, z, -1),
                     _endpoint(d, psi, d_hat, lb, se, z, 1)))
    se_b = fit.se().to_numpy()
    for j, nm in enumerate(fit.design.x_names):
        k = fit.design.n_theta + j
        d, psi, lb = _profiled(fit, k)
        rows.append((_endpoint(d, psi, d_hat, lb, se_b[j], z, -1),
                     _endpoint(d, psi, d_hat, lb, se_b[j], z, 1)))
        names.append(nm)
    return pd.DataFrame(rows, index=names, columns=[lo_name, hi_name])
