"""PyMC builder for two-level models of binary and count outcomes (the generalized linear mixed
model's twin of :mod:`twolevel.models.bayes.pymc_model`; these two are the modules of twolevel that
import PyMC).

Model (school j, student i; link g; q random effects with lme4's names)::

    g(μ_ij) = x_ij β + o_ij + z_ij b_j,   b_j ~ N_q(0, Σ),   Σ = L Lᵀ,   L = diag(sd) chol(corr)
    y_ij ~ Binomial(n_ij, μ_ij)   (logit, probit, cloglog; n_ij = 1: Bernoulli)
    y_ij ~ Poisson(μ_ij)          (log; o_ij an offset such as log(exposure))
    corr ~ LKJ(η),   sd_k ~ prior.sd,   β ~ prior.beta   (link-scale defaults:
    :func:`twolevel.models.bayes.priors.default_glmm_priors`)

The school effects cannot be integrated out in closed form here, so they are sampled:
**non-centred** by default (``z ~ N(0, 1)``, ``b = z Lᵀ``), or with the first ``m`` effects
centred (``centering``; the rule of :func:`choose_glmm_centering` centres the leading effects
whose reliability, 1 − mean_j Var(b_jk | y) / τ_kk from the Laplace fit, is ≥ 0.5). Variable
names and dims are those of the Gaussian builder: ``beta`` [fixed], ``chol_cov``, ``sd`` [effect],
``corr`` [effect, effect_b], ``z`` [school, effect_nc], ``b_centered`` [school, effect_c],
``b_school`` [school, effect], and the observed response [obs].
"""

from __future__ import annotations

import warnings

import numpy as np

warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS installation")

import pymc as pm  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

from twolevel.data.errors import FormulaError, TwolevelError  # noqa: E402
from twolevel.models.bayes.glmm_loglik import binomial_trials  # noqa: E402
from twolevel.models.bayes.priors import ModelPriors, check_priors  # noqa: E402
from twolevel.models.bayes.pymc_model import (  # noqa: E402
    RELIABILITY_CUTOFF,
    BuiltModel,
    _rv,
    _school_effects,
    effect_structure,
    school_covariance,
)
from twolevel.models.design import Design  # noqa: E402

__all__ = ["FAMILY_LINKS", "build_glmm_model", "choose_glmm_centering", "binomial_trials"]

FAMILY_LINKS = {"binomial": ("logit", "probit", "cloglog"), "poisson": ("log",)}
_EPS = float(np.finfo(float).eps)


def choose_glmm_centering(reliability: np.ndarray) -> int:
    """Number of leading random effects to sample centred: the longest leading run whose
    reliability (1 − mean_j Var(b_jk | y) / τ̂_kk, from the Laplace fit's conditional variances)
    is ≥ 0.5."""
    m = 0
    while m < len(reliability) and reliability[m] >= RELIABILITY_CUTOFF:
        m += 1
    return m


def inverse_link(eta, link: str):
    """μ = g⁻¹(η) as a PyTensor expression: logistic, Φ, 1 − exp(−exp η) or exp η (clipped away
    from 0 and 1 as lme4 does)."""
    if link == "logit":
        return pm.math.sigmoid(eta)
    if link == "probit":
        return pt.clip(0.5 * pt.erfc(-eta / np.sqrt(2.0)), _EPS, 1 - _EPS)
    if link == "cloglog":
        return pt.clip(-pt.expm1(-pt.exp(eta)), _EPS, 1 - _EPS)
    return pt.exp(eta)


def build_glmm_model(
    design: Design,
    y: np.ndarray,
    w: np.ndarray,
    offset: np.ndarray,
    family: str,
    link: str,
    priors: ModelPriors,
    *,
    centering: int = 0,
) -> BuiltModel:
    """Build the PyMC model of a binary or count outcome (module docstring).

    ``y``: the response per row (proportions for binomial, counts for Poisson); ``w``: trials
    (binomial) or prior weights (must be 1 for Poisson); ``offset`` per row; ``centering``: the
    number of leading effects sampled centred (0 = non-centred).
    """
    if family not in FAMILY_LINKS or link not in FAMILY_LINKS[family]:
        raise FormulaError(f"family '{family}' with link '{link}' cannot be built; use one of "
                           + ", ".join(f"{f}/{lk}" for f, lks in FAMILY_LINKS.items()
                                       for lk in lks))
    structure = effect_structure(design)
    check_priors(priors, design)
    q, p, J = design.q, design.p, design.n_groups
    if not 0 <= int(centering) <= q:
        raise TwolevelError(f"centering {centering!r} must be between 0 and {q} leading effects")
    m = int(centering)
    if family == "poisson" and np.any(np.asarray(w) != 1):
        raise TwolevelError("prior weights are not supported for the Bayesian Poisson model; "
                            "use an offset (offset(log(exposure))) for exposure instead")
    effects = list(design.z_names)
    coords = {
        "fixed": list(design.x_names), "effect": effects, "effect_b": effects,
        "school": [str(s) for s in design.group_levels], "effect_c": effects[:m],
        "effect_nc": effects[m:], "obs": np.arange(design.n),
    }
    with pm.Model(coords=coords) as model:
        beta = _rv("beta", priors.beta, p, dims="fixed")
        chol, _ = school_covariance(priors, q, structure)
        b = _school_effects(chol, m, q, J)
        X = pm.Data("X", design.X, dims=("obs", "fixed"))
        Z = pm.Data("Z", design.Z, dims=("obs", "effect"))
        g = pm.Data("school_idx", design.group_index, dims="obs")
        o = pm.Data("offset", np.asarray(offset, dtype=float), dims="obs")
        eta = pt.dot(X, beta) + o + (Z * b[g]).sum(axis=1)
        name = design.response
        # the observed counts as pm.Data ("observed"): a simulated response with the same design
        # is swapped in without recompiling (sample_nuts(data={"observed": ...}), SBC)
        if family == "poisson":
            obs = pm.Data("observed", np.round(y), dims="obs")
            pm.Poisson(name, mu=inverse_link(eta, link), observed=obs, dims="obs")
        else:
            s, n = binomial_trials(y, w)
            obs = pm.Data("observed", s, dims="obs")
            if np.all(n == 1) and link == "logit":
                pm.Bernoulli(name, logit_p=eta, observed=obs, dims="obs")
            elif link == "logit":
                pm.Binomial(name, n=n, logit_p=eta, observed=obs, dims="obs")
            elif np.all(n == 1):
                pm.Bernoulli(name, p=inverse_link(eta, link), observed=obs, dims="obs")
            else:
                pm.Binomial(name, n=n, p=inverse_link(eta, link), observed=obs, dims="obs")
    return BuiltModel(model, design, priors, f"{family}/{link}", m, structure)
