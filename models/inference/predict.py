"""Predictions from a fitted two-level model (lme4's ``predict.merMod``) with confidence and
prediction intervals.

Semantics are lme4's (§1 of ``predict-simulate-r2.md``):

* ``re_form=None`` conditions on every school's BLUPs: ŷ₀ = x₀ᵀβ̂ + z₀ᵀb̃_j;
  ``re_form="NA"`` (or ``"~0"``) gives the population value x₀ᵀβ̂; a formula such as
  ``"~(1 | school)"`` uses only the BLUPs of the effects it names (no intervals then).
* A school not in the fit (or a missing school label) gets b = 0 when ``allow_new_levels``,
  and is an error otherwise (lme4's "new levels detected in newdata").
* The new rows' model matrices are rebuilt from the fit's design
  (:mod:`twolevel.models.design.newdata`): factor levels and contrasts, ``center(x)``-style
  transforms and dropped columns as at fit time. A group-mean-centred predictor made outside the
  formula (``famsesc``, ``cses``) must be in newdata: for a known school
  :func:`~twolevel.models.design.newdata.center_new_rows` centres a raw value on the recorded
  school mean; for a new school the school mean has to be supplied (it is unknown).

Intervals (normal quantiles; all of them **plug in θ̂**, i.e. ignore the uncertainty of T̂ and σ̂,
which matters with few schools; ``interval="bootstrap"`` then gives parametric-bootstrap
prediction intervals that include it, see
:func:`twolevel.models.inference.simulate.bootstrap_predict`):

* ``"confidence"``: for the fitted mean; se = sqrt(x₀ᵀV̂x₀) for population values and new
  schools, and for a known school the joint prediction error sqrt(PEV) of x₀ᵀβ̂ + z₀ᵀb̃_j (lme4
  ≥ 1.1-35's ``se.fit``).
* ``"prediction"``: for a new student's score; known school: PEV + σ̂², with
  PEV = wᵀC w from the joint covariance C of (b̃ − b, β̂ − β) (lme4's ``vcov_full``), which
  includes the negative covariance of β̂ and b̃_j; new school or population:
  x₀ᵀV̂x₀ + z₀ᵀT̂z₀ + σ̂².
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import TwolevelError
from twolevel.models.design.newdata import (
    NewRows,
    check_new_levels,
    new_model_matrices,
    newdata_frame,
    parse_re_form,
)
from twolevel.models.fit_base import has_several_factors
from twolevel.models.lmm.deviance import _forward_solve, unscaled_vcov

__all__ = [
    "INTERVALS",
    "predict",
    "prediction_error_variance",
    "new_school_variance",
    "parse_re_form",
    "re_form_mask",
]

INTERVALS = ("confidence", "prediction", "bootstrap")


def re_form_mask(design, re_form) -> np.ndarray:
    """Which random effects (columns of Z) ``re_form`` conditions on: all for None, none for
    "NA"/"~0", and for a formula like ``"~(1 | school)"`` or ``"~(0 + x | school)"`` the effects
    its bars name (lme4's partial ``re.form``)."""
    q = design.q
    try:
        return np.full(q, parse_re_form(re_form))
    except TwolevelError:
        if not isinstance(re_form, str) or "|" not in re_form:
            raise
    from twolevel.models.design.formula import parse_formula

    bars = parse_formula("y " + re_form.strip()).bars
    mask = np.zeros(q, dtype=bool)
    for bar in bars:
        if bar.group != design.group:
            raise TwolevelError(
                f"re_form {re_form!r} names grouping factor '{bar.group}'; the model's is "
                f"'{design.group}'"
            )
        parts = [t.strip() for t in bar.lhs.replace("-", "+-").split("+") if t.strip()]
        names = [] if any(t in ("0", "-1") for t in parts) else ["(Intercept)"]
        names += [t for t in parts if t not in ("0", "1", "-1")]
        for nm in names:
            if nm not in design.z_names:
                raise TwolevelError(
                    f"re_form {re_form!r} names random effect '{nm}', which the model does not "
                    f"have; its random effects are: {', '.join(design.z_names)}"
                )
            mask[design.z_names.index(nm)] = True
    return mask


def _joint_blocks(fit, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the schools ``j`` (m,), G_j = T L_j⁻ᵀ (m, q, q) and W_j = G_j R_j (m, q, p), so that
    (unscaled, σ² = 1) Cov(b̃_j − b_j) = G_jG_jᵀ + W_jVW_jᵀ, Cov(b̃_j − b_j, β̂ − β) = −W_jV and
    Cov(β̂) = V = (R_XᵀR_X)⁻¹ (the blocks of lme4's ``vcov_full`` = σ²·D A⁻¹ Dᵀ)."""
    st = fit.state
    q = st.T.shape[0]
    L = st.L[j]
    eye = np.broadcast_to(np.eye(q), L.shape)
    Linv = _forward_solve(L, np.ascontiguousarray(eye))
    G = np.matmul(st.T, np.swapaxes(Linv, 1, 2))
    W = np.matmul(G, st.R[j])
    return G, W


def prediction_error_variance(fit, X0: np.ndarray, Z0: np.ndarray, j: np.ndarray) -> np.ndarray:
    """PEV = Var(x₀ᵀβ̂ + z₀ᵀb̃_j − x₀ᵀβ − z₀ᵀb_j) for rows of known schools ``j`` (lme4's
    ``se.fit``², ``[Z X] vcov_full [Z X]ᵀ``):

        PEV = σ̂² [ ‖G_jᵀz₀‖² + aᵀ V a ],   a = x₀ − W_jᵀz₀

    with G_j, W_j, V of :func:`_joint_blocks`. It is smaller than z₀ᵀpostVar_jz₀ + x₀ᵀV̂x₀ because
    β̂ and b̃_j are negatively correlated."""
    G, W = _joint_blocks(fit, j)
    V = unscaled_vcov(fit.state)
    gz = np.einsum("mqr,mq->mr", G, Z0)
    a = X0 - np.einsum("mqp,mq->mp", W, Z0)
    return fit.sigma**2 * (np.einsum("mr,mr->m", gz, gz) + np.einsum("mp,pk,mk->m", a, V, a))


def fixed_variance(fit, X0: np.ndarray) -> np.ndarray:
    """x₀ᵀV̂x₀, V̂ = vcov(β̂) = σ̂²(R_XᵀR_X)⁻¹."""
    V = fit.sigma**2 * unscaled_vcov(fit.state)
    return np.einsum("mp,pk,mk->m", X0, V, X0)


def new_school_variance(fit, X0: np.ndarray, Z0: np.ndarray) -> np.ndarray:
    """Variance of a new student's score in a new school around x₀ᵀβ̂:
    x₀ᵀV̂x₀ + z₀ᵀT̂z₀ + σ̂², with T̂ = σ̂²TTᵀ (VarCorr)."""
    That = fit.VarCorr().cov
    return fixed_variance(fit, X0) + np.einsum("mq,qr,mr->m", Z0, That, Z0) + fit.sigma**2


def predict(
    fit,
    newdata=None,
    re_form=None,
    allow_new_levels: bool = False,
    interval: str | None = None,
    level: float = 0.95,
    *,
    nsim: int = 1000,
    rng=None,
    seed: int | None = None,
    type: str | None = None,
):
    """lme4's ``predict(fit, newdata, re.form, allow.new.levels)`` with optional intervals.
    A glmer fit goes to :meth:`~twolevel.models.glmm.results.GlmerFit.predict` with ``type``
    ("link", the default, or "response"); it has no intervals.

    Parameters
    ----------
    fit : an :class:`~twolevel.models.lmm.results.LmerFit` (or a glmer fit: see above).
    newdata : data frame of new rows (the columns of the formula, and the school column unless
        ``re_form`` is population level); None for the fitted rows.
    re_form : None (condition on the BLUPs), "NA" / "~0" (population level), or a formula
        naming some of the random effects, e.g. "~(1 | school)".
    allow_new_levels : predict schools not in the fit with school effect 0.
    interval : None, "confidence", "prediction" or "bootstrap" (see the module docstring).
    level : coverage of the intervals.
    nsim, rng : bootstrap replicates and random numbers, a seed or a ``numpy.random.Generator``
        (``interval="bootstrap"`` only; default seed 1; ``seed=`` is the older spelling).
    type : "link" or "response" (identical for lmer; for glmer η or g⁻¹(η)).

    Returns
    -------
    ndarray (m,) of predictions when ``interval`` is None; otherwise a DataFrame with columns
    ``fit``, ``se`` (the standard deviation behind the interval; NaN for "bootstrap"), ``lwr``,
    ``upr``, index as newdata's.

    Raises
    ------
    TwolevelError
        An unknown interval or type, a level outside (0, 1), a school not in the fit without
        ``allow_new_levels``, or an interval for a glmer fit.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> tl.predict(fit, interval="confidence").columns.tolist()
    ['fit', 'se', 'lwr', 'upr']
    """
    if hasattr(fit, "family"):  # a GlmerFit
        if interval is not None:
            raise TwolevelError(
                f"interval={interval!r} is not available for glmer fits (lme4 gives none either); "
                "use twolevel.bootstrap(fit, nsim) refits for the uncertainty of predictions")
        return fit.predict(newdata, re_form, allow_new_levels, type=type or "link")
    if type not in (None, "link", "response"):
        raise TwolevelError(f"type must be 'link' or 'response', got {type!r}")
    if has_several_factors(fit):
        if interval is None:
            return fit.predict(newdata, re_form, allow_new_levels)
        from twolevel.models.inference.predict_multi import predict_intervals_multi

        return predict_intervals_multi(fit, newdata, re_form, allow_new_levels, interval, level,
                                       nsim=nsim, rng=rng, seed=seed)
    d = fit.design
    mask = re_form_mask(d, re_form)
    cond = bool(mask.any())
    if interval is not None and cond and not mask.all():
        raise TwolevelError(
            f"intervals need re_form=None (all school effects) or 'NA' (none), not {re_form!r}"
        )
    if interval is not None and interval not in INTERVALS:
        raise TwolevelError(
            f"unknown interval {interval!r}; choose one of: {', '.join(INTERVALS)} (or None)"
        )
    if not 0.0 < float(level) < 1.0:
        raise TwolevelError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    if newdata is None:
        rows = NewRows(X=d.X, Z=d.Z, group_index=d.group_index, new_groups=())
        index = pd.RangeIndex(d.n)
    else:
        nd = newdata_frame(d, newdata, cond)
        rows = new_model_matrices(d, nd)
        index = nd.index
        if cond:
            check_new_levels(rows, allow_new_levels, d.group)
    known = rows.group_index >= 0
    pred = rows.X @ fit.beta
    if cond:
        jk = rows.group_index[known]
        pred[known] += np.einsum("mq,mq->m", rows.Z[known][:, mask], fit.state.b[jk][:, mask])
    if interval is None:
        return pred
    if interval == "bootstrap":
        from twolevel.models.fit_base import as_generator
        from twolevel.models.inference.simulate import bootstrap_predict

        lo, hi = bootstrap_predict(fit, rows, pred, cond, nsim=nsim,
                                   seed=as_generator(rng, seed, default=1), level=level)
        return pd.DataFrame({"fit": pred, "se": np.nan, "lwr": lo, "upr": hi}, index=index)
    use_pev = known & cond
    var = np.empty(pred.shape[0])
    if interval == "confidence":
        var[~use_pev] = fixed_variance(fit, rows.X[~use_pev])
    else:
        var[~use_pev] = new_school_variance(fit, rows.X[~use_pev], rows.Z[~use_pev])
    if use_pev.any():
        pev = prediction_error_variance(
            fit, rows.X[use_pev], rows.Z[use_pev], rows.group_index[use_pev]
        )
        var[use_pev] = pev + (fit.sigma**2 if interval == "prediction" else 0.0)
    se = np.sqrt(var)
    z = float(stats.norm.ppf(0.5 + float(level) / 2.0))
    return pd.DataFrame({"fit": pred, "se": se, "lwr": pred - z * se, "upr": pred + z * se},
                        index=index)
