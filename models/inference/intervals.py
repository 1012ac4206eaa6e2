"""Confidence intervals on a fitted model: lme4's ``confint`` with ``method = "profile"`` (from
:mod:`twolevel.models.inference.profile`), ``"Wald"`` and ``"boot"`` (the parametric bootstrap).

Rows are lme4's (``oldNames = FALSE``): ``sd_(Intercept)|g``, ``cor_x.(Intercept)|g``, ``sd_x|g``,
``sigma``, then the fixed effects. Wald intervals exist only for the fixed effects (lme4 prints
``NA`` for the variance parameters).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import TwolevelError
from twolevel.models.design import Design, GroupCrossprods
from twolevel.models.fit_base import as_generator, has_several_factors
from twolevel.models.inference.profile import parameter_names, profile
from twolevel.models.inference.simulate import norm_inter, parametric_bootstrap

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
        """Percentile intervals (``boot.ci(type = "perc")``: ``norm.inter`` quantiles of the
        finite replicates of each parameter)."""
        a = (1.0 - level) / 2.0
        qs = np.column_stack([norm_inter(self.replicates[:, k], [a, 1.0 - a])
                              for k in range(self.replicates.shape[1])])
        cols = [f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"]
        return pd.DataFrame(qs.T, index=pd.Index(self.names, name="parameter"), columns=cols)


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
    crossprods: GroupCrossprods | None = None,
) -> BootResult:
    """Parametric bootstrap (lme4's ``bootMer`` with ``use.u = FALSE``): ``nsim`` data sets
    simulated from (θ̂, σ̂, β̂), each refitted with the same criterion from the per-school
    cross-products (:func:`twolevel.models.inference.simulate.parametric_bootstrap`); rows of the
    result are (SDs, correlations, σ, β). Progress is printed on stderr every 10% when
    ``progress``."""
    if nsim < 2:
        raise TwolevelError(f"the bootstrap needs nsim >= 2 simulations, got {nsim}")
    boot = parametric_bootstrap(design, theta, sigma, beta, reml=reml, nsim=nsim, seed=seed,
                                crossprods=crossprods, progress=progress)
    names = tuple(boot.lme4_columns())
    return BootResult(names=names, estimate=boot.estimate[list(names)].to_numpy(),
                      replicates=boot.table[list(names)].to_numpy(), seed=seed, reml=reml,
                      n_failed=boot.n_failed)


# ------------------------------------------------------------------------ LmerFit adapter

CONFINT_METHODS = ("profile", "Wald", "boot")


def confint(
    fit,
    method: str = "profile",
    level: float = 0.95,
    *,
    nsim: int = 500,
    rng=None,
    seed: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """lme4's ``confint(fit, method = ..., oldNames = FALSE)`` for a fitted LMM or GLMM.

    Parameters
    ----------
    fit : LmerFit or GlmerFit
        The fitted model.
    method : {"profile", "Wald", "boot"}
        ``"profile"``: likelihood profile of every parameter (an LMM refitted by ML from its θ̂,
        as lme4; a GLMM through :func:`twolevel.models.glmm.profile.confint_profile`).
        ``"Wald"``: fixed effects only, β̂ ± z·SE with the fit's vcov (an LMM's variance rows
        are NaN, as lme4 prints them). ``"boot"``: parametric-bootstrap percentile intervals
        (``nsim`` refits; glmer's for a GLMM).
    level : float
        Confidence level, between 0 and 1.
    nsim, rng, seed : bootstrap replicates and random numbers (``rng`` a seed or a
        ``numpy.random.Generator``; ``seed=`` the older spelling; default seed 1).
    progress : print the profile's or bootstrap's progress on stderr.

    Returns
    -------
    pandas.DataFrame
        One row per parameter (``sd_(Intercept)|g``, ``cor_…``, ``sigma``, then the fixed
        effects), columns "2.5 %" and "97.5 %" (for level 0.95).

    Raises
    ------
    TwolevelError
        An unknown method or a level outside (0, 1).

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> tl.confint(fit, method="Wald").columns.tolist()
    ['2.5 %', '97.5 %']
    """
    method = {"wald": "Wald"}.get(str(method).lower(), str(method).lower())
    if method not in CONFINT_METHODS:
        raise TwolevelError(
            f"unknown confint method '{method}'; choose one of: {', '.join(CONFINT_METHODS)}"
        )
    if not 0.0 < level < 1.0:
        raise TwolevelError(f"confidence level must be between 0 and 1 (e.g. 0.95), got {level}")
    if has_several_factors(fit) and hasattr(fit, "family"):  # glmer with several factors
        return fit.confint(method, level)
    if has_several_factors(fit):
        gen = rng if rng is not None else (seed if seed is not None else 1)
        return fit.confint(method, level, nsim=nsim, seed=gen, progress=progress)
    if hasattr(fit, "family"):  # a GlmerFit
        if method == "Wald":
            return fit.confint_wald(level)
        if method == "profile":
            from twolevel.models.glmm.profile import confint_profile

            return confint_profile(fit, level)
        from twolevel.models.inference.simulate import bootstrap

        return bootstrap(fit, nsim, rng, seed=seed, progress=progress).confint(level)
    d = fit.design
    if method == "profile":
        say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else None
        return profile(d, fit.crossprods, theta_start=fit.theta, progress=say).confint(level)
    if method == "Wald":
        return confint_wald(list(d.x_names), fit.beta, fit.se().to_numpy(), level,
                            variance_names=parameter_names(d))
    gen = as_generator(rng, seed, default=1)
    return confint_boot(d, fit.theta, fit.sigma, fit.beta, reml=fit.reml, nsim=nsim, seed=gen,
                        level=level, progress=progress, crossprods=fit.crossprods).confint(level)
