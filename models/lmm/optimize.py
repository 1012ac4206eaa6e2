"""Minimising the profiled criterion over θ: lme4's optimizer path and a tighter alternative.

Modes
-----
``"lme4"`` (default)
    lme4 ≥ 1.1-20's ``nloptwrap``: NLopt ``LN_BOBYQA`` with ``xtol_abs = 1e-8``,
    ``ftol_abs = 1e-8``, ``xtol_rel = 1e-4`` (nloptr's default), ``maxeval = 1e5``, NLopt's default
    initial step, lme4's θ0 and lower bounds (0 on T's diagonal, −∞ elsewhere); then lme4's
    ``restart_edge``, ``check.boundary`` and a final evaluation (``optimizeLmer``). It follows
    lme4's path evaluation by evaluation, so θ̂ and the criterion agree with lme4 to ~1e-8 and
    ``summary()`` prints lme4's digits. lme4 stops on a coarse step (rhoend ≈ 7.5e-5), so θ̂ itself
    is only accurate to ~1e-5 relative; the criterion is accurate to ~1e-9.
``"tight"``
    The lme4 path, then a polish with L-BFGS-B using the analytic gradient (§7.3) and a final
    Nelder–Mead, keeping whichever point has the lowest criterion. The criterion is never above
    lme4's; θ̂ is the true optimum to ~1e-8, so variance components can differ from lme4's printed
    digits in the 4th–5th significant digit (e.g. sleepstudy Var(Intercept) 612.09 vs 612.10).
``refit_ml`` (used by ``anova``)
    lme4's ``refitML`` runs minqa's ``bobyqa`` from the REML θ̂ with rhobeg = min(0.95,
    0.2·max|θ|) and rhoend = 1e-6·rhobeg. We run NLopt's BOBYQA with that initial step and
    ``xtol_rel = 1e-6`` (NLopt's rhoend = xtol_rel·rhobeg), no f tolerance. NLopt interpolates
    with 2n+1 points where minqa uses n+2, so the paths differ: θ̂ agrees with R's refit to
    ~1e-5 relative and the ML deviance to ~1e-7 (both are at the optimum within tolerance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import nlopt
import numpy as np

__all__ = ["OptSummary", "optimize_theta", "refit_ml_theta", "MODES"]

MODES = ("lme4", "tight")

_NLOPT_MESSAGES = {
    1: "NLOPT_SUCCESS",
    2: "NLOPT_STOPVAL_REACHED",
    3: "NLOPT_FTOL_REACHED: Optimization stopped because ftol_rel or ftol_abs was reached",
    4: "NLOPT_XTOL_REACHED: Optimization stopped because xtol_rel or xtol_abs was reached",
    5: "NLOPT_MAXEVAL_REACHED: Optimization stopped because maxeval was reached",
    6: "NLOPT_MAXTIME_REACHED",
    -1: "NLOPT_FAILURE",
    -2: "NLOPT_INVALID_ARGS",
    -3: "NLOPT_OUT_OF_MEMORY",
    -4: "NLOPT_ROUNDOFF_LIMITED",
    -5: "NLOPT_FORCED_STOP",
}

BOUNDARY_TOL = 1e-5  # lme4's boundary.tol (check.boundary) and restart_edge step
SINGULAR_TOL = 1e-4  # lme4's isSingular tol


@dataclass(frozen=True)
class OptSummary:
    """How θ̂ was obtained (lme4's ``optinfo`` / MixedModels' ``OptSummary``).

    Fields
    ------
    optimizer : description of the algorithm and its settings.
    mode : "lme4", "tight" or "refitML".
    theta0 : starting θ.  lower : lower bounds of θ.
    theta : θ̂.  fmin : criterion at θ̂.
    evaluations : number of criterion evaluations by the optimizer(s) (lme4's ``feval`` counts the
        first BOBYQA run only; ``bobyqa_evaluations`` is that number).
    status : NLopt return code of the (last) BOBYQA run (< 0 or 5 means not converged, as lme4).
    gradient_fn : computes the gradient of the criterion at θ̂ (analytic, §7.3, or central
        differences); :attr:`gradient` calls it once, on first use (it is not needed for the fit).
    at_lower : θ̂_i equals its lower bound (a variance-factor exactly 0).
    restarted_edge : lme4's restart_edge restarted the optimizer.
    boundary_set : indices θ_i that check.boundary moved onto the bound.
    messages : human-readable notes (restarts, polish gains, warnings).
    lme4_fmin : criterion after the lme4 path (equals fmin in lme4 mode).
    """

    optimizer: str
    mode: str
    theta0: np.ndarray
    lower: np.ndarray
    theta: np.ndarray
    fmin: float
    evaluations: int
    bobyqa_evaluations: int
    status: int
    gradient_fn: Callable[[], np.ndarray] = field(repr=False, compare=False)
    at_lower: tuple[bool, ...]
    restarted_edge: bool = False
    boundary_set: tuple[int, ...] = ()
    messages: tuple[str, ...] = field(default=())
    lme4_fmin: float = float("nan")

    @cached_property
    def gradient(self) -> np.ndarray:
        """Gradient of the criterion at θ̂ (see ``gradient_fn``), computed on first use."""
        return np.asarray(self.gradient_fn(), dtype=float)

    @property
    def converged(self) -> bool:
        """lme4's rule: NLopt status < 0 or 5 (maxeval) is a failure to converge."""
        return self.status > 0 and self.status != 5

    @property
    def status_message(self) -> str:
        """NLopt's name of the return code."""
        return _NLOPT_MESSAGES.get(self.status, str(self.status))

    def summary(self) -> str:
        """A few lines: optimizer, evaluations, status, criterion, gradient, boundary flags."""
        lines = [
            f"optimizer: {self.optimizer} (mode {self.mode})",
            f"evaluations: {self.evaluations} (BOBYQA {self.bobyqa_evaluations}); "
            f"status {self.status} {self.status_message}; converged: {self.converged}",
            f"criterion at optimum: {self.fmin:.10f}",
            "theta0: " + " ".join(f"{v:.6g}" for v in self.theta0),
            "theta:  " + " ".join(f"{v:.10g}" for v in self.theta),
            "final gradient: " + " ".join(f"{v:.3g}" for v in self.gradient),
        ]
        if any(self.at_lower):
            lines.append(
                "on the boundary (θ_i = 0): "
                + ", ".join(str(i) for i, b in enumerate(self.at_lower) if b)
            )
        lines.extend(self.messages)
        return "\n".join(lines)

    def to_frame(self):
        """One row per θ element: start, estimate, lower bound, gradient, at_lower."""
        import pandas as pd

        return pd.DataFrame({
            "theta0": self.theta0, "theta": self.theta, "lower": self.lower,
            "gradient": self.gradient, "at_lower": list(self.at_lower),
        })


