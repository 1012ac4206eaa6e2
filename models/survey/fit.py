"""Weighted two-level linear mixed models by pseudo-maximum likelihood (PML).

design → weighted per-school statistics (:mod:`.crossprods`) → the profiled log
pseudo-likelihood, a pure function of θ (:mod:`.pml`) → optimizer → frozen
:class:`WeightedLmerFit` with robust (sandwich) standard errors. ``tl.lmer(..., weights=...)``
dispatches here. See ``docs/survey.md``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.models.design import Design, make_design
from twolevel.models.design.formula import parse_formula
from twolevel.models.lmm.optimize import OptSummary, optimize_theta
from twolevel.models.lmm.results import VarCorr
from twolevel.models.survey.crossprods import (
    WeightedCrossprods,
    checked_weighted_crossprods,
    weighted_group_crossprods,
)
from twolevel.models.survey.pml import (
    beta_sandwich,
    conditional_modes,
    profile_theta,
    profiled_pseudo_loglik,
    profiled_pseudo_loglik_gradient,
    varcomp_sandwich,
)
from twolevel.models.survey.weights import (
    LEVEL2_RTOL,
    SurveyWeights,
    check_weight_column,
    check_weights_spec,
    weights_by_codes,
)

__all__ = ["WeightedLmerFit", "lmer_weighted", "complete_rows", "REML_REFUSED"]

REML_REFUSED = (
    "REML with sampling weights is not defined: the restricted likelihood is not a sum of "
    "independent school contributions, so it has no design-consistent weighted form and no "
    "sandwich variance (WeMix, Stata mixed with pweights and Mplus fit ML only); "
    "use REML=False (pseudo-maximum likelihood)"
)


def complete_rows(formula: str, data: pd.DataFrame, extra: tuple[str, ...] = ()) -> np.ndarray:
    """Mask of the rows with every variable of the model (and ``extra`` columns) present and
    finite: the rows ``make_design`` keeps (lme4's ``na.omit``)."""
    from twolevel.models.design.matrices import _variables

    parsed = parse_formula(formula)
    exprs = [parsed.response, parsed.fixed] + [b.lhs for b in parsed.bars]
    cols = data.columns
    used = [v for e in exprs for v in _variables(e, cols)]
    used += [b.group for b in parsed.bars] + [c for c in extra if c in cols]
    ok = np.ones(len(data), dtype=bool)
    for c in dict.fromkeys(used):
        s = data[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            ok &= np.isfinite(s.to_numpy(dtype=float, na_value=np.nan))
        else:
            ok &= ~s.isna().to_numpy()
    return ok


def _vc_pairs(design: Design) -> list[tuple[int, int]]:
    """(i, j) of the covariances within each term, lme4's order (``VarCorr.pairs``)."""
    out = []
    for term in design.terms:
        cols = term.columns
        for a in range(len(cols)):
            for b in range(a + 1, len(cols)):
                out.append((cols[a], cols[b]))
    return out


@dataclass(frozen=True, repr=False)
class WeightedLmerFit:
    """A pseudo-maximum-likelihood fit with sampling weights at both levels.

    Fields
    ------
    design : the model matrices of the rows kept.  crossprods : the weighted statistics
    (of the response minus X·``shift``: β = β̂(statistics) + shift; the fits here sum the
    response itself, shift = 0, in the one pass over the rows).  weights : the
    :class:`~twolevel.models.survey.weights.SurveyWeights`.  theta : θ̂.  optsum : the optimizer.
    data_name : for ``summary()``.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("sleepstudy").assign(w1=1.0, w2=1.0)   # unit weights: plain ML
    >>> w = tl.lmer("Reaction ~ Days + (1 | Subject)", d, weights=("w1", "w2"), REML=False)
    >>> m = tl.lmer("Reaction ~ Days + (1 | Subject)", d, REML=False)
    >>> abs(w.loglik - m.logLik()) < 1e-6
    True
    """

    design: Design
    crossprods: WeightedCrossprods
    weights: SurveyWeights
    theta: np.ndarray
    shift: np.ndarray
    optsum: OptSummary
    data_name: str = "data"
    notes: tuple[str, ...] = field(default=())
    pseudo_likelihood: bool = True
    reml: bool = False

    # ------------------------------------------------------------------ estimates
    @cached_property
    def _profile(self) -> tuple[np.ndarray, float, float]:
        return profile_theta(self.crossprods, self.design.theta_to_T(self.theta))

    @property
    def loglik(self) -> float:
        """The log pseudo-likelihood ℓ_PL at the estimate (scales with Σw: not for AIC/LRT)."""
        return float(self._profile[2])

    @property
    def sigma(self) -> float:
        """σ̂ (residual SD)."""
        return math.sqrt(self._profile[1])

    @property
    def beta(self) -> np.ndarray:
        """β̂."""
        return self._profile[0] + self.shift

    @property
    def nobs(self) -> int:
        """Rows used."""
        return int(self.design.n)

    @property
    def ngroups(self) -> int:
        """Schools used."""
        return int(self.design.n_groups)

    @property
    def converged(self) -> bool:
        """Whether the optimizer reported convergence."""
        return bool(self.optsum.converged)

    def fixef(self) -> pd.Series:
        """Fixed effects β̂."""
        return pd.Series(self.beta, index=list(self.design.x_names), name="Estimate")

    @cached_property
    def _sandwich(self) -> tuple[np.ndarray, np.ndarray]:
        return beta_sandwich(self.crossprods, self.design.theta_to_T(self.theta),
                             self._profile[0], self._profile[1])

    def vcov(self, robust: bool = True) -> pd.DataFrame:
        """Covariance of β̂: the cluster-robust sandwich A⁻¹BA⁻¹ (default; WeMix's CR-0 with
        J/(J−1), ≈ Stata's) or the model-based A⁻¹ (wrong for survey weights)."""
        V = self._sandwich[0] if robust else self._sandwich[1]
        names = list(self.design.x_names)
        return pd.DataFrame(V, index=names, columns=names)

    def se(self) -> pd.Series:
        """Robust standard errors of β̂."""
        return pd.Series(np.sqrt(np.diag(self.vcov().to_numpy())),
                         index=list(self.design.x_names), name="Std. Error")

    def coef_table(self) -> pd.DataFrame:
        """Estimate, robust Std. Error, z value, Pr(>|z|) (normal reference, as Stata)."""
        est, se = self.fixef(), self.se()
        z = est / se
        return pd.DataFrame({"Estimate": est, "Std. Error": se, "z value": z,
                             "Pr(>|z|)": 2 * stats.norm.sf(np.abs(z))})

    def VarCorr(self) -> VarCorr:
        """Variance components Σ = σ̂²ΛΛᵀ and σ̂²."""
        T = self.design.theta_to_T(self.theta)
        s2 = self._profile[1]
        return VarCorr(group=self.design.group, names=self.design.z_names,
                       terms=tuple(t.names for t in self.design.terms), cov=s2 * (T @ T.T),
                       residual=s2)

    @cached_property
    def _vc_cov(self) -> np.ndarray:
        return varcomp_sandwich(self.crossprods, self.theta, self._profile[0], self._profile[1],
                                self.design.theta_to_T, _vc_pairs(self.design))

    def varcorr_se(self) -> dict:
        """Sandwich SEs of the variance components (delta method, WeMix's way):
        {"variances", "covariances", "residual"} keyed like ``VarCorr().to_dict()``."""
        se = np.sqrt(np.maximum(np.diag(self._vc_cov), 0.0))
        names = self.design.z_names
        q = len(names)
        pairs = _vc_pairs(self.design)
        return {
            "variances": {names[i]: float(se[i]) for i in range(q)},
            "covariances": {f"{names[i]}:{names[j]}": float(se[q + k])
                            for k, (i, j) in enumerate(pairs)},
            "residual": float(se[-1]),
        }

    # ------------------------------------------------------------------ school effects
    @cached_property
    def _modes(self) -> tuple[np.ndarray, np.ndarray]:
        return conditional_modes(self.crossprods, self.design.theta_to_T(self.theta),
                                 self._profile[0], self._profile[1])

    def ranef(self, cond_var: bool = True) -> pd.DataFrame:
        """Conditional modes of the school effects (given the a-weighted data) and, with
        ``cond_var``, their conditional SDs ``condsd_<name>``."""
        names = list(self.design.z_names)
        u, V = self._modes
        df = pd.DataFrame(u, index=pd.Index(self.design.group_levels, name=self.design.group),
                          columns=names)
        if cond_var:
            for i, n in enumerate(names):
                df[f"condsd_{n}"] = np.sqrt(V[:, i, i])
        return df

    # ------------------------------------------------------------------ tests
    def wald_test(self, L, rhs=0.0) -> dict:
        """Wald test of Lβ = rhs with the robust covariance: W = (Lβ̂−r)ᵀ(LVLᵀ)⁻¹(Lβ̂−r) ~ χ²_k.

        ``L`` is a (k, p) matrix, a length-p vector, or a list of fixed-effect names (each
        tested = 0). Returns {"statistic", "df", "p_value", "F", "df_den", "p_value_F"} where
        F = W/k on (k, J − 1) df (the design-based small-sample version)."""
        names = list(self.design.x_names)
        if isinstance(L, (list, tuple)) and L and all(isinstance(v, str) for v in L):
            missing = [v for v in L if v not in names]
            if missing:
                raise TwolevelError(f"fixed effect(s) {', '.join(missing)} not in the model; "
                                    f"available: {', '.join(names)}")
            L = np.eye(len(names))[[names.index(v) for v in L]]
        L = np.atleast_2d(np.asarray(L, dtype=float))
        if L.shape[1] != len(names):
            raise TwolevelError(f"L must have {len(names)} columns (one per fixed effect), "
                                f"got {L.shape[1]}")
        d = L @ self.beta - np.broadcast_to(np.asarray(rhs, dtype=float), (L.shape[0],))
        V = L @ self.vcov().to_numpy() @ L.T
        W = float(d @ np.linalg.solve(V, d))
        k = L.shape[0]
        df_den = self.ngroups - 1
        return {"statistic": W, "df": k, "p_value": float(stats.chi2.sf(W, k)),
                "F": W / k, "df_den": df_den, "p_value_F": float(stats.f.sf(W / k, k, df_den))}

    def anova(self, *others):
        """Refused: a likelihood-ratio test needs likelihoods; a pseudo-likelihood is not one."""
        raise TwolevelError(LRT_REFUSED)

    # ------------------------------------------------------------------ output
    def to_frame(self) -> pd.DataFrame:
        """The coefficient table (robust SEs)."""
        return self.coef_table()

    def to_dict(self) -> dict:
        """The CLI's JSON object: the keys of an unweighted fit that apply (fixef, se — robust,
        varcorr, loglik — the log pseudo-likelihood, nobs, ngroups, …) plus weights and
        varcorr_se."""
        tab = self.coef_table()

        def col(name: str) -> dict:
            return {k: float(v) for k, v in tab[name].items()}

        return {
            "formula": self.design.formula,
            "reml": False,
            "nobs": self.nobs,
            "ngroups": self.ngroups,
            "loglik": self.loglik,
            "theta": [float(v) for v in self.theta],
            "sigma": self.sigma,
            "fixef": col("Estimate"),
            "se": col("Std. Error"),
            "z": col("z value"),
            "p": col("Pr(>|z|)"),
            "varcorr": self.VarCorr().to_dict(),
            "varcorr_se": self.varcorr_se(),
            "weights": self.weights.to_dict(),
            "converged": self.converged,
        }

    def __repr__(self) -> str:
        from twolevel.models.fit_base import short_repr

        d = self.design
        return short_repr(type(self).__name__, [
            ("weights", "sampling"), ("nobs", d.n), ("groups", f"{d.group}:{d.n_groups}")],
            d.formula)

    def summary(self) -> str:
        """A printout in lme4's layout with the weights, the log pseudo-likelihood, variance
        components with their sandwich SEs and fixed effects with robust SEs."""
        from twolevel.models.rformat import print_coefmat

        w = self.weights
        kind = "conditional" if w.conditional else "unconditional"
        vse = self.varcorr_se()
        vc = self.VarCorr()
        out = [
            "Linear mixed model fit by pseudo-maximum likelihood (sampling weights)",
            f"Formula: {self.design.formula}",
            f"   Data: {self.data_name}",
            f"Weights: level 1 '{w.level1}' ({kind}), level 2 '{w.level2}'; scaling: {w.scaling}",
            "",
            f"log pseudo-likelihood: {self.loglik:.6f}  (not a likelihood: no AIC/BIC/LRT; "
            "use wald_test)",
            "",
            "Random effects (sandwich SEs):",
            f" {'Groups':<10} {'Name':<14} {'Variance':>14} {'Std.Err.':>12}",
        ]
        for n, v in vc.variances.items():
            out.append(f" {self.design.group:<10} {n:<14} {v:>14.6g} {vse['variances'][n]:>12.6g}")
        for a, b, c, _ in vc.pairs():
            key = f"{a}:{b}"
            out.append(f" {'':<10} {key:<14} {c:>14.6g} {vse['covariances'][key]:>12.6g}")
        out.append(f" {'Residual':<10} {'':<14} {vc.residual:>14.6g} {vse['residual']:>12.6g}")
        out.append(f"Number of obs: {self.nobs}, groups:  {self.design.group}, {self.ngroups}")
        out.append("")
        out.append("Fixed effects (cluster-robust SEs):")
        tab = self.coef_table()
        out.append(print_coefmat(tab.to_numpy(), list(tab.index), list(tab.columns), digits=4,
                                 has_pvalue=True))
        notes = list(self.notes)
        if not self.converged:
            notes.append(f"optimizer did not converge ({self.optsum.status_message})")
        if notes:
            out.append("")
            out.extend(notes)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()


LRT_REFUSED = (
    "a likelihood-ratio test of weighted (pseudo-likelihood) fits is not valid: the log "
    "pseudo-likelihood scales with the sum of the weights and its ratio is not chi-squared; "
    "test fixed effects with fit.wald_test([...]) (robust covariance) instead"
)


def _newton_polish(fn, x: np.ndarray, lower: np.ndarray, steps: int = 3) -> np.ndarray:
    """A few Newton steps on the free θ (not on a lower bound) with central-difference
    derivatives (steps 1e-4·max(|θ|, 0.1)), kept only while the criterion does not rise: the
    log pseudo-likelihood scales with Σw (PISA: 10⁷), so BOBYQA and L-BFGS-B stop where the
    criterion's rounding hides the last digits of θ̂."""
    x = np.asarray(x, dtype=float).copy()
    f = fn(x)
    for _ in range(steps):
        free = np.flatnonzero(~(x <= lower))
        if not free.size:
            break
        h = 1e-4 * np.maximum(np.abs(x[free]), 0.1)
        k = free.size
        E = np.zeros((k, x.size))
        E[np.arange(k), free] = h
        fp = [fn(x + E[a]) for a in range(k)]
        fm = [fn(x - E[a]) for a in range(k)]
        g = np.array([(fp[a] - fm[a]) / (2 * h[a]) for a in range(k)])
        H = np.empty((k, k))
        for a in range(k):
            H[a, a] = (fp[a] - 2 * f + fm[a]) / h[a] ** 2
            for b in range(a):
                H[a, b] = H[b, a] = (
                    fn(x + E[a] + E[b]) - fn(x + E[a] - E[b]) - fn(x - E[a] + E[b])
                    + fn(x - E[a] - E[b])) / (4 * h[a] * h[b])
        try:
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.linalg.eigvalsh(H) > 0):
            break
        xn = x.copy()
        xn[free] = np.maximum(x[free] - step, lower[free])
        fnew = fn(xn)
        if not fnew <= f + 1e-14 * abs(f):  # within the criterion's rounding: trust Newton
            break
        x, f = xn, min(f, fnew)
        if np.max(np.abs(step) / np.maximum(np.abs(x[free]), 0.1)) < 1e-8:
            break  # converged: another step would move θ below the criterion's rounding
    return x


def _gradient_polish(grad, x: np.ndarray, lower: np.ndarray, steps: int = 4) -> np.ndarray:
    """Newton steps on the free θ (not on a lower bound) for the root of the analytic gradient
    ``grad`` of ℓ_p (:func:`~twolevel.models.survey.pml.profiled_pseudo_loglik_gradient`).
    The Hessian is formed once, by forward differences of the gradient (steps
    1e-6·max(|θ|, 0.1)), and kept (so each further step costs one gradient); a step is kept
    while it shrinks the scaled gradient. ℓ_p's size Σw (PISA: 10⁷) hides its last digits
    from BOBYQA but not from the gradient, a sum of per-school terms. Stops when a step moves
    θ by < 1e-12 (relative to max(|θ|, 0.1))."""
    x = np.asarray(x, dtype=float).copy()
    free = np.flatnonzero(~(x <= lower))
    g = grad(x)
    if not free.size or not np.all(np.isfinite(g)):
        return x
    scale = np.maximum(np.abs(x[free]), 0.1)
    h = 1e-6 * scale
    k = free.size
    H = np.empty((k, k))
    for a in range(k):
        e = np.zeros_like(x)
        e[free[a]] = h[a]
        H[:, a] = (grad(x + e)[free] - g[free]) / h[a]
    H = 0.5 * (H + H.T)
    try:
        if not np.all(np.linalg.eigvalsh(H) < 0):  # not a maximum's neighbourhood
            return x
    except np.linalg.LinAlgError:
        return x
    for _ in range(steps):
        step = -np.linalg.solve(H, g[free])
        xn = x.copy()
        xn[free] = np.maximum(x[free] + step, lower[free])
        gn = grad(xn)
        if not (np.all(np.isfinite(gn))
                and np.linalg.norm(gn[free] * scale) < np.linalg.norm(g[free] * scale)):
            break
        x, g = xn, gn
        if np.max(np.abs(step) / scale) < 1e-12:
            break
    return x


def lmer_weighted(
    formula: str,
    data: pd.DataFrame,
    weights,
    conditional_weights: bool = False,
    weight_scaling: str = "none",
    REML: bool = False,
    data_name: str = "data",
    engine: str = "auto",
    memory_limit: str | None = None,
    scheduler=None,
) -> WeightedLmerFit:
    """Fit a two-level linear mixed model with sampling weights by pseudo-maximum likelihood.

    Parameters
    ----------
    formula : lme4 formula with one grouping factor.
    data : the rows: a pandas frame, or (engines duckdb/dask) Parquet/CSV paths or a
        ``dask.dataframe``, read by SQL (:mod:`twolevel.models.survey.scale`).
    weights : (level-1 column, level-2 column), level 1 first as WeMix; ``None`` for a level
        of unit weights.
    conditional_weights : level-1 weights conditional on the school (Stata, Mplus) instead of
        unconditional (WeMix's default: the level-1 column is divided by the school weight).
    weight_scaling : level-1 scaling within schools: ``none``, ``size`` or ``effective``.
    REML : must be False (REML with sampling weights is refused).
    data_name : the name printed in ``summary()``.
    engine, memory_limit, scheduler : as ``lmer`` (where the weighted sums are computed).

    Returns
    -------
    WeightedLmerFit

    Raises
    ------
    TwolevelError
        REML=True with sampling weights.
    DataError
        A bad weight column (missing, non-numeric, negative, infinite), a school weight that
        varies within a school.

    Examples
    --------
    >>> import twolevel as tl                                               # doctest: +SKIP
    >>> fit = tl.lmer("pv1math ~ escs + (1 | schoolid)", pisa,
    ...               weights=("w_fstuwt", "w_fschwt"), REML=False)         # doctest: +SKIP
    >>> print(fit.summary())                                                # doctest: +SKIP
    """
    if REML:
        raise TwolevelError(REML_REFUSED)
    from twolevel.models.design.sources import choose_engine

    if choose_engine(data, engine, scheduler) != "memory":
        from twolevel.models.survey.scale import weighted_statistics_at_scale

        l1, l2 = check_weights_spec(weights, weight_scaling)
        design, cp, sw, cp0 = weighted_statistics_at_scale(
            formula, data, engine, (l1, l2), conditional=conditional_weights,
            scaling=weight_scaling, memory_limit=memory_limit, scheduler=scheduler)
        if data_name == "data":
            data_name = design.source
        return _fit_statistics(design, cp, sw, np.zeros(cp.p), design.theta_start(cp0),
                               list(design.notes) + list(sw.notes), data_name)
    if not isinstance(data, pd.DataFrame):
        data = data.compute() if hasattr(data, "compute") else data
    parsed = parse_formula(formula)
    groups = {b.group for b in parsed.bars}
    if len(groups) != 1:
        raise FormulaError(f"formula '{formula}' needs exactly one grouping factor for a "
                           "weighted two-level fit")
    group = next(iter(groups))
    if group not in data.columns:
        raise DataError(f"grouping column '{group}' is not in the data; available columns: "
                        f"{', '.join(map(str, data.columns))}")
    l1, l2 = check_weights_spec(weights, weight_scaling)
    n = len(data)
    # the columns exist and are numeric; their values are checked in the pass over the rows
    w1 = check_weight_column(data, l1, "level-1", values=False) if l1 is not None else np.ones(n)
    w2 = check_weight_column(data, l2, "level-2", values=False) if l2 is not None else np.ones(n)
    design = make_design(formula, data)  # complete rows (lme4's na.omit)
    fast = None
    if not design.n_na_dropped:
        # ONE pass: weight checks, w_j, a_ij and the weighted per-school sums together
        fast = checked_weighted_crossprods(
            design.Z, design.X, design.y, design.group_index, design.n_groups, w1, w2,
            conditional_weights, weight_scaling, LEVEL2_RTOL)
    if fast is not None:
        cp, a = fast
        sw = SurveyWeights(level1=l1, level2=l2, conditional=bool(conditional_weights),
                           scaling=weight_scaling, keep=np.ones(n, dtype=bool), a=a,
                           w_school=pd.Series(cp.w, index=np.asarray(design.group_levels),
                                              name=l2),
                           n_zero_rows=0, n_zero_schools=0)
        return _fit_statistics(design, cp, sw, np.zeros(cp.p), design.theta_start(),
                               list(design.notes), data_name)
    # a bad or zero weight, or rows dropped for missing values: the row-wise checks name the
    # problem, or drop the rows and schools with weight 0
    if l1 is not None:
        w1 = check_weight_column(data, l1, "level-1")
    if l2 is not None:
        w2 = check_weight_column(data, l2, "level-2")
    if design.n_na_dropped:
        cc = complete_rows(formula, data)
        w1, w2 = w1[cc], w2[cc]
    sw = weights_by_codes(design.group_index, np.asarray(design.group_levels), w1, w2,
                          group=group, l1=l1, l2=l2, conditional=conditional_weights,
                          scaling=weight_scaling)
    design_notes = design.notes
    if not sw.keep.all():  # rows or schools with weight 0: the design of the rest
        rows = np.flatnonzero(complete_rows(formula, data))[sw.keep] if design.n_na_dropped \
            else np.flatnonzero(sw.keep)
        design = make_design(formula, data.iloc[rows])
    cp = weighted_group_crossprods(design.Z, design.X, design.y, design.group_index, sw.a,
                                   sw.w_school.to_numpy(dtype=float))
    return _fit_statistics(design, cp, sw, np.zeros(cp.p), design.theta_start(),
                           list(design_notes) + list(sw.notes), data_name)


def _fit_statistics(design, cp: WeightedCrossprods, sw: SurveyWeights, gamma: np.ndarray,
                    start: np.ndarray, notes: list[str], data_name: str) -> WeightedLmerFit:
    """Optimizer → frozen fit, from the weighted statistics (any engine)."""
    if cp.n_groups < 2:
        raise DataError(f"only {cp.n_groups} '{design.group}' group with a positive weight: "
                        "the sandwich needs at least 2 schools")

    # BOBYQA minimises −2ℓ_p·n/N_w: the deviance's size for n unit-weight rows, so that lme4's
    # absolute tolerances (ftol_abs 1e-8) mean what they mean for the unweighted fit
    unit = float(np.sum(cp.n)) / cp.n_weighted

    def fn(th: np.ndarray) -> float:
        ll = profiled_pseudo_loglik(th, cp, design.theta_to_T)
        return -2.0 * unit * ll if math.isfinite(ll) else math.inf

    def grad(th: np.ndarray) -> np.ndarray:
        return profiled_pseudo_loglik_gradient(th, cp, design.theta_to_T)

    opt = optimize_theta(fn, start, design.theta_lower, mode="lme4",
                         gradient=lambda th: -2.0 * unit * grad(th))
    theta = _gradient_polish(grad, np.asarray(opt.theta, dtype=float), design.theta_lower)
    ll = profiled_pseudo_loglik(theta, cp, design.theta_to_T)
    opt = dataclasses.replace(
        opt, theta=theta, fmin=-2.0 * ll, lme4_fmin=opt.lme4_fmin / unit,
        at_lower=tuple(bool(v) for v in (theta <= design.theta_lower)),
        optimizer=opt.optimizer + " on −2ℓ_p·n/N_w, then Newton on the analytic gradient",
        gradient_fn=lambda: -2.0 * grad(theta))
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return WeightedLmerFit(design=design, crossprods=cp, weights=sw,
                           theta=theta, shift=gamma, optsum=opt,
                           data_name=data_name, notes=tuple(notes))
