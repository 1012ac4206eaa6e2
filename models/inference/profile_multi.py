"""Likelihood-profile intervals for several grouping factors (lme4's ``confint(fit)``, whose
default method is ``"profile"``, on a model such as ``y ~ x + (1 | school/class)``).

The algorithm is the one-factor one (:mod:`twolevel.models.inference.profile`: an ML refit,
lme4's point placement, ``backSpline`` inversion), run on the several-factor criterion:

* **Parameters** in lme4's ``confint`` order and names (``oldNames = TRUE``, its default):
  per random-effects term, in lme4's term order, the lower triangle of the term's covariance
  column-wise, SDs on the diagonal and correlations off it (``.sig01``, ``.sig02``, …), then
  ``.sigma``, then the fixed effects. For ``(1 | school/class)`` that is ``.sig01`` (class
  within school), ``.sig02`` (school), ``.sigma``.
* **sdcor scale.** For term t with columns c and factor f, Σ_t = σ²T_f[c, c]T_f[c, c]ᵀ; its SDs
  and correlations are the parameters (:func:`multi_cv_to_sv`); back, θ's entries of the term
  are the Cholesky factor of Σ_t/σ² (:func:`multi_sv_to_cv`).
* **ML deviance at a point of that scale** (lme4's ``devfun2``), β profiled:
  D = log|L_θ|² + r²(θ)/σ² + n log(2πσ²), with log|L_θ|² and r²(θ) from the engine's block
  elimination (nested) or dense block (crossed) at θ.
* **A fixed effect held at b**: x_k·b moves into an offset. The engine's statistics are
  cross-products of the columns [Z … X y]; the new columns are [Z … X₋ₖ (y − b·x_k)], a linear
  map M of the old, so the new cross-products are MᵀCM (:func:`drop_fixed_stats`), with no
  pass over the rows (it works for fits whose statistics came from DuckDB or Dask).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from twolevel.models.design.multi_stats import CrossedStats, NestedStats
from twolevel.models.inference.profile_core import (
    MLRefit,
    Profile,
    ProfileProblem,
    _chol_psd,
    profile_traces,
)

__all__ = ["drop_fixed_stats", "multi_cv_to_sv", "multi_parameter_names", "multi_sv_bounds",
           "multi_profile_problem", "multi_sv_to_cv", "profile_multi"]

_LOG_2PI = float(np.log(2.0 * np.pi))
_BIG = 1e300


def _term_entries(design, t) -> list[tuple[int, int, int]]:
    """(θ index, row, column) of a term's free entries, lower triangle column-wise (θ order),
    rows and columns as positions within the term."""
    tm = design.templates[t.factor]
    cols = list(t.columns)
    return [(int(tm[r, c]), i, j) for j, c in enumerate(cols) for i, r in enumerate(cols)
            if i >= j]


def multi_parameter_names(design) -> list[str]:
    """lme4's ``confint`` names of the variance parameters: ``.sig01`` … in θ's order, then
    ``.sigma``."""
    return [f".sig{i + 1:02d}" for i in range(design.n_theta)] + [".sigma"]


def multi_cv_to_sv(design, theta: np.ndarray, sigma: float) -> np.ndarray:
    """lme4's ``Cv_to_Sv`` with several terms: θ and σ → per term the SDs (diagonal positions)
    and correlations (off-diagonal positions) of Σ_t = σ²T_tT_tᵀ in θ's order, then σ.

    Examples
    --------
    >>> sv = multi_cv_to_sv(fit.design, fit.theta, fit.sigma)   # doctest: +SKIP
    """
    theta = np.asarray(theta, dtype=float)
    out = np.empty(design.n_theta + 1)
    for t in design.terms:
        cols = list(t.columns)
        T = design.factor_T(theta, t.factor)[np.ix_(cols, cols)]
        S = sigma**2 * T @ T.T
        sd = np.sqrt(np.diag(S))
        for k, i, j in _term_entries(design, t):
            if i == j:
                out[k] = sd[i]
            else:
                den = sd[i] * sd[j]
                out[k] = S[i, j] / den if den > 0 else 0.0
    out[-1] = sigma
    return out


def multi_sv_to_cv(design, sv: np.ndarray) -> np.ndarray | None:
    """lme4's ``Sv_to_Cv`` with several terms: (SDs, correlations, σ) → θ, each term's entries
    the Cholesky factor of Σ_t/σ²; None when a term's correlations are not positive
    semi-definite or σ ≤ 0.

    Examples
    --------
    >>> theta = multi_sv_to_cv(fit.design, multi_cv_to_sv(fit.design, fit.theta, fit.sigma))
    ... # doctest: +SKIP
    """
    sv = np.asarray(sv, dtype=float)
    sigma = sv[-1]
    if not sigma > 0:
        return None
    theta = np.zeros(design.n_theta)
    for t in design.terms:
        ent = _term_entries(design, t)
        m = len(t.columns)
        sd = np.zeros(m)
        for k, i, j in ent:
            if i == j:
                sd[i] = sv[k]
        S = np.zeros((m, m))
        for k, i, j in ent:
            S[i, j] = S[j, i] = sd[i] ** 2 if i == j else sv[k] * sd[i] * sd[j]
        L = _chol_psd(S)
        if L is None:
            return None
        for k, i, j in ent:
            theta[k] = L[i, j] / sigma
    return theta


def multi_sv_bounds(design) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the sdcor scale: sd ≥ 0, −1 ≤ cor ≤ 1, σ ≥ 0."""
    lower = np.empty(design.n_theta + 1)
    upper = np.empty(design.n_theta + 1)
    for t in design.terms:
        for k, i, j in _term_entries(design, t):
            lower[k], upper[k] = (0.0, np.inf) if i == j else (-1.0, 1.0)
    lower[-1], upper[-1] = 0.0, np.inf
    return lower, upper


