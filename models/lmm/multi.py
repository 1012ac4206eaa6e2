"""``lmer`` with several grouping factors: design → statistics → criterion → lme4's optimizer
path → :class:`~twolevel.models.lmm.multi_results.MultiFit`; ML refits, lmerTest's
Satterthwaite df and the likelihood-ratio test.

Nested factors (each nested in the next) use the block elimination of
:mod:`twolevel.models.lmm.nested`; anything else (crossed, partially crossed) the dense block of
:mod:`twolevel.models.lmm.crossed`. Both minimise the same profiled criterion with lme4's
optimizer path (:func:`twolevel.models.lmm.optimize.optimize_theta`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import special

from twolevel.data.errors import TwolevelError
from twolevel.models.design.multi import MultiDesign, make_multi_design
from twolevel.models.design.multi_stats import (
    crossed_stats,
    nested_chain,
    nested_stats,
)
from twolevel.models.lmm.crossed import crossed_deviance, crossed_state
from twolevel.models.lmm.multi_results import MultiFit
from twolevel.models.lmm.nested import (
    MultiState,
    nested_deviance,
    nested_group_sums,
    nested_state,
)
from twolevel.models.lmm.optimize import MODES, optimize_theta, refit_ml_theta
from twolevel.models.lmm.satterthwaite import (
    EIGEN_TOL,
    VarparInfo,
    numderiv_hessian,
    numderiv_jacobian,
)

__all__ = ["anova_multi", "fit_multi_design", "lmer_multi", "multi_varpar_info",
           "refit_ml_multi"]

_LOG_2PI = float(np.log(2.0 * np.pi))
# crossed designs: the largest dense block of the other factors' random effects (about 3 s per
# Cholesky at 6000 on one core; the criterion is evaluated 30–100 times)
MAX_DENSE = 6000


def _state_fn(engine: str):
    return nested_state if engine == "nested" else crossed_state


def _deviance_fn(engine: str):
    return nested_deviance if engine == "nested" else crossed_deviance


def _theta_start(design: MultiDesign, st, engine: str) -> np.ndarray:
    """``design.theta_start()``; for an in-memory nested design (whose method would count the
    rows again) from the nested statistics' group sums (:func:`nested_group_sums`)."""
    if engine == "nested" and type(design) is MultiDesign:
        return design.theta_start(nested_group_sums(design, st))
    return design.theta_start()


def fit_multi_design(design: MultiDesign, REML: bool = True, optimizer: str = "lme4",
                     data_name: str = "data", stats=None) -> MultiFit:
    """Fit a :class:`~twolevel.models.design.multi.MultiDesign` (lme4's ``mkLmerDevfun`` →
    ``optimizeLmer`` → ``mkMerMod``).

    Parameters
    ----------
    design : the design.  REML : REML (True) or ML.  optimizer : "lme4" or "tight".
    data_name : the "Data:" line.  stats : nested statistics computed elsewhere (DuckDB, Dask:
        :func:`twolevel.models.design.multi_scale.nested_stats_scale`); None computes them from
        the design's rows.

    Returns
    -------
    MultiFit

    Raises
    ------
    TwolevelError
        For an unknown optimizer.

    Examples
    --------
    >>> fit = fit_multi_design(make_multi_design("y ~ x + (1 | s/c)", df))   # doctest: +SKIP
    """
    if optimizer not in MODES:
        raise TwolevelError(
            f"unknown optimizer '{optimizer}'; choose 'lme4' (lme4's exact path, default) or "
            "'tight' (lme4's path then a polish)"
        )
    engine = "nested" if stats is not None or nested_chain(design) else "crossed"
    if engine == "crossed":
        dense = sum(f.n_levels * f.q for f in design.factors[1:])
        if dense > MAX_DENSE:
            sizes = ", ".join(f"'{f.name}' {f.n_levels} levels" for f in design.factors)
            raise TwolevelError(
                f"the grouping factors of '{design.formula}' are crossed ({sizes}); after the "
                f"largest, the others need a dense block of {dense} random effects, above the "
                f"{MAX_DENSE} this engine handles (a sparse Cholesky is not available yet); "
                "if the smaller factor is nested in the larger, spell it 'outer/inner'"
            )
    st = stats if stats is not None else (
        nested_stats(design) if engine == "nested" else crossed_stats(design))
    fn = _deviance_fn(engine)(design, st, reml=REML)
    theta0 = _theta_start(design, st, engine)
    opt = optimize_theta(fn, theta0, design.theta_lower, mode=optimizer)
    state = _state_fn(engine)(design, st, opt.theta, modes=True)
    return MultiFit(design=design, stats=st, engine=engine, reml=REML,
                    theta=np.asarray(opt.theta, dtype=float), state=state, optsum=opt,
                    data_name=data_name)


