"""A fitted GLMM in lme4's vocabulary (``glmerMod``): estimates, Hessian-based vcov, VarCorr,
conditional modes with conditional variances, fitted values and predictions, likelihood
summaries, the convergence record, and ``summary()`` in glmer's print layout."""

from __future__ import annotations

import hashlib
import math
import textwrap
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import TwolevelError
from twolevel.models.fit_base import FitSummary, MixedFit
from twolevel.models.glmm.family import Family
from twolevel.models.glmm.kernels import row_values_kernel
from twolevel.models.glmm.laplace import GlmmProblem, PirlsState
from twolevel.models.lmm.results import VarCorr, deparse_formula
from twolevel.models.rformat import (
    abbreviate,
    cat_fill,
    print_char_matrix,
    print_coefmat,
    print_named,
    r_format,
    r_round,
    zapsmall,
)

__all__ = ["GlmerFit", "GlmerOptInfo"]

SINGULAR_TOL = 1e-4


@dataclass(frozen=True)
class GlmerOptInfo:
    """How the estimates were obtained (lme4's ``optinfo``).

    Fields
    ------
    optimizer : "lme4", "newton" or "tight".  theta_stage1 : θ̂₁.  feval_stage1, feval_stage2 :
    evaluations of BOBYQA (stage 1) and of stage 2.  nm_message : stage 2's message.
    stage2_optimizer : "Nelder_Mead" (lme4's) or "Newton".
    gradient, hessian : lme4's ``deriv12`` at the optimum over (θ, β).  polish_feval : evaluations
    of the tight polish.  messages : convergence warnings (lme4's ``checkConv``).
    """

    optimizer: str
    theta_stage1: np.ndarray
    feval_stage1: int
    feval_stage2: int
    nm_message: str
    gradient: np.ndarray | None
    hessian: np.ndarray | None
    polish_feval: int = 0
    messages: tuple[str, ...] = ()
    stage2_optimizer: str = "Nelder_Mead"


class GlmmCriteria:
    """A GLMM's likelihood criteria from its objective ``value`` (−2 logLik), ``design`` (p and
    θ's length) and ``nobs``: shared by the one-factor (:class:`GlmerFit`) and several-factor
    (:class:`~twolevel.models.glmm.multi_results.MultiGlmerFit`) fits."""

    @property
    def reml(self) -> bool:
        """False: a GLMM is fitted by maximum likelihood (lme4's ``isREML``)."""
        return False

    @property
    def npar(self) -> int:
        """p + length(θ) (no scale parameter)."""
        return self.design.p + self.design.n_theta

    @property
    def loglik(self) -> float:
        """−(objective)/2; for nAGQ > 1 without the saturated constant, as lme4 1.1-31."""
        return -self.value / 2.0

    @property
    def minus2loglik(self) -> float:
        """−2 logLik (the "deviance" column of summary(), lme4's ``devCrit``)."""
        return float(self.value)

    @property
    def aic(self) -> float:
        return self.value + 2.0 * self.npar

    @property
    def bic(self) -> float:
        return self.value + math.log(self.nobs) * self.npar

    @property
    def df_resid(self) -> int:
        return self.nobs - self.npar