def _column_map(d: int, p: int, k: int, value: float) -> np.ndarray:
    """M (d × d−1): [W₁ … X y] ↦ [W₁ … X₋ₖ (y − value·x_k)] for d columns whose last p + 1 are
    X and y."""
    x0 = d - 1 - p
    keep = [c for c in range(d) if c != x0 + k]
    M = np.eye(d)[:, keep]
    M[x0 + k, -1] = -value
    return M


def drop_fixed_stats(stats, k: int, value: float):
    """The statistics of the model with β_k held at ``value`` (x_k·value an offset): for nested
    statistics C_c ↦ MᵀC_cM per innermost group, for crossed ones the [Z₂ … X y] sides mapped by M
    (:func:`_column_map`).

    Examples
    --------
    >>> st = drop_fixed_stats(fit.stats, 1, 0.5)   # doctest: +SKIP
    """
    if isinstance(stats, NestedStats):
        M = _column_map(stats.C.shape[1], stats.p, k, value)
        C = np.ascontiguousarray(np.einsum("ab,nac,cd->nbd", M, stats.C, M, optimize=True))
        return NestedStats(C=C, parents=stats.parents, q=stats.q, n=stats.n, p=stats.p - 1)
    if isinstance(stats, CrossedStats):
        M = _column_map(stats.Arr.shape[0], stats.p, k, value)
        return CrossedStats(A11=stats.A11, Ar1=sp.csr_matrix(M.T @ stats.Ar1),
                            Arr=M.T @ stats.Arr @ M, q_rest=stats.q_rest, n=stats.n,
                            p=stats.p - 1)
    raise TypeError(f"unknown statistics {type(stats).__name__}")


class _Reduced:
    """The design seen with one fixed effect fewer (the engines read ``p`` and the factors)."""

    def __init__(self, design, p: int):
        self._design = design
        self.p = p

    def __getattr__(self, name):
        return getattr(self._design, name)


def _ml_parts(engine: str, design, stats, theta: np.ndarray):
    from twolevel.models.lmm.multi import _state_fn

    return _state_fn(engine)(design, stats, theta)