def lmer_multi(formula: str, data: pd.DataFrame, REML: bool = True, optimizer: str = "lme4",
               data_name: str = "data") -> MultiFit:
    """Fit a linear mixed model with several grouping factors, like ``lme4::lmer``.

    Parameters
    ----------
    formula : lme4 formula, e.g. ``"y ~ x + (1 + x | school/class)"``,
        ``"y ~ x + (1 | school) + (1 | school:class)"`` or ``"y ~ 1 + (1 | a) + (1 | b)"``.
    data : a data frame.
    REML : REML (True) or ML.  optimizer : "lme4" (lme4's path) or "tight".
    data_name : the name on summary()'s "Data:" line.

    Returns
    -------
    MultiFit

    Warns
    -----
    UserWarning
        Rows dropped for missing values, rank-deficient columns dropped, reused class labels
        treated as crossed, a singular fit, non-convergence.

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
    >>> fit = tl.lmer_multi("y ~ x + (1 | school/klass)", d)
    >>> print(fit.summary())                                # lmerTest's printout
    Linear mixed model fit by REML. t-tests use Satterthwaite's method [
    lmerModLmerTest]
    Formula: y ~ x + (1 | school/klass)
    ...
    """
    design = make_multi_design(formula, data)
    for note in design.notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return warn_fit(fit_multi_design(design, REML=REML, optimizer=optimizer,
                                     data_name=data_name))


def warn_fit(fit: MultiFit, stacklevel: int = 4) -> MultiFit:
    """lme4's two warnings after a fit (a boundary fit, no convergence); returns ``fit``."""
    if fit.is_singular():
        warnings.warn("boundary (singular) fit: see help('isSingular')", UserWarning,
                      stacklevel=stacklevel)
    if not fit.converged:
        warnings.warn(f"optimizer did not converge ({fit.optsum.status_message})", UserWarning,
                      stacklevel=stacklevel)
    return fit


def refit_ml_multi(fit: MultiFit) -> MultiFit:
    """lme4's ``refitML`` for several factors: BOBYQA on the ML deviance from the REML θ̂
    (:func:`twolevel.models.lmm.optimize.refit_ml_theta`). ML fits are returned unchanged.

    Parameters
    ----------
    fit : MultiFit
        A fit with several grouping factors (REML or ML).

    Returns
    -------
    MultiFit
        The ML fit (``fit`` itself when it is ML already).

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
    >>> ml = tl.refit_ml_multi(tl.lmer_multi("y ~ x + (1 | school/klass)", d))
    >>> ml.reml
    False
    """
    if not fit.reml:
        return fit
    fn = _deviance_fn(fit.engine)(fit.design, fit.stats, reml=False)
    opt = refit_ml_theta(fn, fit.theta, fit.design.theta_lower)
    state = _state_fn(fit.engine)(fit.design, fit.stats, opt.theta, modes=True)
    return MultiFit(design=fit.design, stats=fit.stats, engine=fit.engine, reml=False,
                    theta=np.asarray(opt.theta, dtype=float), state=state, optsum=opt,
                    data_name=fit.data_name)


# ----------------------------------------------------------------------------- Satterthwaite


def _parts(fit: MultiFit, theta: np.ndarray, cache: dict | None = None) -> MultiState:
    """The engine's state at θ (no modes), remembered in ``cache`` by θ's bytes: numDeriv's
    steps in σ alone reuse the state of their θ."""
    theta = np.asarray(theta, dtype=float)
    key = theta.tobytes()
    if cache is not None and key in cache:
        return cache[key]
    st = _state_fn(fit.engine)(fit.design, fit.stats, theta)
    if cache is not None:
        cache[key] = st
    return st


def devfun_vp_multi(fit: MultiFit, cache: dict | None = None):
    """lmerTest's D(θ, σ): ML ``log|L|² + r²/σ² + n log(2πσ²)``; REML adds
    ``log|L_X|² − p log(2πσ²)``."""
    n, p, reml = fit.design.n, fit.design.p, fit.reml

    def D(varpar: np.ndarray) -> float:
        st = _parts(fit, varpar[:-1], cache)
        s2 = varpar[-1] ** 2
        dev = st.ldL2 + st.r2 / s2 + n * (_LOG_2PI + math.log(s2))
        if reml:
            dev += st.ldRX2 - p * (_LOG_2PI + math.log(s2))
        return float(dev)

    return D


def covbeta_multi(fit: MultiFit, varpar: np.ndarray, cache: dict | None = None) -> np.ndarray:
    """C(θ, σ) = σ²(L_XL_Xᵀ)⁻¹, lmerTest's ``get_covbeta``."""
    st = _parts(fit, varpar[:-1], cache)
    LXi = np.linalg.inv(st.LX)
    return varpar[-1] ** 2 * (LXi.T @ LXi)


