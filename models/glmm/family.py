"""Families and links of the GLMM engine, with lme4's clamps (glmer-algorithms §1.2).

The compiled kernels of :mod:`twolevel.models.glmm.pirls` take a family code (an int) and do the
per-row arithmetic themselves; this module holds the codes, the user-facing names, the
validation of family/link pairs, and the NumPy versions used after a fit (fitted values,
residuals, prediction on new data).

=========  ===========  =========================================================
code       family/link  μ = g⁻¹(η), dμ/dη (lme4's C++ ``glmFamily``)
=========  ===========  =========================================================
LOGIT      binomial     plogis(η) clamped to [ε, 1−ε]; max(dlogis(η), ε)
PROBIT     binomial     min(Φ(η), 1−ε); φ(η)
CLOGLOG    binomial     −expm1(−exp(η)) clamped to [ε, 1−ε]; max(exp(η − exp(η)), ε)
LOG        poisson      max(exp(η), ε); same
=========  ===========  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from twolevel.data.errors import FormulaError

__all__ = ["EPS", "Family", "get_family", "LOGIT", "PROBIT", "CLOGLOG", "LOG"]

EPS = float(np.finfo(float).eps)
LOGIT, PROBIT, CLOGLOG, LOG = 0, 1, 2, 3

_LINKS = {
    "binomial": {"logit": LOGIT, "probit": PROBIT, "cloglog": CLOGLOG},
    "poisson": {"log": LOG},
}
_DEFAULT_LINK = {"binomial": "logit", "poisson": "log"}


@dataclass(frozen=True)
class Family:
    """A GLM family with its link: ``name`` ("binomial"/"poisson"), ``link``, and the kernels'
    integer ``code``."""

    name: str
    link: str
    code: int

    @property
    def is_binomial(self) -> bool:
        return self.name == "binomial"

    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        """η = g(μ)."""
        mu = np.asarray(mu, dtype=float)
        if self.code == LOGIT:
            return special.logit(mu)
        if self.code == PROBIT:
            return special.ndtri(mu)
        if self.code == CLOGLOG:
            return np.log(-np.log1p(-mu))
        return np.log(mu)

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        """μ = g⁻¹(η) with lme4's clamps."""
        eta = np.asarray(eta, dtype=float)
        with np.errstate(over="ignore"):
            if self.code == LOGIT:
                return np.clip(special.expit(eta), EPS, 1 - EPS)
            if self.code == PROBIT:
                return np.minimum(special.ndtr(eta), 1 - EPS)
            if self.code == CLOGLOG:
                return np.clip(-np.expm1(-np.exp(eta)), EPS, 1 - EPS)
            return np.maximum(np.exp(eta), EPS)

    def variance(self, mu: np.ndarray) -> np.ndarray:
        """V(μ): max(μ(1−μ), ε) for binomial, μ for Poisson."""
        mu = np.asarray(mu, dtype=float)
        if self.is_binomial:
            return np.maximum(mu * (1 - mu), EPS)
        return mu

    def dev_resids(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Unit deviances d_i = 2w[y log(y/μ) + (1−y) log((1−y)/(1−μ))] (binomial) or
        2w[y log(y/μ) − (y−μ)] (Poisson), with 0·log 0 = 0."""
        y, mu, w = (np.asarray(a, dtype=float) for a in (y, mu, w))
        if self.is_binomial:
            return 2 * w * (special.xlogy(y, y / mu) + special.xlogy(1 - y, (1 - y) / (1 - mu)))
        return 2 * w * (special.xlogy(y, y / mu) - (y - mu))


def get_family(family: str, link: str | None = None) -> Family:
    """The :class:`Family` of a name and optional link; an unknown pair raises FormulaError."""
    fam = str(family).lower()
    if fam not in _LINKS:
        raise FormulaError(
            f"family '{family}' is not supported: use 'binomial' (0/1, cbind(successes, "
            "failures) or proportions with weights) or 'poisson' (counts)"
        )
    lk = _DEFAULT_LINK[fam] if link is None else str(link).lower()
    if lk not in _LINKS[fam]:
        raise FormulaError(
            f"link '{link}' does not exist for family '{fam}': use one of "
            f"{', '.join(_LINKS[fam])}"
        )
    return Family(fam, lk, _LINKS[fam][lk])
