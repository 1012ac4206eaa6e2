"""``glmer``: binomial and Poisson two-level models fitted as lme4::glmer does (§4.2 of the spec).

Flow: response and design → initial joint PIRLS at θ0 (lp0) → stage 1 (BOBYQA over θ, β inside
PIRLS) → lp0 ← stage 1's last linear predictor → stage 2 (lme4's Nelder–Mead over (θ, β) on the
Laplace or AGQ objective; ``optimizer="newton"``: Newton steps instead) → ``check.boundary`` →
``deriv12`` Hessian → final evaluation →
lme4's convergence checks. ``optimizer="tight"`` then minimises the *converged* objective
(PIRLS to convergence, L at the final weights) from glmer's optimum and keeps the lower value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from twolevel.data.errors import FormulaError
from twolevel.models.glmm.family import get_family
from twolevel.models.glmm.laplace import GlmmProblem
from twolevel.models.glmm.optimize import (
    bobyqa_stage1,
    check_boundary,
    deriv12,
    nelder_mead,
    newton_stage2,
    polish,
)
from twolevel.models.glmm.response import glmer_design
from twolevel.models.glmm.results import SINGULAR_TOL, GlmerFit, GlmerOptInfo

__all__ = ["glmer", "OPTIMIZERS"]

OPTIMIZERS = ("lme4", "newton", "tight")
MAX_AGQ = 25
GRAD_TOL = 2e-3  # check.conv.grad
HESS_TOL = 1e-6  # check.conv.hess


def _separation_note(prob: GlmmProblem) -> str | None:
    """Every group all-failure or all-success (binomial): a warning text, else None."""
    r, d = prob.resp, prob.design
    if not prob.family.is_binomial:
        return None
    s = np.bincount(d.group_index, weights=r.w * r.y, minlength=d.n_groups)
    t = np.bincount(d.group_index, weights=r.w, minlength=d.n_groups)
    pure = (s <= 0) | (s >= t)
    if not pure.all():
        return None
    return (f"complete separation within every group: in each of the {d.n_groups} groups of "
            f"'{d.group}' the response '{r.label}' is all 0 or all 1, so the group intercepts "
            "are not identified by within-group variation; the variance of the random "
            "intercept is driven by the prior N(0, 1) of u alone and its estimate is unreliable")


def _check_hess(H: np.ndarray, hesstype: str = "") -> list[str]:
    """lme4's ``checkHess`` (tol 1e-6)."""
    try:
        ev = np.linalg.eigvalsh(H)
    except np.linalg.LinAlgError:
        return ["Problem with Hessian check (infinite or missing values?)"]
    sp = f" {hesstype} " if hesstype else " "
    neg = int((ev < -HESS_TOL).sum())
    if neg:
        return [f"Model failed to converge: degenerate{sp}Hessian with {neg} negative eigenvalues"]
    try:
        np.linalg.cholesky(H)
        pd_ok = True
    except np.linalg.LinAlgError:
        pd_ok = False
    if (np.abs(ev) < HESS_TOL).any() or not pd_ok:
        return [f"{hesstype} Hessian is numerically singular: parameters are not uniquely "
                "determined"]
    msgs = []
    if ev.max() * HESS_TOL > 1:
        msgs.append("Model is nearly unidentifiable: very large eigenvalue\n - Rescale variables?")
    elif ev.min() / ev.max() < HESS_TOL:
        msgs.append("Model is nearly unidentifiable: large eigenvalue ratio\n - Rescale variables?")
    return msgs


