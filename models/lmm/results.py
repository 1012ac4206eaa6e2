"""The frozen result of :func:`twolevel.models.lmm.lmer.lmer` with lme4's vocabulary (lme4's
``merMod``).

Everything is computed from the design, the per-group cross-products and θ̂: the PLS state at θ̂
gives β̂, ũ, R_X and r²; the rest are small functions of those (§2 and §4 of the lme4 notes).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from twolevel.data.errors import TwolevelError
from twolevel.models.design import Design, GroupCrossprods
from twolevel.models.fit_base import FitSummary, MixedFit
from twolevel.models.lmm.deviance import (
    PLSState,
    cond_var_unscaled,
    ml_deviance,
    reml_criterion,
    sigma_hat,
    unscaled_vcov,
)
from twolevel.models.lmm.optimize import SINGULAR_TOL, OptSummary
from twolevel.models.lmm.varcorr import VarCorr
from twolevel.models.pvalues import t_sf2
from twolevel.models.rformat import (  # noqa: F401 (deparse_formula: glmm.results reads it here)
    _r_num,
    abbreviate,
    cat_fill,
    deparse_formula,
    print_char_matrix,
    print_coefmat,
    print_named,
    r_format,
    r_round,
    zapsmall,
)

__all__ = ["DDF_METHODS", "LmerFit", "VarCorr", "ddf_method"]

# Denominator-df methods for summary(ddf=...) and coef_table(ddf=...): name → (target, title).
# The target "module:function" is imported on first use and called as f(fit, L) → (se, df) for
# the rows of L (one contrast per row); None means lme4's plain t table without df or p.
DDF_METHODS: dict[str, tuple[str | None, str]] = {
    "Satterthwaite": ("twolevel.models.lmm.satterthwaite:ddf_satterthwaite",
                      "Satterthwaite's method"),
    "Kenward-Roger": ("twolevel.models.inference.kenward_roger:ddf_kenward_roger",
                      "Kenward-Roger's method"),
    "HLM": ("twolevel.models.inference.hlm:ddf_hlm", "HLM's J - S - 1 df rule"),
    "lme4": (None, ""),
}


def ddf_method(name: str) -> tuple[Callable | None, str]:
    """The (function, title) registered in :data:`DDF_METHODS` under ``name``."""
    if name not in DDF_METHODS:
        raise TwolevelError(
            f"unknown ddf method '{name}'; choose one of: {', '.join(DDF_METHODS)}"
        )
    target, title = DDF_METHODS[name]
    if target is None:
        return None, title
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func), title


# ------------------------------------------------------------------------------------ LmerFit


def summary_header(reml: bool, ddf_title: str | None, formula: str, data_name: str,
                   criterion: float, aic: float, bic: float, loglik: float,
                   df_resid: int) -> list[str]:
    """The first lines of lme4 + lmerTest's ``summary()``: the title (``lmerMod`` when
    ``ddf_title`` is None, else ``lmerModLmerTest`` with "t-tests use <ddf_title>"), formula,
    data, and the REML criterion (``criterion``) or AIC/BIC/logLik/deviance/df.resid, then a
    blank line. Shared by one-factor and several-factor fits."""
    method = "REML" if reml else "maximum likelihood"
    if ddf_title is None:
        title, cls = f"Linear mixed model fit by {method}", "lmerMod"
    else:
        sep = "" if reml else " "
        title = f"Linear mixed model fit by {method}{sep}. t-tests use {ddf_title}"
        cls = "lmerModLmerTest"
    out: list[str] = []
    if len(title) + 5 + len(cls) > 80:
        lines = textwrap.wrap(title, width=77, subsequent_indent="  ")
        out.append(cat_fill([*lines, " [", cls, "]"]))
    else:
        out.append(f"{title} ['{cls}']")
    out += [f"Formula: {deparse_formula(formula)}", f"   Data: {data_name}", ""]
    if reml:
        out.append(f"REML criterion at convergence: {_r_num(criterion, 1)}")
    else:
        f = r_format(list(r_round([aic, bic, loglik, criterion], 1)), 7)
        f.append(str(df_resid))
        out.append(print_named(["AIC", "BIC", "logLik", "deviance", "df.resid"], f))
    out.append("")
    return out


@dataclass(frozen=True, repr=False)
class LmerFit(MixedFit):
    """A fitted two-level linear mixed model (lme4's ``lmerMod`` + lmerTest's additions).

    Fields
    ------
    design : the :class:`~twolevel.models.design.Design`.  crossprods : its per-group
    cross-products.
    reml : fitted by REML (True) or ML.  theta : θ̂.  state : the PLS solution at θ̂.
    optsum : how θ̂ was obtained (:class:`~twolevel.models.lmm.optimize.OptSummary`).
    data_name : how the data are called in printouts ("Data: ...").

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> fit
    <LmerFit 'g1rscore ~ 1 + famsesc + (1 | schid)' family=gaussian nobs=11091
     groups=schid:742 REML=...>
    >>> fit.ranef().shape[0], round(fit.sigma, 1) > 0
    (742, True)
    """

    design: Design
    crossprods: GroupCrossprods
    reml: bool
    theta: np.ndarray
    state: PLSState
    optsum: OptSummary
    data_name: str = "data"

    @cached_property
    def data_fingerprint(self) -> str:
        """Hash of the response, the grouping and the row count of the rows used (``anova``
        refuses to compare fits to different data); computed on first use."""
        fp = getattr(self.design, "stats_fingerprint", None)
        if fp is not None:  # statistics-only design (engine duckdb/dask): its sums' hash
            return fp
        h = hashlib.sha1()
        h.update(np.ascontiguousarray(self.design.y))  # the buffers themselves, no bytes copies
        h.update(np.ascontiguousarray(self.design.group_index))
        h.update(str(self.design.n).encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ sizes and parameters
    @property
    def nobs(self) -> int:
        """Number of observations used."""
        return self.design.n

    @property
    def ngroups(self) -> int:
        """Number of groups."""
        return self.design.n_groups

    @property
    def npar(self) -> int:
        """lme4's df of logLik: p + length(θ) + 1 (σ)."""
        return self.design.p + self.design.n_theta + 1

    @property
    def sigma(self) -> float:
        """σ̂: sqrt(r²/(n−p)) for REML fits, sqrt(r²/n) for ML fits."""
        return sigma_hat(self.state, self.reml)

    @property
    def beta(self) -> np.ndarray:
        """β̂ as an array (see :meth:`fixef`)."""
        return self.state.beta

    @property
    def reml_criterion(self) -> float:
        """lme4's ``REMLcrit``: d_REML at θ̂ (for ML fits evaluated at the ML θ̂)."""
        return float(reml_criterion(self.state))

    @property
    def criterion(self) -> float:
        """The optimised criterion: REML criterion (REML fit) or ML deviance (ML fit)."""
        return self.reml_criterion if self.reml else float(ml_deviance(self.state))

    @property
    def loglik(self) -> float:
        """lme4's ``logLik``: −criterion/2 (the restricted log-likelihood for REML fits)."""
        return -self.criterion / 2.0

    @property
    def aic(self) -> float:
        """−2 logLik + 2 npar."""
        return -2.0 * self.loglik + 2.0 * self.npar

    @property
    def bic(self) -> float:
        """−2 logLik + log(nobs) npar."""
        return -2.0 * self.loglik + math.log(self.nobs) * self.npar

    def deviance(self, reml: bool = False) -> float:
        """``deviance(fit, REML = reml)``: the ML deviance at θ̂ (reml=False; for a REML fit this
        is at the REML θ̂, as lme4) or the REML criterion (reml=True)."""
        return self.reml_criterion if reml else float(ml_deviance(self.state))

    @property
    def converged(self) -> bool:
        """The optimizer's convergence flag (lme4's rule on the NLopt status)."""
        return self.optsum.converged

    # ------------------------------------------------------------------- fixed effects
    def fixef(self) -> pd.Series:
        """β̂ named by lme4's coefficient names."""
        return pd.Series(self.state.beta, index=list(self.design.x_names), name="fixef")

    def vcov(self) -> pd.DataFrame:
        """vcov(β̂) = σ̂²·(R_XᵀR_X)⁻¹."""
        V = self.sigma**2 * unscaled_vcov(self.state)
        names = list(self.design.x_names)
        return pd.DataFrame(V, index=names, columns=names)

    def se(self) -> pd.Series:
        """Standard errors sqrt(diag vcov(β̂))."""
        return pd.Series(np.sqrt(np.diag(self.vcov().to_numpy())), index=list(self.design.x_names))

    @cached_property
    def varpar_info(self):
        """lmerTest's Hessian / vcov(varpar) / Jacobian
        (:class:`twolevel.models.lmm.satterthwaite.VarparInfo`),
        computed on first use."""
        from twolevel.models.lmm.satterthwaite import varpar_info

        return varpar_info(self)

    def coef_table(self, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """Fixed-effects table: Estimate, Std. Error, df, t value, Pr(>|t|) (lmerTest's
        ``summary(fit, ddf=...)$coefficients``); ``ddf="lme4"`` gives Estimate, SE, t only."""
        func, _ = ddf_method(ddf)
        est = self.state.beta
        names = list(self.design.x_names)
        if func is None:
            se = self.se().to_numpy()
            return pd.DataFrame(
                {"Estimate": est, "Std. Error": se, "t value": est / se}, index=names
            )
        se, df = func(self, np.eye(self.design.p))
        t = est / se
        p = t_sf2(t, df)  # = 2 stats.t.sf(|t|, df), without importing SciPy
        return pd.DataFrame(
            {"Estimate": est, "Std. Error": se, "df": df, "t value": t, "Pr(>|t|)": p},
            index=names,
        )

    def contest(self, L, rhs=0.0, ddf: str = "Satterthwaite") -> dict:
        """Test of a contrast: a p-vector L → lmerTest's ``contest1D`` (Estimate, SE, df, t, p);
        a k × p matrix → ``contestMD`` (F test with Satterthwaite DenDF)."""
        from twolevel.models.lmm.satterthwaite import contest1d, contest_md

        if ddf != "Satterthwaite":
            raise TwolevelError("contest() implements ddf='Satterthwaite' only")
        L = np.asarray(L, dtype=float)
        if L.ndim == 1 or L.shape[0] == 1:
            return contest1d(self, L.ravel(), float(np.ravel(rhs)[0]))
        return contest_md(self, L, rhs)

    # ------------------------------------------------------------------ random effects
    def VarCorr(self) -> VarCorr:
        """Variance components Σ = σ̂²TTᵀ and σ̂² (:class:`VarCorr`)."""
        T = self.state.T
        return VarCorr(
            group=self.design.group,
            names=self.design.z_names,
            terms=tuple(t.names for t in self.design.terms),
            cov=self.sigma**2 * (T @ T.T),
            residual=self.sigma**2,
        )

    def cond_var(self) -> np.ndarray:
        """(J, q, q) conditional covariance of b_j given y (lme4's postVar): σ̂²·T M_j⁻¹ Tᵀ."""
        return self.sigma**2 * cond_var_unscaled(self.state)

    def _modes(self) -> np.ndarray:
        """(J, q) BLUPs b̃_j = Tũ_j (the base class's ``ranef`` and ``coef`` read them)."""
        return self.state.b

    # ------------------------------------------------------------------ fitted and residuals
    def fitted(self) -> np.ndarray:
        """Conditional fitted values μ_i = x_iᵀβ̂ + z_iᵀb̃_{g(i)}."""
        d = self.design
        return d.X @ self.state.beta + np.einsum("nq,nq->n", d.Z, self.state.b[d.group_index])

    def residuals(self, scaled: bool = False) -> np.ndarray:
        """y − μ; divided by σ̂ when ``scaled`` (lme4's ``residuals(fit, scaled = TRUE)``)."""
        r = self.design.y - self.fitted()
        return r / self.sigma if scaled else r

    def scaled_residual_quantiles(self) -> tuple[np.ndarray, str]:
        """Min, 1Q, median, 3Q, max of the scaled residuals (type-7) and a note on how they were
        obtained ("" in memory; at scale a streaming pass over the rows, see
        :func:`twolevel.models.design.residual_pass.residual_quantiles`)."""
        probs = [0, 0.25, 0.5, 0.75, 1.0]
        rq = getattr(self.design, "residual_quantiles", None)
        if rq is None:
            return np.quantile(self.residuals(scaled=True), probs), ""
        return rq(self.state.beta, self.state.b, self.sigma)

    # ------------------------------------------------------------------ singularity
    def is_singular(self, tol: float = SINGULAR_TOL) -> bool:
        """lme4's ``isSingular``: any θ with lower bound 0 (a diagonal of T) below ``tol``."""
        lower = self.design.theta_lower
        return bool(np.any(self.theta[lower == 0] < tol))

    def singular_explanation(self, tol: float = SINGULAR_TOL) -> str:
        """Plain words: which variance is (near) zero or which correlation is ±1, and what to do.
        Empty when the fit is not singular."""
        if not self.is_singular(tol):
            return ""
        vc = self.VarCorr()
        sd = vc.sds.to_numpy()
        g = self.design.group
        scale = max(float(sd.max()), self.sigma)
        parts = []
        zero = [n for n, s in zip(vc.names, sd, strict=True) if s <= 1e-4 * scale]
        for n in zero:
            parts.append(
                f"the variance of '{n}' across {g} groups is estimated as (nearly) zero"
            )
        for a, b, _, r in vc.pairs():
            if a in zero or b in zero or not np.isfinite(r):
                continue
            if abs(r) > 0.999:
                parts.append(
                    f"the correlation between '{a}' and '{b}' across {g} groups is "
                    f"estimated as {r:+.3f} (at the ±1 boundary)"
                )
        if not parts:
            parts.append(
                f"the {len(vc.names)} × {len(vc.names)} covariance matrix of the random effects "
                f"for {g} is (nearly) singular: one effect is a linear combination of the others"
            )
        slopes = [n for n in vc.names if n != "(Intercept)"]
        advice = (
            "The data do not support this random-effects structure. Simplify it: drop the random "
            + (f"slope(s) of {', '.join(repr(s) for s in slopes)} " if slopes else "term ")
            + "(e.g. '(1 | " + g + ")'), or fit uncorrelated effects with '||'; compare the "
            "models with anova(). The fixed effects remain usable; a Bayesian fit with a prior "
            "on the covariance avoids the boundary."
        )
        return "boundary (singular) fit: " + "; ".join(parts) + ". " + advice

    # ------------------------------------------------------------------ printing
    def summary(self, ddf: str = "Satterthwaite", effect_sizes: bool = False) -> FitSummary:
        """lme4 + lmerTest's ``summary(fit)``.

        Parameters
        ----------
        ddf : "Satterthwaite" (lmerTest's default), "Kenward-Roger", "HLM" or "lme4" (no df, p).
        effect_sizes : append the ICC and Nakagawa's R² (:meth:`effect_sizes`).

        Returns
        -------
        FitSummary
            A ``str``: R's printout (R's layout and digits; digits = 4), with the tables as
            data frames in ``.coefficients``, ``.random_effects`` and ``.fit_statistics``.

        Examples
        --------
        >>> import twolevel as tl
        >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
        >>> print(fit.summary().splitlines()[0])
        Linear mixed model fit by REML. t-tests use Satterthwaite's method ['lmerModLmerTest']
        """
        digits = 4
        func, ddf_title = ddf_method(ddf)
        out: list[str] = []
        out += summary_header(
            self.reml, ddf_title if func is not None else None, self.design.formula,
            self.data_name, self.reml_criterion if self.reml else self.criterion,
            self.aic, self.bic, self.loglik, self.nobs - self.npar)
        q, how = self.scaled_residual_quantiles()
        out.append("Scaled residuals: " + how)
        out.append(
            print_named(["Min", "1Q", "Median", "3Q", "Max"],
                        r_format(zapsmall(q, digits + 1), digits))
        )
        out.append("")
        out.append("Random effects:")
        out.append(self.VarCorr().table(digits))
        out.append(
            f"Number of obs: {self.nobs}, groups:  {self.design.group}, {self.ngroups}"
        )
        out.append("")
        out.append("Fixed effects:")
        tab = self.coef_table(ddf)
        out.append(
            print_coefmat(
                tab.to_numpy(), list(tab.index), list(tab.columns), digits=digits,
                has_pvalue=func is not None,
            )
        )
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
            out.append(
                print_char_matrix(
                    cells,
                    [abbreviate(n, 6) for n in names[:-1]],
                    [abbreviate(n, 11) for n in names[1:]],
                    right=False,
                )
            )
        notes = list(self.design.notes)
        if self.is_singular():
            notes.append(self.singular_explanation())
        if not self.converged:
            notes.append(
                f"optimizer did not converge: {self.optsum.status_message}; try optimizer='tight'"
            )
        if notes:
            out.append("")
            out.extend(notes)
        if effect_sizes:
            from twolevel.models.inference.effect_sizes import effect_size_text

            out.append("")
            out.append(effect_size_text(self))
        header = list(out[:3])
        stats_ = {"nobs": self.nobs, "groups": self.ngroups,
                  ("REML criterion" if self.reml else "deviance"): self.criterion,
                  "logLik": self.loglik, "AIC": self.aic, "BIC": self.bic,
                  "df.resid": self.nobs - self.npar, "sigma": self.sigma}
        return FitSummary("\n".join(out), coefficients=tab,
                          random_effects=self.VarCorr().to_frame(),
                          fit_statistics=pd.Series(stats_, name=self.design.formula, dtype=object),
                          header=header, notes=notes)

    def __str__(self) -> str:
        return str(self.summary())

    def _repr_fields(self) -> list[tuple[str, object]]:
        crit = "REML" if self.reml else "deviance"
        return [("family", "gaussian"), ("nobs", self.nobs),
                ("groups", f"{self.design.group}:{self.ngroups}"),
                (crit, f"{self.criterion:.4f}")]

    # ------------------------------------------------------------------ effect sizes, predict
    def effect_sizes(self) -> dict:
        """{"icc", "icc_unadjusted", "r2_marginal", "r2_conditional"} as ``performance::icc`` and
        ``r2_nakagawa`` (:mod:`twolevel.models.inference.effect_sizes`; NaN for a singular fit)."""
        from twolevel.models.inference.effect_sizes import effect_size_dict

        return effect_size_dict(self)

    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False,
                interval: str | None = None, level: float = 0.95, **kwargs):
        """lme4's ``predict`` (:func:`twolevel.models.inference.predict.predict`)."""
        from twolevel.models.inference.predict import predict

        return predict(self, newdata, re_form, allow_new_levels, interval, level, **kwargs)

    def to_frame(self) -> pd.DataFrame:
        """Fixed-effects table with Satterthwaite df and p (one row per coefficient)."""
        return self.coef_table("Satterthwaite")

    def to_dict(self, ddf: str = "Satterthwaite") -> dict:
        """The CLI's JSON object (keys fixed by issue 3)."""
        tab = self.coef_table(ddf)

        def col(name: str) -> dict:
            return {k: float(v) for k, v in tab[name].items()}

        return {
            "formula": self.design.formula,
            "reml": bool(self.reml),
            "nobs": int(self.nobs),
            "ngroups": int(self.ngroups),
            "criterion": float(self.criterion),
            "loglik": float(self.loglik),
            "aic": float(self.aic),
            "bic": float(self.bic),
            "theta": [float(v) for v in self.theta],
            "sigma": float(self.sigma),
            "fixef": col("Estimate"),
            "se": col("Std. Error"),
            "df": col("df"),
            "t": col("t value"),
            "p": col("Pr(>|t|)"),
            "varcorr": self.VarCorr().to_dict(),
            "singular": bool(self.is_singular()),
            "converged": bool(self.converged),
        }
