"""The likelihood-profile algorithm shared by one grouping factor
(:mod:`twolevel.models.inference.profile`) and several
(:mod:`twolevel.models.inference.profile_multi`): lme4's ``profile.merMod`` point placement,
the bounded BOBYQA minimisations, and ``confint.thpr``'s spline inversion.

A model enters as a :class:`ProfileProblem`: its ML refit, the deviance on lme4's sdcor scale
(SDs, correlations, σ; β profiled) and, for each fixed effect held at a value, the ML criterion
as a function of θ. :func:`profile_traces` returns the :class:`Profile`, whose ``confint``
inverts each trace (the steps are those of the one-factor module's docstring).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nlopt
import numpy as np
import pandas as pd
from scipy import stats
from scipy.interpolate import CubicSpline

from twolevel.data.errors import TwolevelError

__all__ = ["MLRefit", "Profile", "ProfileProblem", "ProfileTrace", "back_spline_predict",
           "profile_traces", "profile_zeta"]


def _chol_psd(S: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of a positive semi-definite S (zero pivots give zero columns);
    None if S is indefinite."""
    q = S.shape[0]
    L = np.zeros_like(S)
    scale = max(float(np.max(np.abs(np.diag(S)))), 1e-300)
    for j in range(q):
        d = S[j, j] - L[j, :j] @ L[j, :j]
        if d < -1e-10 * scale:
            return None
        if d <= 1e-14 * scale:
            if np.any(np.abs(S[j + 1 :, j] - L[j + 1 :, :j] @ L[j, :j]) > 1e-7 * scale):
                return None
            continue
        L[j, j] = np.sqrt(d)
        L[j + 1 :, j] = (S[j + 1 :, j] - L[j + 1 :, :j] @ L[j, :j]) / L[j, j]
    return L



def _minimize(
    fn: Callable[[np.ndarray], float], x0: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, float]:
    """Bounded minimisation with NLopt's BOBYQA (tight tolerances), best point kept."""
    n = x0.shape[0]
    if n == 0:
        return x0, float(fn(x0))
    best = {"x": np.array(x0, dtype=float), "f": np.inf}

    def obj(x: np.ndarray, grad: np.ndarray) -> float:
        f = float(fn(x))
        if f < best["f"]:
            best["x"], best["f"] = np.array(x), f
        return f

    x0 = np.clip(np.asarray(x0, dtype=float), lower, upper)
    opt = nlopt.opt(nlopt.LN_BOBYQA, n)
    opt.set_lower_bounds(lower)
    opt.set_upper_bounds(upper)
    opt.set_min_objective(obj)
    opt.set_xtol_rel(1e-10)
    opt.set_ftol_abs(1e-12)
    opt.set_maxeval(20_000)
    step = np.where(np.abs(x0) > 0, 0.1 * np.abs(x0), 0.05)
    room = np.minimum(upper - x0, x0 - lower)
    step = np.where(np.isfinite(room) & (room > 0), np.minimum(step, 0.5 * room + 1e-12), step)
    opt.set_initial_step(np.maximum(step, 1e-6))
    try:
        opt.optimize(x0)
    except (nlopt.RoundoffLimited, RuntimeError, ValueError):
        pass
    return best["x"], best["f"]


# ----------------------------------------------------------------------------- the profile


