"""A fitted binomial or Poisson GLMM with several nested grouping factors, in lme4's vocabulary
(``glmerMod`` with several random-effects terms): estimates, the Hessian-based vcov (lme4's
default, ``use.hessian = TRUE``) or the RX form, VarCorr per term, conditional modes with their
conditional variances per factor, fitted values and predictions, and ``summary()`` in glmer's
print layout."""

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
from twolevel.models.glmm.family import Family
from twolevel.models.glmm.multi import (
    MultiGlmmProblem,
    MultiPirlsState,
    family_rows,
    unit_deviance,
)
from twolevel.models.glmm.results import SINGULAR_TOL, GlmerOptInfo, GlmmCriteria, _deparse
from twolevel.models.lmm.multi_results import FactorEffects, MultiVarCorr
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

__all__ = ["MultiGlmerFit", "GlmmMultiVarCorr"]


@dataclass(frozen=True)
class GlmmMultiVarCorr(MultiVarCorr):
    """Variance components of several terms of a GLMM: Σ_k = T_kT_kᵀ on the link scale, no
    residual variance (``residual`` is NaN and no Residual row is printed)."""

    def to_frame(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fit))`` (no Residual row for a GLMM)."""
        fr = super().to_frame()
        return fr[fr["grp"] != "Residual"].reset_index(drop=True)

    def table(self, digits: int = 4) -> str:
        """lme4's ``formatVC`` without the Residual row (``useScale = FALSE``)."""
        var = [C[i, i] for C in self.covs for i in range(C.shape[0])]
        vs, ss = r_format(var, digits), r_format([math.sqrt(v) for v in var], digits)
        gcol, ncol = [], []
        for g, nms in zip(self.groups, self.names, strict=True):
            for k, nm in enumerate(nms):
                gcol.append(g if k == 0 else "")
                ncol.append(nm)
        maxlen = max(len(n) for n in self.names)
        corr_cols = max(maxlen - 1, 0)
        corr_cells = []
        dig = max(2, digits - 2)
        for C in self.covs:
            sd = np.sqrt(np.diag(C))
            with np.errstate(invalid="ignore", divide="ignore"):
                Rt = C / np.outer(sd, sd)
            fm = r_format(r_round(Rt, dig).ravel(order="F"), 7, nsmall=dig)
            k = C.shape[0]
            for a in range(k):
                row = [fm[b * k + a] if a > b else "" for b in range(k)]
                corr_cells.append((row + [""] * maxlen)[:corr_cols])
        cells = [[g, n, v, s] + c for g, n, v, s, c in zip(gcol, ncol, vs, ss, corr_cells,
                                                          strict=True)]
        cols = ["Groups", "Name", "Variance", "Std.Dev."]
        if corr_cols:
            cols += ["Corr"] + [""] * (corr_cols - 1)
        return print_char_matrix(cells, cols, [""] * len(cells), right=False)