def multi_varpar_info(fit: MultiFit) -> VarparInfo:
    """lmerTest's ``as_lmerModLT`` for several factors: numDeriv's Hessian of D(θ, σ), 2H⁺ and
    numDeriv's Jacobian of cov(β̂) in (θ, σ)."""
    varpar = np.append(np.asarray(fit.theta, dtype=float), fit.sigma)
    cache: dict = {}
    H = numderiv_hessian(devfun_vp_multi(fit, cache), varpar)
    evals, evecs = np.linalg.eigh(H)
    pos = evals > EIGEN_TOL
    Hinv = (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    p = fit.design.p
    Jm = numderiv_jacobian(lambda vp: covbeta_multi(fit, vp, cache).ravel(order="F"), varpar)
    Jac = np.stack([Jm[:, k].reshape(p, p, order="F") for k in range(Jm.shape[1])])
    msgs = []
    if np.any(evals < -EIGEN_TOL):
        msgs.append("Model failed to converge with negative eigenvalue(s) of the Hessian")
    return VarparInfo(varpar=varpar, hessian=H, vcov_varpar=2.0 * Hinv, jacobian=Jac,
                      vcov_beta=covbeta_multi(fit, varpar, cache), warnings=tuple(msgs))


# ----------------------------------------------------------------------------- anova


def _pattern(fit) -> set[tuple[str, str, str]]:
    """(factor, effect, effect) of every free covariance entry; one-factor fits included."""
    d = fit.design
    out = set()
    if isinstance(d, MultiDesign):
        for t in d.terms:
            f = d.factors[t.factor].name
            out |= {(f, a, b) for a in t.names for b in t.names}
    else:
        out |= {(d.group, a, b) for t in d.terms for a in t.names for b in t.names}
    return out


def anova_multi(small, big, names: tuple[str, str] = ("small", "big")) -> dict:
    """Likelihood-ratio test of two nested fits, at least one with several factors (lme4's
    ``anova``: ML refits of lmer fits, glmer fits as they are; χ² = 2Δ logLik on Δnpar df;
    with the ½χ²_k + ½χ²_{k+1} boundary mixture when ``big`` adds one random effect and its k
    covariances).

    Parameters
    ----------
    small, big : fits (:class:`MultiFit` or one-factor ``LmerFit``) of the same rows.
    names : the labels of the two models.

    Returns
    -------
    dict
        models (name, formula, npar, aic, bic, loglik, deviance), chisq, df, p, p_mixture,
        mixture.

    Raises
    ------
    TwolevelError
        When the fits have different responses or numbers of rows, or are not nested.

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
    >>> small = tl.lmer("y ~ x + (1 | school)", d)
    >>> big = tl.lmer("y ~ x + (1 | school/klass)", d)
    >>> res = tl.anova_multi(small, big)       # ML refits, LRT, the boundary mixture p
    >>> res["df"], res["mixture"]
    (1.0, '0.5*chi2(0) + 0.5*chi2(1)')
    """
    from twolevel.models.lmm.lmer import refit_ml

    fams = [getattr(getattr(f, "family", None), "name", None) for f in (small, big)]
    if fams[0] != fams[1]:
        raise TwolevelError(
            f"models '{names[0]}' and '{names[1]}' are not of one family "
            f"({fams[0] or 'gaussian'}, {fams[1] or 'gaussian'}); a likelihood-ratio test "
            "compares two lmer fits or two glmer fits of the same family")
    fits = [f if fams[0] else refit_ml_multi(f) if isinstance(f, MultiFit) else refit_ml(f)
            for f in (small, big)]  # glmer fits are maximum likelihood already
    if fits[0].npar > fits[1].npar:
        fits.reverse()
        names = (names[1], names[0])
    s, b = fits
    if s.design.response != b.design.response or s.nobs != b.nobs:
        raise TwolevelError(
            f"models '{names[0]}' and '{names[1]}' were not fitted to the same response and rows "
            f"('{s.design.response}', {s.nobs} rows; '{b.design.response}', {b.nobs} rows); "
            "a likelihood-ratio test needs the same data"
        )
    ps, pb = _pattern(s), _pattern(b)
    missing_fe = [n for n in s.design.x_names if n not in b.design.x_names]
    if missing_fe or not ps <= pb:
        raise TwolevelError(
            f"model '{names[0]}' is not nested in '{names[1]}': every fixed effect and random "
            "(co)variance of the smaller model must be in the bigger one"
        )
    chisq = 2.0 * max(0.0, b.loglik - s.loglik)
    df = b.npar - s.npar
    p = float(special.chdtrc(df, chisq)) if df > 0 else float("nan")  # = chi2.sf
    added = pb - ps
    new = {(f, a) for f, a, c in added if a == c}
    pmix, mixture = float("nan"), ""
    if len(new) == 1 and tuple(s.design.x_names) == tuple(b.design.x_names):
        (fac, eff), = new
        k = len({c for f, a, c in added if f == fac and a == eff and c != eff})
        if df == k + 1:
            from twolevel.models.inference.anova import mixture_pvalue

            pmix, mixture = mixture_pvalue(chisq, k), f"0.5*chi2({k}) + 0.5*chi2({k + 1})"
    models = [{"name": nm, "formula": f.design.formula, "npar": int(f.npar), "aic": f.aic,
               "bic": f.bic, "loglik": f.loglik, "deviance": -2.0 * f.loglik}
              for nm, f in zip(names, fits, strict=True)]
    return {"models": models, "chisq": chisq, "df": float(df), "p": p,
            "p_mixture": None if math.isnan(pmix) else pmix, "mixture": mixture}
