"""What HLM 8's three-level module (HLM3) prints that lme4 does not, for a nested fit
``y ~ … + (… | school/class)`` (a :class:`~twolevel.models.lmm.multi_results.MultiFit` with two
nested grouping factors: classes — or children, with occasions at level 1 — in schools).

HLM's notation (Raudenbush & Bryk 2002, ch. 8) against lme4's terms
    level 1: y_ijk = Σ_p π_pjk a_pijk + e_ijk, e ~ N(0, σ²), within class jk;
    level 2: π_pjk = β_p0k + Σ_q β_pqk X_qjk + r_pjk, Var(r_jk) = T_π — the random effects of
    the class factor (lme4's ``class:school``) on its columns a_p (the class term's Z);
    level 3: β_pqk = γ_pq0 + Σ_s γ_pqs W_sk + u_pqk, Var(u_k) = T_β — the school factor's
    random effects on its columns (the school term's Z). Both T's are σ̂²TTᵀ of the fit's θ̂,
    so the statistics below use the fit's own estimates (an ML fit, as HLM3's default "full
    maximum likelihood", or an REML fit).

Statistics (all from the per-class cross-products of :class:`NestedStats` and γ̂; r = y − Xγ̂)
    * **Class (level-1-coefficient) reliability** of π_p: mean over the classes with sufficient
      data (n_jk > q₁ and Z₁ᵀZ₁ of full rank) of τ_π,pp / (τ_π,pp + v_pjk), with
      v_pjk = σ̂²[(Z₁ᵀZ₁)⁻¹]_pp the sampling variance of the class's OLS estimate (R&B 2002,
      eq. 3.58 one level up; for a random intercept τ_π / (τ_π + σ²/n_jk)).
    * **School (level-2-coefficient) reliability** of β_q: mean over schools of
      τ_β,qq / (τ_β,qq + [P_k⁻¹]_qq), where P_k = Σ_j Z₂ᵀV_jk⁻¹Z₂ is the precision of the
      school's GLS estimate given T_π and σ² (V_jk = σ²I + Z₁T_πZ₁ᵀ, the class's marginal
      covariance). With random intercepts only, [P_k⁻¹] = [Σ_j (τ_π + σ²/n_jk)⁻¹]⁻¹ (R&B's
      formula); with Z₂ ⊂ Z₁ it is [Σ_j (V̂_jk + T_π)⁻¹]⁻¹ over classes whose OLS exists, and it
      counts every class (a child with one occasion informs its school's intercept).
    * **χ² of τ_π,pp = 0** (level 2): within every school, the weighted least-squares fit of
      the class OLS coefficients π̂_pjk (from r, so fixed level-1 covariates are removed at γ̂)
      on [1, X_qjk] — the class-level predictors of π_p that vary within schools — with weights
      1/v_pjk; χ² is the sum over schools of the weighted residual sums of squares and
      df = Σ_k (J'_k − rank_k) over schools with J'_k > rank_k, J'_k the classes with sufficient
      data. With full-rank designs rank_k = Q_p + 1, HLM's Σ_k (J_k − Q_p − 1).
    * **χ² of τ_β,qq = 0** (level 3): Σ_k (b̂*_qk)² / [P_k⁻¹]_qq over the K' schools with P_k of
      full rank, where b̂*_k = P_k⁻¹ Σ_j Z₂ᵀV_jk⁻¹ r_jk is the school's GLS estimate of its random
      effects given T_π (β̂*_k minus its fitted value from γ̂); df = K' − S_q − 1, S_q the
      level-3 predictors in β_q's equation.

These formulas are Raudenbush & Bryk's (2002, ch. 3 and 8) two-level statistics carried one
level up; HLM's own three-level output could not be read here to check them digit by digit
(``docs/hlm3-goldens.md`` records what was searched and what was found). Where HLM's manual
leaves a choice open the choice is said above (which units count, how fixed level-1
covariates and collinear predictors are handled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import TwolevelError

__all__ = [
    "HLM3Statistics",
    "chi2_level2",
    "chi2_level3",
    "class_ols",
    "class_predictors",
    "hlm3_statistics_fit",
    "reliability_level2",
    "reliability_level3",
    "require_three_levels",
    "school_gls",
    "school_predictors",
]

_COND_MAX = 1e10
_TOL = 1e-9


# ---------------------------------------------------------------------------- the design


def require_three_levels(fit) -> None:
    """Raise a one-line :class:`TwolevelError` unless ``fit`` is a linear mixed model with two
    nested grouping factors fitted with its rows in memory (what HLM3's statistics need).

    Parameters
    ----------
    fit : MultiFit

    Raises
    ------
    TwolevelError
        For a glmer fit, crossed or partially crossed factors, more than two factors, or a fit
        whose statistics came from DuckDB/Dask without the rows.

    Examples
    --------
    >>> require_three_levels(fit)   # doctest: +SKIP
    """
    from twolevel.models.fit_base import require_lmm

    require_lmm(fit, "HLM's three-level statistics", "HLM3's reliabilities and χ² tests are "
                "for linear models")
    names = [f.name for f in fit.design.factors]
    if fit.engine != "nested":
        raise TwolevelError(
            f"HLM's three-level statistics need nested grouping factors, and "
            f"{' and '.join(repr(n) for n in names)} of '{fit.design.formula}' are crossed; "
            "if the classes are nested in the schools, write the term as '(… | school/class)' "
            "(or give every class a label unique across schools)")
    if len(names) != 2:
        raise TwolevelError(
            f"HLM's three-level statistics are for two nested grouping factors (HLM3: level 1 "
            f"in classes in schools); '{fit.design.formula}' has {len(names)}: "
            f"{', '.join(names)}; fit the three levels you need")
    if not fit.has_rows:
        raise TwolevelError(
            f"HLM's three-level statistics need the rows (which columns are class- and "
            f"school-level predictors, each class's size), and this fit's statistics came from "
            f"{getattr(fit.design, 'engine', 'an engine')} without them; refit with "
            "engine='memory' (command line: --engine memory)")


def _group_mean(x: np.ndarray, g: np.ndarray, n: int, w: np.ndarray | None = None
                ) -> np.ndarray:
    cnt = np.bincount(g, weights=w, minlength=n)
    s = np.bincount(g, weights=x if w is None else x * w, minlength=n)
    return s / np.where(cnt > 0, cnt, 1.0)


def _constant_within(x: np.ndarray, g: np.ndarray, n: int) -> tuple[bool, np.ndarray]:
    """Whether x is constant within the groups g, and its group means."""
    m = _group_mean(x, g, n)
    scale = max(float(np.max(np.abs(x))), 1.0)
    return bool(np.max(np.abs(x - m[g])) <= _TOL * scale), m


def _multiplier(x: np.ndarray, z: np.ndarray, g: np.ndarray, n: int) -> np.ndarray | None:
    """w with x = z·w_g (w constant within the groups g), or None."""
    zz = np.bincount(g, weights=z * z, minlength=n)
    w = np.bincount(g, weights=x * z, minlength=n) / np.where(zz > 0, zz, 1.0)
    scale = max(float(np.max(np.abs(x))), 1.0)
    return w if np.max(np.abs(x - z * w[g])) <= _TOL * scale else None


def class_predictors(design) -> dict[str, np.ndarray]:
    """The class-level predictors X_qjk of every class coefficient π_p: for π_p's column z_p of
    the class term, each fixed-effect column x = z_p·w_jk with w constant within classes and
    **varying within schools** (for the intercept: a column constant within classes, e.g. a
    child's sex); returned as {z_name: (n_classes, Q_p) array of w} (Q_p may be 0). Columns
    constant within schools are level-3 predictors (absorbed by the school's β_p0k)."""
    cls, sch = design.factors
    g, J = cls.codes, cls.n_levels
    parent = np.zeros(J, dtype=np.intp)
    parent[g] = sch.codes
    out = {}
    for p, zn in enumerate(cls.z_names):
        cols = []
        for k in range(design.p):
            x = design.X[:, k]
            if zn == "(Intercept)":
                const, w = _constant_within(x, g, J)
                if not const:
                    continue
            else:
                w = _multiplier(x, cls.Z[:, p], g, J)
                if w is None:
                    continue
            const_school, _ = _constant_within(w, parent, sch.n_levels)
            if not const_school:
                cols.append(w)
        out[zn] = np.column_stack(cols) if cols else np.zeros((J, 0))
    return out


def school_predictors(design) -> dict[str, np.ndarray]:
    """The level-3 predictors W_sk of every school coefficient β_q: fixed-effect columns
    x = z_q·w_k with w constant within schools and not ≡ 1 (for the intercept: a column
    constant within schools other than the intercept itself); {z_name: (n_schools, S_q)}."""
    sch = design.factors[1]
    g, K = sch.codes, sch.n_levels
    out = {}
    for q, zn in enumerate(sch.z_names):
        cols = []
        for k in range(design.p):
            x = design.X[:, k]
            if zn == "(Intercept)":
                const, w = _constant_within(x, g, K)
                if not const:
                    continue
            else:
                w = _multiplier(x, sch.Z[:, q], g, K)
                if w is None:
                    continue
            if not np.allclose(w, 1.0):
                cols.append(w)
        out[zn] = np.column_stack(cols) if cols else np.zeros((K, 0))
    return out


# ------------------------------------------------------------------- per-class and school


@dataclass(frozen=True)
class ClassOLS:
    """Per-class OLS of r = y − Xγ̂ on the class term's columns Z₁.

    Fields
    ------
    n : (J,) class sizes.  beta : (J, q₁) π̂_jk − (fixed part) = (Z₁ᵀZ₁)⁻¹Z₁ᵀr (NaN where
    insufficient).  v : (J, q₁) sampling variances σ̂²[(Z₁ᵀZ₁)⁻¹]_pp (NaN likewise).
    sufficient : (J,) n_jk > q₁ and Z₁ᵀZ₁ of full rank.
    """

    n: np.ndarray
    beta: np.ndarray
    v: np.ndarray
    sufficient: np.ndarray


def _blocks(fit):
    """Per-class blocks of the nested statistics: A₁ = Z₁ᵀZ₁, A₁₂ = Z₁ᵀZ₂, A₂ = Z₂ᵀZ₂,
    Z₁ᵀr and Z₂ᵀr with r = y − Xγ̂."""
    st = fit.stats
    q1, q2 = st.q
    p = st.p
    C = st.C
    beta = np.asarray(fit.state.beta, dtype=float)
    i1, i2, ix, iy = slice(0, q1), slice(q1, q1 + q2), slice(q1 + q2, q1 + q2 + p), q1 + q2 + p
    Z1r = C[:, i1, iy] - C[:, i1, ix] @ beta
    Z2r = C[:, i2, iy] - C[:, i2, ix] @ beta
    return C[:, i1, i1], C[:, i1, i2], C[:, i2, i2], Z1r, Z2r


def class_ols(fit) -> ClassOLS:
    """Per-class OLS (the classes' π̂ − fixed part, and v_pjk = σ̂²[(Z₁ᵀZ₁)⁻¹]_pp) from the
    cross-products: β̂_jk = A_jk⁻¹Z₁ᵀr_jk for the classes with n_jk > q₁ and cond(A_jk) < 1e10.
    """
    A, _, _, Z1r, _ = _blocks(fit)
    q1 = A.shape[1]
    n = np.bincount(fit.design.factors[0].codes,
                    minlength=fit.design.factors[0].n_levels).astype(float)
    cond = np.linalg.cond(A)
    ok = (n > q1) & np.isfinite(cond) & (cond < _COND_MAX)
    beta = np.full(Z1r.shape, np.nan)
    v = np.full(Z1r.shape, np.nan)
    if ok.any():
        inv = np.linalg.inv(A[ok])
        beta[ok] = np.einsum("jab,jb->ja", inv, Z1r[ok])
        v[ok] = fit.sigma**2 * np.diagonal(inv, axis1=1, axis2=2)
    return ClassOLS(n=n, beta=beta, v=v, sufficient=ok)


@dataclass(frozen=True)
class SchoolGLS:
    """Each school's GLS estimate of its random effects given T_π and σ̂².

    Fields
    ------
    precision : (K, q₂, q₂) P_k = Σ_j Z₂ᵀV_jk⁻¹Z₂.  b : (K, q₂) b̂*_k = P_k⁻¹Σ_j Z₂ᵀV_jk⁻¹r_jk
    (NaN where P_k is singular).  V : (K, q₂, q₂) P_k⁻¹ (NaN likewise).  sufficient : (K,).
    """

    precision: np.ndarray
    b: np.ndarray
    V: np.ndarray
    sufficient: np.ndarray


def school_gls(fit) -> SchoolGLS:
    """P_k and b̂*_k by Woodbury per class, V_jk⁻¹ = σ⁻²(I − Z₁HZ₁ᵀ) with
    H = T₁(T₁ᵀA₁T₁ + I)⁻¹T₁ᵀ (T₁ the class factor's relative Cholesky factor, T_π = σ²T₁T₁ᵀ):
    Z₂ᵀV⁻¹Z₂ = σ⁻²(A₂ − A₁₂ᵀHA₁₂), Z₂ᵀV⁻¹r = σ⁻²(Z₂ᵀr − A₁₂ᵀHZ₁ᵀr), summed over the classes of
    each school."""
    A1, A12, A2, Z1r, Z2r = _blocks(fit)
    s2 = fit.sigma**2
    T1 = fit.design.factor_T(fit.theta, 0)
    q1 = T1.shape[0]
    M = np.matmul(np.matmul(T1.T, A1), T1) + np.eye(q1)
    H = np.matmul(np.matmul(T1, np.linalg.inv(M)), T1.T)
    HA12 = np.matmul(H, A12)
    Pc = (A2 - np.matmul(np.swapaxes(A12, 1, 2), HA12)) / s2
    gc = (Z2r - np.einsum("jab,ja->jb", HA12, Z1r)) / s2
    parent = fit.stats.parents[0]
    K = fit.design.factors[1].n_levels
    q2 = A2.shape[1]
    P = np.zeros((K, q2, q2))
    g = np.zeros((K, q2))
    np.add.at(P, parent, Pc)
    np.add.at(g, parent, gc)
    cond = np.linalg.cond(P)
    ok = np.isfinite(cond) & (cond < _COND_MAX)
    V = np.full(P.shape, np.nan)
    b = np.full(g.shape, np.nan)
    if ok.any():
        V[ok] = np.linalg.inv(P[ok])
        b[ok] = np.einsum("kab,kb->ka", V[ok], g[ok])
    return SchoolGLS(precision=P, b=b, V=V, sufficient=ok)


# ------------------------------------------------------------------------ the statistics


def reliability_level2(tau_pp: float, v_p: np.ndarray) -> float:
    """Mean reliability of a class coefficient π_p (R&B 2002, eq. 3.58 one level up):
    λ_p = (1/J') Σ_jk τ_π,pp / (τ_π,pp + v_pjk) over the J' classes with v_pjk defined."""
    v = np.asarray(v_p, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.mean(tau_pp / (tau_pp + v))) if v.size else float("nan")


def reliability_level3(tau_qq: float, V_qq: np.ndarray) -> float:
    """Mean reliability of a school coefficient β_q (R&B 2002, ch. 8):
    λ_q = (1/K') Σ_k τ_β,qq / (τ_β,qq + [P_k⁻¹]_qq), P_k the precision of the school's GLS
    estimate given T_π; for random intercepts [P_k⁻¹] = [Σ_j (τ_π + σ²/n_jk)⁻¹]⁻¹."""
    v = np.asarray(V_qq, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.mean(tau_qq / (tau_qq + v))) if v.size else float("nan")


def chi2_level2(beta_p: np.ndarray, v_p: np.ndarray, school: np.ndarray, n_schools: int,
                predictors: np.ndarray) -> tuple[float, int, float]:
    """HLM3's χ² of H0: τ_π,pp = 0: Σ_k min_b Σ_{j ∈ k} (π̂_pjk − [1, X_jk] b)² / v_pjk, the
    within-school weighted least squares of the class OLS coefficients on the class-level
    predictors, over classes with sufficient data; df = Σ_k (J'_k − rank_k) over schools with
    J'_k > rank_k (HLM: Σ_k (J_k − Q_p − 1)); p = P(χ²_df > χ²). Returns (χ², df, p)."""
    ok = np.isfinite(beta_p) & np.isfinite(v_p)
    chisq, df = 0.0, 0
    order = np.argsort(school[ok], kind="stable")
    b, v, s = beta_p[ok][order], v_p[ok][order], school[ok][order]
    D = np.column_stack([np.ones(b.shape[0]), predictors[ok][order]])
    bounds = np.searchsorted(s, np.arange(n_schools + 1))
    for k in range(n_schools):
        lo, hi = bounds[k], bounds[k + 1]
        if hi - lo == 0:
            continue
        sw = 1.0 / np.sqrt(v[lo:hi])
        Dk, yk = D[lo:hi] * sw[:, None], b[lo:hi] * sw
        coef, _, rank, _ = np.linalg.lstsq(Dk, yk, rcond=None)
        if hi - lo <= rank:
            continue
        chisq += float(np.sum((yk - Dk @ coef) ** 2))
        df += int(hi - lo - rank)
    p = float(stats.chi2.sf(chisq, df)) if df > 0 else float("nan")
    return chisq, df, p


def chi2_level3(b_q: np.ndarray, V_qq: np.ndarray, predictors: np.ndarray
                ) -> tuple[float, int, float]:
    """HLM3's χ² of H0: τ_β,qq = 0: Σ_k (β̂*_qk − Σ_s γ̂_qs W_sk)² / V*_qq,k, with
    β̂*_qk − fitted = b̂*_qk the school's GLS estimate given T_π; df = K' − S_q − 1 over the K'
    schools with a GLS estimate (S_q + 1 the rank of [1, W]); p = P(χ²_df > χ²)."""
    ok = np.isfinite(b_q) & np.isfinite(V_qq)
    chisq = float(np.sum(b_q[ok] ** 2 / V_qq[ok]))
    W = np.column_stack([np.ones(int(ok.sum())), predictors[ok]])
    df = int(ok.sum()) - int(np.linalg.matrix_rank(W))
    p = float(stats.chi2.sf(chisq, df)) if df > 0 else float("nan")
    return chisq, df, p


# ------------------------------------------------------------------------ all in one table


@dataclass(frozen=True)
class HLM3Statistics:
    """HLM3's extra output for a nested three-level fit.

    Fields
    ------
    class_factor, school_factor : lme4's names of the two grouping factors.
    class_coefficients, school_coefficients : the random coefficients at level 2 (π_p, the
        class term's columns) and level 3 (β_q, the school term's columns).
    tau_class (q₁ × q₁), tau_school (q₂ × q₂), sigma2 : T̂_π, T̂_β, σ̂².
    class_reliability, school_reliability : mean reliabilities per coefficient.
    class_chi2, school_chi2 : {coefficient: (χ², df, p)} HLM's tests of τ = 0.
    n_classes, n_classes_sufficient, n_schools, n_schools_sufficient : units, and those with
        an OLS (classes) or GLS (schools) estimate.
    method : "ML" or "REML" (the fit's).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import twolevel as tl
    >>> rng = np.random.default_rng(1)
    >>> d = pd.DataFrame({"school": np.repeat(np.arange(20), 16),
    ...                   "klass": np.tile(np.repeat([1, 2], 8), 20)})
    >>> d["y"] = (np.repeat(rng.normal(size=20), 16) + np.repeat(rng.normal(size=40), 8)
    ...           + rng.normal(size=len(d)))
    >>> h = tl.hlm_statistics_fit(tl.lmer("y ~ 1 + (1 | school/klass)", d, REML=False))
    >>> h.class_chi2["(Intercept)"][1]       # df: 20 schools × (2 classes − 1)
    20
    """

    class_factor: str
    school_factor: str
    class_coefficients: tuple[str, ...]
    school_coefficients: tuple[str, ...]
    tau_class: np.ndarray
    tau_school: np.ndarray
    sigma2: float
    class_reliability: np.ndarray
    school_reliability: np.ndarray
    class_chi2: dict[str, tuple[float, int, float]]
    school_chi2: dict[str, tuple[float, int, float]]
    n_classes: int
    n_classes_sufficient: int
    n_schools: int
    n_schools_sufficient: int
    method: str

    def to_frame(self) -> pd.DataFrame:
        """One row per random coefficient and level: factor, coefficient, variance, SD,
        reliability, χ², df, p."""
        rows = []
        for level, fac, names, tau, rel, chi in (
                (2, self.class_factor, self.class_coefficients, self.tau_class,
                 self.class_reliability, self.class_chi2),
                (3, self.school_factor, self.school_coefficients, self.tau_school,
                 self.school_reliability, self.school_chi2)):
            for i, nm in enumerate(names):
                c, df, p = chi[nm]
                rows.append({"level": level, "factor": fac, "coefficient": nm,
                             "variance": tau[i, i], "sd": float(np.sqrt(tau[i, i])),
                             "reliability": rel[i], "chisq": c, "df": df, "p": p})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """JSON-ready: {"reliability": {factor: {coef: λ}}, "chi2_tau": {factor: {coef:
        {chisq, df, p}}}}."""
        out: dict = {"reliability": {}, "chi2_tau": {}}
        for fac, names, rel, chi in (
                (self.class_factor, self.class_coefficients, self.class_reliability,
                 self.class_chi2),
                (self.school_factor, self.school_coefficients, self.school_reliability,
                 self.school_chi2)):
            out["reliability"][fac] = {n: _num(rel[i]) for i, n in enumerate(names)}
            out["chi2_tau"][fac] = {n: {"chisq": _num(chi[n][0]), "df": chi[n][1],
                                        "p": _num(chi[n][2])} for n in names}
        return out

    def summary(self) -> str:
        """HLM3-style text: reliabilities at levels 2 and 3, variance components with their χ²
        tests."""
        w = max([len(n) for n in self.class_coefficients + self.school_coefficients] + [12])
        lines = [f" Random level-1 coefficient, varying over '{self.class_factor}'",
                 f"  {'coefficient':<{w + 4}}{'reliability':>12}", " " + "-" * (w + 17)]
        for i, n in enumerate(self.class_coefficients):
            lines.append(f"  {n:<{w + 4}}{self.class_reliability[i]:>12.3f}")
        lines += ["", f" Random level-2 coefficient, varying over '{self.school_factor}'",
                  f"  {'coefficient':<{w + 4}}{'reliability':>12}", " " + "-" * (w + 17)]
        for i, n in enumerate(self.school_coefficients):
            lines.append(f"  {n:<{w + 4}}{self.school_reliability[i]:>12.3f}")
        if self.n_classes_sufficient < self.n_classes:
            lines += ["", f" Level-1-coefficient reliabilities and level-2 χ² use the "
                      f"{self.n_classes_sufficient} of {self.n_classes} units",
                      f" of '{self.class_factor}' with sufficient data for their own OLS."]
        head = (f"  {'random effect':<{w + 4}}{'SD':>10}{'variance':>12}{'df':>7}"
                f"{'chi-square':>13}{'p':>9}")
        lines += ["", f" Final estimation of level-1 and level-2 variance components "
                  f"({self.method})", head]
        for i, n in enumerate(self.class_coefficients):
            lines.append(self._row(n, self.tau_class[i, i], self.class_chi2[n], w))
        lines.append(f"  {'level-1, e':<{w + 4}}{np.sqrt(self.sigma2):>10.5f}"
                     f"{self.sigma2:>12.5f}")
        lines += ["", " Final estimation of level-3 variance components", head]
        for i, n in enumerate(self.school_coefficients):
            lines.append(self._row(n, self.tau_school[i, i], self.school_chi2[n], w))
        return "\n".join(lines)

    @staticmethod
    def _row(name: str, var: float, chi: tuple[float, int, float], w: int) -> str:
        c, df, p = chi
        ps = "<0.001" if p < 0.001 else f"{p:.3f}"
        return (f"  {name:<{w + 4}}{np.sqrt(var):>10.5f}{var:>12.5f}{df:>7d}{c:>13.2f}"
                f"{ps:>9}")


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def hlm3_statistics_fit(fit) -> HLM3Statistics:
    """HLM3's reliabilities and χ² tests of the variance components at a nested fit's
    estimates (see the module docstring for every formula).

    Parameters
    ----------
    fit : MultiFit
        ``tl.lmer("y ~ … + (… | school/class)", data)`` — two nested grouping factors, rows in
        memory. ``REML=False`` matches HLM3's default (full maximum likelihood).

    Returns
    -------
    HLM3Statistics

    Raises
    ------
    TwolevelError
        For crossed factors, more or fewer than two factors, a glmer fit, or a fit without its
        rows (:func:`require_three_levels`).

    Examples
    --------
    >>> h = hlm3_statistics_fit(tl.lmer("math ~ year + (year | schoolid/childid)", eg,
    ...                                 REML=False))   # doctest: +SKIP
    >>> print(h.summary())                             # doctest: +SKIP
    """
    require_three_levels(fit)
    d = fit.design
    cls, sch = d.factors
    s2 = fit.sigma**2
    T1, T2 = d.factor_T(fit.theta, 0), d.factor_T(fit.theta, 1)
    tau1, tau2 = s2 * T1 @ T1.T, s2 * T2 @ T2.T
    ols = class_ols(fit)
    gls = school_gls(fit)
    parent = fit.stats.parents[0]
    cpred, spred = class_predictors(d), school_predictors(d)
    rel1 = np.array([reliability_level2(tau1[p, p], ols.v[:, p]) for p in range(cls.q)])
    rel2 = np.array([reliability_level3(tau2[q, q], gls.V[:, q, q]) for q in range(sch.q)])
    chi1 = {n: chi2_level2(ols.beta[:, p], ols.v[:, p], parent, sch.n_levels, cpred[n])
            for p, n in enumerate(cls.z_names)}
    chi2 = {n: chi2_level3(gls.b[:, q], gls.V[:, q, q], spred[n])
            for q, n in enumerate(sch.z_names)}
    return HLM3Statistics(
        class_factor=cls.name, school_factor=sch.name, class_coefficients=cls.z_names,
        school_coefficients=sch.z_names, tau_class=tau1, tau_school=tau2, sigma2=s2,
        class_reliability=rel1, school_reliability=rel2, class_chi2=chi1, school_chi2=chi2,
        n_classes=cls.n_levels, n_classes_sufficient=int(ols.sufficient.sum()),
        n_schools=sch.n_levels, n_schools_sufficient=int(gls.sufficient.sum()),
        method="REML" if fit.reml else "ML")