class _Counted:
    """Counts evaluations and remembers the best point (NLopt may raise after a roundoff stop)."""

    def __init__(self, fn: Callable[[np.ndarray], float]):
        self.fn = fn
        self.n = 0
        self.best_x: np.ndarray | None = None
        self.best_f = np.inf

    def __call__(self, x: np.ndarray, grad: np.ndarray | None = None) -> float:
        self.n += 1
        f = float(self.fn(np.array(x, dtype=float)))
        if not np.isfinite(f):
            f = np.inf
        if f < self.best_f:
            self.best_f, self.best_x = f, np.array(x, dtype=float)
        return f


def _bobyqa(
    fn: Callable[[np.ndarray], float],
    x0: np.ndarray,
    lower: np.ndarray,
    *,
    xtol_abs: float = 1e-8,
    ftol_abs: float = 1e-8,
    xtol_rel: float = 1e-4,
    maxeval: int = 100_000,
    initial_step: float | None = None,
) -> tuple[np.ndarray, float, int, int]:
    """One NLopt LN_BOBYQA run; returns (x, f, evaluations, status)."""
    n = x0.shape[0]
    counted = _Counted(fn)
    opt = nlopt.opt(nlopt.LN_BOBYQA, n)
    opt.set_lower_bounds(np.asarray(lower, dtype=float))
    opt.set_upper_bounds(np.full(n, np.inf))
    opt.set_min_objective(counted)
    opt.set_xtol_abs(xtol_abs)
    opt.set_ftol_abs(ftol_abs)
    opt.set_xtol_rel(xtol_rel)
    opt.set_maxeval(maxeval)
    if initial_step is not None:
        opt.set_initial_step(initial_step)
    try:
        x = np.asarray(opt.optimize(np.asarray(x0, dtype=float)), dtype=float)
        f = float(opt.last_optimum_value())
        status = int(opt.last_optimize_result())
    except nlopt.RoundoffLimited:
        x, f, status = counted.best_x, counted.best_f, -4
    except (RuntimeError, ValueError):
        if counted.best_x is None:
            raise
        x, f, status = counted.best_x, counted.best_f, -1
    return x, f, counted.n, status


