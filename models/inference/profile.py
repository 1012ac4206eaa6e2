"""Confidence intervals: likelihood profiles (lme4's ``confint(method = "profile")``), Wald, and the
parametric bootstrap.

Profile (lme4 ``profile.merMod`` + ``confint.thpr``, §6 of the lme4 algorithm notes)
    1. Refit by **ML** (lme4 always profiles the ML deviance, even for REML fits).
    2. Parameters: the SDs and correlations of the random effects and σ ("sdcor" scale, in θ's
       order: ``sd_(Intercept)|g``, ``cor_x.(Intercept)|g``, ``sd_x|g``, then ``sigma``), then the
       fixed effects.
    3. For a variance parameter ψ_w held at a value, the ML deviance
       D(ψ) = log|L_θ|² + r²(θ)/σ² + n log(2πσ²), θ = chol(Σ_b/σ²), is minimised over the other
       variance parameters (BOBYQA, bounds sd ≥ 0, −1 ≤ cor ≤ 1, σ ≥ 0; β is profiled by the PLS
       solve); for a fixed effect β_k held at b, x_k·b moves into an offset and the ML criterion of
       the reduced model is minimised over θ (lme4's ``fe.zeta``). ζ = sign(ψ − ψ̂)·√(D − D_min).
    4. Points are placed as lme4 does: a first step of 1% of ψ̂ (0.001 when ψ̂ = 0; for fixed
       effects δ·SE_ML), then steps aiming at Δζ = δ = cutoff/8 with cutoff = √χ²_{nptot}(0.99)
       (capped at 10× the previous step, clamped to the bounds), until |ζ| > cutoff or a bound, at
       most 100 points per side.
    5. The CI ends are ζ⁻¹(±z_{(1+level)/2}) through R's ``backSpline`` of the natural
       interpolating cubic spline ζ(ψ) (``splines::interpSpline``): a piecewise cubic in ζ that
       interpolates the points with slopes 1/ζ′, quadratic (or linear) on the two end intervals.
       If ζ is not increasing at the points, lme4 warns "bad spline fit … falling back to linear
       interpolation" and interpolates ψ(ζ) linearly (points sorted by ζ, ties averaged; NA only
       when every step decreases — lme4's test is ``min(diff(ζ) < −0.01)``); an end beyond the
       profiled range is the parameter's bound (0 for an SD, ±1 for a correlation). A
       correlation's profile can plateau where the slope SD reaches 0 (the correlation no longer
       matters there), which is what triggers the fallback on HSB and the lecture data.

Wald
    β̂ ± z_{(1+level)/2}·SE (SE from the fit's vcov; REML σ̂ for REML fits); NaN for variance
    parameters, as lme4.

Parametric bootstrap (lme4 ``bootMer(type = "parametric", use.u = FALSE)`` + percentile CIs)
    Simulate b* ~ N(0, σ̂²TTᵀ), ε* ~ N(0, σ̂²), y* = Xβ̂ + Zb* + ε* (vectorised over rows), refit with
    the same criterion (REML or ML), collect (SDs, correlations, σ, β); percentile intervals
    (``boot.ci(type = "perc")``: the empirical quantiles, R's type-7 here). Seeded; progress on
    stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from twolevel.data.errors import TwolevelError
from twolevel.models.design import Design, GroupCrossprods, group_crossprods
from twolevel.models.inference.profile_core import (
    MLRefit,
    Profile,
    ProfileProblem,
    ProfileTrace,
    _chol_psd,
    _minimize,
    back_spline_predict,
    profile_traces,
)
from twolevel.models.lmm.deviance import make_deviance, ml_deviance, pls_state, sigma_hat
from twolevel.models.lmm.optimize import optimize_theta

__all__ = [
    "MLRefit",
    "Profile",
    "ProfileTrace",
    "back_spline_predict",
    "confint_profile",
    "cv_to_sv",
    "ml_refit",
    "parameter_names",
    "ProfileProblem",
    "profile",
    "profile_lrt",
    "profile_problem",
    "profile_traces",
    "sv_to_cv",
]

_LOG_2PI = float(np.log(2.0 * np.pi))
_BIG = 1e300


# ------------------------------------------------------------------ parameter transformations


def parameter_names(design: Design) -> list[str]:
    """lme4's ``oldNames = FALSE`` names of the variance parameters (θ order) and ``sigma``:
    ``sd_(Intercept)|g``, ``cor_x.(Intercept)|g``, ``sd_x|g``, …, ``sigma``."""
    tmpl = design.theta_template
    names = [""] * design.n_theta
    zn, g = design.z_names, design.group
    for r, c in zip(*np.nonzero(tmpl >= 0), strict=True):
        names[tmpl[r, c]] = f"sd_{zn[r]}|{g}" if r == c else f"cor_{zn[r]}.{zn[c]}|{g}"
    return names + ["sigma"]


def cv_to_sv(design: Design, theta: np.ndarray, sigma: float) -> np.ndarray:
    """lme4's ``Cv_to_Sv``: θ and σ → (SDs on T's diagonal positions, correlations on its
    off-diagonal positions, in θ order; then σ), from Σ_b = σ²TTᵀ."""
    T = design.theta_to_T(np.asarray(theta, dtype=float))
    S = sigma**2 * T @ T.T
    sd = np.sqrt(np.diag(S))
    tmpl = design.theta_template
    out = np.empty(design.n_theta + 1)
    for r, c in zip(*np.nonzero(tmpl >= 0), strict=True):
        if r == c:
            out[tmpl[r, c]] = sd[r]
        else:
            den = sd[r] * sd[c]
            out[tmpl[r, c]] = S[r, c] / den if den > 0 else 0.0
    out[-1] = sigma
    return out


def sv_to_cv(design: Design, sv: np.ndarray) -> np.ndarray | None:
    """lme4's ``Sv_to_Cv``: (SDs, correlations, σ) → θ = the Cholesky factor of Σ_b/σ² in θ's
    layout; None when the correlations do not form a positive semi-definite matrix."""
    sv = np.asarray(sv, dtype=float)
    sigma = sv[-1]
    tmpl = design.theta_template
    q = design.q
    sd = np.zeros(q)
    for r in range(q):
        sd[r] = sv[tmpl[r, r]]
    S = np.zeros((q, q))
    for r, c in zip(*np.nonzero(tmpl >= 0), strict=True):
        if r == c:
            S[r, r] = sd[r] ** 2
        else:
            S[r, c] = S[c, r] = sv[tmpl[r, c]] * sd[r] * sd[c]
    L = _chol_psd(S)
    if L is None or sigma <= 0:
        return None
    return design.T_to_theta(L / sigma)


# ---------------------------------------------------------------------- deviance functions


def _ml_dev_sv(design: Design, cp: GroupCrossprods) -> Callable[[np.ndarray], float]:
    """lme4's ``devfun2``: the ML deviance at (SDs, correlations, σ), β profiled:
    D = log|L_θ|² + r²(θ)/σ² + n log(2πσ²)."""

    def dev(sv: np.ndarray) -> float:
        theta = sv_to_cv(design, sv)
        if theta is None or not np.all(np.isfinite(theta)):
            return _BIG
        st = pls_state(cp, design.theta_to_T(theta))
        s2 = float(sv[-1]) ** 2
        return float(st.ldL2 + st.r2 / s2 + cp.n * (_LOG_2PI + np.log(s2)))

    return dev


def _drop_fixed(cp: GroupCrossprods, k: int, value: float) -> GroupCrossprods:
    """Cross-products of the model with β_k fixed at ``value``: column k of X moves into an offset
    (y → y − x_k·value) and is dropped."""
    keep = [i for i in range(cp.p) if i != k]
    return GroupCrossprods(
        A=cp.A,
        B=np.ascontiguousarray(cp.B[:, :, keep]),
        c=cp.c - cp.B[:, :, k] * value,
        XtX=cp.XtX[np.ix_(keep, keep)],
        Xty=cp.Xty[keep] - cp.XtX[keep, k] * value,
        yty=float(cp.yty - 2.0 * value * cp.Xty[k] + value**2 * cp.XtX[k, k]),
        n=cp.n,
        p=cp.p - 1,
    )


def profile(
    design: Design,
    cp: GroupCrossprods | None = None,
    *,
    which: Sequence[str] | None = None,
    alphamax: float = 0.01,
    maxpts: int = 100,
    delta_cutoff: float = 1.0 / 8.0,
    maxmult: float = 10.0,
    theta_start: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
) -> Profile:
    """Profile the ML deviance over every parameter (lme4's ``profile.merMod``, module doc).

    Parameters
    ----------
    design, cp : the model (cross-products computed when not given).
    which : parameter names to profile (default all, see :func:`parameter_names` + fixed effects).
    alphamax, maxpts, delta_cutoff, maxmult : lme4's arguments.
    theta_start : where the ML refit starts (e.g. the REML θ̂, as lme4's ``refitML``).
    progress : called with a short message before each parameter.

    Returns
    -------
    Profile
        The profile traces; ``.confint(level)`` gives lme4's profile intervals.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> pr = tl.profile(fit.design, fit.crossprods, theta_start=fit.theta)
    >>> pr.confint().index.tolist()
    ['sd_(Intercept)|schid', 'sigma', '(Intercept)', 'famsesc']
    """
    return profile_traces(
        profile_problem(design, cp, theta_start=theta_start),
        which=which, alphamax=alphamax, maxpts=maxpts, delta_cutoff=delta_cutoff,
        maxmult=maxmult, progress=progress)


def profile_problem(
    design: Design, cp: GroupCrossprods | None = None, *, theta_start: np.ndarray | None = None
) -> ProfileProblem:
    """The :class:`ProfileProblem` of a one-factor model: its ML refit (started at
    ``theta_start``), the ML deviance on the sdcor scale and, for β_k held at b, the ML criterion
    of the model with x_k·b moved into an offset.

    Parameters
    ----------
    design, cp : the model (cross-products computed when not given).
    theta_start : where the ML refit starts (e.g. the REML θ̂).

    Returns
    -------
    ProfileProblem

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> profile_problem(fit.design, fit.crossprods, theta_start=fit.theta).fixed_names
    ['(Intercept)', 'famsesc']
    """
    cp = cp if cp is not None else group_crossprods(design)
    refit = ml_refit(design, cp, theta_start)

    def fixed_deviance(k: int, value: float) -> Callable[[np.ndarray], float]:
        cpk = _drop_fixed(cp, k, value)
        return lambda th: float(ml_deviance(pls_state(cpk, design.theta_to_T(th))))

    lower, upper = _sv_bounds(design)
    return ProfileProblem(
        variance_names=parameter_names(design), fixed_names=list(design.x_names),
        sv_opt=cv_to_sv(design, refit.theta, refit.sigma), sv_lower=lower, sv_upper=upper,
        sv_deviance=_ml_dev_sv(design, cp), fixed_deviance=fixed_deviance,
        theta_lower=design.theta_lower, refit=refit)


def confint_profile(
    design: Design,
    cp: GroupCrossprods | None = None,
    level: float = 0.95,
    **kwargs,
) -> pd.DataFrame:
    """lme4's ``confint(fit, method = "profile", oldNames = FALSE)``; see :func:`profile`."""
    return profile(design, cp, **kwargs).confint(level)


def ml_refit(
    design: Design, cp: GroupCrossprods, theta_start: np.ndarray | None = None,
    mode: str = "tight",
) -> MLRefit:
    """Minimise the ML deviance (from ``theta_start``, e.g. the REML θ̂; lme4's θ0 otherwise)."""
    devml = make_deviance(design, reml=False, crossprods=cp)
    start = design.theta_start() if theta_start is None else np.asarray(theta_start, float)
    opt = optimize_theta(devml, start, design.theta_lower, mode=mode)
    st = pls_state(cp, design.theta_to_T(opt.theta))
    sig = sigma_hat(st, reml=False)
    RXi = np.linalg.inv(st.RX)
    se = sig * np.sqrt(np.sum(RXi**2, axis=1))
    return MLRefit(theta=opt.theta, sigma=sig, beta=st.beta, se=se, deviance=ml_deviance(st))


def profile_lrt(
    design: Design, cp: GroupCrossprods, refit: MLRefit, name: str, value: float
) -> float:
    """D_prof(ψ = value) − D_min for one variance parameter (sdcor scale, :func:`parameter_names`)
    or fixed effect: the likelihood-ratio statistic ζ². A value lies inside the level-(1 − α)
    profile interval iff this is ≤ χ²₁(1 − α) (for a monotone ζ); the coverage study uses it."""
    vnames = parameter_names(design)
    if name in vnames:
        w = vnames.index(name)
        lower, upper = _sv_bounds(design)
        dev2 = _ml_dev_sv(design, cp)
        sv0 = cv_to_sv(design, refit.theta, refit.sigma)
        _, fv = _minimize(lambda o: dev2(np.insert(o, w, value)), np.delete(sv0, w),
                          np.delete(lower, w), np.delete(upper, w))
        return float(fv - refit.deviance)
    if name in design.x_names:
        cpk = _drop_fixed(cp, design.x_names.index(name), value)
        lo_t = design.theta_lower
        _, fv = _minimize(lambda th: float(ml_deviance(pls_state(cpk, design.theta_to_T(th)))),
                          refit.theta, lo_t, np.full(lo_t.shape, np.inf))
        return float(fv - refit.deviance)
    raise TwolevelError(
        f"unknown parameter '{name}': use one of {', '.join(vnames + list(design.x_names))}"
    )


def _sv_bounds(design: Design) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the sdcor scale: sd ≥ 0, −1 ≤ cor ≤ 1, σ ≥ 0 (lme4's profile bounds)."""
    tmpl = design.theta_template
    diag_idx = {int(tmpl[r, r]) for r in range(design.q)}
    nv = design.n_theta
    lower = np.array([0.0 if k in diag_idx else -1.0 for k in range(nv)] + [0.0])
    upper = np.array([np.inf if k in diag_idx else 1.0 for k in range(nv)] + [np.inf])
    return lower, upper
