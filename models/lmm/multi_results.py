"""The frozen result of a fit with several grouping factors (lme4's ``merMod`` with several
random-effects terms) and its ``VarCorr``.

β̂, cov(β̂) = σ̂²(L_XL_Xᵀ)⁻¹, the conditional modes b = Λũ and their conditional variances
σ̂²Λ Cov(ũ) Λᵀ come from the engine's state at θ̂ (:mod:`twolevel.models.lmm.nested`,
:mod:`twolevel.models.lmm.crossed`); Satterthwaite's df are lmerTest's recipe on the same
(θ, σ) parametrisation (:func:`twolevel.models.lmm.multi.multi_varpar_info`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import special

from twolevel.models.design.multi import MultiDesign
from twolevel.models.fit_base import short_repr
from twolevel.models.lmm.nested import MultiState
from twolevel.models.lmm.optimize import SINGULAR_TOL, OptSummary
from twolevel.models.lmm.results import summary_header
from twolevel.models.rformat import (
    abbreviate,
    print_char_matrix,
    print_coefmat,
    print_named,
    r_format,
    r_round,
    zapsmall,
)

__all__ = ["FactorEffects", "MultiFit", "MultiVarCorr", "icc_by_group", "predict_multi"]


class FactorEffects:
    """``ranef_long`` and ``coef`` of a fit with several grouping factors, from its ``ranef``
    (per factor a frame of modes with ``condsd_<effect>`` columns), ``fixef`` and ``design``:
    shared by the linear (:class:`MultiFit`) and generalized
    (:class:`~twolevel.models.glmm.multi_results.MultiGlmerFit`) fits."""

    def ranef_long(self) -> pd.DataFrame:
        """Long rows: factor, level, effect, mode, condsd (the CLI's ``--ranef`` layout)."""
        rows = []
        for name, fr in self.ranef(cond_var=True).items():
            f = next(f for f in self.design.factors if f.name == name)
            for nm in f.z_names:
                rows.append(pd.DataFrame({"factor": name, "level": fr.index.astype(str),
                                          "effect": nm, "mode": fr[nm].to_numpy(),
                                          "condsd": fr[f"condsd_{nm}"].to_numpy()}))
        return pd.concat(rows, ignore_index=True)

    def coef(self) -> dict[str, pd.DataFrame]:
        """lme4's ``coef``: per factor, the fixed effects plus that factor's modes."""
        fe = self.fixef()
        out = {}
        for name, fr in self.ranef(cond_var=False).items():
            c = pd.DataFrame(np.tile(fe.to_numpy(), (len(fr), 1)), index=fr.index,
                             columns=fe.index)
            for nm in fr.columns:
                if nm in c.columns:
                    c[nm] += fr[nm]
                else:
                    c[nm] = fr[nm]
            out[name] = c
        return out


@dataclass(frozen=True)
class MultiVarCorr:
    """Variance components of several terms (lme4's ``VarCorr``).

    Fields
    ------
    groups : lme4's name of each term (``class:school``, ``school``, ``g.1`` …).
    ngroups : number of levels of each term's factor.
    names : each term's random effects.  covs : each term's covariance σ̂²T Tᵀ.
    residual : σ̂².
    """

    groups: tuple[str, ...]
    ngroups: tuple[int, ...]
    names: tuple[tuple[str, ...], ...]
    covs: tuple[np.ndarray, ...]
    residual: float

    def to_frame(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fit))``: grp, var1, var2, vcov, sdcor."""
        rows = []
        for g, nms, C in zip(self.groups, self.names, self.covs, strict=True):
            sd = np.sqrt(np.diag(C))
            for i, a in enumerate(nms):
                rows.append((g, a, None, C[i, i], sd[i]))
            for i in range(len(nms)):
                for j in range(i + 1, len(nms)):
                    cor = C[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else float("nan")
                    rows.append((g, nms[i], nms[j], C[i, j], cor))
        rows.append(("Residual", None, None, self.residual, math.sqrt(self.residual)))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    def to_dict(self) -> dict:
        """The CLI's ``random`` object: per term name {ngroups, variances, covariances,
        correlations} (pairs keyed ``a:b``)."""
        out = {}
        for g, ng, nms, C in zip(self.groups, self.ngroups, self.names, self.covs, strict=True):
            sd = np.sqrt(np.diag(C))
            cov, cor = {}, {}
            for i in range(len(nms)):
                for j in range(i + 1, len(nms)):
                    cov[f"{nms[i]}:{nms[j]}"] = float(C[i, j])
                    cor[f"{nms[i]}:{nms[j]}"] = (float(C[i, j] / (sd[i] * sd[j]))
                                                 if sd[i] * sd[j] > 0 else None)
            out[g] = {"ngroups": int(ng),
                      "variances": {a: float(C[i, i]) for i, a in enumerate(nms)},
                      "covariances": cov, "correlations": cor}
        return out

    def table(self, digits: int = 4) -> str:
        """lme4's random-effects table (``formatVC``): Groups, Name, Variance, Std.Dev., Corr."""
        var = [C[i, i] for C in self.covs for i in range(C.shape[0])] + [self.residual]
        vs, ss = r_format(var, digits), r_format([math.sqrt(v) for v in var], digits)
        gcol, ncol = [], []
        for g, nms in zip(self.groups, self.names, strict=True):
            for k, nm in enumerate(nms):
                gcol.append(g if k == 0 else "")
                ncol.append(nm)
        gcol.append("Residual")
        ncol.append("")
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
        corr_cells.append([""] * corr_cols)
        cells = [[g, n, v, s] + c for g, n, v, s, c in zip(gcol, ncol, vs, ss, corr_cells,
                                                          strict=True)]
        cols = ["Groups", "Name", "Variance", "Std.Dev."]
        if corr_cols:
            cols += ["Corr"] + [""] * (corr_cols - 1)
        return print_char_matrix(cells, cols, [""] * len(cells), right=False)


