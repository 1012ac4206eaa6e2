"""The glmer objective: Laplace (nAGQ = 1) and adaptive Gauss–Hermite (nAGQ > 1) values of
−2 log L as pure functions of the parameters, from the compiled PIRLS kernels.

:class:`GlmmProblem` holds the arrays of one model and lme4's warm start lp0 (§2.4). Its
objectives are deterministic functions of their arguments and lp0 (each evaluation starts from
η = o + lp0), exactly like glmer's ``devfun``:

* :meth:`GlmmProblem.stage1` (θ ↦ value): joint PIRLS over (β, u) — glmer's nAGQ = 0 objective;
* :meth:`GlmmProblem.stage2` ((θ, β) ↦ value): u-only PIRLS with Xβ in the offset, then
  Laplace = ldL2 + ‖ũ‖² + a(μ̃) (§2.5, ldL2 from the lagged weights) or
  AGQ = Σ_j devc0_j + ldL2 − 2 Σ_j log mult_j (§3.2);
* ``exact=True`` gives the converged value instead: PIRLS to a 1e-13 relative change and L
  rebuilt at the final weights (the "tight" mode's objective).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twolevel.data.errors import TwolevelError
from twolevel.models.design import Design
from twolevel.models.glmm import cpirls, kernels
from twolevel.models.glmm.family import Family
from twolevel.models.glmm.response import GlmResponse

__all__ = ["GlmmProblem", "PirlsState", "gh_rule", "TOL_PWRSS", "MAXIT"]

TOL_PWRSS = 1e-7  # glmerControl(tolPwrss)
MAXIT = 100  # mkGlmerDevfun's maxit
TOL_EXACT = 1e-13  # relative pdev change of the converged ("tight") objective

_ERRORS = {
    kernels.NAN_PDEV: "PIRLS loop resulted in NaN value",
    kernels.STEP_HALVING: "(maxstephalfit) PIRLS step-halvings failed to reduce deviance in "
                          "pwrssUpdate",
    kernels.NOT_CONVERGED: "pwrssUpdate did not converge in (maxit) iterations",
    kernels.NOT_PD: "PIRLS: a Cholesky factor is not positive definite (non-finite working "
                    "weights; the linear predictor has overflowed)",
}


def gh_rule(k: int) -> tuple[np.ndarray, np.ndarray]:
    """lme4's ``GHrule(k)``: nodes z = √2·x and weights w/Σw of the k-point Gauss–Hermite rule,
    a rule for ∫ h(z) φ(z) dz; the middle node of an odd rule is set to exactly 0."""
    x, w = np.polynomial.hermite.hermgauss(k)
    z = np.sqrt(2.0) * x
    if k % 2 == 1:
        z[k // 2] = 0.0
    return z, w / w.sum()


@dataclass
class PirlsState:
    """The state left by one objective evaluation (what glmer's extractors read).

    Fields
    ------
    value : the objective.  u : (J, q) spherical modes ũ.  beta : β.  eta : (n,) η.
    Lfac : (J, q, q) factors of M_j = TᵀA_jT + I (lagged weights in lme4 mode).
    RX : (p, p) lower factor of RXᵀRX.  ldL2, aic, devsum, usq : the pieces of the value.
    iterations : PIRLS iterations.  theta : θ.
    """

    value: float
    u: np.ndarray
    beta: np.ndarray
    eta: np.ndarray
    Lfac: np.ndarray
    RX: np.ndarray
    ldL2: float
    aic: float
    devsum: float
    usq: float
    iterations: int
    theta: np.ndarray


class GlmmProblem:
    """Arrays of one GLMM and its objectives (module docstring)."""

    def __init__(self, design: Design, resp: GlmResponse, family: Family, nagq: int = 1):
        self.design, self.resp, self.family, self.nagq = design, resp, family, int(nagq)
        self.X = np.ascontiguousarray(design.X, dtype=float)
        self.Z = np.ascontiguousarray(design.Z, dtype=float)
        self.g = np.ascontiguousarray(design.group_index, dtype=np.int64)
        self.J, self.q, self.p = design.n_groups, design.q, design.p
        self.n_theta = design.n_theta
        self.nodes, self.weights = gh_rule(self.nagq) if self.nagq > 1 else (None, None)
        self._c = cpirls.for_problem(resp.y, resp.w, self.X, self.Z, self.g, family.code,
                                     self.J)
        self.route = "numba" if self._c is None else "c"  # which kernels (cpirls.py)
        self.csat = resp.saturated_constant(family)  # a(μ) = Σ d_i(μ) + C_sat for every μ
        eta0 = resp.offset + family.linkfun(resp.mustart(family))
        self.lp0 = np.zeros(design.n)
        self.eta0 = resp.offset + self.lp0
        self._start = None
        st = self._pirls(design.theta_to_T(self.theta0), resp.offset, eta0, joint=True)
        self.set_warm_start(st)  # lp0 = Xβ + ZΛu of the initial joint PIRLS
        self.initial = st

    def __getstate__(self) -> dict:
        """Pickled without the C kernels' handle (a loaded library); :meth:`__setstate__`
        opens them again."""
        state = self.__dict__.copy()
        state["_c"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._c = cpirls.for_problem(self.resp.y, self.resp.w, self.X, self.Z, self.g,
                                     self.family.code, self.J)
        self.route = "numba" if self._c is None else "c"

    @property
    def theta0(self) -> np.ndarray:
        """lme4's θ0 for glmer: 1 on T's diagonal, 0 off it."""
        return self.design.T_to_theta(np.eye(self.q))

    def _pirls(self, T, offset, eta, *, joint, beta=None, want_rx=False, exact=False,
               theta=None, start=None, value_only=False, shift=None) -> PirlsState:
        """One PIRLS run. ``value_only`` (C route, with ``start``): the state's ``u``,
        ``Lfac`` and ``RX`` are this thread's reused buffers (overwritten by its next
        evaluation) and ``eta`` is not computed (it is None)."""
        b = np.zeros(self.p) if beta is None else np.array(beta, dtype=float)
        value_only = value_only and self._c is not None and start is not None
        if value_only:
            buf = self._c.buffers()
            u, Lfac, RX = buf["u"], buf["Lfac"], buf["RX"]
            u.fill(0.0)
        else:
            u = np.zeros((self.J, self.q))
            Lfac = np.zeros((self.J, self.q, self.q))
            RX = np.zeros((self.p, self.p))
            eta = np.array(eta, dtype=float)
        r = self.resp
        args = (np.ascontiguousarray(T, dtype=float), np.ascontiguousarray(offset), eta,
                TOL_EXACT if exact else TOL_PWRSS, 4 * MAXIT if exact else MAXIT,
                self.csat, u, b, Lfac, RX, *(start if start is not None else self._no_start()))
        if self._c is not None:
            status, it, pdev, ldL2, aic, dev, usq = self._c.pirls(joint, want_rx, exact, *args,
                                                                 keep_eta=not value_only,
                                                                 shift=shift)
        else:
            status, it, pdev, ldL2, aic, dev, usq = kernels.pirls_kernel(
                joint, want_rx, exact, r.y, r.w, self.X, self.Z, self.g, self.family.code,
                *args)
        if status != kernels.OK:
            raise PirlsError(_ERRORS[status])
        return PirlsState(ldL2 + usq + aic, u, b, None if value_only else eta, Lfac, RX, ldL2,
                          aic, dev, usq, it,
                          np.asarray(theta if theta is not None else [], dtype=float))

    def _no_start(self):
        e2, e3 = np.zeros((0, 0)), np.zeros((0, 0, 0))
        return (False, e3, e2, e3, e2, np.zeros(0))

    def stage1_state(self, theta: np.ndarray, *, value_only: bool = False) -> PirlsState:
        """Joint PIRLS at θ from η = o + lp0 (glmer's stage-1 / nAGQ = 0 objective)."""
        T = self.design.theta_to_T(theta)
        A0, c0, B0, XtWX0, XtWz0 = self._start
        return self._pirls(T, self.resp.offset, self.eta0, joint=True, theta=theta,
                           start=(True, A0, c0, B0, XtWX0, XtWz0), value_only=value_only)

    def stage1(self, theta: np.ndarray) -> float:
        """Stage-1 objective value at θ (Laplace value after joint PIRLS)."""
        return self.stage1_state(theta, value_only=True).value

    def set_warm_start(self, state: PirlsState) -> None:
        """``updateGlmerDevfun``: lp0 ← the linear predictor of ``state`` (Xβ + ZΛu); the
        working weights and cross-products at η = o + lp0 are computed once here."""
        self.lp0 = state.eta - self.resp.offset
        self.eta0 = self.resp.offset + self.lp0
        r = self.resp
        if self._c is not None:
            self._start = self._c.crossprods(r.offset, self.eta0)
        else:
            self._start = kernels.start_crossprods(r.y, r.w, self.X, self.Z, self.g,
                                                   self.family.code, r.offset, self.eta0, self.J)

    def stage2_state(self, par: np.ndarray, *, exact: bool = False, want_rx: bool = False,
                     value_only: bool = False) -> PirlsState:
        """u-only PIRLS at par = (θ, β) from η = o + lp0 with Xβ in the offset; the value is the
        Laplace or AGQ deviance (module docstring)."""
        par = np.asarray(par, dtype=float)
        theta, beta = par[: self.n_theta], par[self.n_theta :]
        T = self.design.theta_to_T(theta)
        A0, c0, B0, XtWX0, XtWz0 = self._start
        shift = None
        if self._c is not None and self._c.x_in_z is not None and self.nagq == 1:
            # X's columns are among Z's: β rides on Z's columns, no o + Xβ pass (cpirls.c)
            _, cz0 = self._c.offset(self.resp.offset, beta, c0, B0, rows=False,
                                    reuse=value_only)
            off, shift = self.resp.offset, self._c.shift(beta)
        elif self._c is not None:  # Xβ moved into the offset
            off, cz0 = self._c.offset(self.resp.offset, beta, c0, B0,
                                      out=self._c.buffers()["off"] if value_only else None,
                                      reuse=value_only)
        else:
            off = self.resp.offset + self.X @ beta
            cz0 = c0 - np.einsum("jac,c->ja", B0, beta)
        st = self._pirls(T, off, self.eta0, joint=False, beta=beta, want_rx=want_rx,
                         exact=exact, theta=theta, start=(True, A0, cz0, B0, XtWX0, XtWz0),
                         value_only=value_only, shift=shift)
        if self.nagq > 1 and self._c is not None:
            s0, lm = self._c.agq(float(T[0, 0]), off, st.u, st.Lfac, self.nodes, self.weights)
            st.value = s0 + st.ldL2 + lm
        elif self.nagq > 1:
            s0, lm = kernels.agq_kernel(self.resp.y, self.resp.w, self.Z, self.g,
                                        self.family.code, float(T[0, 0]), off, st.u, st.Lfac,
                                        self.nodes, self.weights)
            st.value = s0 + st.ldL2 + lm
        return st

    def stage2(self, par: np.ndarray, exact: bool = False) -> float:
        """Stage-2 objective value at (θ, β)."""
        return self.stage2_state(par, exact=exact, value_only=True).value


class PirlsError(TwolevelError):
    """PIRLS failed (lme4's messages)."""
