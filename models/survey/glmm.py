"""Weighted two-level GLMMs (binomial 0/1 with logit link, Poisson with log link) with a random
intercept, by pseudo-maximum likelihood: Laplace (nAGQ = 1) or adaptive Gauss–Hermite
quadrature (nAGQ > 1), as WeMix's ``mix(..., family=)`` and Stata's ``melogit`` with pweights.

For school j with the conditional level-1 weights a_ij and the school weight w_j,

    g_j(u) = Σ_i a_ij log f(y_ij | η_ij = x_ijᵀβ + u) − u²/(2τ²) − ½ log(2πτ²),
    ℓ_j = log ∫ exp g_j(u) du,      ℓ_PL = Σ_j w_j ℓ_j.

The conditional mode û_j (Newton on all schools at once) and the curvature
s_j = (−g_j''(û_j))^{−1/2} give Laplace, ℓ_j ≈ g_j(û_j) + ½ log 2π + log s_j, and AGQ,
ℓ_j ≈ log(√2 s_j) + log Σ_k ω_k exp(x_k² + g_j(û_j + √2 s_j x_k)) (Gauss–Hermite nodes x_k,
weights ω_k), lme4's ``glmer(nAGQ=)`` on the same integrand. SEs: the sandwich
H⁻¹ [J/(J−1) Σ_j s_j s_jᵀ] H⁻¹ over (β, τ) with school scores s_j = w_j ∂ℓ_j/∂(β, τ)
(WeMix's ``makeSandwich``), by central differences.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.models.design import Design, make_design
from twolevel.models.lmm.results import VarCorr
from twolevel.models.survey.fit import LRT_REFUSED, complete_rows
from twolevel.models.survey.weights import (
    SurveyWeights,
    check_weight_column,
    check_weights_spec,
    weights_by_codes,
)

__all__ = ["WeightedGlmerFit", "glmer_weighted", "school_loglik"]

FAMILIES = {"binomial": "logit", "poisson": "log"}


@dataclass(frozen=True)
class GlmmData:
    """Rows (sorted by nothing in particular) with school codes, weights and the response."""

    X: np.ndarray
    y: np.ndarray
    a: np.ndarray
    codes: np.ndarray
    w: np.ndarray
    family: str

    @property
    def J(self) -> int:
        """Number of schools."""
        return int(self.w.shape[0])

    @cached_property
    def const(self) -> np.ndarray:
        """Σ_i a_ij c(y_ij) per school: 0 (Bernoulli) or −Σ a log y! (Poisson)."""
        if self.family == "binomial":
            return np.zeros(self.J)
        return -np.bincount(self.codes, weights=self.a * special.gammaln(self.y + 1),
                            minlength=self.J)


def _loglik_terms(d: GlmmData, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: a·(y η − b(η)), a·(y − μ), a·dμ/dη."""
    if d.family == "binomial":
        mu = special.expit(eta)
        return d.a * (d.y * eta - np.logaddexp(0.0, eta)), d.a * (d.y - mu), d.a * mu * (1 - mu)
    mu = np.exp(eta)
    return d.a * (d.y * eta - mu), d.a * (d.y - mu), d.a * mu


