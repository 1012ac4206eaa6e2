"""PyMC builders for nested designs with several grouping factors (imports PyMC/PyTensor).

Model (factors innermost first, as :class:`~twolevel.models.design.multi.MultiDesign` orders
them; each factor k with q_k effects per group)::

    y = Xβ + Σ_k Z_k b_k + ε,   ε ~ N(0, σ²),   b_k,g ~ N(0, Σ_k),   Σ_k = L_k L_kᵀ
    L_k = diag(sd_k)·chol(corr_k),  corr_k ~ LKJ(η),  sd_k ~ prior.sd[k]   (correlated factor)
    L_k = diag(sd_k)                                                        (independent effects)
    β ~ prior.beta,   σ ~ prior.sigma

Two likelihoods of the same posterior:

``likelihood="collapsed"`` (the sampled model of :func:`twolevel.models.bayes.fit_multi.
fit_bayes_multi`)
    Every level's effects integrated out by block elimination
    (:func:`twolevel.models.bayes.collapsed_multi.eliminate` on PyTensor tensors: a small
    unrolled Cholesky per class, a scatter-add of the Schur complements into the schools, a
    small Cholesky per school), a ``pm.Potential("marginal_loglik")``; O(groups) per gradient.
``likelihood="noncentered"`` (the hand-written reference)
    ``z_k ~ N(0, 1)`` per group and effect, ``b_k = z_k L_kᵀ``, and
    ``y ~ Normal(Xβ + Σ_k (Z_k ∘ b_k[g_k]) 1, σ)`` per row: O(n) per gradient, as brms writes it.

Names: ``beta`` [fixed], ``sigma``; per factor F (lme4's name, e.g. ``school``,
``class:school``): ``chol_cov_F`` (LKJCholeskyCov's packed factor), ``sd_F`` [effect_F],
``corr_F`` [effect_F, effect_F_b] (correlated factors), ``z_F`` and ``b_F`` [F, effect_F]
(non-centred model). Coordinates: ``F`` = the factor's levels as lme4 labels them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS installation")

import pymc as pm  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

from twolevel.data.errors import TwolevelError  # noqa: E402
from twolevel.models.bayes.collapsed_multi import (  # noqa: E402
    NestedCrossprods,
    eliminate,
    nested_crossprods,
    residual_ss,
)
from twolevel.models.bayes.multi_priors import (  # noqa: E402
    MultiPriors,
    check_multi_priors,
    default_multi_priors,
    factor_structures,
)
from twolevel.models.bayes.pymc_model import _dist, _rv  # noqa: E402
from twolevel.models.design.multi import MultiDesign  # noqa: E402

__all__ = ["LIKELIHOODS", "MultiBuiltModel", "build_multi_model", "collapsed_multi_loglik"]

LIKELIHOODS = ("collapsed", "noncentered")
_LOG2PI = float(np.log(2.0 * np.pi))


class _TensorOps:
    """PyTensor back end of :func:`~twolevel.models.bayes.collapsed_multi.eliminate`: sums to
    parents by a scatter-add (``inc_subtensor`` with the child → parent index)."""

    sqrt, log, dot = staticmethod(pt.sqrt), staticmethod(pt.log), staticmethod(pt.dot)

    @staticmethod
    def segsum(x, parent, n_parent):
        return pt.inc_subtensor(pt.zeros((n_parent,))[parent], x)

    @staticmethod
    def total(x):
        return pt.sum(x)


def collapsed_multi_loglik(data: dict, n: int, beta, Lam, sigma):
    """log p(y | β, σ, L) with every level integrated out, as a PyTensor graph:
    −½ [ n log 2πσ² + log|H| + (rᵀr − gᵀH⁻¹g)/σ² ] (:mod:`twolevel.models.bayes.
    collapsed_multi`). ``data``: tensors ``A``, ``B``, ``c``, ``XtX``, ``Xty``, ``yty`` and the
    integer ``parents``/``n_levels``; ``Lam``: per level the unrolled Λ_k = L_k/σ."""
    ops = _TensorOps()
    logdet, quad = eliminate(data, beta, Lam, ops)
    s2 = sigma ** 2
    return -0.5 * (n * (_LOG2PI + pt.log(s2)) + logdet
                   + (residual_ss(data, beta, ops) - quad) / s2)


@dataclass(frozen=True)
class MultiBuiltModel:
    """A PyMC model of a nested design and how it was built (``model``, ``design``, ``priors``,
    ``likelihood``, ``structures`` per factor, the :class:`NestedCrossprods` ``crossprods``)."""

    model: pm.Model
    design: MultiDesign
    priors: MultiPriors
    likelihood: str
    structures: tuple[str, ...]
    crossprods: NestedCrossprods


def _factor_covariance(f, prior_sd, corr, structure: str):
    """Factor f's L (a q × q tensor) with ``sd_F`` / ``corr_F`` deterministics."""
    F = f.name
    if structure == "lkj":
        chol, _, sds = pm.LKJCholeskyCov(
            f"chol_cov_{F}", n=f.q, eta=float(corr.param("eta")),
            sd_dist=_dist(prior_sd, f.q), compute_corr=True, store_in_trace=False)
        pm.Deterministic(f"sd_{F}", sds, dims=f"effect_{F}")
        cm = chol / sds[:, None]
        pm.Deterministic(f"corr_{F}", cm @ cm.T, dims=(f"effect_{F}", f"effect_{F}_b"))
        return chol
    sds = _rv(f"sd_{F}", prior_sd, f.q, dims=f"effect_{F}")
    return pt.diag(sds)