def _check_boundary(
    fn: Callable[[np.ndarray], float], x: np.ndarray, f: float, lower: np.ndarray
) -> tuple[np.ndarray, float, tuple[int, ...]]:
    """lme4's ``check.boundary``: for each θ_i with 0 < θ_i − lb_i < 1e-5, try θ_i = lb_i and keep
    it if the criterion decreases; then re-evaluate."""
    bdiff = x - lower
    edge = np.nonzero((bdiff > 0) & (bdiff < BOUNDARY_TOL))[0]
    if edge.size == 0:
        return x, f, ()
    par = x.copy()
    moved = []
    for i in edge:
        tmp = par.copy()
        tmp[i] = lower[i]
        if fn(tmp) < f:
            par[i] = tmp[i]
            moved.append(int(i))
    return par, float(fn(par)), tuple(moved)


def _edge_gradient_negative(
    fn: Callable[[np.ndarray], float], x: np.ndarray, lower: np.ndarray
) -> bool:
    """lme4's ``restart_edge`` test: for θ_i exactly on its bound, is the one-sided difference
    (f(θ + 1e-5 e_i) − f(θ)) / 1e-5 negative for any i?"""
    bvals = np.nonzero(x == lower)[0]
    if bvals.size == 0:
        return False
    d0 = fn(x)
    for i in bvals:
        t = x.copy()
        t[i] = lower[i] + BOUNDARY_TOL
        if (fn(t) - d0) / BOUNDARY_TOL < 0:
            return True
    return False


