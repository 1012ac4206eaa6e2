"""Confidence intervals on a fitted model: lme4's ``confint`` with ``method = "profile"`` (from
:mod:`twolevel.models.inference.profile`), ``"Wald"`` and ``"boot"`` (the parametric bootstrap).

Rows are lme4's (``oldNames = FALSE``): ``sd_(Intercept)|g``, ``cor_x.(Intercept)|g``, ``sd_x|g``,
``sigma``, then the fixed effects. Wald intervals exist only for the fixed effects (lme4 prints
``NA`` for the variance parameters).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import TwolevelError
from twolevel.models.lmm.deviance import make_deviance, pls_state, sigma_hat
from twolevel.models.design import Design, GroupCrossprods, group_crossprods
from twolevel.models.lmm.optimize import optimize_theta

from twolevel.models.inference.profile import (
    cv_to_sv,
    parameter_names,
    profile,
)

__all__ = [
    "CONFINT_METHODS",
    "BootResult",
    "confint",
    "confint_boot",
    "confint_wald",
]


def confint_wald(
    names: Sequence[str], beta: np.ndarray, se: np.ndarray, level: float = 0.95,
    variance_names: Sequence[str] = (),
) -> pd.DataFrame:
    """lme4's ``confint(method = "Wald")``: β̂ ± z_{(1+level)/2}·SE for the fixed effects; rows of
    ``variance_names`` (if given) are NaN, as lme4 prints them."""
    a = (1.0 - level) / 2.0
    z = float(stats.norm.ppf(1.0 - a))
    beta, se = np.asarray(beta, float), np.asarray(se, float)
    lo = np.concatenate([np.full(len(variance_names), np.nan), beta - z * se])
    hi = np.concatenate([np.full(len(variance_names), np.nan), beta + z * se])
    cols = [f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"]
    return pd.DataFrame(
        np.column_stack([lo, hi]),
        index=pd.Index(list(variance_names) + list(names), name="parameter"), columns=cols,
    )


# ---------------------------------------------------------------------- parametric bootstrap


@dataclass(frozen=True)
class BootResult:
    """Parametric bootstrap replicates (lme4's ``bootMer`` ``t`` matrix) and their intervals."""

    names: tuple[str, ...]
    estimate: np.ndarray
    replicates: np.ndarray  # (nsim, k)
    seed: int
    reml: bool
    n_failed: int = 0

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """Percentile intervals (``boot.ci(type = "perc")``)."""
        a = (1.0 - level) / 2.0
        ok = np.all(np.isfinite(self.replicates), axis=1)
        qs = np.quantile(self.replicates[ok], [a, 1.0 - a], axis=0)
        cols = [f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"]
        return pd.DataFrame(qs.T, index=pd.Index(self.names, name="parameter"), columns=cols)


def _fit_sv_beta(design: Design, cp: GroupCrossprods, reml: bool, start: np.ndarray):
    dev = make_deviance(design, reml=reml, crossprods=cp)
    o = optimize_theta(dev, start, design.theta_lower)
    st = pls_state(cp, design.theta_to_T(o.theta))
    sig = sigma_hat(st, reml)
    return np.concatenate([cv_to_sv(design, o.theta, sig), st.beta]), o.theta


def confint_boot(
    design: Design,
    theta: np.ndarray,
    sigma: float,
    beta: np.ndarray,
    *,
    reml: bool = True,
    nsim: int = 500,
    seed: int = 1,
    level: float = 0.95,
    progress: bool = True,
) -> BootResult:
    """Parametric bootstrap (module doc): ``nsim`` data sets simulated from (θ̂, σ̂, β̂), each refitted
    with the same criterion; rows of the result are (SDs, correlations, σ, β). Progress is printed
    on stderr every 10% when ``progress``."""
    if nsim < 2:
        raise TwolevelError(f"the bootstrap needs nsim >= 2 simulations, got {nsim}")
    rng = np.random.default_rng(seed)
    T = design.theta_to_T(np.asarray(theta, float))
    J, q, n = design.n_groups, design.q, design.n
    g, Z, X = design.group_index, design.Z, design.X
    mean = X @ np.asarray(beta, float)
    names = tuple(parameter_names(design)) + tuple(design.x_names)
    est = np.concatenate([cv_to_sv(design, theta, sigma), beta])
    reps = np.full((nsim, len(names)), np.nan)
    start = np.asarray(theta, float)
    failed = 0
    for i in range(nsim):
        b = sigma * rng.standard_normal((J, q)) @ T.T
        y = mean + np.einsum("ik,ik->i", Z, b[g]) + sigma * rng.standard_normal(n)
        d = replace(design, y=y)
        try:
            reps[i], _ = _fit_sv_beta(d, group_crossprods(d), reml, start)
        except TwolevelError:
            failed += 1
        if progress and (i + 1) % max(1, nsim // 10) == 0:
            print(f"bootstrap: {i + 1}/{nsim} refits", file=sys.stderr, flush=True)
    return BootResult(names=names, estimate=est, replicates=reps, seed=seed, reml=reml,
                      n_failed=failed)




# ------------------------------------------------------------------------ LmerFit adapter

CONFINT_METHODS = ("profile", "Wald", "boot")


def confint(
    fit,
    method: str = "profile",
    level: float = 0.95,
    *,
    nsim: int = 500,
    seed: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """lme4's ``confint(fit, method = ..., oldNames = FALSE)`` for a fitted model
    (``twolevel.models.lmm.lmer.lmer``'s :class:`LmerFit`): rows sd_…, cor_…, sigma, then the fixed effects.

    * ``"profile"``: ML profile of every parameter (refits by ML from the fit's θ̂, as lme4);
    * ``"Wald"``: fixed effects only, β̂ ± z·SE with the fit's vcov; variance rows NaN;
    * ``"boot"``: parametric bootstrap percentile intervals (``nsim``, ``seed``).
    """
    method = {"wald": "Wald"}.get(str(method).lower(), str(method).lower())
    if method not in CONFINT_METHODS:
        raise TwolevelError(
            f"unknown confint method '{method}'; choose one of: {', '.join(CONFINT_METHODS)}"
        )
    if not 0.0 < level < 1.0:
        raise TwolevelError(f"confidence level must be between 0 and 1 (e.g. 0.95), got {level}")
    d = fit.design
    if method == "profile":
        say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else None
        return profile(d, fit.crossprods, theta_start=fit.theta, progress=say).confint(level)
    if method == "Wald":
        return confint_wald(list(d.x_names), fit.beta, fit.se().to_numpy(), level,
                            variance_names=parameter_names(d))
    return confint_boot(d, fit.theta, fit.sigma, fit.beta, reml=fit.reml, nsim=nsim, seed=seed,
                        level=level, progress=progress).confint(level)