@dataclass(frozen=True)
class MultiFit(FactorEffects):
    """A linear mixed model with several grouping factors fitted by REML or ML.

    Fields
    ------
    design : the :class:`~twolevel.models.design.multi.MultiDesign`.
    stats : its statistics (nested or crossed).  engine : "nested" or "crossed".
    reml : REML fit.  theta : θ̂.  state : the engine's state at θ̂ (with the modes).
    optsum : how θ̂ was obtained.  data_name : the "Data:" line.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import twolevel as tl
    >>> rng = np.random.default_rng(1)   # 20 schools, 2 classes each, 8 students a class
    >>> d = pd.DataFrame({"school": np.repeat(np.arange(20), 16),
    ...                   "klass": np.tile(np.repeat([1, 2], 8), 20)})
    >>> d["x"] = rng.normal(size=len(d))
    >>> d["y"] = (1 + 0.5 * d["x"] + np.repeat(rng.normal(size=20), 16)
    ...           + np.repeat(rng.normal(scale=0.7, size=40), 8) + rng.normal(size=len(d)))
    >>> fit = tl.lmer("y ~ x + (1 | school/klass)", d)    # a MultiFit: lme4's names
    >>> fit.ngroups
    {'klass:school': 40, 'school': 20}
    >>> len(repr(fit)) < 300
    True
    """

    def __repr__(self) -> str:
        kind = "REML" if self.reml else "ML"
        groups = ",".join(f"{k}:{v}" for k, v in self.ngroups.items())
        return short_repr(type(self).__name__, [
            ("nobs", self.nobs), ("groups", groups), (kind, f"{self.criterion:.4f}")],
            self.design.formula)

    design: MultiDesign
    stats: object
    engine: str
    reml: bool
    theta: np.ndarray
    state: MultiState
    optsum: OptSummary
    data_name: str = "data"

    # ------------------------------------------------------------------ sizes and criteria
    @property
    def nobs(self) -> int:
        """Number of observations."""
        return self.design.n

    @property
    def ngroups(self) -> dict[str, int]:
        """Levels of each grouping factor, lme4's names."""
        return {f.name: f.n_levels for f in self.design.factors}

    @property
    def npar(self) -> int:
        """p + length(θ) + 1 (lme4's df of logLik)."""
        return self.design.p + self.design.n_theta + 1

    @property
    def sigma(self) -> float:
        """σ̂ = sqrt(r²/(n − p)) (REML) or sqrt(r²/n) (ML)."""
        n, p = self.design.n, self.design.p
        return math.sqrt(self.state.r2 / (n - p if self.reml else n))

    @property
    def criterion(self) -> float:
        """The criterion minimised: REML criterion or ML deviance."""
        return float(self.optsum.fmin)

    @property
    def reml_criterion(self) -> float:
        """REML criterion at convergence (REML fits)."""
        return self.criterion

    @property
    def loglik(self) -> float:
        """lme4's ``logLik``: −criterion/2 (the restricted log-likelihood for REML fits)."""
        return -0.5 * self.criterion

    @property
    def aic(self) -> float:
        """−2 logLik + 2 npar."""
        return -2.0 * self.loglik + 2.0 * self.npar

    @property
    def bic(self) -> float:
        """−2 logLik + log(n) npar."""
        return -2.0 * self.loglik + math.log(self.nobs) * self.npar

    @property
    def converged(self) -> bool:
        """The optimizer's convergence flag (lme4's rule)."""
        return self.optsum.converged

    @cached_property
    def data_fingerprint(self) -> str:
        """A hash of the response and every factor's codes (anova checks the same data)."""
        h = hashlib.sha1(np.ascontiguousarray(self.design.y).tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ fixed effects
    def fixef(self) -> pd.Series:
        """β̂."""
        return pd.Series(self.state.beta, index=list(self.design.x_names), name="Estimate")

    def vcov(self) -> pd.DataFrame:
        """cov(β̂) = σ̂²(L_XL_Xᵀ)⁻¹."""
        LXi = np.linalg.inv(self.state.LX)
        V = self.sigma**2 * (LXi.T @ LXi)
        nm = list(self.design.x_names)
        return pd.DataFrame(V, index=nm, columns=nm)

    def se(self) -> pd.Series:
        """Standard errors of β̂."""
        return pd.Series(np.sqrt(np.diag(self.vcov().to_numpy())),
                         index=list(self.design.x_names), name="Std. Error")

    @cached_property
    def varpar_info(self):
        """lmerTest's Hessian of D(θ, σ) and Jacobian of cov(β̂) (numDeriv's recipes)."""
        from twolevel.models.lmm.multi import multi_varpar_info

        return multi_varpar_info(self)

    def coef_table(self, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """Estimate, Std. Error, df, t value, Pr(>|t|) (Satterthwaite or Kenward-Roger df; only
        the first three columns and t for ``ddf="lme4"``)."""
        beta, se = self.state.beta, self.se().to_numpy()
        t = beta / se
        names = list(self.design.x_names)
        if ddf == "lme4":
            return pd.DataFrame({"Estimate": beta, "Std. Error": se, "t value": t}, index=names)
        if ddf == "Kenward-Roger":
            from twolevel.models.inference.kenward_roger_multi import ddf_kenward_roger_multi

            se, df = ddf_kenward_roger_multi(self, np.eye(len(names)))
            t = beta / se
        elif ddf == "Satterthwaite":
            from twolevel.models.lmm.satterthwaite import contest1d

            df = np.array([contest1d(self, row)["df"] for row in np.eye(len(names))])
        else:
            from twolevel.data.errors import TwolevelError

            raise TwolevelError(f"ddf '{ddf}' is not available with several grouping factors; "
                                "use 'Satterthwaite', 'Kenward-Roger' or 'lme4'")
        p = 2.0 * special.stdtr(df, -np.abs(t))  # = stats.t.sf(|t|, df), without scipy.stats
        return pd.DataFrame({"Estimate": beta, "Std. Error": se, "df": df, "t value": t,
                             "Pr(>|t|)": p}, index=names)

    # ------------------------------------------------------------------ random effects
    def VarCorr(self) -> MultiVarCorr:
        """Variance components per term (lme4's order and names)."""
        d = self.design
        s2 = self.sigma**2
        covs, names, ng = [], [], []
        for t in d.terms:
            f = d.factors[t.factor]
            T = d.factor_T(self.theta, t.factor)
            C = s2 * T @ T.T
            idx = list(t.columns)
            covs.append(C[np.ix_(idx, idx)])
            names.append(t.names)
            ng.append(f.n_levels)
        return MultiVarCorr(groups=d.term_group_names, ngroups=tuple(ng), names=tuple(names),
                            covs=tuple(covs), residual=s2)

    def _b(self, k: int) -> np.ndarray:
        return self.state.u[k] @ self.design.factor_T(self.theta, k).T

    def ranef(self, cond_var: bool = True) -> dict[str, pd.DataFrame]:
        """Conditional modes per factor (lme4's ``ranef``): factor name → frame (levels ×
        effects), with ``condsd_<effect>`` columns (conditional SDs, β fixed) when
        ``cond_var``."""
        out = {}
        s2 = self.sigma**2
        for k, f in enumerate(self.design.factors):
            fr = pd.DataFrame(self._b(k), index=pd.Index(f.levels, name=f.name),
                              columns=list(f.z_names))
            if cond_var:
                T = self.design.factor_T(self.theta, k)
                V = s2 * np.einsum("ab,nbc,dc->nad", T, self.state.cond_var_u[k], T)
                sd = np.sqrt(np.clip(np.diagonal(V, axis1=1, axis2=2), 0, None))
                for j, nm in enumerate(f.z_names):
                    fr[f"condsd_{nm}"] = sd[:, j]
            out[f.name] = fr
        return out

    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False,
                interval: str | None = None, level: float = 0.95, **kwargs):
        """lme4's ``predict`` (:func:`predict_multi`); with ``interval`` ("confidence",
        "prediction" or "bootstrap"; ``nsim``, ``rng`` for the bootstrap) a frame with
        intervals (:func:`twolevel.models.inference.predict_multi.predict_intervals_multi`)."""
        if interval is None:
            return predict_multi(self, newdata, re_form, allow_new_levels)
        from twolevel.models.inference.predict_multi import predict_intervals_multi

        return predict_intervals_multi(self, newdata, re_form, allow_new_levels, interval, level,
                                       **kwargs)

    def confint(self, method: str = "profile", level: float = 0.95, *, nsim: int = 500,
                seed=1, progress: bool = False) -> pd.DataFrame:
        """lme4's ``confint(fit, method = ...)`` with several grouping factors.

        Parameters
        ----------
        method : {"profile", "Wald", "boot"}
            ``"profile"`` (lme4's default): likelihood-profile intervals of every parameter
            from an ML refit (:func:`twolevel.models.inference.profile_multi.profile_multi`).
            ``"Wald"``: β̂ ± z·SE, NaN rows ``.sig01`` … ``.sigma``. ``"boot"``: parametric
            bootstrap percentile intervals (``nsim`` refits,
            :func:`twolevel.models.inference.simulate_multi.bootstrap_multi`).
        level : confidence level in (0, 1).
        nsim, seed : bootstrap replicates and their seed or ``numpy.random.Generator``
            (``"boot"`` only).
        progress : print which parameter is being profiled on stderr (``"profile"`` only).

        Returns
        -------
        pandas.DataFrame
            Rows ``.sig01`` …, ``.sigma``, the fixed effects; columns "2.5 %", "97.5 %".

        Raises
        ------
        TwolevelError
            An unknown method, a level outside (0, 1), ``nsim`` < 2.

        Examples
        --------
        >>> fit.confint("Wald").columns.tolist()   # doctest: +SKIP
        ['2.5 %', '97.5 %']
        """
        from twolevel.data.errors import TwolevelError

        meth = {"wald": "Wald"}.get(str(method).lower(), str(method).lower())
        if meth not in ("profile", "Wald", "boot"):
            raise TwolevelError(f"unknown confint method '{method}'; choose one of: profile, "
                                "Wald, boot")
        if not 0.0 < level < 1.0:
            raise TwolevelError(f"confidence level must be between 0 and 1 (e.g. 0.95), got "
                                f"{level}")
        if meth == "profile":
            import sys

            from twolevel.models.inference.profile_multi import profile_multi

            say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else None
            return profile_multi(self, progress=say).confint(level)
        if meth == "boot":
            from twolevel.models.inference.simulate_multi import bootstrap_multi

            if nsim < 2:
                raise TwolevelError(f"the bootstrap needs nsim >= 2 simulations, got {nsim}")
            return bootstrap_multi(self, nsim, seed).confint(level)
        from twolevel.models.inference.intervals import confint_wald

        var = [f".sig{i + 1:02d}" for i in range(self.design.n_theta)] + [".sigma"]
        return confint_wald(list(self.design.x_names), self.state.beta, self.se().to_numpy(),
                            level, var)

    def icc(self) -> dict[str, float]:
        """ICC per level (:func:`icc_by_group`)."""
        return icc_by_group(self)

    @property
    def has_rows(self) -> bool:
        """False when the statistics came from DuckDB or Dask (no rows in memory)."""
        return self.design.y.shape[0] == self.design.n

    def _need_rows(self, what: str) -> None:
        if not self.has_rows:
            from twolevel.data.errors import TwolevelError

            raise TwolevelError(
                f"{what} need the rows, and this fit's statistics came from "
                f"{getattr(self.design, 'engine', 'an engine')} without them; refit with "
                "engine='memory' (or predict on a data frame of the rows you need)")

    def fitted(self) -> np.ndarray:
        """x_iᵀβ̂ + Σ_k z_kiᵀ b_k,g_k(i)."""
        self._need_rows("fitted values")
        d = self.design
        mu = d.X @ self.state.beta
        for k, f in enumerate(d.factors):
            mu = mu + np.einsum("nq,nq->n", f.Z, self._b(k)[f.codes])
        return mu

    def residuals(self, scaled: bool = False) -> np.ndarray:
        """y − fitted, divided by σ̂ when ``scaled``."""
        r = self.design.y - self.fitted()
        return r / self.sigma if scaled else r

    def is_singular(self, tol: float = SINGULAR_TOL) -> bool:
        """lme4's ``isSingular``: a diagonal θ below ``tol``."""
        lower = self.design.theta_lower
        return bool(np.any(self.theta[lower == 0] < tol))

    # ------------------------------------------------------------------ printing
    def summary(self, ddf: str = "Satterthwaite") -> str:
        """lme4 + lmerTest's ``summary(fit)`` printout for several factors."""
        digits = 4
        out: list[str] = []
        what = None if ddf == "lme4" else (
            "Satterthwaite's method" if ddf == "Satterthwaite" else "Kenward-Roger's method")
        out += summary_header(self.reml, what, self.design.formula, self.data_name,
                              self.criterion, self.aic, self.bic, self.loglik,
                              self.nobs - self.npar)
        if self.has_rows:
            q = np.quantile(self.residuals(scaled=True), [0, 0.25, 0.5, 0.75, 1.0])
            out.append("Scaled residuals: ")
            out.append(print_named(["Min", "1Q", "Median", "3Q", "Max"],
                                   r_format(zapsmall(q, digits + 1), digits)))
        else:
            out.append(f"Scaled residuals: not computed (statistics from "
                       f"{self.design.engine}, rows not in memory)")
        out.append("")
        out.append("Random effects:")
        out.append(self.VarCorr().table(digits))
        grp = "; ".join(f"{f.name}, {f.n_levels}" for f in self.design.factors)
        out.append(f"Number of obs: {self.nobs}, groups:  {grp}")
        out.append("")
        out.append("Fixed effects:")
        tab = self.coef_table(ddf)
        out.append(print_coefmat(tab.to_numpy(), list(tab.index), list(tab.columns),
                                 digits=digits, has_pvalue=ddf != "lme4"))
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
        notes = list(self.design.notes)
        if self.is_singular():
            notes.append("boundary (singular) fit: see help('isSingular')")
        if not self.converged:
            notes.append(f"optimizer did not converge: {self.optsum.status_message}")
        if notes:
            out.append("")
            out.extend(notes)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()

    def to_frame(self) -> pd.DataFrame:
        """Fixed-effects table with Satterthwaite df and p."""
        return self.coef_table("Satterthwaite")

    def to_dict(self, ddf: str = "Satterthwaite") -> dict:
        """The CLI's JSON object for several factors: formula, reml, nobs, ngroups, criterion,
        loglik, aic, bic, theta, sigma, fixef, se, df, t, p, random, residual, singular,
        converged."""
        tab = self.coef_table(ddf)

        def col(name: str) -> dict:
            return {k: float(v) for k, v in tab[name].items()}

        vc = self.VarCorr()
        return {
            "formula": self.design.formula, "reml": bool(self.reml), "nobs": int(self.nobs),
            "ngroups": self.ngroups, "criterion": float(self.criterion),
            "loglik": float(self.loglik), "aic": float(self.aic), "bic": float(self.bic),
            "theta": [float(v) for v in self.theta], "sigma": float(self.sigma),
            "fixef": col("Estimate"), "se": col("Std. Error"), "df": col("df"),
            "t": col("t value"), "p": col("Pr(>|t|)"), "random": vc.to_dict(),
            "residual": float(vc.residual), "singular": bool(self.is_singular()),
            "converged": bool(self.converged),
        }


# ----------------------------------------------------------------------------- predictions


def predict_multi(fit: MultiFit, newdata=None, re_form=None,
                  allow_new_levels: bool = False) -> np.ndarray:
    """lme4's ``predict`` for several factors: x₀ᵀβ̂ + Σ_k z₀ₖᵀb̂ₖ over the factors whose level
    the row has; with ``allow_new_levels`` an unseen level (a new class in a known school, a
    new school) contributes 0 at that level only (lme4's ``allow.new.levels = TRUE``).
    ``re_form`` None uses every factor; ``"NA"``, ``"~0"`` or NaN the fixed part only; a
    formula such as ``"~(1 | school)"`` only the effects it names
    (:func:`twolevel.models.inference.predict_multi.re_form_effects`).

    Parameters
    ----------
    fit : the fit.  newdata : a data frame (None: the fitted rows).
    re_form : None, "NA"/"~0"/NaN or a formula of bars.  allow_new_levels : predict unseen
        levels.

    Returns
    -------
    numpy.ndarray
        One prediction per row.

    Raises
    ------
    DataError
        An unseen level without ``allow_new_levels``, a missing grouping column, or the
        errors of :func:`twolevel.models.design.newdata.new_model_matrices`.
    TwolevelError
        An ``re_form`` naming a factor or effect the model does not have.

    Examples
    --------
    >>> predict_multi(fit, new_rows, allow_new_levels=True)   # doctest: +SKIP
    """
    from twolevel.models.inference.predict_multi import multi_new_rows, point_predictions_multi

    return point_predictions_multi(fit, multi_new_rows(fit, newdata, re_form, allow_new_levels))


def icc_by_group(fit: MultiFit) -> dict[str, float]:
    """performance's ``icc(by_group = TRUE)`` for random-intercept models: per factor
    σ²_k / (Σ_j σ²_j + σ²). Raises TwolevelError when a term has random slopes."""
    vc = fit.VarCorr()
    if any(nms != ("(Intercept)",) for nms in vc.names):
        from twolevel.data.errors import TwolevelError

        raise TwolevelError("ICC per level is defined for random-intercept terms only; this "
                            "model has random slopes (use the variance components instead)")
    v = [float(C[0, 0]) for C in vc.covs]
    total = sum(v) + vc.residual
    return {g: vi / total for g, vi in zip(vc.groups, v, strict=True)}