def _ml_deviance(st, n: int, s2: float | None = None) -> float:
    """ML deviance log|L|² + r²/σ² + n log(2πσ²); at σ̂² = r²/n when ``s2`` is None."""
    if s2 is None:
        s2 = st.r2 / n
        return float(st.ldL2 + n * (1.0 + _LOG_2PI + np.log(s2)))
    return float(st.ldL2 + st.r2 / s2 + n * (_LOG_2PI + np.log(s2)))


def profile_multi(
    fit,
    *,
    which: Sequence[str] | None = None,
    alphamax: float = 0.01,
    maxpts: int = 100,
    delta_cutoff: float = 1.0 / 8.0,
    maxmult: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> Profile:
    """Profile the ML deviance of a several-factor fit over every parameter (lme4's
    ``profile.merMod``; module docstring).

    Parameters
    ----------
    fit : MultiFit
        A fit with several grouping factors (REML fits are refitted by ML, as lme4 does).
    which : parameter names (default all: :func:`multi_parameter_names` and the fixed effects).
    alphamax, maxpts, delta_cutoff, maxmult : lme4's arguments.
    progress : called with a short message before each parameter.

    Returns
    -------
    Profile
        ``.confint(level)`` gives lme4's profile intervals.

    Raises
    ------
    TwolevelError
        A name in ``which`` that is not a parameter.

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
    >>> fit = tl.lmer("y ~ x + (1 | school/klass)", d)
    >>> profile_multi(fit, which=["x"]).confint().index.tolist()
    ['x']
    """
    return profile_traces(
        multi_profile_problem(fit), which=which, alphamax=alphamax, maxpts=maxpts,
        delta_cutoff=delta_cutoff, maxmult=maxmult, progress=progress)


def multi_profile_problem(fit) -> ProfileProblem:
    """The :class:`ProfileProblem` of a several-factor fit: its ML refit (lme4's ``refitML``),
    the ML deviance on the sdcor scale from the fit's statistics and, for β_k held at b, the ML
    criterion of the reduced model (MᵀCM of the statistics, module docstring).

    Parameters
    ----------
    fit : MultiFit

    Returns
    -------
    ProfileProblem

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("mAch ~ ses + (1 | sector/school)", tl.load_data("hsb"))  # schools in sectors
    >>> multi_profile_problem(fit).variance_names
    ['.sig01', '.sig02', '.sigma']
    """
    from twolevel.models.lmm.multi import refit_ml_multi

    design, engine, stats = fit.design, fit.engine, fit.stats
    ml = refit_ml_multi(fit)
    n = design.n
    st = _ml_parts(engine, design, stats, ml.theta)
    sig = float(np.sqrt(st.r2 / n))
    LXi = np.linalg.inv(st.LX)
    se = sig * np.sqrt(np.sum(LXi**2, axis=0))
    refit = MLRefit(theta=np.asarray(ml.theta, dtype=float), sigma=sig, beta=st.beta, se=se,
                    deviance=_ml_deviance(st, n))

    def sv_deviance(sv: np.ndarray) -> float:
        theta = multi_sv_to_cv(design, sv)
        if theta is None or not np.all(np.isfinite(theta)):
            return _BIG
        try:
            s = _ml_parts(engine, design, stats, theta)
        except np.linalg.LinAlgError:
            return _BIG
        return _ml_deviance(s, n, float(sv[-1]) ** 2)

    def fixed_deviance(k: int, value: float) -> Callable[[np.ndarray], float]:
        from twolevel.models.lmm.multi import _deviance_fn

        crit = _deviance_fn(engine)(_Reduced(design, design.p - 1),
                                    drop_fixed_stats(stats, k, value), reml=False)
        return lambda theta: min(float(crit(theta)), _BIG)

    lower, upper = multi_sv_bounds(design)
    return ProfileProblem(
        variance_names=multi_parameter_names(design), fixed_names=list(design.x_names),
        sv_opt=multi_cv_to_sv(design, refit.theta, refit.sigma), sv_lower=lower,
        sv_upper=upper, sv_deviance=sv_deviance, fixed_deviance=fixed_deviance,
        theta_lower=design.theta_lower, refit=refit)
