"""Bayesian fits at scale: the collapsed likelihood from statistics computed where the rows are.

The collapsed model (school effects integrated out) needs only the per-school cross-products, so
``fit_bayes`` takes them from any engine of :mod:`twolevel.models.design.sources`. At scale:

* the per-school (leave-one-school-out) log-likelihood comes from the per-school sums
  X_jᵀX_j, X_jᵀy_j, y_jᵀy_j (spec §7); the per-student one is refused (an S × N array), and
  ``log_likelihood="both"`` falls back to ``"school"`` with a warning saying so;
* above :data:`SCHOOL_DRAWS_MAX` schools the school effects are not stored draw by draw (S·J·q
  numbers): the ``school_effects`` group holds each school's posterior mean and SD, exact
  (Rao–Blackwellised) averages of the conditional posterior N(L h_j/σ², L M_j⁻¹Lᵀ) over the
  draws, E[b_j] = mean_s μ_sj and Var[b_j] = mean_s diag(C_sj) + var_s(μ_sj).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from twolevel.data.errors import TwolevelError
from twolevel.models.bayes.collapsed import _back_solve_t, _blocks, _conditional_pieces
from twolevel.models.design import group_crossprods, make_design
from twolevel.models.design.sources import ScaleDesign, choose_engine, crossprods_from

__all__ = ["SCHOOL_DRAWS_MAX", "bayes_statistics", "scale_log_likelihood",
           "summarise_school_effects", "school_effect_summary"]

SCHOOL_DRAWS_MAX = 20_000


def bayes_statistics(formula: str, data, engine: str = "auto", memory_limit: str | None = None,
                     scheduler=None, progress: bool = False):
    """(design, cross-products) for ``fit_bayes``: today's path for a frame in memory, else the
    scale engines with the per-school moments of X (for the per-school log-likelihood)."""
    if choose_engine(data, engine, scheduler) == "memory" and isinstance(data, pd.DataFrame):
        design = make_design(formula, data)
        return design, group_crossprods(design)
    design, cp = crossprods_from(formula, data, engine, memory_limit=memory_limit,
                                 scheduler=scheduler, progress=progress, per_group_x=True)
    for note in design.notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return design, cp


def scale_log_likelihood(design, likelihood: str, log_likelihood: str) -> str:
    """The log-likelihood to store: unchanged in memory; at scale the per-student likelihood and
    log-likelihood are refused (per-school instead, with a warning)."""
    if not isinstance(design, ScaleDesign):
        return log_likelihood
    if likelihood == "student":
        raise TwolevelError(
            f"likelihood='student' needs every row in memory; with engine='{design.engine}' use "
            "likelihood='collapsed' (the same model, school effects integrated out)")
    if log_likelihood == "both":
        warnings.warn(
            f"per-student log-likelihood not stored with engine='{design.engine}' ({design.n} "
            "rows): the per-school one (leave-one-school-out) is; pass log_likelihood='school'",
            UserWarning, stacklevel=3)
        return "school"
    return log_likelihood


def summarise_school_effects(design) -> bool:
    """Whether the school effects are summarised instead of stored per draw (scale, J large)."""
    return isinstance(design, ScaleDesign) and design.n_groups > SCHOOL_DRAWS_MAX


def school_effect_summary(A, B, c, beta, L, sigma) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sd), each (J, q), of the school effects over the draws (module docstring), in blocks
    of draws; never holds more than a block's (draws, J) arrays."""
    S, J, q = beta.shape[0], A.shape[0], A.shape[1]
    s1, s2, cv = np.zeros((J, q)), np.zeros((J, q)), np.zeros((J, q))
    for sl in _blocks(S):
        Ls = L[sl]
        R, v, _ = _conditional_pieces(A, B, c, beta[sl], Ls, sigma[sl])
        ss = (sigma[sl] ** 2)[:, None]
        w = _back_solve_t(R, [v[k] / ss for k in range(q)])
        for k in range(q):
            mu = sum(Ls[:, k, m, None] * w[m] for m in range(k + 1))
            s1[:, k] += mu.sum(axis=0)
            s2[:, k] += (mu * mu).sum(axis=0)
        for col in range(q):  # column `col` of R⁻ᵀ, then (L R⁻ᵀ)_{k,col}²
            e = [np.full_like(v[0], 1.0 if i == col else 0.0) for i in range(q)]
            x = _back_solve_t(R, e)
            for k in range(q):
                lx = sum(Ls[:, k, m, None] * x[m] for m in range(k + 1))
                cv[:, k] += (lx * lx).sum(axis=0)
    mean = s1 / S
    var = cv / S + np.maximum(s2 / S - mean * mean, 0.0)
    return mean, np.sqrt(var)


def school_effects_dataset(mean: np.ndarray, sd: np.ndarray, design) -> xr.Dataset:
    """The ``school_effects`` group: ``mean`` and ``sd`` [school, effect]."""
    return xr.Dataset({"mean": (("school", "effect"), mean), "sd": (("school", "effect"), sd)},
                      coords={"school": [str(s) for s in design.group_levels],
                              "effect": list(design.z_names)})