@dataclass(frozen=True)
class ProfileTrace:
    """The profile of one parameter: points sorted by the parameter value.

    ``par`` the parameter values, ``zeta`` the signed square root of the deviance increase,
    ``lower`` / ``upper`` the parameter's bounds, ``estimate`` its ML estimate.
    """

    name: str
    par: np.ndarray
    zeta: np.ndarray
    estimate: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Profile:
    """Likelihood profiles of all parameters of an ML refit (lme4's ``thpr`` object).

    Fields
    ------
    traces : {name: ProfileTrace} in lme4's order (variance parameters, sigma, fixed effects).
    ml_theta, ml_sigma, ml_beta : the ML refit.  base_deviance : its deviance D_min.
    cutoff : √χ²_nptot(1 − alphamax).  delta : the ζ step.
    warnings : messages such as "non-monotonic profile for …".

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> fit = tl.lmer("g1rscore ~ famsesc + (1 | schid)", d)
    >>> pr = tl.profile(fit.design, fit.crossprods, which=["famsesc"], theta_start=fit.theta)
    >>> pr.confint().index.tolist()
    ['famsesc']
    """

    traces: dict[str, ProfileTrace]
    ml_theta: np.ndarray
    ml_sigma: float
    ml_beta: np.ndarray
    base_deviance: float
    cutoff: float
    delta: float
    warnings: tuple[str, ...] = field(default=())

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """lme4's ``confint.thpr``: ends of the profile CI of each parameter (see module doc)."""
        a = (1.0 - level) / 2.0
        zq = stats.norm.ppf([a, 1.0 - a])
        rows, msgs = [], []
        for _name, tr in self.traces.items():
            lo_hi, msg = _invert(tr, zq)
            if msg:
                msgs.append(msg)
            rows.append(lo_hi)
        for m in msgs:
            warnings.warn(m, stacklevel=2)
        cols = [f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"]
        return pd.DataFrame(rows, index=pd.Index(list(self.traces), name="parameter"), columns=cols)

    def to_frame(self) -> pd.DataFrame:
        """All profile points: parameter, value, ζ (long format)."""
        parts = [
            pd.DataFrame({"parameter": n, "value": t.par, "zeta": t.zeta})
            for n, t in self.traces.items()
        ]
        return pd.concat(parts, ignore_index=True)


def back_spline_predict(par: np.ndarray, zeta: np.ndarray, z: np.ndarray) -> np.ndarray:
    """R's ``predict(backSpline(interpSpline(zeta ~ par)), z)``.

    ``interpSpline`` is the natural cubic interpolating spline ζ(ψ); ``backSpline`` its inverse: on
    each interior interval the cubic in ζ with values ψ_k, ψ_{k+1} and slopes 1/ζ′(ψ_k),
    1/ζ′(ψ_{k+1}); on the first and last intervals a quadratic matching the inner end's slope,
    made linear if its curvature has the wrong sign. NaN outside the range of ζ. Raises
    ValueError ("spline must be monotone") when ζ is not strictly increasing.
    """
    x = np.asarray(par, dtype=float)
    y = np.asarray(zeta, dtype=float)
    nk = x.shape[0]
    if np.any(np.diff(x) <= 0):
        raise ValueError("knot positions must be strictly increasing")
    adiff = np.diff(y)
    if not np.all(adiff > 0):
        raise ValueError("spline must be monotone")
    if nk == 2:
        deriv = np.full(2, adiff[0] / (x[1] - x[0]))
    else:
        deriv = CubicSpline(x, y, bc_type="natural")(x, 1)
    kdiff = np.diff(x)
    c = np.zeros((nk, 4))
    c[:, 0] = x
    c[:, 1] = 1.0 / deriv
    for i in range(nk - 1):
        a = np.array([[adiff[i] ** 2, adiff[i] ** 3], [2 * adiff[i], 3 * adiff[i] ** 2]])
        b = np.array([kdiff[i] - adiff[i] * c[i, 1], c[i + 1, 1] - c[i, 1]])
        c[i, 2:4] = np.linalg.solve(a, b)
    if nk > 2:
        c[0, 3] = c[nk - 2, 3] = 0.0
        a = np.array([[adiff[0], adiff[0] ** 2], [1.0, 2 * adiff[0]]])
        c[0, 1:3] = np.linalg.solve(a, np.array([kdiff[0], 1.0 / deriv[1]]))
        c[nk - 2, 2] = (kdiff[nk - 2] - adiff[nk - 2] * c[nk - 2, 1]) / adiff[nk - 2] ** 2
    if c[0, 2] > 0:
        c[0, 2] = 0.0
        c[0, 1] = kdiff[0] / adiff[0]
    if c[nk - 2, 2] < 0:
        c[nk - 2, 2] = 0.0
        c[nk - 2, 1] = kdiff[nk - 2] / adiff[nk - 2]
    z = np.atleast_1d(np.asarray(z, dtype=float))
    out = np.full(z.shape, np.nan)
    for m, zz in enumerate(z):
        if zz < y[0] or zz > y[-1]:
            continue
        i = min(int(np.searchsorted(y, zz, side="right")) - 1, nk - 2)
        d = zz - y[i]
        out[m] = c[i, 0] + d * (c[i, 1] + d * (c[i, 2] + d * c[i, 3]))
    return out


def _invert(tr: ProfileTrace, zq: np.ndarray, non_mono_tol: float = 1e-2) -> tuple[list, str]:
    """confint.thpr for one trace; returns ([lo, hi], warning or "")."""
    ok = np.isfinite(tr.zeta)
    par, zeta = tr.par[ok], tr.zeta[ok]
    msg = ""
    try:
        p = back_spline_predict(par, zeta, zq)
    except ValueError:
        if zeta.size == 0:
            return [np.nan, np.nan], f"bad profile for {tr.name}"
        # lme4 tests ``min(diff(zeta) < -non.mono.tol)``: the minimum of a logical vector, TRUE
        # only when *every* step decreases; otherwise it interpolates linearly
        # (``approxfun(zeta, par)``: sorted by ζ, tied ζ averaged).
        if zeta.size < 2 or np.all(np.diff(zeta) < -non_mono_tol):
            return [np.nan, np.nan], f"non-monotonic profile for {tr.name}"
        msg = f"bad spline fit for {tr.name}: falling back to linear interpolation"
        zs, inv = np.unique(zeta, return_inverse=True)
        ps = np.bincount(inv, weights=par) / np.bincount(inv)
        p = np.array([np.interp(v, zs, ps) if zs[0] <= v <= zs[-1] else np.nan for v in zq])
    if np.isnan(p[0]):
        p[0] = tr.lower
    if np.isnan(p[1]):
        p[1] = tr.upper
    return [float(p[0]), float(p[1])], msg


def _fill_side(
    zfun: Callable[[float, np.ndarray], tuple[float, np.ndarray]],
    first: tuple[float, float, np.ndarray],
    second: tuple[float, float, np.ndarray],
    lowcut: float,
    upcut: float,
    cutoff: float,
    delta: float,
    maxpts: int,
    maxmult: float,
) -> list[tuple[float, float]]:
    """lme4's ``fillmat`` + ``nextpar``: rows (ψ, ζ) starting from two rows, stepping to Δζ = δ."""
    rows = [first, second]  # (psi, zeta, others)
    i = 1
    while (
        i < maxpts - 1
        and lowcut < rows[i][0] < upcut
        and (not np.isfinite(rows[i][1]) or abs(rows[i][1]) <= cutoff)
    ):
        (p0, z0, _), (p1, z1, s1) = rows[i - 1], rows[i]
        num = p1 - p0
        den = z1 - z0
        if not np.isfinite(den) or den == 0:
            step = 1e-6
        else:
            step = delta * num / den
            if step < 0:
                step = 1e-6
            elif abs(step) > abs(maxmult * num):
                step = abs(maxmult * num)
        nxt = min(upcut, max(lowcut, p1 + np.sign(num) * step))
        z, others = zfun(nxt, s1)
        rows.append((nxt, z, others))
        i += 1
    return [(p, z) for p, z, _ in rows]



@dataclass(frozen=True)
class MLRefit:
    """lme4's ``refitML``: the ML optimum (θ̂, σ̂, β̂, SE(β̂) with σ̂_ML) and its deviance."""

    theta: np.ndarray
    sigma: float
    beta: np.ndarray
    se: np.ndarray
    deviance: float



@dataclass(frozen=True)
class ProfileProblem:
    """What the profile of an ML fit needs, for one grouping factor or several.

    Fields
    ------
    variance_names, fixed_names : the parameters, in lme4's order.
    sv_opt : the ML estimate on the sdcor scale (SDs, correlations, σ).
    sv_lower, sv_upper : bounds on that scale (sd ≥ 0, −1 ≤ cor ≤ 1, σ ≥ 0).
    sv_deviance : lme4's ``devfun2``, the ML deviance at a point of the sdcor scale (β profiled).
    fixed_deviance : (k, b) ↦ the ML criterion θ ↦ D(θ) of the model with β_k held at b.
    theta_lower : θ's lower bounds.  refit : the ML refit (:class:`MLRefit`).
    """

    variance_names: list[str]
    fixed_names: list[str]
    sv_opt: np.ndarray
    sv_lower: np.ndarray
    sv_upper: np.ndarray
    sv_deviance: Callable[[np.ndarray], float]
    fixed_deviance: Callable[[int, float], Callable[[np.ndarray], float]]
    theta_lower: np.ndarray
    refit: MLRefit


def profile_traces(
    prob: ProfileProblem,
    *,
    which: Sequence[str] | None = None,
    alphamax: float = 0.01,
    maxpts: int = 100,
    delta_cutoff: float = 1.0 / 8.0,
    maxmult: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> Profile:
    """lme4's ``profile.merMod`` on a :class:`ProfileProblem` (module docstring, steps 2–4):
    for each wanted parameter, points (ψ, ζ) stepping away from the ML estimate on both sides.

    Parameters
    ----------
    prob : the problem.  which, alphamax, maxpts, delta_cutoff, maxmult, progress : as
        :func:`profile`.

    Returns
    -------
    Profile

    Raises
    ------
    TwolevelError
        A wanted name that is not a parameter.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> pr = tl.profile(fit.design, fit.crossprods, which=["famsesc"], theta_start=fit.theta)
    >>> list(pr.traces)
    ['famsesc']
    """
    refit = prob.refit
    theta_ml, sig_ml, base, beta_ml, se_ml = (
        refit.theta, refit.sigma, refit.deviance, refit.beta, refit.se
    )
    vnames = list(prob.variance_names)
    names = vnames + list(prob.fixed_names)
    nptot = len(names)
    sv_opt = prob.sv_opt
    cutoff = float(np.sqrt(stats.chi2.ppf(1.0 - alphamax, nptot)))
    delta = cutoff * delta_cutoff
    lower, upper = prob.sv_lower, prob.sv_upper
    wanted = names if which is None else list(which)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise TwolevelError(
            f"cannot profile {', '.join(map(repr, unknown))}: parameters are {', '.join(names)}"
        )
    msgs: list[str] = []
    traces: dict[str, ProfileTrace] = {}

    for w, name in enumerate(vnames):
        if name not in wanted:
            continue
        if progress:
            progress(f"profiling {name}")
        pw = float(sv_opt[w])
        others0 = np.delete(sv_opt, w)
        zeta = _variance_zeta(prob, w, msgs)

        shift = 1e-3 if pw == 0 else pw * 1.01
        zs, os_ = zeta(shift, others0)
        opt_row = (pw, 0.0, others0)
        sh_row = (shift, zs, os_)
        up_rows = _fill_side(zeta, opt_row, sh_row, lower[w], upper[w], cutoff, delta,
                             maxpts, maxmult)
        lo_rows = (
            _fill_side(zeta, sh_row, opt_row, lower[w], upper[w], cutoff, delta, maxpts, maxmult)
            if pw > lower[w]
            else []
        )
        traces[name] = _trace(name, up_rows + lo_rows, pw, lower[w], upper[w])

    for k, name in enumerate(prob.fixed_names):
        if name not in wanted:
            continue
        if progress:
            progress(f"profiling {name}")
        est = float(beta_ml[k])

        fe_zeta = _fixed_zeta(prob, k)

        first = est + delta * se_ml[k]
        zf, tf = fe_zeta(first, theta_ml)
        opt_row = (est, 0.0, theta_ml)
        sh_row = (first, zf, tf)
        up_rows = _fill_side(fe_zeta, opt_row, sh_row, -np.inf, np.inf, cutoff, delta,
                             maxpts, maxmult)
        lo_rows = _fill_side(fe_zeta, sh_row, opt_row, -np.inf, np.inf, cutoff, delta,
                             maxpts, maxmult)
        traces[name] = _trace(name, up_rows + lo_rows, est, -np.inf, np.inf)

    return Profile(
        traces=traces, ml_theta=theta_ml, ml_sigma=sig_ml, ml_beta=beta_ml, base_deviance=base,
        cutoff=cutoff, delta=delta, warnings=tuple(dict.fromkeys(msgs)),
    )


def _variance_zeta(prob: ProfileProblem, w: int, msgs: list[str]):
    """ζ(ψ) of variance parameter ``w`` (sdcor scale): the signed root of
    min over the other parameters of D(ψ, others) − D_min, started from ``s``;
    returns (ζ, the minimising others)."""
    name, pw = prob.variance_names[w], float(prob.sv_opt[w])
    lo_o, up_o = np.delete(prob.sv_lower, w), np.delete(prob.sv_upper, w)
    base, dev2 = prob.refit.deviance, prob.sv_deviance

    def zeta(xx: float, s: np.ndarray) -> tuple[float, np.ndarray]:
        def f(o: np.ndarray) -> float:
            return dev2(np.insert(o, w, xx))

        o, fv = _minimize(f, s, lo_o, up_o)
        dd = fv - base
        if dd < -1e-6:
            msgs.append(f"profiling {name} found a lower deviance ({dd:.3g}): the ML fit "
                        "had not converged")
        return float(np.sign(xx - pw) * np.sqrt(max(dd, 0.0))), o

    return zeta


def _fixed_zeta(prob: ProfileProblem, k: int):
    """ζ(b) of fixed effect ``k``: sign(b − β̂_k)·√(min_θ D(θ | β_k = b) − D_min), the
    minimisation over θ started at the ML θ̂; returns (ζ, the minimising θ)."""
    est, base, theta_ml = float(prob.refit.beta[k]), prob.refit.deviance, prob.refit.theta

    def fe_zeta(fw: float, _s: np.ndarray) -> tuple[float, np.ndarray]:
        f = prob.fixed_deviance(k, fw)
        lo_t = prob.theta_lower
        th, fv = _minimize(f, theta_ml, lo_t, np.full(lo_t.shape, np.inf))
        dd = fv - base
        return float(np.sign(fw - est) * np.sqrt(dd)) if dd >= 0 else np.nan, th

    return fe_zeta


def profile_zeta(prob: ProfileProblem, name: str, value: float) -> float:
    """The profile ζ of one parameter at one value: sign(ψ − ψ̂)·√(D_prof(ψ) − D_min), where
    D_prof(ψ) minimises the ML deviance over every other parameter (β profiled) with ``name``
    held at ``value`` — the exact quantity whose points ``profile_traces`` interpolates and
    lme4's ``as.data.frame(profile(fit))`` lists as ``.zeta``.

    Parameters
    ----------
    prob : the problem (:func:`~twolevel.models.inference.profile.profile_problem`,
        :func:`~twolevel.models.inference.profile_multi.multi_profile_problem`).
    name : a variance parameter (``.sig01`` …, ``.sigma``) or a fixed effect.
    value : the value held (sdcor scale for variance parameters).

    Returns
    -------
    float
        ζ; 0 at the ML estimate.

    Raises
    ------
    TwolevelError
        ``name`` is not a parameter.

    Examples
    --------
    >>> import twolevel as tl
    >>> from twolevel.models.inference.profile import profile_problem
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> prob = profile_problem(fit.design, fit.crossprods, theta_start=fit.theta)
    >>> b, se = prob.refit.beta[1], prob.refit.se[1]   # two Wald SEs above the estimate
    >>> round(profile_zeta(prob, "famsesc", b + 2 * se), 3)
    2.0
    """
    vnames, fnames = list(prob.variance_names), list(prob.fixed_names)
    if name in vnames:
        w = vnames.index(name)
        z, _ = _variance_zeta(prob, w, [])(float(value), np.delete(prob.sv_opt, w))
        return z
    if name in fnames:
        k = fnames.index(name)
        z, _ = _fixed_zeta(prob, k)(float(value), prob.refit.theta)
        return z
    raise TwolevelError(
        f"cannot profile {name!r}: parameters are {', '.join(vnames + fnames)}")


def _trace(name: str, rows: list[tuple[float, float]], est: float, lo: float, hi: float):
    uniq = sorted(set(rows), key=lambda r: r[0])
    par = np.array([r[0] for r in uniq])
    zeta = np.array([r[1] for r in uniq])
    return ProfileTrace(name=name, par=par, zeta=zeta, estimate=est, lower=lo, upper=hi)