@dataclass(frozen=True, repr=False)
class MultiGlmerFit(FactorEffects, GlmmCriteria):
    """A fitted binomial or Poisson GLMM with nested grouping factors (lme4's ``glmerMod``).

    Fields
    ------
    problem : the :class:`~twolevel.models.glmm.multi.MultiGlmmProblem`.
    nagq : 0 (β inside PIRLS) or 1 (Laplace).  theta, beta : θ̂ and β̂ (β̂ from the optimizer).
    state : the last evaluation at the optimum.  value : −2 log L as glmer reports it.
    vcov_hessian : 2(H⁻¹)_ββ or None.  optinfo : :class:`GlmerOptInfo`.  formula, data_name,
    notes : as given / warnings of the fit.

    Examples
    --------
    >>> import numpy as np, pandas as pd, twolevel as tl
    >>> rng = np.random.default_rng(3)
    >>> d = pd.DataFrame({"school": np.repeat(np.arange(30), 24),
    ...                   "klass": np.tile(np.repeat([1, 2, 3], 8), 30)})
    >>> d["x"] = rng.normal(size=len(d))
    >>> eta = (0.3 * d.x + rng.normal(size=30)[d.school]
    ...        + 0.5 * rng.normal(size=90)[d.school * 3 + d.klass - 1])
    >>> d["y"] = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    >>> fit = tl.glmer("y ~ x + (1 | school/klass)", d, family="binomial")
    >>> list(fit.ranef())
    ['klass:school', 'school']
    """

    problem: MultiGlmmProblem
    nagq: int
    theta: np.ndarray
    beta: np.ndarray
    state: MultiPirlsState
    value: float
    vcov_hessian: np.ndarray | None
    optinfo: GlmerOptInfo
    formula: str
    data_name: str = "data"
    notes: tuple[str, ...] = field(default=())

    # ----------------------------------------------------------------- basics
    @property
    def design(self):
        """The :class:`~twolevel.models.design.multi.MultiDesign`."""
        return self.problem.design

    @property
    def family(self) -> Family:
        return self.problem.family

    @property
    def nobs(self) -> int:
        """Number of rows used (not trials)."""
        return self.design.n

    @property
    def ngroups(self) -> dict[str, int]:
        """Levels of every grouping factor (lme4's ``ngrps``)."""
        return {f.name: f.n_levels for f in self.design.factors}

    @cached_property
    def _rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(μ, V(μ), d_i) at the final η."""
        mu, _, V = family_rows(self.family.code, self.state.eta)
        r = self.problem.resp
        return mu, V, unit_deviance(self.family.code, r.y, mu, r.w)

    def deviance(self) -> float:
        """lme4's ``deviance(fit)``: Σ d_i(μ̃) (not −2 logLik, see :attr:`minus2loglik`)."""
        return float(self._rows[2].sum())

    @cached_property
    def data_fingerprint(self) -> str:
        """Hash of the response, weights, grouping and rows."""
        h = hashlib.sha1()
        for a in (self.problem.resp.y, self.problem.resp.w,
                  *(f.codes for f in self.design.factors)):
            h.update(np.ascontiguousarray(a))
        h.update(str(self.nobs).encode())
        return h.hexdigest()

    @property
    def converged(self) -> bool:
        """No convergence warning from lme4's checks."""
        return not self.optinfo.messages

    # ----------------------------------------------------------------- fixed effects
    def fixef(self) -> pd.Series:
        return pd.Series(self.beta, index=list(self.design.x_names), name="fixef")

    def vcov_rx(self) -> pd.DataFrame:
        """(RXᵀRX)⁻¹ from the final evaluation's (lagged) weights
        (``vcov(fit, use.hessian = FALSE)``)."""
        Linv = np.linalg.inv(np.tril(self.state.RX))
        names = list(self.design.x_names)
        return pd.DataFrame(Linv.T @ Linv, index=names, columns=names)

    def vcov(self, use_hessian: bool | None = None) -> pd.DataFrame:
        """vcov(β̂): glmer's default 2(H⁻¹)_ββ from the finite-difference Hessian over (θ, β),
        symmetrised, or the RX form (``use_hessian=False``, nAGQ = 0, or no usable Hessian)."""
        if use_hessian is False or self.vcov_hessian is None:
            return self.vcov_rx()
        names = list(self.design.x_names)
        return pd.DataFrame(self.vcov_hessian, index=names, columns=names)

    def se(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov().to_numpy())),
                         index=list(self.design.x_names), name="se")

    def coef_table(self) -> pd.DataFrame:
        """Estimate, Std. Error, z value, Pr(>|z|) = 2Φ(−|z|)."""
        b, se = self.fixef(), self.se()
        z = b / se
        return pd.DataFrame({"Estimate": b, "Std. Error": se, "z value": z,
                             "Pr(>|z|)": 2 * stats.norm.sf(np.abs(z))})

    def confint(self, method: str = "Wald", level: float = 0.95) -> pd.DataFrame:
        """Wald intervals β̂ ± z·SE for the fixed effects (``confint(fit, method = "Wald")``;
        lme4 gives NA for the variance parameters there, omitted here). The arguments are in
        the order of every other fit's ``confint`` (method, then level).

        Raises
        ------
        TwolevelError
            For another method (profile intervals are not available for several factors of a
            GLMM yet).
        """
        if str(method).lower() != "wald":
            raise TwolevelError(f"confint method '{method}' is not available for a glmer fit "
                                "with several grouping factors; use method='Wald'")
        z = stats.norm.ppf(0.5 + level / 2)
        b, se = self.fixef(), self.se()
        lo, hi = f"{100 * (1 - level) / 2:.3g} %", f"{100 * (1 + level) / 2:.3g} %"  # R's
        return pd.DataFrame({lo: b - z * se, hi: b + z * se})

    # ----------------------------------------------------------------- random effects
    def VarCorr(self) -> GlmmMultiVarCorr:
        """Σ = T_kT_kᵀ per term (lme4's order and names; no Residual)."""
        d = self.design
        covs, names, ng = [], [], []
        for t in d.terms:
            T = d.factor_T(self.theta, t.factor)
            C = T @ T.T
            idx = list(t.columns)
            covs.append(C[np.ix_(idx, idx)])
            names.append(t.names)
            ng.append(d.factors[t.factor].n_levels)
        return GlmmMultiVarCorr(groups=d.term_group_names, ngroups=tuple(ng),
                                names=tuple(names), covs=tuple(covs), residual=float("nan"))

    @cached_property
    def _cond_var_u(self) -> tuple[np.ndarray, ...]:
        return self.problem.cond_var_u(self.state)

    def _b(self, k: int) -> np.ndarray:
        return self.state.u[k] @ self.design.factor_T(self.theta, k).T

    def ranef(self, cond_var: bool = True) -> dict[str, pd.DataFrame]:
        """Conditional modes b̃ = Tũ per factor (lme4's ``ranef``): factor name → frame (levels
        × effects), with ``condsd_<effect>`` columns (conditional SDs T M⁻¹ Tᵀ from the last
        factorisation, β fixed, as lme4's ``condVar``) when ``cond_var``."""
        out = {}
        for k, f in enumerate(self.design.factors):
            fr = pd.DataFrame(self._b(k), index=pd.Index(f.levels, name=f.name),
                              columns=list(f.z_names))
            if cond_var:
                T = self.design.factor_T(self.theta, k)
                V = np.einsum("ab,nbc,dc->nad", T, self._cond_var_u[k], T)
                sd = np.sqrt(np.clip(np.diagonal(V, axis1=1, axis2=2), 0, None))
                for j, nm in enumerate(f.z_names):
                    fr[f"condsd_{nm}"] = sd[:, j]
            out[f.name] = fr
        return out

    # ----------------------------------------------------------------- fitted values
    def fitted(self) -> np.ndarray:
        """μ̃ of the final evaluation (``fitted(fit)``)."""
        return self._rows[0].copy()

    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False,
                type: str = "link") -> np.ndarray:
        """lme4's ``predict(fit, newdata, re.form, allow.new.levels, type)``: η = o + Xβ̂ +
        Σ_k Z_k b̃_k (``type="link"``) or μ = g⁻¹(η) (``"response"``). Without ``newdata`` the
        fitted rows (η̃ of the final evaluation); with it the rows rebuilt as the fit built them
        (:func:`twolevel.models.inference.predict_multi.multi_new_rows`; ``offset(...)``
        evaluated on ``newdata``). ``re_form`` None uses every factor, ``"NA"``/``"~0"`` none,
        ``"~(1 | school)"`` the factors it names; with ``allow_new_levels`` an unseen level (a
        new class in a known school, a new school) contributes 0 at that level only.

        Raises
        ------
        TwolevelError
            An unknown ``type``, or ``newdata`` for a formula with ``I(...)`` terms.
        DataError
            An unseen level without ``allow_new_levels``, a missing column or value.
        """
        import dataclasses
        import types

        from twolevel.models.design.formula import parse_formula
        from twolevel.models.glmm.response import _eval, _inner_formula, _split_offsets
        from twolevel.models.inference.predict_multi import multi_new_rows

        if type not in ("link", "response"):
            raise TwolevelError(f"type must be 'link' or 'response', got {type!r}")
        if newdata is None and re_form is None:
            eta = self.state.eta.copy()
        else:
            parsed = parse_formula(self.design.formula)
            fixed, offsets = _split_offsets(parsed.fixed)
            inner, _, _, icols, _ = _inner_formula(parsed, fixed or "1")
            if icols and newdata is not None:
                raise TwolevelError("predict(newdata) of a glmer fit with several grouping "
                                    "factors does not rebuild I(...) terms; compute them as "
                                    "columns, refit, and predict")
            shim = types.SimpleNamespace(design=dataclasses.replace(self.design, formula=inner),
                                         _need_rows=lambda what: None)
            rows = multi_new_rows(shim, newdata, re_form, allow_new_levels)
            eta = rows.X @ self.beta
            if newdata is None:
                eta = eta + self.problem.resp.offset
            else:
                nd = newdata if isinstance(newdata, pd.DataFrame) else pd.DataFrame(newdata)
                for expr in offsets:
                    eta = eta + _eval(expr, nd)
            for k in range(len(self.design.factors)):
                known = rows.idx[k] >= 0
                if rows.masks[k].any() and known.any():
                    eta[known] += np.einsum("nq,nq->n", rows.Z[k][known] * rows.masks[k],
                                            self._b(k)[rows.idx[k][known]])
        return eta if type == "link" else self.family.linkinv(eta)

    def residuals(self, type: str = "deviance") -> np.ndarray:
        """Deviance residuals sign(y − μ)·√d_i, Pearson (y − μ)√(w/V), or response y − μ.

        Raises
        ------
        TwolevelError
            For another ``type``.
        """
        y = self.problem.resp.y
        mu, V, d = self._rows
        if type == "deviance":
            return np.sign(y - mu) * np.sqrt(np.maximum(d, 0))
        if type == "pearson":
            return (y - mu) * np.sqrt(self.problem.resp.w / V)
        if type == "response":
            return y - mu
        raise TwolevelError(f"type must be 'deviance', 'pearson' or 'response', got {type!r}")

    def is_singular(self, tol: float = SINGULAR_TOL) -> bool:
        lower = self.design.theta_lower
        return bool(np.any(self.theta[lower == 0] < tol))

    # ----------------------------------------------------------------- printing
    def _title(self) -> str:
        approx = ("Laplace Approximation" if self.nagq == 1
                  else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nagq}")
        title = f"Generalized linear mixed model fit by maximum likelihood ({approx})"
        if len(title) + 5 + len("glmerMod") > 80:  # R's strwrap, as GlmerFit's title
            lines = textwrap.wrap(title, width=77, subsequent_indent="  ",
                                  break_on_hyphens=False)
            return cat_fill([*lines, " [", "glmerMod", "]"])
        return f"{title} ['glmerMod']"

    def summary(self) -> str:
        """glmer's ``summary(fit)`` printout (lme4 1.1-31 layout, digits = 4) for several
        factors."""
        digits = 4
        r = self.problem.resp
        out = [self._title(), f" Family: {self.family.name}  ( {self.family.link} )",
               f"Formula: {_deparse(self.formula)}", f"   Data: {self.data_name}"]
        if r.weights_label:
            out.append(f"Weights: {r.weights_label}")
        out.append("")
        f = r_format(list(r_round([self.aic, self.bic, self.loglik, self.minus2loglik], 1)), 7)
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
        grp = "; ".join(f"{fc.name}, {fc.n_levels}" for fc in self.design.factors)
        out.append(f"Number of obs: {self.nobs}, groups:  {grp}")
        out.append("")
        out.append("Fixed effects:")
        tab = self.coef_table()
        out.append(print_coefmat(tab.to_numpy(), list(tab.index), list(tab.columns),
                                 digits=digits))
        p = self.design.p
        if p > 1:
            V = self.vcov().to_numpy()
            sd = np.sqrt(np.diag(V))
            C = V / np.outer(sd, sd)
            names = list(self.design.x_names)
            fm = r_format(r_round(C, 3).ravel(order="F"), 7, nsmall=3)
            cells = [[fm[j * p + i] if i > j else "" for j in range(p - 1)] for i in range(1, p)]
            out += ["", "Correlation of Fixed Effects:",
                    print_char_matrix(cells, [abbreviate(n, 6) for n in names[:-1]],
                                      [abbreviate(n, 11) for n in names[1:]], right=False)]
        if self.optinfo.messages:
            out.append(f"optimizer ({self.optinfo.stage2_optimizer}) convergence code: 0 (OK)")
            out.extend(dict.fromkeys(self.optinfo.messages))
        notes = list(self.notes)
        if self.is_singular():
            notes.append("boundary (singular) fit: see help('isSingular')")
        if notes:
            out.append("")
            out.extend(notes)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        groups = " ".join(f"{k}:{v}" for k, v in self.ngroups.items())
        return (f"<MultiGlmerFit '{self.formula}' family={self.family.name}/{self.family.link} "
                f"nobs={self.nobs} groups={groups} deviance={self.minus2loglik:.4f} "
                f"nAGQ={self.nagq}>")

    def to_frame(self) -> pd.DataFrame:
        """The fixed-effects table (Estimate, Std. Error, z value, Pr(>|z|))."""
        return self.coef_table()

    def to_dict(self) -> dict:
        """A JSON-ready object: the one-factor glmer keys, ``ngroups`` per factor and
        ``random`` keyed by lme4's VarCorr names (the several-factors contract)."""
        tab = self.coef_table()

        def col(name: str) -> dict:
            return {k: float(v) for k, v in tab[name].items()}

        return {"formula": self.formula, "family": self.family.name, "link": self.family.link,
                "nagq": int(self.nagq), "nobs": int(self.nobs),
                "ngroups": {k: int(v) for k, v in self.ngroups.items()},
                "deviance": float(self.minus2loglik), "loglik": float(self.loglik),
                "aic": float(self.aic), "bic": float(self.bic),
                "theta": [float(v) for v in self.theta], "fixef": col("Estimate"),
                "se": col("Std. Error"), "z": col("z value"), "p": col("Pr(>|z|)"),
                "random": self.VarCorr().to_dict(), "singular": bool(self.is_singular()),
                "converged": bool(self.converged)}