def build_multi_model(design: MultiDesign, priors: MultiPriors | None = None, *,
                      likelihood: str = "collapsed",
                      crossprods: NestedCrossprods | None = None) -> MultiBuiltModel:
    """The PyMC model of a nested design (module docstring).

    Parameters
    ----------
    design : MultiDesign (nested factors).
    priors : default :func:`~twolevel.models.bayes.multi_priors.default_multi_priors`.
    likelihood : ``"collapsed"`` or ``"noncentered"``.
    crossprods : precomputed :func:`~twolevel.models.bayes.collapsed_multi.nested_crossprods`.

    Returns
    -------
    MultiBuiltModel

    Raises
    ------
    TwolevelError
        An unknown likelihood, priors that do not fit, factors that are not nested.

    Examples
    --------
    >>> built = build_multi_model(design, likelihood="noncentered")   # doctest: +SKIP
    >>> sorted(built.model.named_vars)                                 # doctest: +SKIP
    """
    if likelihood not in LIKELIHOODS:
        raise TwolevelError(f"likelihood '{likelihood}' is not known for several grouping "
                            f"factors; choose one of {', '.join(LIKELIHOODS)}")
    structures = factor_structures(design)
    priors = priors if priors is not None else default_multi_priors(design)
    check_multi_priors(priors, design)
    cp = crossprods if crossprods is not None else nested_crossprods(design)
    coords = {"fixed": list(design.x_names)}
    for f in design.factors:
        F = f.name
        coords[F] = [str(v) for v in f.levels]
        coords[f"effect_{F}"] = list(f.z_names)
        coords[f"effect_{F}_b"] = list(f.z_names)
    if likelihood == "noncentered":
        coords["obs"] = np.arange(design.n)
    with pm.Model(coords=coords) as model:
        beta = _rv("beta", priors.beta, design.p, dims="fixed")
        sigma = _rv("sigma", priors.sigma)
        Ls = [_factor_covariance(f, priors.sd[k], priors.corr, structures[k])
              for k, f in enumerate(design.factors)]
        if likelihood == "collapsed":
            data = {
                "A": pm.Data("A", cp.A), "B": pm.Data("B", cp.B), "c": pm.Data("c", cp.c),
                "XtX": pm.Data("XtX", cp.XtX), "Xty": pm.Data("Xty", cp.Xty),
                "yty": pm.Data("yty", np.float64(cp.yty)),
                "parents": cp.parents, "n_levels": cp.n_levels,
            }
            Lam = []
            for f, L, s in zip(design.factors, Ls, structures, strict=True):
                Lam.append([[(L[i, j] / sigma) if (j < i and s == "lkj") or j == i else None
                             for j in range(f.q)] for i in range(f.q)])
            pm.Potential("marginal_loglik", collapsed_multi_loglik(data, design.n, beta, Lam,
                                                                   sigma))
        else:
            X = pm.Data("X", design.X, dims=("obs", "fixed"))
            mu = pt.dot(X, beta)
            for f, L in zip(design.factors, Ls, strict=True):
                F = f.name
                z = pm.Normal(f"z_{F}", 0.0, 1.0, dims=(F, f"effect_{F}"))
                b = pm.Deterministic(f"b_{F}", pt.dot(z, L.T), dims=(F, f"effect_{F}"))
                Z = pm.Data(f"Z_{F}", np.asarray(f.Z, float), dims=("obs", f"effect_{F}"))
                mu = mu + (Z * b[np.asarray(f.codes)]).sum(axis=1)
            pm.Normal(design.response, mu=mu, sigma=sigma, observed=design.y, dims="obs")
    return MultiBuiltModel(model, design, priors, likelihood, structures, cp)