def _fd_gradient(fn: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Central differences with step 1e-4 (lme4's ``deriv12`` step)."""
    return np.array([(fn(x + h * e) - fn(x - h * e)) / (2 * h) for e in np.eye(x.shape[0])])


def _gradient_at(
    fn: Callable[[np.ndarray], float],
    x: np.ndarray,
    gradient: Callable[[np.ndarray], np.ndarray] | None,
) -> Callable[[], np.ndarray]:
    """A function computing the gradient at x: ``gradient(x)``, else central differences of fn."""
    x = np.array(x, dtype=float)
    if gradient is not None:
        return lambda: gradient(x)
    return lambda: _fd_gradient(fn, x)


def optimize_theta(
    fn: Callable[[np.ndarray], float],
    theta0: np.ndarray,
    lower: np.ndarray,
    *,
    mode: str = "lme4",
    gradient: Callable[[np.ndarray], np.ndarray] | None = None,
) -> OptSummary:
    """Minimise the profiled criterion ``fn`` over θ ≥ ``lower`` (lme4's ``optimizeLmer``).

    Parameters
    ----------
    fn : the criterion, a pure function of θ (:func:`twolevel.models.lmm.deviance.make_deviance`).
    theta0 : lme4's starting θ (``Design.theta_start()``).
    lower : lme4's lower bounds (``Design.theta_lower``).
    mode : "lme4" (lme4's exact path; default) or "tight" (lme4's path, then a gradient polish).
    gradient : analytic gradient of ``fn``; used for the polish and the reported final gradient
        (central differences otherwise).
    """
    if mode not in MODES:
        raise ValueError(f"optimizer mode must be one of {MODES}, got {mode!r}")
    theta0 = np.asarray(theta0, dtype=float)
    lower = np.asarray(lower, dtype=float)
    messages: list[str] = []
    x, f, nev, status = _bobyqa(fn, theta0, lower)
    total = nev
    restarted = False
    if _edge_gradient_negative(fn, x, lower):
        restarted = True
        messages.append("some theta parameters on the boundary, restarting (lme4 restart_edge)")
        x, f, nev2, status = _bobyqa(fn, x, lower)
        total += nev2
    x, f, moved = _check_boundary(fn, x, f, lower)
    if moved:
        messages.append(f"check.boundary set theta {list(moved)} to their lower bound")
    f = float(fn(x))  # optwrap's final evaluation
    lme4_f = f
    optimizer = "nloptwrap: NLOPT_LN_BOBYQA xtol_abs=1e-8 ftol_abs=1e-8 xtol_rel=1e-4 maxeval=1e5"
    if mode == "tight":
        x, f, extra = _polish(fn, x, f, lower, gradient)
        total += extra
        optimizer += " + L-BFGS-B (analytic gradient) + Nelder-Mead polish"
        if f < lme4_f:
            messages.append(f"polish lowered the criterion by {lme4_f - f:.3g} below lme4's path")
    return OptSummary(
        optimizer=optimizer, mode=mode, theta0=theta0, lower=lower, theta=x, fmin=f,
        evaluations=total, bobyqa_evaluations=nev, status=status,
        gradient_fn=_gradient_at(fn, x, gradient),
        at_lower=tuple(bool(v) for v in (x == lower)), restarted_edge=restarted,
        boundary_set=moved, messages=tuple(messages), lme4_fmin=lme4_f,
    )


def _polish(
    fn: Callable[[np.ndarray], float],
    x: np.ndarray,
    f: float,
    lower: np.ndarray,
    gradient: Callable[[np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, float, int]:
    """L-BFGS-B with the analytic gradient from x, then Nelder–Mead within the bounds; returns the
    best point seen (never worse than x)."""
    from scipy.optimize import minimize  # only this polish needs it (start-up: not at import)

    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
    best_x, best_f, nev = x.copy(), f, 0
    res = minimize(
        fn, x, jac=gradient, method="L-BFGS-B", bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000},
    )
    nev += int(res.nfev)
    if res.fun < best_f:
        best_x, best_f = np.asarray(res.x, dtype=float), float(res.fun)
    res2 = minimize(
        fn, best_x, method="Nelder-Mead", bounds=bounds,
        options={"xatol": 1e-10, "fatol": 1e-12, "maxfev": 2000},
    )
    nev += int(res2.nfev)
    if res2.fun < best_f:
        best_x, best_f = np.asarray(res2.x, dtype=float), float(res2.fun)
    return best_x, float(fn(best_x)), nev + 1


def refit_ml_theta(
    fn_ml: Callable[[np.ndarray], float],
    theta_reml: np.ndarray,
    lower: np.ndarray,
    *,
    gradient: Callable[[np.ndarray], np.ndarray] | None = None,
) -> OptSummary:
    """lme4's ``refitML``: minimise the ML deviance from the REML θ̂ with a minqa-style BOBYQA
    (rhobeg = min(0.95, 0.2·max|θ|), rhoend = 1e-6·rhobeg, maxfun 10000); an all-zero start is
    replaced by 0.001 (lme4's ``optwrap``). See the module docstring for the residual difference
    from minqa's path."""
    x0 = np.asarray(theta_reml, dtype=float).copy()
    lower = np.asarray(lower, dtype=float)
    if np.all(x0 == 0):
        x0[:] = 0.001
    rhobeg = min(0.95, 0.2 * float(np.max(np.abs(x0))))
    x, f, nev, status = _bobyqa(
        fn_ml, x0, lower, xtol_abs=0.0, ftol_abs=0.0, xtol_rel=1e-6, maxeval=10_000,
        initial_step=rhobeg,
    )
    f = float(fn_ml(x))
    return OptSummary(
        optimizer=(
            f"refitML: BOBYQA from the REML theta, rhobeg={rhobeg:.4g}, "
            "rhoend=1e-6*rhobeg (minqa-style; NLopt LN_BOBYQA)"
        ),
        mode="refitML", theta0=x0, lower=lower, theta=x, fmin=f, evaluations=nev,
        bobyqa_evaluations=nev, status=status, gradient_fn=_gradient_at(fn_ml, x, gradient),
        at_lower=tuple(bool(v) for v in (x == lower)), messages=(), lme4_fmin=f,
    )
