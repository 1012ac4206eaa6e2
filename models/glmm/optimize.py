"""glmer's two-stage optimisation (glmer-algorithms §4) and the finite-difference Hessian (§5).

* Stage 1: BOBYQA over θ with β inside the joint PIRLS (glmer uses minqa's ``bobyqa`` with
  rhobeg = 0.2, rhoend = 2e-7; here NLopt's ``LN_BOBYQA`` with the same initial step and
  xtol_rel = 1e-6, which the spec found reproduces glmer's estimates to 2e-11 … 7e-7).
* Stage 2: lme4's own Nelder–Mead (:func:`nelder_mead`, a port of ``src/optimizer.cpp``, itself
  from NLopt 2.2.4) over (θ, β) from (θ̂₁, β̂₁) with xst = 0.2·(0.1 for θ, min(SE_RX, 10) for β)
  and xt = 5e-4·xst; then ``check.boundary``.
* :func:`deriv12`: lme4's central differences (δ = 1e-4) for the gradient and Hessian.
* :func:`polish`: the "tight" mode — BOBYQA on the converged objective from glmer's optimum,
  keeping the lower value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nlopt
import numpy as np

from twolevel.data.errors import TwolevelError

__all__ = ["NMResult", "nelder_mead", "bobyqa_stage1", "deriv12", "check_boundary", "polish"]

BOUNDARY_TOL = 1e-5
XCONV = "parameter values converged to within tolerance"


@dataclass(frozen=True)
class NMResult:
    """Result of :func:`nelder_mead`: best point, its value, evaluations, lme4's status code
    (4 = x converged, 1…) and message."""

    x: np.ndarray
    fval: float
    feval: int
    status: int
    message: str


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-13 * (abs(a) + abs(b))


def nelder_mead(fn: Callable[[np.ndarray], float], x0, lower, upper, xst, xt,
                maxfun: int = 10_000) -> NMResult:
    """lme4's ``Nelder_Mead`` (glmer-algorithms §4.3): NLopt-2.2.4 simplex with bound pinning,
    stopping when every coordinate of every vertex is within ``xt`` of the centroid of the
    vertices other than the worst; returns the best point ever evaluated."""
    x0 = np.array(x0, dtype=float)
    lb, ub = np.asarray(lower, float), np.asarray(upper, float)
    xst, xt = np.asarray(xst, float), np.asarray(xt, float)
    n = x0.size
    pts = np.repeat(x0[:, None], n + 1, axis=1)
    for i in range(n):
        j = i + 1
        pts[i, j] += xst[i]
        if pts[i, j] > ub[i]:
            pts[i, j] = ub[i] if ub[i] - x0[i] > abs(xst[i]) * 0.1 else x0[i] - abs(xst[i])
        if pts[i, j] < lb[i]:
            if x0[i] - lb[i] > abs(xst[i]) * 0.1:
                pts[i, j] = lb[i]
            else:
                pts[i, j] = x0[i] + abs(xst[i])
                if pts[i, j] > ub[i]:
                    pts[i, j] = 0.5 * ((ub[i] if ub[i] - x0[i] > x0[i] - lb[i] else lb[i]) + x0[i])
        if _close(pts[i, j], x0[i]):
            raise ValueError("cannot generate feasible simplex")
    nev = 0
    best = [np.inf, x0.copy()]

    def f(x):
        nonlocal nev
        nev += 1
        v = float(fn(x))
        if v < best[0]:
            best[0], best[1] = v, x.copy()
        return v

    def reflect(c, scale, xold, cglob):
        xnew = np.minimum(np.maximum(c + scale * (c - xold), lb), ub)
        equalc = all(_close(xnew[k], cglob[k]) for k in range(n))
        equalold = all(_close(xnew[k], xold[k]) for k in range(n))
        return xnew, not (equalc or equalold)

    vals = np.empty(n + 1)
    c = np.zeros(n)
    init = True
    while True:
        if init:
            for k in range(n + 1):
                vals[k] = f(pts[:, k].copy())
                if nev >= maxfun:
                    return NMResult(best[1], best[0], nev, -4, "reached max evaluations")
            init = False
        il, ih = int(np.argmin(vals)), int(np.argmax(vals))
        fl, fh = vals[il], vals[ih]
        c = (pts.sum(axis=1) - pts[:, ih]) / n
        if np.all(np.abs(pts - c[:, None]).max(axis=1) < xt):
            return NMResult(best[1], best[0], nev, 4, XCONV)
        xr, ok = reflect(c, 1.0, pts[:, ih], c)
        if not ok:
            return NMResult(best[1], best[0], nev, 4, XCONV)
        fr = f(xr)
        if nev >= maxfun:
            return NMResult(best[1], best[0], nev, -4, "reached max evaluations")
        if fr < fl:
            xe, ok = reflect(c, 2.0, pts[:, ih], c)
            if not ok:
                return NMResult(best[1], best[0], nev, 4, XCONV)
            fe = f(xe)
            if fe < vals[ih]:
                pts[:, ih], vals[ih] = xe, fe
            else:
                pts[:, ih], vals[ih] = xr, fr
        elif fr < fh:
            pts[:, ih], vals[ih] = xr, fr
        else:
            xc, ok = reflect(c, -0.5 if fh <= fr else 0.5, pts[:, ih], c)
            if not ok:
                return NMResult(best[1], best[0], nev, 4, XCONV)
            fc = f(xc)
            if fc < fr and fc < fh:
                pts[:, ih], vals[ih] = xc, fc
            else:
                for k in range(n + 1):
                    if k != il:
                        xs, ok = reflect(pts[:, il], -0.5, pts[:, k], c)
                        if not ok:
                            return NMResult(best[1], best[0], nev, 4,
                                            XCONV)
                        pts[:, k] = xs
                init = True
        if nev >= maxfun:
            return NMResult(best[1], best[0], nev, -4, "reached max evaluations")


def bobyqa_stage1(fn: Callable[[np.ndarray], float], x0, lower) -> tuple[np.ndarray, float, int]:
    """Stage 1: NLopt BOBYQA from θ0 with initial step 0.2 (minqa's rhobeg) and xtol_rel 1e-6
    (rhoend = 1e-6·rhobeg); returns (θ̂₁, value, evaluations)."""
    x0 = np.asarray(x0, float)
    n = x0.size
    count = [0, np.inf, x0.copy()]

    def obj(x, grad):
        count[0] += 1
        v = float(fn(np.array(x)))
        if not np.isfinite(v):
            v = np.inf
        if v < count[1]:
            count[1], count[2] = v, np.array(x)
        return v

    opt = nlopt.opt(nlopt.LN_BOBYQA, n)
    opt.set_lower_bounds(np.asarray(lower, float))
    opt.set_upper_bounds(np.full(n, np.inf))
    opt.set_min_objective(obj)
    start = x0
    opt.set_initial_step(0.2)
    opt.set_xtol_rel(1e-6)
    opt.set_maxeval(10_000)
    try:
        x = np.asarray(opt.optimize(start), float)[:n]
        f = float(opt.last_optimum_value())
    except (nlopt.RoundoffLimited, RuntimeError, ValueError):
        x, f = count[2], count[1]
    return x, f, count[0]


def deriv12(fn: Callable[[np.ndarray], float], x: np.ndarray, delta: float = 1e-4,
            fx: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """lme4's ``deriv12``: central-difference gradient g and Hessian H with step δ = 1e-4
    absolute: H_jj = (f₊ − 2f₀ + f₋)/δ², H_ij = (f₊₊ − f₊₋ − f₋₊ + f₋₋)/(4δ²),
    g_j = (f₊ − f₋)/(2δ)."""
    x = np.asarray(x, float)
    k = x.size
    f0 = fn(x) if fx is None else fx
    H = np.empty((k, k))
    g = np.empty(k)

    def at(*moves):
        y = x.copy()
        for i, s in moves:
            y[i] += s * delta
        return fn(y)

    for j in range(k):
        fa, fs = at((j, 1)), at((j, -1))
        H[j, j] = fa / delta**2 - 2 * f0 / delta**2 + fs / delta**2
        g[j] = (fa - fs) / (2 * delta)
        for i in range(j):
            H[i, j] = H[j, i] = (at((i, 1), (j, 1)) - at((i, 1), (j, -1))
                                 - at((i, -1), (j, 1)) + at((i, -1), (j, -1))) / (4 * delta**2)
    return g, H


def check_boundary(fn: Callable[[np.ndarray], float], x: np.ndarray, f: float,
                   lower: np.ndarray) -> tuple[np.ndarray, float]:
    """lme4's ``check.boundary``: each parameter with 0 < x_i − lb_i < 1e-5 is tried at lb_i and
    kept there if the objective decreases."""
    x = np.array(x, float)
    for i in np.flatnonzero(np.isfinite(lower)):
        if 0 < x[i] - lower[i] < BOUNDARY_TOL:
            y = x.copy()
            y[i] = lower[i]
            fy = fn(y)
            if fy < f:
                x, f = y, fy
    return x, f


def polish(fn: Callable[[np.ndarray], float], x0: np.ndarray, lower: np.ndarray,
           step: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Minimise ``fn`` tightly from x0 (NLopt BOBYQA then Nelder–Mead, xtol_rel 1e-10 and
    ftol_abs 1e-12); returns the best point seen, its value and the evaluations."""
    best = [float(fn(x0)), np.array(x0, float), 1]

    def obj(x, grad):
        best[2] += 1
        try:
            v = float(fn(np.array(x)))
        except TwolevelError:  # PIRLS failed far from the optimum: not a candidate
            return np.inf
        if not np.isfinite(v):
            return np.inf
        if v < best[0]:
            best[0], best[1] = v, np.array(x)
        return v

    n = x0.size
    for alg in (nlopt.LN_BOBYQA, nlopt.LN_NELDERMEAD, nlopt.LN_BOBYQA):
        opt = nlopt.opt(alg, n)
        opt.set_lower_bounds(np.asarray(lower, float))
        opt.set_upper_bounds(np.full(n, np.inf))
        opt.set_min_objective(obj)
        opt.set_initial_step(np.maximum(np.asarray(step, float), 1e-6))
        opt.set_xtol_rel(1e-10)
        opt.set_ftol_abs(1e-12)
        opt.set_maxeval(20_000)
        start = np.maximum(best[1], lower)
        try:
            opt.optimize(start)
        except (nlopt.RoundoffLimited, RuntimeError, ValueError):
            pass
        step = np.asarray(step, float) * 0.1
    return best[1], best[0], best[2]


@dataclass(frozen=True)
class NewtonResult:
    """Result of :func:`newton_stage2`: the point, its value, the evaluations, ``deriv12``'s
    Hessian (at the last point where it was taken) and the central-difference gradient at the
    point; ``ok`` False (with ``message``) when the caller should use Nelder–Mead instead."""

    x: np.ndarray
    fval: float
    feval: int
    hessian: np.ndarray | None
    gradient: np.ndarray | None
    ok: bool
    message: str


NEWTON_MAX_ITER = 8
NEWTON_XTOL = 5e-3  # the last Newton step, in units of Nelder–Mead's initial step
NEWTON_FULL = 0.05  # after a step this short (same units), deriv12 anew; else the gradient
NEWTON_BOUNDARY = 1e-3  # θ on its lower bound's side within this: leave it to Nelder–Mead


def central_gradient(fn: Callable[[np.ndarray], float], x: np.ndarray,
                     delta: float = 1e-4) -> np.ndarray:
    """``deriv12``'s gradient alone: g_j = (f(x + δe_j) − f(x − δe_j)) / (2δ), δ = 1e-4."""
    x = np.asarray(x, float)
    g = np.empty(x.size)
    for j in range(x.size):
        a, b = x.copy(), x.copy()
        a[j] += delta
        b[j] -= delta
        g[j] = (fn(a) - fn(b)) / (2 * delta)
    return g


def newton_stage2(fn: Callable[[np.ndarray], float], x0, lower, xst,
                  max_iter: int = NEWTON_MAX_ITER) -> NewtonResult:
    """Newton's method on the stage-2 objective from glmer's stage-2 start, with ``deriv12``'s
    finite-difference gradient g and Hessian H (the ones glmer computes at its optimum for the
    standard errors): x ← x − H⁻¹g, the step halved (at most 4 times) until the value falls.

    H is taken at the start; after a step longer than :data:`NEWTON_FULL` · Nelder–Mead's
    initial step ``xst`` in some coordinate only the gradient is taken anew (central
    differences, 2k evaluations) and H kept; after a shorter one ``deriv12`` is run at the new
    point. The
    result is a point where ``deriv12`` was run and the Newton step −H⁻¹g is within
    :data:`NEWTON_XTOL` · ``xst`` in every coordinate (Nelder–Mead stops at 5e-4 · ``xst``), with
    that g and H (glmer's standard errors come from H at its optimum).

    Declines (``ok`` False) — the caller then runs lme4's Nelder–Mead — when H is not positive
    definite, a θ with a lower bound is within 1e-3 of it or a step would cross it (a
    boundary fit), no step lowers the value, or :data:`NEWTON_MAX_ITER` steps do not
    converge."""
    lower = np.asarray(lower, float)
    xst = np.asarray(xst, float)
    bounded = np.isfinite(lower)
    x = np.array(x0, float)
    nev = [0]

    def f(y):
        nev[0] += 1
        return float(fn(y))

    def decline(msg):
        return NewtonResult(x, fx, nev[0], None, None, False, msg)

    fx = f(x)
    if np.any(x[bounded] - lower[bounded] < NEWTON_BOUNDARY):
        return decline("a parameter is at or near its lower bound")
    g, H = deriv12(f, x, fx=fx)
    at_x = True  # g and H both from deriv12 at x
    for _ in range(max_iter):
        try:
            L = np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            return decline("the Hessian is not positive definite")
        step = -np.linalg.solve(L.T, np.linalg.solve(L, g))
        if at_x and np.all(np.abs(step) <= NEWTON_XTOL * xst):
            return NewtonResult(x, fx, nev[0], H, g, True, "converged")
        t = 1.0
        for _half in range(5):
            y = x + t * step
            if np.all(y[bounded] - lower[bounded] >= NEWTON_BOUNDARY):
                fy = f(y)
                if np.isfinite(fy) and fy <= fx:
                    break
            t *= 0.5
        else:
            return decline("no step lowered the objective")
        x, fx = y, fy
        if np.all(np.abs(step) <= NEWTON_FULL * xst):
            g, H = deriv12(f, x, fx=fx)
            at_x = True
        else:
            g, at_x = central_gradient(f, x), False
    return decline(f"not converged in {max_iter} Newton steps")