@dataclass(frozen=True, repr=False)
class GlmerFit(MixedFit, GlmmCriteria):
    """A fitted binomial or Poisson two-level model (lme4's ``glmerMod``).

    Fields
    ------
    problem : the :class:`~twolevel.models.glmm.laplace.GlmmProblem` (design, response, family).
    nagq : 0 (β inside PIRLS), 1 (Laplace) or the number of quadrature nodes.
    theta, beta : θ̂ and β̂ (β̂ from the optimizer, as ``mkMerMod``).  state : the last
    evaluation at the optimum (ũ, η, μ, lagged factors).  value : −2 log L as glmer reports it.
    vcov_hessian : 2(H⁻¹)_ββ or None.  optinfo : :class:`GlmerOptInfo`.  formula : as given.
    data_name : for "Data:".  notes : warnings of the fit.

    Examples
    --------
    >>> import twolevel as tl
    >>> g = tl.glmer("g1below ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> g
    <GlmerFit 'g1below ~ 1 + famsesc + (1 | schid)' family=binomial/logit nobs=11091
     groups=schid:742 deviance=... nAGQ=1>
    """

    problem: GlmmProblem
    nagq: int
    theta: np.ndarray
    beta: np.ndarray
    state: PirlsState
    value: float
    vcov_hessian: np.ndarray | None
    optinfo: GlmerOptInfo
    formula: str
    data_name: str = "data"
    notes: tuple[str, ...] = field(default=())

    # ----------------------------------------------------------------- basics
    @property
    def design(self):
        return self.problem.design

    @property
    def family(self) -> Family:
        return self.problem.family

    @property
    def nobs(self) -> int:
        """Number of rows used (not trials)."""
        return self.design.n

    @property
    def ngroups(self) -> int:
        return self.design.n_groups

    def deviance(self) -> float:
        """lme4's ``deviance(fit)`` for a GLMM: Σ d_i(μ̃), the sum of squared deviance residuals
        at the conditional modes (NOT −2 logLik; see :attr:`minus2loglik`)."""
        return float(self._rows[:, 2].sum())

    @cached_property
    def data_fingerprint(self) -> str:
        """Hash of the response, weights, grouping and rows (anova compares fits on one data)."""
        h = hashlib.sha1()
        for a in (self.problem.resp.y, self.problem.resp.w, self.design.group_index):
            h.update(np.ascontiguousarray(a))
        h.update(str(self.nobs).encode())
        return h.hexdigest()

    @property
    def converged(self) -> bool:
        """No convergence warning from lme4's checks (gradient, Hessian)."""
        return not self.optinfo.messages

    # ----------------------------------------------------------------- fixed effects
    def fixef(self) -> pd.Series:
        return pd.Series(self.beta, index=list(self.design.x_names), name="fixef")

    def vcov_rx(self) -> pd.DataFrame:
        """(RXᵀRX)⁻¹ from the final evaluation's weights (``vcov(fit, use.hessian = FALSE)``)."""
        L = np.tril(self.state.RX)
        Linv = np.linalg.inv(L)
        V = Linv.T @ Linv
        names = list(self.design.x_names)
        return pd.DataFrame(V, index=names, columns=names)

    def vcov(self, use_hessian: bool | None = None) -> pd.DataFrame:
        """vcov(β̂): glmer's default 2(H⁻¹)_ββ from the finite-difference Hessian over (θ, β)
        (symmetrized), or the RX form when ``use_hessian=False`` or no Hessian is available."""
        if use_hessian is False or self.vcov_hessian is None:
            return self.vcov_rx()
        names = list(self.design.x_names)
        return pd.DataFrame(self.vcov_hessian, index=names, columns=names)

    def se(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov().to_numpy())), index=list(self.design.x_names),
                         name="se")

    def coef_table(self) -> pd.DataFrame:
        """Estimate, Std. Error, z value, Pr(>|z|) = 2Φ(−|z|)."""
        b, se = self.fixef(), self.se()
        z = b / se
        return pd.DataFrame({"Estimate": b, "Std. Error": se, "z value": z,
                             "Pr(>|z|)": 2 * stats.norm.sf(np.abs(z))})

    def confint_wald(self, level: float = 0.95) -> pd.DataFrame:
        """Wald intervals β̂ ± z·SE for the fixed effects (``confint(fit, method = "Wald")``;
        lme4 gives NA for the variance parameters there, omitted here)."""
        z = stats.norm.ppf(0.5 + level / 2)
        b, se = self.fixef(), self.se()
        lo, hi = f"{100 * (1 - level) / 2:.1f} %", f"{100 * (1 + level) / 2:.1f} %"
        return pd.DataFrame({lo: b - z * se, hi: b + z * se})

    # ----------------------------------------------------------------- random effects
    @property
    def T(self) -> np.ndarray:
        return self.design.theta_to_T(self.theta)

    def VarCorr(self) -> VarCorr:
        """Σ = TTᵀ (no scale parameter, no Residual row)."""
        T = self.T
        return VarCorr(group=self.design.group, names=self.design.z_names,
                       terms=tuple(t.names for t in self.design.terms), cov=T @ T.T,
                       residual=None)

    def cond_var(self) -> np.ndarray:
        """(J, q, q) T M_j⁻¹ Tᵀ from the final (lme4: lagged) factorization (lme4's postVar)."""
        T = self.T
        Linv = np.linalg.inv(self.state.Lfac)
        Minv = np.einsum("jba,jbc->jac", Linv, Linv)
        return np.einsum("ab,jbc,dc->jad", T, Minv, T)

    @property
    def b(self) -> np.ndarray:
        """(J, q) conditional modes b̃_j = T ũ_j."""
        return self.state.u @ self.T.T

    def _modes(self) -> np.ndarray:
        """(J, q) conditional modes (the base class's ``ranef`` and ``coef`` read them)."""
        return self.b

    # ----------------------------------------------------------------- fitted values
    @cached_property
    def _rows(self) -> np.ndarray:
        r = self.problem.resp
        return row_values_kernel(self.family.code, self.state.eta, r.y, r.w)

    def fitted(self) -> np.ndarray:
        """μ̃ of the final evaluation (``fitted(fit)``)."""
        return self._rows[:, 0].copy()

    def predict(self, newdata=None, re_form: str | None = None, allow_new_levels: bool = False,
                type: str = "link") -> np.ndarray:
        """lme4's ``predict(fit, newdata, re.form, allow.new.levels, type)``: η = Xβ̂ + Zb̃ + o
        (``type="link"``, the offset included) or μ = g⁻¹(η) (``"response"``). Without
        ``newdata`` the fitted rows (η̃ of the final PIRLS evaluation); with it, the rows rebuilt
        by :func:`twolevel.models.glmm.response.glmer_new_rows` (offsets evaluated on newdata).
        ``re_form="NA"`` (or ``"~0"``) drops the school effects; a school not in the fit gets
        effect 0 with ``allow_new_levels=True`` and is an error otherwise. No intervals: lme4
        gives none for glmer either (``twolevel.bootstrap`` refits are the route)."""
        from twolevel.models.design.newdata import check_new_levels, newdata_frame, parse_re_form
        from twolevel.models.glmm.response import glmer_new_rows

        if type not in ("link", "response"):
            raise TwolevelError(f"type must be 'link' or 'response', got {type!r}")
        cond = parse_re_form(re_form)
        if newdata is None:
            if cond:
                eta = self.state.eta.copy()
            else:
                eta = self.problem.resp.offset + self.design.X @ self.beta
        else:
            nd = newdata_frame(self.design, newdata, cond)
            rows, off = glmer_new_rows(self.design, nd)
            eta = rows.X @ self.beta + off
            if cond:
                check_new_levels(rows, allow_new_levels, self.design.group)
                known = rows.group_index >= 0
                eta[known] += np.einsum("mq,mq->m", rows.Z[known],
                                        self.b[rows.group_index[known]])
        return eta if type == "link" else self.family.linkinv(eta)

    def residuals(self, type: str = "deviance") -> np.ndarray:
        """Deviance residuals sign(y − μ)·√d_i, Pearson (y − μ)√(w/V), or response y − μ."""
        y, mu = self.problem.resp.y, self._rows[:, 0]
        if type == "deviance":
            return np.sign(y - mu) * np.sqrt(np.maximum(self._rows[:, 2], 0))
        if type == "pearson":
            return (y - mu) * np.sqrt(self.problem.resp.w / self._rows[:, 1])
        if type == "response":
            return y - mu
        raise ValueError("type must be 'deviance', 'pearson' or 'response'")

    # ----------------------------------------------------------------- singularity
    def is_singular(self, tol: float = SINGULAR_TOL) -> bool:
        lower = self.design.theta_lower
        return bool(np.any(self.theta[lower == 0] < tol))

    def singular_explanation(self, tol: float = SINGULAR_TOL) -> str:
        """Plain words on which variance is (nearly) zero or which correlation is ±1."""
        if not self.is_singular(tol):
            return ""
        vc = self.VarCorr()
        sd = vc.sds.to_numpy()
        g = self.design.group
        parts = [f"the variance of '{n}' across {g} groups is estimated as (nearly) zero "
                 "on the link scale" for n, s in zip(vc.names, sd, strict=True) if s < tol]
        for a, b_, _, r in vc.pairs():
            if np.isfinite(r) and abs(r) > 0.999:
                parts.append(f"the correlation between '{a}' and '{b_}' is {r:+.3f} (at ±1)")
        if not parts:
            parts.append("the covariance matrix of the random effects is (nearly) singular")
        return ("boundary (singular) fit: " + "; ".join(parts) + ". The data do not support "
                "this random-effects structure: drop a random slope or use '||', and compare "
                "the models with anova().")

    # ----------------------------------------------------------------- printing
    def _title(self) -> str:
        approx = ("Laplace Approximation" if self.nagq == 1 else
                  f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nagq}")
        title = f"Generalized linear mixed model fit by maximum likelihood ({approx})"
        cls = "glmerMod"
        if len(title) + 5 + len(cls) > 80:
            lines = textwrap.wrap(title, width=77, subsequent_indent="  ",
                                  break_on_hyphens=False)  # R's strwrap breaks at spaces only
            return cat_fill([*lines, " [", cls, "]"])
        return f"{title} ['{cls}']"

    def summary(self) -> FitSummary:
        """glmer's ``summary(fit)``.

        Returns
        -------
        FitSummary
            A ``str``: the printout (lme4 1.1-31 layout, digits = 4), with the tables as data
            frames in ``.coefficients``, ``.random_effects`` and ``.fit_statistics``.

        Examples
        --------
        >>> import numpy as np, pandas as pd, twolevel as tl
        >>> rng = np.random.default_rng(1)
        >>> d = pd.DataFrame({"g": np.repeat(np.arange(30), 20), "x": rng.normal(size=600)})
        >>> d["y"] = rng.binomial(1, 1 / (1 + np.exp(-(0.5 * d.x + rng.normal(size=30)[d.g]))))
        >>> fit = tl.glmer("y ~ x + (1 | g)", d, family="binomial")
        >>> fit.summary().coefficients.columns.tolist()
        ['Estimate', 'Std. Error', 'z value', 'Pr(>|z|)']
        """
        digits = 4
        out = [self._title(), f" Family: {self.family.name}  ( {self.family.link} )",
               f"Formula: {_deparse(self.formula)}", f"   Data: {self.data_name}"]
        if self.problem.resp.weights_label:
            out.append(f"Weights: {self.problem.resp.weights_label}")
        out.append("")
        vals = [self.aic, self.bic, self.loglik, self.minus2loglik]
        f = r_format(list(r_round(vals, 1)), 7)
        f.append(str(self.df_resid))
        out.append(print_named(["AIC", "BIC", "logLik", "deviance", "df.resid"], f))
        out.append("")
        q = np.quantile(self.residuals("pearson"), [0, 0.25, 0.5, 0.75, 1.0])
        out.append("Scaled residuals: ")
        out.append(print_named(["Min", "1Q", "Median", "3Q", "Max"],
                               r_format(zapsmall(q, digits + 1), digits)))
        out.append("")
        out.append("Random effects:")
        out.append(self.VarCorr().table(digits))
        out.append(f"Number of obs: {self.nobs}, groups:  {self.design.group}, {self.ngroups}")
        out.append("")
        out.append("Fixed effects:")
        tab = self.coef_table()
        out.append(print_coefmat(tab.to_numpy(), list(tab.index), list(tab.columns), digits=digits))
        p = self.design.p
        if p > 1:
            V = self.vcov().to_numpy()
            sd = np.sqrt(np.diag(V))
            C = V / np.outer(sd, sd)
            names = list(self.design.x_names)
            fm = r_format(r_round(C, 3).ravel(order="F"), 7, nsmall=3)
            cells = [[fm[j * p + i] if i > j else "" for j in range(p - 1)] for i in range(1, p)]
            out.append("")
            out.append("Correlation of Fixed Effects:")
            out.append(print_char_matrix(cells, [abbreviate(n, 6) for n in names[:-1]],
                                         [abbreviate(n, 11) for n in names[1:]], right=False))
        if self.optinfo.messages:  # lme4's .prt.warn, right under the table
            out.append(f"optimizer ({self.optinfo.stage2_optimizer}) convergence code: 0 (OK)")
            out.extend(dict.fromkeys(self.optinfo.messages))
        notes = list(self.notes)
        if self.is_singular():
            notes.append(self.singular_explanation())
        if notes:
            out.append("")
            out.extend(notes)
        stats_ = {"family": f"{self.family.name}/{self.family.link}", "nobs": self.nobs,
                  "groups": self.ngroups, "AIC": self.aic, "BIC": self.bic,
                  "logLik": self.loglik, "deviance": self.minus2loglik,
                  "df.resid": self.df_resid}
        return FitSummary("\n".join(out), coefficients=tab,
                          random_effects=self.VarCorr().to_frame(),
                          fit_statistics=pd.Series(stats_, name=self.formula, dtype=object),
                          header=out[:4], notes=[*self.optinfo.messages, *notes])

    def __str__(self) -> str:
        return str(self.summary())

    def _repr_fields(self) -> list[tuple[str, object]]:
        return [("family", f"{self.family.name}/{self.family.link}"), ("nobs", self.nobs),
                ("groups", f"{self.design.group}:{self.ngroups}"),
                ("deviance", f"{self.minus2loglik:.4f}"), ("nAGQ", self.nagq)]

    def simulate(self, nsim: int = 1, rng=None, *, seed=None, use_u: bool = False,
                 newdata=None, allow_new_levels: bool = False) -> pd.DataFrame:
        """lme4's ``simulate(fit, nsim, seed, use.u)`` for a binomial or Poisson GLMM
        (:func:`twolevel.models.inference.simulate.simulate_glmer`)."""
        from twolevel.models.inference.simulate import simulate_glmer

        if newdata is not None:
            raise TwolevelError("simulate() of a glmer fit draws for the fitted rows only; "
                                "drop newdata (or predict(newdata) for the means)")
        return simulate_glmer(self, nsim, rng, seed=seed, use_u=use_u)

    def to_frame(self) -> pd.DataFrame:
        """The fixed-effects table (Estimate, Std. Error, z value, Pr(>|z|))."""
        return self.coef_table()

    def to_dict(self) -> dict:
        """The CLI's JSON object (keys fixed by issue 11)."""
        tab = self.coef_table()

        def col(name: str) -> dict:
            return {k: float(v) for k, v in tab[name].items()}

        return {
            "formula": self.formula,
            "family": self.family.name,
            "link": self.family.link,
            "nagq": int(self.nagq),
            "nobs": int(self.nobs),
            "ngroups": int(self.ngroups),
            "deviance": float(self.minus2loglik),
            "loglik": float(self.loglik),
            "aic": float(self.aic),
            "bic": float(self.bic),
            "theta": [float(v) for v in self.theta],
            "fixef": col("Estimate"),
            "se": col("Std. Error"),
            "z": col("z value"),
            "p": col("Pr(>|z|)"),
            "varcorr": self.VarCorr().to_dict(),
            "singular": bool(self.is_singular()),
            "converged": bool(self.converged),
        }


def _deparse(formula: str) -> str:
    """R's deparse of a glmer formula (lmer's rules, plus ", " between function arguments)."""
    return deparse_formula(formula).replace(",", ", ")
