"""What HLM (Raudenbush & Bryk) prints that lme4 does not, computed from a two-level fit.

All quantities use the fitted model's estimates (γ̂, τ̂ = σ̂²TTᵀ, σ̂²) and the per-group
cross-products A_j = Z_jᵀZ_j, B_j = Z_jᵀX_j, c_j = Z_jᵀy_j. With an REML fit they reproduce the
numbers R&B (2002, ch. 4) print for HSB (`mAch ~ 1 + cses + (1 + cses | school)`): reliabilities
.9076 / .2637, χ² 1771.01 / 213.46 on 159 df, plausible ranges 6.86–18.41 / 0.56–3.83; the null
model's ICC .1804 comes from the REML fit of ``mAch ~ 1 + (1 | school)`` (τ00 8.6140, σ² 39.1483).
So HLM's REML estimates are lme4's REML estimates; the tests pin that down.

Per-unit OLS (the part HLM's formulas need, from the cross-products; the lecture's OLS table
    itself, with per-school SEs, is ``twolevel.models.tables.ols.group_ols``)
    β̂_j = A_j⁻¹c_j, the OLS regression of y on the level-1 covariates of the random coefficients
    (the columns of Z) within unit j; V_j = σ̂² A_j⁻¹ and v_qqj = [V_j]_qq. A unit has "sufficient
    data" when n_j > q and A_j has full rank (condition number < 1e10). Level-1 covariates with a
    fixed (non-random) coefficient are not part of this per-unit regression.

Coefficient equations (HLM's level-2 model)
    Each fixed-effect column belongs to the equation of one level-1 coefficient β_q: a column
    constant within every group belongs to the intercept's equation (a level-2 predictor, or the
    intercept itself); a column equal to z_q · w_j (w constant within groups) belongs to β_q's
    equation (a cross-level interaction with w, or γ_q0 itself when w ≡ 1). Other columns are
    level-1
    covariates with a fixed coefficient.

Degrees of freedom, HLM's rule (``ddf="HLM"``)
    For every γ of a randomly varying coefficient β_q: df = J − S_q − 1, with S_q the number of
    level-2 predictors in β_q's equation (R&B 2002, §3.5; HLM's manual). For a level-1 covariate
    whose coefficient does not vary (no random effect): df = N − p (our choice; HLM prints an
    N-based
    df such as 1998 for 2000 pupils and 2 fixed effects, which this reproduces for that case).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import TwolevelError
from twolevel.models.design import Design, GroupCrossprods

__all__ = [
    "CoefficientEquation",
    "UnitOLS",
    "HLMStatistics",
    "chi2_tau",
    "cluster_robust_vcov",
    "coefficient_equations",
    "unit_ols",
    "ddf_hlm",
    "hlm_ddf",
    "hlm_statistics",
    "hlm_statistics_fit",
    "icc",
    "plausible_range",
    "precision_weights",
    "proportion_reduction",
    "reliability",
    "slope_precision_weights",
]

_Z975 = float(stats.norm.ppf(0.975))
_COND_MAX = 1e10


# --------------------------------------------------------------------------- per-unit OLS


@dataclass(frozen=True)
class UnitOLS:
    """Per-unit OLS of y on the random coefficients' covariates (the columns of Z).

    Fields
    ------
    names : the coefficients (``Design.z_names``).
    n : (J,) unit sizes n_j.
    beta : (J, q) OLS estimates β̂_j = A_j⁻¹c_j (NaN for units without sufficient data).
    XtX_inv : (J, q, q) A_j⁻¹ = (X_jᵀX_j)⁻¹ (NaN likewise).
    sufficient : (J,) n_j > q and A_j of full rank.
    """

    names: tuple[str, ...]
    n: np.ndarray
    beta: np.ndarray
    XtX_inv: np.ndarray
    sufficient: np.ndarray


def unit_ols(design: Design, cp: GroupCrossprods) -> UnitOLS:
    """Per-unit OLS from the cross-products: β̂_j = A_j⁻¹c_j and (X_jᵀX_j)⁻¹ = A_j⁻¹, with
    X_j = Z_j (the level-1 design of the randomly varying coefficients)."""
    n = design.group_sizes
    q = design.q
    cond = np.linalg.cond(cp.A)
    ok = (n > q) & np.isfinite(cond) & (cond < _COND_MAX)
    inv = np.full(cp.A.shape, np.nan)
    beta = np.full(cp.c.shape, np.nan)
    if ok.any():
        inv[ok] = np.linalg.inv(cp.A[ok])
        beta[ok] = np.einsum("jab,jb->ja", inv[ok], cp.c[ok])
    return UnitOLS(names=design.z_names, n=n, beta=beta, XtX_inv=inv, sufficient=ok)


# --------------------------------------------------------------------- coefficient equations


@dataclass(frozen=True)
class CoefficientEquation:
    """One fixed-effect column's place in HLM's level-2 model.

    Fields
    ------
    column : name of the fixed effect.
    coefficient : the level-1 coefficient β_q whose equation holds it (a ``z_names`` entry), or the
        column itself for a level-1 covariate whose coefficient is fixed.
    random : whether β_q varies randomly across groups.
    level2 : (J,) the multiplier w_j of the column in β_q's equation (1 for γ_q0 itself).
    is_level2_predictor : False for γ_q0 (w ≡ 1), True for a level-2 predictor of β_q.
    """

    column: str
    coefficient: str
    random: bool
    level2: np.ndarray
    is_level2_predictor: bool


def _within_constant(x: np.ndarray, g: np.ndarray, J: int) -> tuple[bool, np.ndarray]:
    cnt = np.bincount(g, minlength=J)
    mean = np.bincount(g, weights=x, minlength=J) / np.maximum(cnt, 1)
    scale = max(float(np.max(np.abs(x))), 1.0)
    return bool(np.max(np.abs(x - mean[g])) <= 1e-9 * scale), mean


def coefficient_equations(design: Design) -> list[CoefficientEquation]:
    """Assign every fixed-effect column to the equation of a level-1 coefficient (see module
    docstring): group-constant columns → intercept; z_q·w_j → β_q; otherwise a fixed level-1
    coefficient."""
    moments = getattr(design, "group_moments", None)
    if moments is not None:  # statistics-only design (engine duckdb/dask)
        return _coefficient_equations_from_moments(design, moments)
    X, Z, g, J = design.X, design.Z, design.group_index, design.n_groups
    z_names = design.z_names
    icpt_random = "(Intercept)" in z_names
    out: list[CoefficientEquation] = []
    for k, name in enumerate(design.x_names):
        x = X[:, k]
        const, mean = _within_constant(x, g, J)
        if const:
            pred = not np.allclose(mean, 1.0)
            out.append(CoefficientEquation(name, "(Intercept)", icpt_random, mean, pred))
            continue
        found = None
        for q, zn in enumerate(z_names):
            z = Z[:, q]
            if zn == "(Intercept)":
                continue
            zz = np.bincount(g, weights=z * z, minlength=J)
            w = np.bincount(g, weights=x * z, minlength=J) / np.where(zz > 0, zz, 1.0)
            scale = max(float(np.max(np.abs(x))), 1.0)
            if np.max(np.abs(x - z * w[g])) <= 1e-9 * scale:
                found = CoefficientEquation(name, zn, True, w, not np.allclose(w, 1.0))
                break
        if found is None:
            found = CoefficientEquation(name, name, False, np.ones(J), False)
        out.append(found)
    return out


def _coefficient_equations_from_moments(design, m) -> list[CoefficientEquation]:
    """:func:`coefficient_equations` from per-group sums (no rows): x is constant within group j
    when Σ(x − x̄_j)² = Σx² − (Σx)²/n_j ≤ 1e-12·Σx², and x = z_q·w_j when
    Σ(x − z w_j)² = Σx² − (Σxz)²/Σz² ≤ 1e-12·Σx² with w_j = Σxz/Σz² (every group)."""
    nj = np.maximum(design.group_sizes.astype(float), 1.0)
    out: list[CoefficientEquation] = []
    icpt_random = "(Intercept)" in design.z_names
    J = design.n_groups
    for k, name in enumerate(design.x_names):
        sxx = m.XtX[:, k, k]
        tol = 1e-12 * np.maximum(sxx, 1e-300)
        mean = m.Xsum[:, k] / nj
        if np.all(sxx - m.Xsum[:, k] ** 2 / nj <= tol):
            out.append(CoefficientEquation(name, "(Intercept)", icpt_random, mean,
                                           not np.allclose(mean, 1.0)))
            continue
        found = None
        for q, zn in enumerate(design.z_names):
            if zn == "(Intercept)":
                continue
            zz = m.Zsq[:, q]
            xz = m.ZX[:, q, k]
            w = xz / np.where(zz > 0, zz, 1.0)
            if np.all(sxx - xz * w <= tol):
                found = CoefficientEquation(name, zn, True, w, not np.allclose(w, 1.0))
                break
        out.append(found or CoefficientEquation(name, name, False, np.ones(J), False))
    return out


def hlm_ddf(design: Design) -> np.ndarray:
    """HLM's denominator df of each fixed effect: J − S_q − 1 for the γ's of a randomly varying
    coefficient β_q with S_q level-2 predictors in its equation, N − p for a level-1 covariate
    whose coefficient is fixed (module docstring)."""
    eqs = coefficient_equations(design)
    J, N, p = design.n_groups, design.n, design.p
    S: dict[str, int] = {}
    for e in eqs:
        S[e.coefficient] = S.get(e.coefficient, 0) + int(e.is_level2_predictor)
    return np.array(
        [float(J - S[e.coefficient] - 1) if e.random else float(N - p) for e in eqs]
    )


def _predicted_coefficients(design: Design, beta: np.ndarray) -> np.ndarray:
    """(J, q) the level-2 model's prediction of each unit's random coefficients,
    β_qj = Σ_{c ∈ eq. q} γ̂_c w_cj."""
    eqs = coefficient_equations(design)
    pred = np.zeros((design.n_groups, design.q))
    for c, e in enumerate(eqs):
        if e.random and e.coefficient in design.z_names:
            pred[:, design.z_names.index(e.coefficient)] += beta[c] * e.level2
    return pred


def _level2_count(design: Design) -> dict[str, int]:
    S = {zn: 0 for zn in design.z_names}
    for e in coefficient_equations(design):
        if e.coefficient in S:
            S[e.coefficient] += int(e.is_level2_predictor)
    return S


# ------------------------------------------------------------------------- the statistics


def reliability(tau_qq: float, v_qq: np.ndarray) -> float:
    """Mean reliability of a random coefficient (R&B 2002, eq. 3.58):
    λ_q = (1/J') Σ_j τ_qq / (τ_qq + v_qqj), v_qqj = σ̂²[(X_jᵀX_j)⁻¹]_qq, over units with data."""
    v = np.asarray(v_qq, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.mean(tau_qq / (tau_qq + v)))


def chi2_tau(
    beta_ols: np.ndarray, predicted: np.ndarray, v_qq: np.ndarray, n_level2: int
) -> tuple[float, int, float]:
    """HLM's χ² test of H0: τ_qq = 0 from the per-unit OLS estimates (R&B 2002, eq. 3.103):
    χ² = Σ_j (β̂_qj − Σ_s γ̂_qs W_sj)² / v_qqj over the J' units with sufficient data,
    df = J' − S_q − 1; p = P(χ²_df > χ²). Returns (χ², df, p)."""
    b, pr, v = (np.asarray(a, dtype=float) for a in (beta_ols, predicted, v_qq))
    ok = np.isfinite(b) & np.isfinite(v)
    chisq = float(np.sum((b[ok] - pr[ok]) ** 2 / v[ok]))
    df = int(ok.sum()) - n_level2 - 1
    return chisq, df, float(stats.chi2.sf(chisq, df))


def plausible_range(gamma: float, tau_qq: float, level: float = 0.95) -> tuple[float, float]:
    """Range of plausible values of a random coefficient: γ̂ ± z_{(1+level)/2}·√τ_qq
    (R&B 2002, ch. 4; 1.96 for 95%)."""
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    half = z * float(np.sqrt(tau_qq))
    return float(gamma - half), float(gamma + half)


def icc(tau00: float, sigma2: float) -> float:
    """Intraclass correlation of the null model: ρ = τ00 / (τ00 + σ²)."""
    return float(tau00 / (tau00 + sigma2))


def proportion_reduction(tau_base: float, tau_conditional: float) -> float:
    """Proportion reduction in a variance component between a base and a conditional model:
    (τ_base − τ_cond) / τ_base (R&B 2002, eq. 4.12). Negative when the component grew."""
    if tau_base <= 0:
        raise TwolevelError(
            f"proportion reduction in variance needs a positive base variance, got {tau_base:g}: "
            "the base model's variance component is zero (a singular fit)"
        )
    return float((tau_base - tau_conditional) / tau_base)


def precision_weights(tau00: float, sigma2: float, n: np.ndarray) -> np.ndarray:
    """Precision of each unit's mean as an estimate of its intercept: 1 / (τ00 + σ²/n_j)."""
    return 1.0 / (tau00 + sigma2 / np.asarray(n, dtype=float))


def slope_precision_weights(tau11: float, sigma2: float, ss_x: np.ndarray) -> np.ndarray:
    """Precision of each unit's OLS slope: 1 / (τ11 + σ²/Σ_i(X_ij − X̄_j)²)."""
    return 1.0 / (tau11 + sigma2 / np.asarray(ss_x, dtype=float))


def cluster_robust_vcov(
    design: Design,
    cp: GroupCrossprods,
    theta: np.ndarray,
    sigma: float,
    beta: np.ndarray,
    kind: str = "CR0",
) -> np.ndarray:
    """Cluster-robust (sandwich, clustered by group) covariance of the GLS/REML β̂.

    V_R = c · Φ [Σ_j X_jᵀV_j⁻¹e_j e_jᵀV_j⁻¹X_j] Φ, with Φ = (XᵀV⁻¹X)⁻¹ the model-based vcov,
    e_j = y_j − X_jβ̂ the marginal residuals, V_j = σ̂²(I + Z_jTTᵀZ_jᵀ) and, by Woodbury,
    X_jᵀV_j⁻¹e_j = σ̂⁻²(X_jᵀe_j − B_jᵀH_jZ_jᵀe_j), H_j = T(TᵀA_jT + I)⁻¹Tᵀ. The factor c:

    * ``"CR0"``: 1 (Huber–White / Liang–Zeger; what HLM prints as "robust standard errors");
    * ``"CR1"``: J/(J − 1);
    * ``"CR1S"``: J(N − 1)/((J − 1)(N − p)) (Stata's small-sample factor).
    """
    factors = {"CR0": None, "CR1": None, "CR1S": None}
    if kind not in factors:
        raise TwolevelError(
            f"unknown cluster-robust type '{kind}': use one of {', '.join(factors)}"
        )
    J, q, p = cp.B.shape
    N = design.n
    T = design.theta_to_T(np.asarray(theta, dtype=float))
    s2 = float(sigma) ** 2
    M = np.matmul(np.matmul(T.T, cp.A), T) + np.eye(q)
    H = np.matmul(np.matmul(T, np.linalg.inv(M)), T.T)
    moments = getattr(design, "group_moments", None)
    if moments is not None:  # X_jᵀe_j = X_jᵀy_j − X_jᵀX_jβ from per-group sums
        Xe = moments.Xty - np.einsum("jkl,l->jk", moments.XtX, beta)
    else:
        e = design.y - design.X @ beta
        g = design.group_index
        Xe = np.stack([np.bincount(g, weights=design.X[:, k] * e, minlength=J)
                       for k in range(p)], 1)
    Ze = cp.c - np.einsum("jqp,p->jq", cp.B, beta)
    s = (Xe - np.einsum("jqp,jq->jp", cp.B, np.einsum("jab,jb->ja", H, Ze))) / s2
    meat = s.T @ s
    Sxx = (cp.XtX - np.einsum("jqa,jqb->ab", cp.B, np.matmul(H, cp.B))) / s2
    Phi = np.linalg.inv(Sxx)
    c = {"CR0": 1.0, "CR1": J / (J - 1.0), "CR1S": J * (N - 1.0) / ((J - 1.0) * (N - p))}[kind]
    V = c * Phi @ meat @ Phi
    return 0.5 * (V + V.T)


# ------------------------------------------------------------------------ all in one table


@dataclass(frozen=True)
class HLMStatistics:
    """HLM's extra output for a fitted two-level model.

    Fields
    ------
    coefficients : names of the random coefficients (``z_names``).
    gamma : the fixed effect γ_q0 of each random coefficient (NaN if it has none).
    tau : (q, q) τ̂ = σ̂²TTᵀ.  sigma2 : σ̂².
    reliability : λ_q per coefficient.
    chi2 : {name: (χ², df, p)} HLM's test of τ_qq = 0.
    plausible : {name: (lo, hi)} 95% plausible-value range of β_q (coefficients without level-2
        predictors only: otherwise γ_q0 is the value at w = 0, reported all the same).
    n_sufficient : J', units with sufficient data for the per-unit OLS.
    robust_se : CR0 cluster-robust SEs of the fixed effects.  model_se : model-based SEs.
    hlm_df : HLM's df of each fixed effect.  x_names : fixed-effect names.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> h = tl.hlm_statistics_fit(tl.lmer("g1rscore ~ famsesc + (1 | schid)", d))
    >>> type(h).__name__
    'HLMStatistics'
    """

    coefficients: tuple[str, ...]
    gamma: np.ndarray
    tau: np.ndarray
    sigma2: float
    reliability: np.ndarray
    chi2: dict[str, tuple[float, int, float]]
    plausible: dict[str, tuple[float, float]]
    n_sufficient: int
    x_names: tuple[str, ...]
    model_se: np.ndarray
    robust_se: np.ndarray
    hlm_df: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """One row per random coefficient: τ_qq, reliability, χ², df, p, plausible range."""
        rows = []
        for i, name in enumerate(self.coefficients):
            c, df, p = self.chi2[name]
            lo, hi = self.plausible[name]
            rows.append({
                "coefficient": name, "gamma": self.gamma[i], "tau": self.tau[i, i],
                "sd": float(np.sqrt(self.tau[i, i])), "reliability": self.reliability[i],
                "chisq": c, "df": df, "p": p, "plausible_lo": lo, "plausible_hi": hi,
            })
        return pd.DataFrame(rows)

    def fixed_frame(self) -> pd.DataFrame:
        """Fixed effects with model-based and cluster-robust (CR0) SEs and HLM's df."""
        return pd.DataFrame(
            {"model_se": self.model_se, "robust_se": self.robust_se, "hlm_df": self.hlm_df},
            index=pd.Index(self.x_names, name="term"),
        )

    def summary(self) -> str:
        """HLM-style text: reliabilities, variance-component χ² tests, plausible ranges."""
        lines = [
            " Random level-1 coefficient   Reliability estimate",
            " " + "-" * 50,
        ]
        for i, name in enumerate(self.coefficients):
            lines.append(f"  {name:<28}{self.reliability[i]:>10.4f}")
        lines += [
            "",
            f" Final estimation of variance components (χ² from the OLS estimates of "
            f"{self.n_sufficient} units)",
            f"  {'coefficient':<16}{'SD':>9}{'variance':>11}{'df':>6}{'chi-square':>12}{'p':>10}",
        ]
        for i, name in enumerate(self.coefficients):
            c, df, p = self.chi2[name]
            lines.append(
                f"  {name:<16}{np.sqrt(self.tau[i, i]):>9.4f}{self.tau[i, i]:>11.4f}{df:>6d}"
                f"{c:>12.2f}{_fmt_p(p):>10}"
            )
        lines.append(f"  {'level-1, r':<16}{np.sqrt(self.sigma2):>9.4f}{self.sigma2:>11.4f}")
        lines += ["", " 95% plausible-value range of each random coefficient (γ ± 1.96√τ)"]
        for name in self.coefficients:
            lo, hi = self.plausible[name]
            lines.append(f"  {name:<16}{lo:>10.2f} to {hi:.2f}")
        lines += ["", " Fixed effects: model-based and cluster-robust (CR0) standard errors",
                  f"  {'term':<20}{'model SE':>10}{'robust SE':>11}{'HLM df':>8}"]
        for k, name in enumerate(self.x_names):
            lines.append(
                f"  {name:<20}{self.model_se[k]:>10.4f}{self.robust_se[k]:>11.4f}"
                f"{self.hlm_df[k]:>8.0f}"
            )
        return "\n".join(lines)


def _fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def hlm_statistics(
    design: Design,
    cp: GroupCrossprods,
    theta: np.ndarray,
    sigma: float,
    beta: np.ndarray,
) -> HLMStatistics:
    """HLM's statistics at a fit's estimates (θ̂, σ̂, β̂); see the module docstring.

    Parameters
    ----------
    design, cp : the model's design and per-group cross-products.
    theta, sigma, beta : the fit's θ̂, σ̂ and γ̂ (use an REML fit to match HLM's defaults).
    """
    theta = np.asarray(theta, dtype=float)
    beta = np.asarray(beta, dtype=float)
    T = design.theta_to_T(theta)
    s2 = float(sigma) ** 2
    tau = s2 * T @ T.T
    ols = unit_ols(design, cp)
    v = s2 * np.diagonal(ols.XtX_inv, axis1=1, axis2=2)  # (J, q), NaN for insufficient units
    pred = _predicted_coefficients(design, beta)
    S = _level2_count(design)
    eqs = coefficient_equations(design)
    gamma = np.full(design.q, np.nan)
    for c, e in enumerate(eqs):
        if e.random and not e.is_level2_predictor and e.coefficient in design.z_names:
            gamma[design.z_names.index(e.coefficient)] = beta[c]
    rel = np.array([reliability(tau[i, i], v[:, i]) for i in range(design.q)])
    chi = {
        name: chi2_tau(ols.beta[:, i], pred[:, i], v[:, i], S[name])
        for i, name in enumerate(design.z_names)
    }
    plaus = {
        name: plausible_range(gamma[i], tau[i, i]) for i, name in enumerate(design.z_names)
    }
    robust = cluster_robust_vcov(design, cp, theta, sigma, beta, "CR0")
    M = np.matmul(np.matmul(T.T, cp.A), T) + np.eye(design.q)
    H = np.matmul(np.matmul(T, np.linalg.inv(M)), T.T)
    model_vcov = s2 * np.linalg.inv(cp.XtX - np.einsum("jqa,jqb->ab", cp.B, np.matmul(H, cp.B)))
    return HLMStatistics(
        coefficients=design.z_names, gamma=gamma, tau=tau, sigma2=s2, reliability=rel,
        chi2=chi, plausible=plaus, n_sufficient=int(ols.sufficient.sum()),
        x_names=design.x_names, model_se=np.sqrt(np.diag(model_vcov)),
        robust_se=np.sqrt(np.diag(robust)), hlm_df=hlm_ddf(design),
    )


# ------------------------------------------------------------------------ LmerFit adapters


def hlm_statistics_fit(fit):
    """:func:`hlm_statistics` at a fitted model (``twolevel.models.lmm.lmer.lmer``'s
    :class:`LmerFit`).

    Parameters
    ----------
    fit : LmerFit

    Returns
    -------
    HLMStatistics
        HLM's reliabilities, χ² tests of the variance components, plausible ranges, df and
        robust SEs. For a fit with two nested grouping factors (``(… | school/class)``), HLM3's
        statistics instead: :class:`~twolevel.models.inference.hlm3.HLM3Statistics`
        (:func:`~twolevel.models.inference.hlm3.hlm3_statistics_fit`).

    Raises
    ------
    TwolevelError
        For a glmer fit (HLM's HGLM output is not implemented); for several grouping factors
        that are not two nested ones.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> type(tl.hlm_statistics_fit(fit)).__name__
    'HLMStatistics'
    """
    from twolevel.models.fit_base import require_lmm

    require_lmm(fit, "hlm_statistics_fit", "HLM's statistics for a binomial or Poisson model "
                "(HGLM) are not implemented")
    from twolevel.models.fit_base import has_several_factors

    if has_several_factors(fit):
        from twolevel.models.inference.hlm3 import hlm3_statistics_fit

        return hlm3_statistics_fit(fit)
    return hlm_statistics(fit.design, fit.crossprods, fit.theta, fit.sigma, fit.beta)


def ddf_hlm(fit, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``summary(fit, ddf="HLM")``'s hook: model-based SEs of the rows of ``L`` with HLM's df
    (:func:`hlm_ddf`); a contrast involving several fixed effects gets the smallest of their df."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    V = fit.vcov().to_numpy()
    se = np.sqrt(np.einsum("ij,jk,ik->i", L, V, L))
    df_fe = hlm_ddf(fit.design)
    df = np.array([float(np.min(df_fe[np.abs(row) > 0])) if np.any(row) else np.nan for row in L])
    return se, df