def _conv_messages(H: np.ndarray | None, g: np.ndarray | None, singular: bool,
                   n_theta: int) -> list[str]:
    """lme4's ``checkConv``: singular fits skip the gradient and Hessian checks; the scaled
    gradient max min(|H^{-1/2}g|, |g|) against 2e-3, then ``checkHess`` of the β block and of
    the whole Hessian."""
    if singular or H is None or g is None:
        return []
    if not np.all(np.isfinite(g)):
        return ["Gradient contains NAs"]
    msgs = []
    try:
        s = np.linalg.solve(np.linalg.cholesky(H).T, g)  # R: solve(chol(H), g)
        sc = float(np.max(np.minimum(np.abs(s), np.abs(g))))
        if sc > GRAD_TOL:
            msgs.append(f"Model failed to converge with max|grad| = {sc:g} (tol = {GRAD_TOL:g}, "
                        "component 1)")
    except np.linalg.LinAlgError:
        msgs.append("unable to evaluate scaled gradient")
    if H.shape[0] > n_theta:
        msgs += _check_hess(H[n_theta:, n_theta:], "fixed-effect")
    msgs += _check_hess(H)
    return msgs


def glmer(formula: str, data: pd.DataFrame, family: str = "binomial", link: str | None = None,
          nAGQ: int = 1, optimizer: str = "lme4", weights=None,
          data_name: str = "data", conditional_weights: bool = False,
          weight_scaling: str = "none", pv=None, df_com: float | None = None) -> GlmerFit:
    """Fit ``formula`` (lme4 syntax) to ``data`` as ``lme4::glmer``. Several grouping factors
    (``(1 | school/class)``, ``(1 | school) + (1 | school:class)``) must be nested; they are
    fitted by :func:`twolevel.models.glmm.multi_fit.glmer_multi` (Laplace or nAGQ = 0; a
    :class:`~twolevel.models.glmm.multi_results.MultiGlmerFit`).

    Parameters
    ----------
    family, link : "binomial" (logit, probit, cloglog) or "poisson" (log).
    nAGQ : 1 = Laplace; 2…25 = adaptive Gauss–Hermite quadrature (a single random intercept
        only); 0 = β inside PIRLS (stage 1 only, as glmer's nAGQ = 0).
    optimizer : "lme4" reproduces glmer's printed numbers (its PIRLS stopping rule, the lagged
        log-determinant, BOBYQA then Nelder–Mead); "newton" replaces stage 2's Nelder–Mead by
        Newton steps with deriv12's gradient and Hessian on the same objective (about half the
        evaluations; glmer's deviance to ~1e-6, β to ~1e-3 SE, SEs to ~1e-4, so the last
        printed digit can differ; it hands over to Nelder–Mead near a bound); "tight" gives
        the fully converged Laplace/AGQ optimum (never a worse objective).
    weights : column name or array of prior weights (binomial: trials for proportions); a
        tuple of two column names (level 1, level 2) are sampling weights: a pseudo-maximum
        likelihood fit with robust SEs (:mod:`twolevel.models.survey.glmm`; random intercept;
        ``conditional_weights``, ``weight_scaling`` as in ``lmer``).
    pv, df_com : plausible values (or a list of imputed frames as ``data``), pooled by Rubin's
        rules as in ``lmer``.

    Returns
    -------
    GlmerFit
        With ``fixef``, ``vcov``, ``VarCorr``, ``ranef``, ``coef``, ``predict``, ``summary`` and the
        rest of lme4's vocabulary.

    Raises
    ------
    FormulaError
        An unknown family, link or optimizer, or an nAGQ that glmer does not allow.
    DataError
        A response that does not fit the family (e.g. values other than 0/1 for a Bernoulli model).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> g = tl.glmer("g1below ~ 1 + famsesc + (1 | schid)", d, family="binomial")
    >>> g.fixef().round(2).to_dict()
    {'(Intercept)': -1.01, 'famsesc': -0.66}
    """
    if pv is not None or (isinstance(data, (list, tuple)) and data
                          and all(isinstance(d, pd.DataFrame) for d in data)):
        from twolevel.models.survey.api import survey_sets

        return survey_sets(lambda f, d: glmer(f, d, family=family, link=link, nAGQ=nAGQ,
                                              optimizer=optimizer, weights=weights,
                                              data_name=data_name,
                                              conditional_weights=conditional_weights,
                                              weight_scaling=weight_scaling),
                           formula, data, pv, isinstance(weights, tuple), df_com)
    if isinstance(weights, tuple) and len(weights) == 2 and all(
            w is None or isinstance(w, str) for w in weights):
        from twolevel.models.survey.glmm import glmer_weighted

        if link not in (None, {"binomial": "logit", "poisson": "log"}.get(str(family).lower())):
            raise FormulaError(f"weighted GLMMs use the canonical link (logit, log), not '{link}'")
        return glmer_weighted(formula, data, weights, family=family, nAGQ=nAGQ,
                              conditional_weights=conditional_weights,
                              weight_scaling=weight_scaling, data_name=data_name)
    fam = get_family(family, link)
    if optimizer not in OPTIMIZERS:
        raise FormulaError(f"optimizer '{optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    nagq = int(nAGQ)
    if nagq != nAGQ or not 0 <= nagq <= MAX_AGQ:
        raise FormulaError(f"nAGQ = {nAGQ} is not allowed: use an integer from 0 to {MAX_AGQ}")
    from twolevel.models.design.multi import needs_multi

    if needs_multi(formula):  # several grouping factors: nested, Laplace (multi_fit.py)
        from twolevel.models.glmm.multi_fit import glmer_multi

        return glmer_multi(formula, data, fam, nagq, optimizer, weights, data_name)
    design, resp = glmer_design(formula, data, fam, weights)
    if nagq > 1 and (design.q != 1 or len(design.terms) != 1):
        raise FormulaError(
            f"nAGQ = {nagq} > 1 needs a single scalar random effect per group, but '{formula}' "
            f"has {design.q} random effects ({', '.join(design.z_names)}) for '{design.group}'; "
            "use nAGQ = 1 (Laplace) or drop the random slope")
    return fit_glmm(design, resp, fam, nagq, optimizer, formula, data_name, list(resp.notes))


def null_model(fit: GlmerFit) -> GlmerFit:
    """insight's ``null_model`` of a glmer fit: the same response, offset, family, random
    effects, nAGQ and optimizer with the intercept as the only fixed effect
    (``update(fit, y ~ (re terms), offset = ...)``); warnings of the refit are dropped."""
    d = fit.design
    ones = np.ones((d.n, 1))
    null_design = replace(d, X=ones, x_names=("(Intercept)",), dropped_columns=(),
                          formula=f"{d.response} ~ 1 (null model of {fit.formula})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_glmm(null_design, fit.problem.resp, fit.family, fit.nagq,
                        fit.optinfo.optimizer, null_design.formula, fit.data_name, [])


def fit_glmm(design, resp, fam, nagq: int, optimizer: str, formula: str, data_name: str,
             notes: list) -> GlmerFit:
    """glmer's two optimisation stages on a built design and response (:func:`glmer`)."""
    prob = GlmmProblem(design, resp, fam, nagq=max(nagq, 1))
    sep = _separation_note(prob)
    if sep:
        warnings.warn(sep, stacklevel=3)
        notes.append(sep)
    lower_t = design.theta_lower
    theta1, _, fe1 = bobyqa_stage1(prob.stage1, prob.theta0, lower_t)
    st1 = prob.stage1_state(theta1)
    if nagq == 0:
        theta, f = check_boundary(prob.stage1, theta1, st1.value, lower_t)
        st = prob.stage1_state(theta)
        info = GlmerOptInfo(optimizer, theta1, fe1, 0, "", None, None)
        return GlmerFit(prob, 0, theta, st.beta.copy(), st, st.value, None, info, formula,
                        data_name, tuple(notes))
    s2 = fit_stage2(prob, prob.stage2, theta1, fe1, st1, optimizer, notes)
    return GlmerFit(prob, nagq, s2.theta, s2.beta, s2.state, s2.state.value, s2.vcov_h, s2.info,
                    formula, data_name, tuple(notes))


@dataclass(frozen=True)
class Stage2:
    """What glmer's second stage found (:func:`fit_stage2`): θ and β, the problem's state there
    (with RX), the β block of the inverse finite-difference Hessian as the covariance (None
    when it is not positive definite: then RX's), the record of the optimisation, and whether
    some θ on its lower bound 0 makes the fit singular."""

    theta: np.ndarray
    beta: np.ndarray
    state: Any
    vcov_h: np.ndarray | None
    info: GlmerOptInfo
    singular: bool


def fit_stage2(prob, objective2, theta1: np.ndarray, fe1: int, st1, optimizer: str,
               notes: list) -> Stage2:
    """glmer's second stage (lme4's ``optimizeGlmer(stage = 2)``) from the first stage's θ₁ and
    state ``st1``, for one grouping factor (:class:`GlmmProblem`) or several: θ and β together
    by Newton (``optimizer="newton"``; Nelder–Mead where Newton declines) or Nelder–Mead from
    (θ₁, β₁) with initial steps 0.2·(0.1, min(SE₁, 10)), the boundary check, the ``"tight"``
    polish of the exact deviance, lme4's finite-difference Hessian (``deriv12``) whose inverse's
    β block, symmetrised as lme4 does (V + Vᵀ), is the covariance, and lme4's convergence
    messages (warned, kept in the record; a note is added to ``notes`` when the Hessian's
    covariance falls back to RX's). ``objective2`` is the deviance the optimisers minimise (the
    problem's ``stage2``, or a wrapper of it)."""
    design = prob.design
    lower_t = design.theta_lower
    prob.set_warm_start(st1)
    L = np.tril(st1.RX)
    se1 = np.sqrt(np.diag(np.linalg.inv(L @ L.T)))
    x0 = np.concatenate([theta1, st1.beta])
    lower = np.concatenate([lower_t, np.full(design.p, -np.inf)])
    upper = np.full(x0.size, np.inf)
    xst = 0.2 * np.concatenate([np.full(design.n_theta, 0.1), np.minimum(se1, 10.0)])
    g = H = None
    nr = newton_stage2(objective2, x0, lower, xst) if optimizer == "newton" else None
    if nr is not None and nr.ok:
        feval2, message2, stage2_name = nr.feval, nr.message, "Newton"
        par, fval = check_boundary(objective2, nr.x, nr.fval, lower)
        if np.array_equal(par, nr.x):
            g, H = nr.gradient, nr.hessian
    else:
        nm = nelder_mead(objective2, x0, lower, upper, xst, 5e-4 * xst)
        feval2, message2, stage2_name = nm.feval, nm.message, "Nelder_Mead"
        if nr is not None:  # Newton declined: lme4's path, said so in the record
            feval2 += nr.feval
            message2 = f"Newton declined ({nr.message}); Nelder-Mead: {nm.message}"
        par, fval = check_boundary(objective2, nm.x, nm.fval, lower)
    objective = objective2
    polish_feval = 0
    if optimizer == "tight":
        def objective(x):
            return prob.stage2(x, exact=True)
        f_lme4 = objective(par)
        p2, f2, polish_feval = polish(objective, par, lower, xst * 0.1)
        if f2 < f_lme4:
            par = p2
        par, fval = check_boundary(objective, par, objective(par), lower)
    if H is None:
        g, H = deriv12(objective, par, fx=fval)
    n_t = design.n_theta
    vcov_h = None
    try:
        Hinv = np.linalg.inv(H)
        Vb = Hinv[n_t:, n_t:]
        Vb = Vb + Vb.T
        np.linalg.cholesky(Vb)
        vcov_h = Vb
    except np.linalg.LinAlgError:
        msg = ("variance-covariance matrix computed from finite-difference Hessian is not "
               "positive definite or contains NA values: falling back to var-cov estimated "
               "from RX")
        warnings.warn(msg, stacklevel=4)
        notes.append(msg)
    st = prob.stage2_state(par, exact=(optimizer == "tight"), want_rx=True)
    theta = par[:n_t].copy()
    singular = bool(np.any(theta[lower_t == 0] < SINGULAR_TOL))
    msgs = _conv_messages(H, g, singular, n_t)
    msgs = list(dict.fromkeys(msgs))
    for m in msgs:
        warnings.warn(m, stacklevel=4)
    info = GlmerOptInfo(optimizer, theta1, fe1, feval2, message2, g, H, polish_feval,
                        tuple(msgs), stage2_name)
    return Stage2(theta, par[n_t:].copy(), st, vcov_h, info, singular)
