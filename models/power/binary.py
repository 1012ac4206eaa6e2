"""Simulation-based power for binary and count outcomes: a pilot ``glmer`` fit (binomial 0/1 or
Poisson) is simulated from — b* = Tu, u ~ N(0, I) per school, η = Xβ + Zb*, y* ~ Bernoulli(μ)
or Poisson(μ) with μ = g⁻¹(η) — and each data set refitted by :func:`~twolevel.models.glmm.
glmer.glmer` (Laplace by default, the pilot's family, link and nAGQ); the term is tested by
glmer's Wald z test, Pr(>|z|) = 2Φ(−|β̂/SE|) (simr's default for GLMMs).

The refit is given the pilot's model matrices as columns (``x1 … xp`` for X, ``z1 … zq`` for Z,
``g_`` the school), so extended designs (:func:`~twolevel.models.power.simulation.extend`) need
no data frame of the original variables.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twolevel.data.errors import TwolevelError
from twolevel.models.design import Design
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.glmer import glmer

__all__ = ["GlmerJob"]


@dataclass(frozen=True)
class GlmerJob:
    """One simulation setting for a GLMM: design (X, Z, schools), θ, β, the tested column,
    family, link, nAGQ and α (:mod:`.binary`)."""

    design: Design
    theta: np.ndarray
    beta: np.ndarray
    column: int
    family: str
    link: str
    nagq: int = 1
    alpha: float = 0.05

    def prepare(self) -> _GlmerPrepared:
        """The refit's formula and frame of model-matrix columns, once."""
        d = self.design
        cols = {f"x{k + 1}": d.X[:, k] for k in range(d.p)}
        cols.update({f"z{k + 1}": d.Z[:, k] for k in range(d.q)})
        cols["g_"] = d.group_index
        frame = pd.DataFrame(cols)
        fixed = " + ".join(list(cols)[: d.p])
        zs = " + ".join(f"z{k + 1}" for k in range(d.q))
        formula = f"y_ ~ 0 + {fixed} + (0 + {zs} | g_)"
        eta_fixed = d.X @ self.beta
        return _GlmerPrepared(self, frame, formula, eta_fixed, d.theta_to_T(self.theta))


@dataclass(frozen=True)
class _GlmerPrepared:
    job: GlmerJob
    frame: pd.DataFrame
    formula: str
    eta_fixed: np.ndarray
    T: np.ndarray

    def p_value(self, rng: np.random.Generator) -> float:
        """Simulate one data set, refit with glmer, return Pr(>|z|) of the term (NaN if the
        refit failed)."""
        job, d = self.job, self.job.design
        b = rng.standard_normal((d.n_groups, d.q)) @ self.T.T
        eta = self.eta_fixed + np.einsum("nq,nq->n", d.Z, b[d.group_index])
        if job.family == "binomial":
            y = (rng.random(d.n) < get_family(job.family, job.link).linkinv(eta)).astype(float)
        else:
            y = rng.poisson(get_family(job.family, job.link).linkinv(eta)).astype(float)
        frame = self.frame.assign(y_=y)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = glmer(self.formula, frame, family=job.family, link=job.link,
                            nAGQ=job.nagq)
                return float(fit.coef_table()["Pr(>|z|)"].iloc[job.column])
        except (TwolevelError, np.linalg.LinAlgError, FloatingPointError, ValueError):
            return math.nan


def glmer_job(fit, design: Design, column: int, effect: float, alpha: float) -> GlmerJob:
    """The :class:`GlmerJob` of a pilot ``GlmerFit`` (β with the term set to ``effect``);
    refuses responses with trials (``cbind``, weights) and offsets, which are not simulated."""
    resp = fit.problem.resp
    if np.any(np.asarray(resp.offset) != 0):
        raise TwolevelError("power by simulation from a glmer fit with an offset is not "
                            "supported; refit the pilot without offset()")
    if fit.family.is_binomial and (resp.kind != "bernoulli" or np.any(np.asarray(resp.w) != 1)):
        raise TwolevelError("power by simulation from a glmer fit supports 0/1 responses; "
                            "this pilot has binomial trials (cbind or weights)")
    beta = np.array(fit.beta, float)
    beta[column] = float(effect)
    return GlmerJob(design=design, theta=np.asarray(fit.theta, float), beta=beta,
                    column=column, family=fit.family.name, link=fit.family.link,
                    nagq=max(1, int(fit.nagq)), alpha=alpha)