def school_loglik(beta: np.ndarray, tau: float, d: GlmmData, nagq: int = 1,
                  u0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ℓ_j (J,) at (β, τ) by Laplace (nagq = 1) or AGQ, and the conditional modes û_j.

    Parameters
    ----------
    beta, tau : fixed effects and the school SD (τ ≥ 0; τ = 0 gives the GLM likelihood).
    d : the rows.  nagq : quadrature points.  u0 : starting modes (warm start).

    Returns
    -------
    (ℓ_j, û_j)

    Examples
    --------
    >>> # ll, u = school_loglik(fit.beta, fit.tau, fit.data, nagq=13)
    """
    eta0 = d.X @ beta
    J = d.J
    if tau <= 1e-10:
        lt, _, _ = _loglik_terms(d, eta0)
        return np.bincount(d.codes, weights=lt, minlength=J) + d.const, np.zeros(J)
    t2 = tau * tau
    u = np.zeros(J) if u0 is None else u0.copy()
    for _ in range(100):
        _, r, v = _loglik_terms(d, eta0 + u[d.codes])
        grad = np.bincount(d.codes, weights=r, minlength=J) - u / t2
        hess = np.bincount(d.codes, weights=v, minlength=J) + 1.0 / t2
        step = grad / hess
        u = u + step
        if np.max(np.abs(step)) < 1e-13 * max(1.0, float(np.max(np.abs(u)))):
            break
    _, _, v = _loglik_terms(d, eta0 + u[d.codes])
    curv = np.bincount(d.codes, weights=v, minlength=J) + 1.0 / t2
    s = 1.0 / np.sqrt(curv)

    def g(uu: np.ndarray) -> np.ndarray:
        lt, _, _ = _loglik_terms(d, eta0 + uu[d.codes])
        return (np.bincount(d.codes, weights=lt, minlength=J) + d.const
                - uu * uu / (2 * t2) - 0.5 * math.log(2 * math.pi * t2))

    if nagq == 1:
        return g(u) + 0.5 * math.log(2 * math.pi) + np.log(s), u
    x, wq = np.polynomial.hermite.hermgauss(nagq)
    terms = np.stack([math.log(wk) + xk * xk + g(u + math.sqrt(2) * s * xk)
                      for xk, wk in zip(x, wq, strict=True)])
    return np.log(math.sqrt(2) * s) + special.logsumexp(terms, axis=0), u


@dataclass(frozen=True, repr=False)
class WeightedGlmerFit:
    """A weighted GLMM fit by pseudo-maximum likelihood (random intercept).

    Fields
    ------
    design : model matrices.  data : rows, weights.  weights : the SurveyWeights.
    family, nagq : as fitted.  par : (β, τ) at the optimum.  data_name : for ``summary()``.
    """

    design: Design
    data: GlmmData
    weights: SurveyWeights
    family: str
    nagq: int
    par: np.ndarray
    data_name: str = "data"
    notes: tuple[str, ...] = field(default=())
    pseudo_likelihood: bool = True

    @property
    def beta(self) -> np.ndarray:
        """β̂."""
        return self.par[:-1]

    @property
    def tau(self) -> float:
        """τ̂, the SD of the school intercepts."""
        return float(self.par[-1])

    @cached_property
    def _school(self) -> tuple[np.ndarray, np.ndarray]:
        return school_loglik(self.beta, self.tau, self.data, self.nagq)

    @property
    def loglik(self) -> float:
        """The log pseudo-likelihood Σ_j w_j ℓ_j."""
        return float(self.data.w @ self._school[0])

    @property
    def nobs(self) -> int:
        """Rows used."""
        return int(self.data.y.shape[0])

    @property
    def ngroups(self) -> int:
        """Schools used."""
        return self.data.J

    def fixef(self) -> pd.Series:
        """β̂."""
        return pd.Series(self.beta, index=list(self.design.x_names), name="Estimate")

    @cached_property
    def _sandwich(self) -> np.ndarray:
        d, par = self.data, self.par
        k = par.size
        h = 1e-4 * np.maximum(np.abs(par), 0.1)
        u0 = self._school[1]

        def lj(p: np.ndarray) -> np.ndarray:
            return d.w * school_loglik(p[:-1], p[-1], d, self.nagq, u0)[0]

        E = np.eye(k) * h
        f0 = float(lj(par).sum())
        fp = [lj(par + E[a]) for a in range(k)]
        fm = [lj(par - E[a]) for a in range(k)]
        G = np.column_stack([(fp[a] - fm[a]) / (2 * h[a]) for a in range(k)])
        H = np.empty((k, k))
        for a in range(k):
            H[a, a] = (float(fp[a].sum()) - 2 * f0 + float(fm[a].sum())) / h[a] ** 2
            for b in range(a):
                H[a, b] = H[b, a] = (
                    float(lj(par + E[a] + E[b]).sum()) - float(lj(par + E[a] - E[b]).sum())
                    - float(lj(par - E[a] + E[b]).sum()) + float(lj(par - E[a] - E[b]).sum())
                ) / (4 * h[a] * h[b])
        J = d.J
        Hi = np.linalg.inv(H)
        return Hi @ (J / (J - 1) * (G.T @ G)) @ Hi

    def vcov(self) -> pd.DataFrame:
        """Robust covariance of β̂ (the β block of the (β, τ) sandwich)."""
        p = self.beta.size
        names = list(self.design.x_names)
        return pd.DataFrame(self._sandwich[:p, :p], index=names, columns=names)

    def se(self) -> pd.Series:
        """Robust standard errors of β̂."""
        return pd.Series(np.sqrt(np.diag(self.vcov().to_numpy())),
                         index=list(self.design.x_names), name="Std. Error")

    def varcorr_se(self) -> dict:
        """Sandwich SE of the school variance τ² (delta method: 2τ·SE(τ))."""
        se_tau = math.sqrt(max(self._sandwich[-1, -1], 0.0))
        return {"variances": {"(Intercept)": 2 * self.tau * se_tau}, "covariances": {}}

    def VarCorr(self) -> VarCorr:
        """τ̂² (no residual row)."""
        return VarCorr(group=self.design.group, names=("(Intercept)",),
                       terms=(("(Intercept)",),), cov=np.array([[self.tau**2]]), residual=None)

    def coef_table(self) -> pd.DataFrame:
        """Estimate, robust SE, z, p."""
        est, se = self.fixef(), self.se()
        z = est / se
        return pd.DataFrame({"Estimate": est, "Std. Error": se, "z value": z,
                             "Pr(>|z|)": 2 * stats.norm.sf(np.abs(z))})

    def ranef(self, cond_var: bool = False) -> pd.DataFrame:
        """Conditional modes û_j of the school intercepts."""
        return pd.DataFrame({"(Intercept)": self._school[1]},
                            index=pd.Index(self.design.group_levels, name=self.design.group))

    def wald_test(self, names: list[str]) -> dict:
        """Wald χ² test that the named fixed effects are 0 (robust covariance)."""
        idx = [list(self.design.x_names).index(n) for n in names]
        b = self.beta[idx]
        V = self.vcov().to_numpy()[np.ix_(idx, idx)]
        W = float(b @ np.linalg.solve(V, b))
        return {"statistic": W, "df": len(idx), "p_value": float(stats.chi2.sf(W, len(idx)))}

    def anova(self, *others):
        """Refused (a pseudo-likelihood is not a likelihood)."""
        raise TwolevelError(LRT_REFUSED)

    def to_dict(self) -> dict:
        """The CLI's JSON layout (fixef, se, varcorr, loglik, nobs, ngroups, weights, …)."""
        tab = self.coef_table()
        return {"formula": self.design.formula, "family": self.family, "nagq": self.nagq,
                "nobs": self.nobs, "ngroups": self.ngroups, "loglik": self.loglik,
                "fixef": {k: float(v) for k, v in tab["Estimate"].items()},
                "se": {k: float(v) for k, v in tab["Std. Error"].items()},
                "varcorr": self.VarCorr().to_dict(), "varcorr_se": self.varcorr_se(),
                "weights": self.weights.to_dict()}

    def __repr__(self) -> str:
        from twolevel.models.fit_base import short_repr

        d = self.design
        return short_repr(type(self).__name__, [
            ("family", self.family), ("weights", "sampling"), ("nobs", d.n),
            ("groups", f"{d.group}:{d.n_groups}"), ("nAGQ", self.nagq)], d.formula)

    def summary(self) -> str:
        """Weights, log pseudo-likelihood, τ̂² with its sandwich SE, fixed effects (robust)."""
        from twolevel.models.rformat import print_coefmat

        w = self.weights
        how = ("Laplace" if self.nagq == 1
               else f"adaptive Gauss-Hermite quadrature, {self.nagq} points")
        tab = self.coef_table()
        out = [f"Generalized linear mixed model fit by pseudo-maximum likelihood ({how}) "
               f"[{self.family}]",
               f"Formula: {self.design.formula}", f"   Data: {self.data_name}",
               f"Weights: level 1 '{w.level1}' ("
               f"{'conditional' if w.conditional else 'unconditional'}), level 2 '{w.level2}'; "
               f"scaling: {w.scaling}", "",
               f"log pseudo-likelihood: {self.loglik:.6f}", "",
               f"Random effects: {self.design.group} (Intercept) variance {self.tau**2:.6g} "
               f"(sandwich SE {self.varcorr_se()['variances']['(Intercept)']:.6g})",
               f"Number of obs: {self.nobs}, groups:  {self.design.group}, {self.ngroups}", "",
               "Fixed effects (cluster-robust SEs):",
               print_coefmat(tab.to_numpy(), list(tab.index), list(tab.columns), digits=4,
                             has_pvalue=True)]
        if self.notes:
            out += [""] + list(self.notes)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()


def _glm_start(d: GlmmData) -> np.ndarray:
    """Weighted GLM (IRLS) coefficients with weights a·w_j: the starting β."""
    wr = d.a * d.w[d.codes]
    beta = np.zeros(d.X.shape[1])
    if d.family == "poisson":
        beta[0] = math.log(max(float(np.average(d.y, weights=wr)), 1e-3))
    for _ in range(25):
        eta = d.X @ beta
        mu = special.expit(eta) if d.family == "binomial" else np.exp(eta)
        v = mu * (1 - mu) if d.family == "binomial" else mu
        v = np.maximum(v, 1e-10)
        zz = eta + (d.y - mu) / v
        Xw = d.X * (wr * v)[:, None]
        new = np.linalg.solve(Xw.T @ d.X, Xw.T @ zz)
        if np.max(np.abs(new - beta)) < 1e-10:
            return new
        beta = new
    return beta


def glmer_weighted(formula: str, data: pd.DataFrame, weights, family: str = "binomial",
                   nAGQ: int = 1, conditional_weights: bool = False,
                   weight_scaling: str = "none", data_name: str = "data") -> WeightedGlmerFit:
    """Fit a binomial (0/1, logit) or Poisson (log) GLMM with a school random intercept and
    sampling weights at both levels by pseudo-maximum likelihood.

    Parameters
    ----------
    formula : ``y ~ x + (1 | school)``.  data : a pandas frame.
    weights : (level-1 column, level-2 column).  family : "binomial" or "poisson".
    nAGQ : 1 (Laplace) or the number of adaptive Gauss–Hermite points (≤ 25).
    conditional_weights, weight_scaling : as :func:`~twolevel.models.survey.fit.lmer_weighted`.
    data_name : for ``summary()``.

    Returns
    -------
    WeightedGlmerFit

    Raises
    ------
    FormulaError
        A random slope (only a random intercept is supported for weighted GLMMs).
    DataError
        Bad weights (see :func:`~twolevel.models.survey.weights.survey_weights`), a binomial
        response that is not 0/1, a negative or non-integer count.

    Examples
    --------
    >>> # tl.glmer("bin ~ Days + (1|Subject)", d, family="binomial", nAGQ=13,
    >>> #          weights=("W1", "W2"))
    """
    family = str(family).lower()
    if family not in FAMILIES:
        raise DataError(f"weighted GLMMs support family 'binomial' (0/1, logit) or 'poisson' "
                        f"(log), not '{family}'")
    if not 1 <= int(nAGQ) <= 25:
        raise DataError(f"nAGQ must be 1 (Laplace) to 25, got {nAGQ}")
    l1, l2 = check_weights_spec(weights, weight_scaling)
    n = len(data)
    w1 = check_weight_column(data, l1, "level-1") if l1 is not None else np.ones(n)
    w2 = check_weight_column(data, l2, "level-2") if l2 is not None else np.ones(n)
    design = make_design(formula, data)
    if design.z_names != ("(Intercept)",):
        raise FormulaError(f"weighted GLMMs support a random intercept only ('(1 | "
                           f"{design.group})'); '{formula}' has {', '.join(design.z_names)}")
    if design.n_na_dropped:
        cc = complete_rows(formula, data)
        w1, w2 = w1[cc], w2[cc]
    sw = weights_by_codes(design.group_index, np.asarray(design.group_levels), w1, w2,
                          group=design.group, l1=l1, l2=l2, conditional=conditional_weights,
                          scaling=weight_scaling)
    notes = list(design.notes) + list(sw.notes)
    if not sw.keep.all():
        rows = (np.flatnonzero(complete_rows(formula, data))[sw.keep] if design.n_na_dropped
                else np.flatnonzero(sw.keep))
        design = make_design(formula, data.iloc[rows])
    y = design.y
    if family == "binomial" and not np.all((y == 0) | (y == 1)):
        raise DataError(f"response '{design.response}' must be 0/1 for a weighted binomial GLMM")
    if family == "poisson" and (np.any(y < 0) or np.any(y != np.round(y))):
        raise DataError(f"response '{design.response}' must be non-negative counts for a "
                        "Poisson GLMM")
    d = GlmmData(X=np.ascontiguousarray(design.X), y=y, a=sw.a, codes=design.group_index,
                 w=sw.w_school.to_numpy(dtype=float), family=family)
    if d.J < 2:
        raise DataError("the sandwich needs at least 2 schools with a positive weight")
    nagq = int(nAGQ)
    state = {"u": None}

    def fn(p: np.ndarray) -> float:
        ll, u = school_loglik(p[:-1], abs(p[-1]), d, nagq, state["u"])
        state["u"] = u
        val = -float(d.w @ ll)
        return val if math.isfinite(val) else math.inf

    x0 = np.append(_glm_start(d), 1.0)
    bounds = [(None, None)] * (x0.size - 1) + [(0.0, None)]
    res = optimize.minimize(fn, x0, method="L-BFGS-B", bounds=bounds,
                            options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 2000})
    x = np.asarray(res.x, dtype=float)
    from twolevel.models.survey.fit import _newton_polish

    state["u"] = None
    x = _newton_polish(fn, x, np.append(np.full(x.size - 1, -np.inf), 0.0), steps=6)
    if not res.success:
        notes.append(f"optimizer: {res.message}")
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return WeightedGlmerFit(design=design, data=d, weights=sw, family=family, nagq=nagq,
                            par=x, data_name=data_name, notes=tuple(notes))

