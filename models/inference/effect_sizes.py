"""Effect sizes of a fitted two-level model: the ICC, Nakagawa's R², Raudenbush & Bryk's
proportion reduction in variance and Snijders & Bosker's R² (§4 of ``predict-simulate-r2.md``).

ICC and R² are computed exactly as ``performance::icc`` / ``performance::r2_nakagawa`` (with
``insight::get_variance``) compute them for an ``lmerMod``:

* σ²_f = var(Xβ̂) (denominator n − 1);
* σ²_r = tr(T̂ ZᵀZ)/n = mean_i z_iᵀT̂z_i (Johnson's 2014 extension for random slopes), where z_i
  are the **fixed-effects** columns named like the random effects (an intercept column is added
  if X has none; a random slope that is not also a fixed effect is left out, with a warning that
  the conditional R² is then inflated);
* σ²_ε = σ̂²;
* a singular fit (a diagonal θ below ``tolerance``) has no σ²_r: the ICC is NaN, the marginal R²
  is σ²_f/(σ²_f + σ²_ε) and the conditional R² NaN (as ``performance``).

**Random-slope caveat.** With a random slope the share of variance between schools depends on
the predictor: ρ(x) = z(x)ᵀT̂z(x) / (z(x)ᵀT̂z(x) + σ̂²) (:func:`icc_at`). The "adjusted ICC" puts
the sample *average* of z_iᵀT̂z_i into one ratio, so it changes when the slope variable is
centred differently; with random slopes report ρ(x) at chosen values instead (or as well).

**GLMMs** (binomial and Poisson, :class:`~twolevel.models.glmm.results.GlmerFit`) follow
performance 0.10.2 / insight 0.19's ``get_variance`` (``.compute_variance_distribution``): σ²_f
and σ²_r as above on the link scale (σ²_f without the offset), and in place of σ²_ε the
distribution-specific variance σ²_d:

* binomial, logit link: π²/3; probit: 1; cloglog: π²/6;
* Poisson, log link: log(1 + 1/λ) with λ = exp(β̂₀) of the *null model* — the same random
  effects and offset with the intercept as the only fixed effect, refitted (insight's
  ``null_model``); a warning when λ < 6 ("mu ... too close to zero"), as insight's.

PRV and Snijders–Bosker compare two fits (a null model ``y ~ 1 + (1 | school)`` and a fuller one)
from their variance components; both are meant for random-intercept models.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twolevel.data.errors import TwolevelError

__all__ = [
    "ICC",
    "R2",
    "VarianceComponents",
    "icc",
    "icc_at",
    "prv",
    "r2_nakagawa",
    "snijders_bosker",
    "variance_components",
]

ICC_TOLERANCE = 1e-5  # performance::icc's default
R2_TOLERANCE = 1e-5  # performance::r2_nakagawa's default in 0.10.2 (1e-8 in later versions)


@dataclass(frozen=True)
class VarianceComponents:
    """insight's ``get_variance`` for a Gaussian LMM: ``fixed`` σ²_f, ``random`` σ²_r (NaN for a
    singular fit), ``residual`` σ²_ε; ``notes`` says what was left out."""

    fixed: float
    random: float
    residual: float
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ICC:
    """Intraclass correlation: ``adjusted`` σ²_r/(σ²_r + σ²_ε) and ``unadjusted``
    σ²_r/(σ²_f + σ²_r + σ²_ε) (performance's ``ICC_adjusted`` / ``ICC_unadjusted``)."""

    adjusted: float
    unadjusted: float


@dataclass(frozen=True)
class R2:
    """Nakagawa's R²: ``marginal`` σ²_f/(σ²_f + σ²_r + σ²_ε) and ``conditional``
    (σ²_f + σ²_r)/(σ²_f + σ²_r + σ²_ε)."""

    marginal: float
    conditional: float


def fixed_variance(fit) -> float:
    """σ²_f = var(Xβ̂), the sample variance (denominator n − 1) of the fixed-part predictions.
    Without the rows (engines duckdb/dask): (β̂ᵀXᵀXβ̂ − n·(x̄ᵀβ̂)²)/(n − 1) from the sums."""
    moments = getattr(fit.design, "column_moments", None)
    if moments is not None:
        d, b = fit.design, fit.beta
        mean = float(sum(moments[f"x:{nm}"][0] * bk for nm, bk in zip(d.x_names, b, strict=True)))
        return float((b @ fit.crossprods.XtX @ b - d.n * mean**2) / (d.n - 1))
    return float(np.var(fit.design.X @ fit.beta, ddof=1))


def random_variance(fit) -> tuple[float, tuple[str, ...]]:
    """σ²_r = (1/n) Σ_i z_iᵀT̂z_i over the random effects that are also fixed-effect columns
    (insight's ``.compute_variance_random``), and notes on what was left out."""
    d = fit.design
    cov = fit.VarCorr().cov
    X = None if getattr(d, "column_moments", None) is not None else d.X  # no rows at scale
    names = list(d.x_names)
    if "(Intercept)" not in names:
        X = None if X is None else np.column_stack([np.ones(d.n), X])
        names = ["(Intercept)", *names]
    notes = []
    keep = [k for k, nm in enumerate(d.z_names) if nm in names]
    dropped = [nm for nm in d.z_names if nm not in names]
    if dropped:
        notes.append(
            f"random slope(s) {', '.join(map(repr, dropped))} not present as fixed effects: "
            "left out of the random-effect variance, which artificially inflates the conditional "
            "R²; add them as fixed effects"
        )
    S = cov[np.ix_(keep, keep)]
    if X is None:  # without the rows: Σ_i z_iᵀSz_i = Σ_ab S_ab Σ_j (Z_jᵀZ_j)_ab
        A = fit.crossprods.A.sum(axis=0)[np.ix_(keep, keep)]
        return float(np.sum(S * A) / d.n), tuple(notes)
    Zx = X[:, [names.index(d.z_names[k]) for k in keep]]
    return float(np.einsum("ia,ab,ib->", Zx, S, Zx) / d.n), tuple(notes)


def distribution_variance(fit) -> float:
    """σ²_ε of an LMM (σ̂²) or a GLMM's distribution-specific variance σ²_d (module docstring:
    π²/3 for logit, 1 for probit, π²/6 for cloglog, log(1 + 1/λ) for a Poisson log link).

    Raises
    ------
    TwolevelError
        For a family/link pair performance does not define (none of twolevel's today).
    """
    family = getattr(fit, "family", None)
    if family is None:
        return float(fit.sigma**2)
    fixed = {("binomial", "logit"): np.pi**2 / 3, ("binomial", "probit"): 1.0,
             ("binomial", "cloglog"): np.pi**2 / 6}
    key = (family.name, family.link)
    if key in fixed:
        return float(fixed[key])
    if key == ("poisson", "log"):
        lam = poisson_null_mean(fit)
        if lam < 6:
            warnings.warn(f"mu of {lam:.1f} is too close to zero, estimate of the "
                          "distribution-specific variance may be unreliable (insight's warning)",
                          UserWarning, stacklevel=4)
        return float(np.log1p(1.0 / lam))
    raise TwolevelError(f"the ICC and R² are not defined for family {family.name} with link "
                        f"{family.link} (performance defines logit/probit/cloglog binomial and "
                        "log Poisson)")


def poisson_null_mean(fit) -> float:
    """λ = exp(β̂₀) of the null model of a Poisson GLMM (insight's ``.variance_distributional``;
    the refit is cached on the fit)."""
    cached = fit.__dict__.get("_null_intercept")
    if cached is None:
        from twolevel.models.glmm.glmer import null_model

        cached = float(null_model(fit).beta[0])
        fit.__dict__["_null_intercept"] = cached  # frozen dataclass: a cache, as cached_property
    return float(np.exp(cached))


def _singular(fit, tolerance: float) -> bool:
    """insight's ``.is_singular`` for merMod: any diagonal θ with |θ| < tolerance."""
    lower = fit.design.theta_lower
    return bool(np.any(np.abs(fit.theta[lower == 0]) < tolerance))


def variance_components(fit, tolerance: float = ICC_TOLERANCE) -> VarianceComponents:
    """σ²_f, σ²_r, σ²_ε of ``fit`` (module docstring); σ²_r is NaN for a singular fit."""
    rv, notes = random_variance(fit)
    if _singular(fit, tolerance):
        rv = float("nan")
        notes = (*notes, "some variance components equal zero (singular fit): the random-effect "
                 "variance, the ICC and the conditional R² are not computed")
    return VarianceComponents(fixed=fixed_variance(fit), random=rv,
                              residual=distribution_variance(fit), notes=notes)


def _warn(notes) -> None:
    for n in notes:
        warnings.warn(n, UserWarning, stacklevel=3)


def icc(fit, tolerance: float = ICC_TOLERANCE) -> ICC:
    """``performance::icc(fit)``: adjusted and unadjusted ICC.

    ICC_adj = σ²_r/(σ²_r + σ²_ε), ICC_unadj = σ²_r/(σ²_f + σ²_r + σ²_ε), with σ²_ε the
    distribution-specific variance for a GLMM (module docstring). With random slopes this is
    an average over the sample (see :func:`icc_at`).

    Parameters
    ----------
    fit : LmerFit or GlmerFit
    tolerance : θ below this counts as a singular fit (performance's default 1e-5).

    Returns
    -------
    ICC
        ``adjusted`` and ``unadjusted`` (both NaN for a singular fit, as performance).

    Raises
    ------
    TwolevelError
        A GLMM family/link without a distribution-specific variance.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + (1 | schid)", tl.load_data("lecture"))
    >>> 0 < tl.icc(fit).adjusted < 1
    True
    """
    vc = variance_components(fit, tolerance)
    _warn(vc.notes)
    f, r, e = vc.fixed, vc.random, vc.residual
    return ICC(adjusted=r / (r + e), unadjusted=r / (f + r + e))


def r2_nakagawa(fit, tolerance: float = R2_TOLERANCE) -> R2:
    """``performance::r2_nakagawa(fit)``: marginal and conditional R² (Nakagawa, Johnson &
    Schielzeth 2017, with Johnson's random-slope extension).

    R²_m = σ²_f/(σ²_f + σ²_r + σ²_ε), R²_c = (σ²_f + σ²_r)/(σ²_f + σ²_r + σ²_ε), σ²_ε the
    distribution-specific variance for a GLMM (module docstring).

    Parameters
    ----------
    fit : LmerFit or GlmerFit
    tolerance : θ below this counts as a singular fit.

    Returns
    -------
    R2
        ``marginal`` and ``conditional``; a singular fit gives the marginal R² without σ²_r and
        a NaN conditional R² (as performance).

    Raises
    ------
    TwolevelError
        A GLMM family/link without a distribution-specific variance.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> r2 = tl.r2_nakagawa(fit)
    >>> 0 < r2.marginal < r2.conditional < 1
    True
    """
    vc = variance_components(fit, tolerance)
    _warn(vc.notes)
    f, r, e = vc.fixed, vc.random, vc.residual
    if np.isnan(r):
        return R2(marginal=f / (f + e), conditional=float("nan"))
    return R2(marginal=f / (f + r + e), conditional=(f + r) / (f + r + e))


def icc_at(fit, z) -> np.ndarray:
    """The intraclass correlation at random-effect covariates z (rows of length q, in
    ``design.z_names`` order, e.g. [1, x] for an intercept and slope):
    ρ(z) = zᵀT̂z / (zᵀT̂z + σ̂²) (σ̂² the distribution-specific variance for a GLMM).

    Parameters
    ----------
    fit : LmerFit or GlmerFit
    z : array (q,) or (m, q) of random-effect covariates.

    Returns
    -------
    numpy.ndarray
        (m,) intraclass correlations.

    Raises
    ------
    TwolevelError
        When z does not have q columns.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", tl.load_data("lecture"))
    >>> tl.icc_at(fit, [[1, -1], [1, 0], [1, 1]]).shape
    (3,)
    """
    z = np.atleast_2d(np.asarray(z, dtype=float))
    if z.shape[1] != fit.design.q:
        raise TwolevelError(
            f"z must have {fit.design.q} columns ({', '.join(fit.design.z_names)}), got "
            f"{z.shape[1]}"
        )
    v = np.einsum("ma,ab,mb->m", z, fit.VarCorr().cov, z)
    return v / (v + distribution_variance(fit))


def _same_data(null, full) -> None:
    from twolevel.models.fit_base import require_lmm

    for f in (null, full):
        require_lmm(f, "this variance-reduction measure", "it compares residual variances σ̂², "
                    "which a binomial or Poisson GLMM does not have")
    if null.nobs != full.nobs or null.design.response != full.design.response:
        raise TwolevelError(
            "the two fits must use the same response and rows (got "
            f"'{null.design.response}' on {null.nobs} rows and '{full.design.response}' on "
            f"{full.nobs} rows)"
        )
    if null.reml != full.reml:
        raise TwolevelError("fit both models with the same criterion (both REML or both ML)")


def prv(null, full) -> pd.Series:
    """Raudenbush & Bryk's proportion reduction in variance of ``full`` relative to ``null``:
    level 1 (σ²₀ − σ²₁)/σ²₀ and, for each random effect in both models, (τ₀ − τ₁)/τ₀ (e.g. τ00;
    τ11 between two slope models). Either can be negative.

    Parameters
    ----------
    null, full : LmerFit
        The two fits (same response and rows, same criterion).

    Returns
    -------
    pandas.Series
        ``sigma2`` and ``tau_<effect>`` reductions.

    Raises
    ------
    TwolevelError
        Different data or criteria, or a glmer fit (no residual variance).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> m0 = tl.lmer("g1rscore ~ 1 + (1 | schid)", d)
    >>> m1 = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", d)
    >>> list(tl.prv(m0, m1).index)
    ['sigma2', 'tau_(Intercept)']
    """
    _same_data(null, full)
    out = {"sigma2": (null.sigma**2 - full.sigma**2) / null.sigma**2}
    v0, v1 = null.VarCorr().variances, full.VarCorr().variances
    for nm in v0.index:
        if nm in v1.index:
            out[f"tau_{nm}"] = (v0[nm] - v1[nm]) / v0[nm]
    return pd.Series(out, name="PRV")


def snijders_bosker(null, full, n_tilde: float | None = None) -> pd.Series:
    """Snijders & Bosker's explained variance for random-intercept models:
    R²₁ = 1 − (σ²₁ + τ00,₁)/(σ²₀ + τ00,₀) and R²₂ = 1 − (σ²₁/ñ + τ00,₁)/(σ²₀/ñ + τ00,₀), with ñ the
    harmonic mean of the school sizes by default (misty's choice). Models with random slopes are
    computed from τ00 with a warning (Snijders & Bosker refit them without slopes).

    Parameters
    ----------
    null, full : LmerFit
        The two fits, both with a random intercept.
    n_tilde : float, optional
        The typical group size (default: the harmonic mean of the school sizes).

    Returns
    -------
    pandas.Series
        ``R2_1`` (level 1), ``R2_2`` (level 2) and ``n_tilde``.

    Raises
    ------
    TwolevelError
        Different data, no random intercept, or a glmer fit.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> m0 = tl.lmer("g1rscore ~ 1 + (1 | schid)", d)
    >>> m1 = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", d)
    >>> r = tl.snijders_bosker(m0, m1)
    >>> bool(0 < r["R2_1"] < 1)
    True
    """
    _same_data(null, full)
    for f in (null, full):
        if "(Intercept)" not in f.design.z_names:
            raise TwolevelError("Snijders–Bosker R² needs a random intercept in both models")
        if f.design.q > 1:
            warnings.warn(
                f"'{f.design.formula}' has random slopes: Snijders–Bosker R² is defined for "
                "random-intercept models (refit without the slopes)", UserWarning, stacklevel=2)
    if n_tilde is None:
        n_tilde = float(1.0 / np.mean(1.0 / full.design.group_sizes))
    t0 = float(null.VarCorr().variances["(Intercept)"])
    t1 = float(full.VarCorr().variances["(Intercept)"])
    s0, s1 = null.sigma**2, full.sigma**2
    return pd.Series({
        "R2_1": 1.0 - (s1 + t1) / (s0 + t0),
        "R2_2": 1.0 - (s1 / n_tilde + t1) / (s0 / n_tilde + t0),
        "n_tilde": n_tilde,
    }, name="Snijders-Bosker")


def effect_size_dict(fit) -> dict:
    """{"icc", "icc_unadjusted", "r2_marginal", "r2_conditional"} of ``fit`` (the CLI's JSON
    keys), without warnings (the notes are in :func:`effect_size_text`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        i, r = icc(fit), r2_nakagawa(fit)
    return {"icc": i.adjusted, "icc_unadjusted": i.unadjusted, "r2_marginal": r.marginal,
            "r2_conditional": r.conditional}


def effect_size_text(fit) -> str:
    """The effect-size block of ``summary(effect_sizes=True)``."""
    es = effect_size_dict(fit)
    vc = variance_components(fit)
    lines = [
        "Effect sizes (performance::icc / r2_nakagawa):",
        f"  ICC adjusted {es['icc']:.4f}, unadjusted {es['icc_unadjusted']:.4f}",
        f"  R2 marginal {es['r2_marginal']:.4f}, conditional {es['r2_conditional']:.4f}",
        f"  variances: fixed {vc.fixed:.4g}, random {vc.random:.4g}, residual {vc.residual:.4g}",
    ]
    if fit.design.q > 1:
        lines.append("  With random slopes the ICC is an average over the sample: the share of\n"
                     "  variance between schools depends on the slope variable (see icc_at).")
    lines.extend(f"  note: {n}" for n in vc.notes)
    return "\n".join(lines)
