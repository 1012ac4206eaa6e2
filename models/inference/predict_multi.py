"""Confidence and prediction intervals for predictions from a fit with several grouping factors
(students in classes in schools), with new levels at any level.

Model: y = Xβ + ZΛu + ε, u ~ N(0, σ²I), ε ~ N(0, σ²I). At θ̂ the conditional modes ũ and β̂
solve the penalised system with matrix (unscaled)

    A = [ ΛᵀZᵀZΛ + I   ΛᵀZᵀX ]
        [ XᵀZΛ          XᵀX  ]

and the joint covariance of the errors (ũ − u, β̂ − β) is σ²A⁻¹ (Henderson; lme4's ``vcov_full``
is σ²·D A⁻¹ Dᵀ with D = blockdiag(Λ, I)). A prediction x₀ᵀβ̂ + Σ_k z₀ₖᵀb̃ₖ over the factors
whose level the row has (and ``re_form`` keeps) is x₀ᵀβ̂ + wᵤᵀũ with wᵤ = Λᵀ z₀ placed at those
levels, so its prediction error variance is

    PEV = σ̂² wᵀ A⁻¹ w,   w = [wᵤ; x₀].

Intervals (normal quantiles; all plug in θ̂ and σ̂, as for one factor in
:mod:`twolevel.models.inference.predict`):

* ``"confidence"``: se² = PEV. For a new school this is x₀ᵀV̂x₀; for a new class in a known
  school it is the PEV of x₀ᵀβ̂ + z₀ᵀb̃_school.
* ``"prediction"``: a new observation: se² = PEV + Σ_{k unseen} z₀ₖᵀ Σ̂ₖ z₀ₖ + σ̂², where the
  sum runs over the factors whose level is new (their effects are unknown and drawn from
  N(0, Σ̂ₖ), Σ̂ₖ = σ̂²TₖTₖᵀ). A new class in a known school adds the class variance; a new school
  adds the school's and the class's.
* ``"bootstrap"``: studentized parametric-bootstrap prediction intervals (bootstrap-t) that
  carry the uncertainty of θ̂ and σ̂ the plug-in ignores
  (:mod:`twolevel.models.inference.predict_multi_boot`).

A is sparse with lme4's pattern; it is factorised once per fit (SuperLU), and each row's w has
only q_k nonzeros per factor plus p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from scipy.sparse.linalg import splu

from twolevel.data.errors import TwolevelError

__all__ = ["MultiNewRows", "joint_system", "multi_new_rows", "plugin_variance_multi",
           "point_predictions_multi", "predict_intervals_multi",
           "prediction_error_variance_multi", "raw_crossprods", "re_form_effects"]

INTERVALS = ("confidence", "prediction", "bootstrap")


def _label_text(v) -> str:
    """A group label as the fit's level labels write it (integer-valued floats as integers)."""
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


def re_form_effects(fit, re_form) -> list[np.ndarray]:
    """Which random effects ``re_form`` conditions on, one boolean mask per factor (over its
    ``z_names``): all for None, none for "NA"/"~0"/NaN, and for a formula such as
    ``"~(1 | school)"`` the effects its bars name, on the factors they name after ``/``
    expansion (lme4's partial ``re.form``: ``~(1 | school)`` keeps the school effects and drops
    the class effects).

    Raises
    ------
    TwolevelError
        A bar naming a grouping factor or an effect the model does not have, or another string.
    """
    from twolevel.data.errors import TwolevelError
    from twolevel.models.design.formula import parse_formula
    from twolevel.models.design.multi import expand_group
    from twolevel.models.design.newdata import parse_re_form

    d = fit.design
    try:
        full = parse_re_form(re_form)
        return [np.full(f.q, full) for f in d.factors]
    except TwolevelError:
        if not isinstance(re_form, str) or "|" not in re_form:
            raise TwolevelError(f"re_form '{re_form}' is not understood; use None (every "
                                "factor), 'NA' (fixed part only) or a formula such as "
                                "'~(1 | school)'") from None
    masks = [np.zeros(f.q, dtype=bool) for f in d.factors]
    names = {f.name: k for k, f in enumerate(d.factors)}
    for bar in parse_formula("y " + re_form.strip()).bars:
        parts = [t.strip() for t in bar.lhs.replace("-", "+-").split("+") if t.strip()]
        eff = [] if any(t in ("0", "-1") for t in parts) else ["(Intercept)"]
        eff += [t for t in parts if t not in ("0", "1", "-1")]
        for fname, _ in expand_group(bar.group):
            if fname not in names:
                raise TwolevelError(
                    f"re_form {re_form!r} names grouping factor '{fname}', which the model does "
                    f"not have; its factors are: {', '.join(names)}")
            f = d.factors[names[fname]]
            for nm in eff:
                if nm not in f.z_names:
                    raise TwolevelError(
                        f"re_form {re_form!r} names random effect '{nm}' of '{fname}', which "
                        f"the model does not have; its effects are: {', '.join(f.z_names)}")
                masks[names[fname]][f.z_names.index(nm)] = True
    return masks


@dataclass(frozen=True)
class MultiNewRows:
    """New rows rebuilt from a several-factor fit's design.

    Fields
    ------
    X : (m, p) fixed-effects rows.  Z : per factor, (m, q_k) its random-effect covariates
    (all of them: ``masks`` says which ``re_form`` keeps).  idx : per factor, each row's level
    (−1: a level the fit never saw).  masks : per factor, the effects ``re_form`` keeps.
    """

    X: np.ndarray
    Z: tuple[np.ndarray, ...]
    idx: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]


def multi_new_rows(fit, newdata=None, re_form=None,
                   allow_new_levels: bool = False) -> MultiNewRows:
    """The model matrices of ``newdata`` (None: the fitted rows) as the fit built them, and each
    row's level of every factor ``re_form`` keeps.

    Raises
    ------
    DataError
        An unseen level without ``allow_new_levels``, a missing grouping column, or the errors of
        :func:`twolevel.models.design.newdata.new_model_matrices`.
    """
    from twolevel.data.errors import DataError
    from twolevel.models.design.formula import parse_formula
    from twolevel.models.design.multi import expand_group
    from twolevel.models.design.newdata import (
        _all_names,
        _as_frame,
        _check_columns,
        _check_finite,
        _matrix,
    )

    d = fit.design
    masks = re_form_effects(fit, re_form)
    if newdata is None:
        fit._need_rows("predictions on the fitted rows")
        return MultiNewRows(d.X, tuple(f.Z for f in d.factors),
                            tuple(f.codes for f in d.factors), tuple(masks))
    nd = _as_frame(newdata)
    parsed = parse_formula(d.formula)
    used = _check_columns(d, nd, [parsed.fixed] + [b.lhs for b in parsed.bars])
    _check_finite(nd, used)
    X0 = _matrix(d, parsed.fixed, nd, d.x_names)
    cols: dict[tuple[str, str], np.ndarray] = {}
    for bar in parsed.bars:
        names = _all_names(d, bar.lhs)
        mat = _matrix(d, bar.lhs, nd, names)
        for fname, _ in expand_group(bar.group):
            for k, nm in enumerate(names):
                cols[fname, nm] = mat[:, k]
    Zs, idxs = [], []
    for f, mask in zip(d.factors, masks, strict=True):
        Z0 = np.column_stack([cols[f.name, nm] for nm in f.z_names])
        if not mask.any():
            Zs.append(Z0)
            idxs.append(np.full(len(nd), -1, dtype=np.intp))
            continue
        absent = [c for c in f.columns if c not in nd.columns]
        if absent:
            raise DataError(f"newdata lacks grouping column(s) {', '.join(map(repr, absent))} "
                            f"of factor '{f.name}'; add them (or predict with re_form='NA')")
        labels = [":".join(_label_text(v) for v in row)
                  for row in nd[list(f.columns)].itertuples(index=False)]
        pos = {lab: i for i, lab in enumerate(f.levels)}
        idx = np.array([pos.get(lab, -1) for lab in labels], dtype=np.intp)
        if np.any(idx < 0) and not allow_new_levels:
            new = list(dict.fromkeys(lab for lab, i in zip(labels, idx, strict=True) if i < 0))
            raise DataError(
                f"newdata has level(s) of '{f.name}' the fit never saw ({', '.join(new[:5])}); "
                "use allow_new_levels=True to predict them with that level's effect 0"
            )
        Zs.append(Z0)
        idxs.append(idx)
    return MultiNewRows(X0, tuple(Zs), tuple(idxs), tuple(masks))


def _expanded_z(design) -> sp.csr_matrix:
    """The sparse N × Σℓ_kq_k matrix Z: row i holds z_kiᵀ at the columns of its level of every
    factor k (factors in ``design.factors`` order, levels × effects within a factor)."""
    blocks = []
    for f in design.factors:
        Z = np.asarray(f.Z, dtype=float)
        n, q = Z.shape
        ind = (f.codes[:, None] * q + np.arange(q)[None, :]).ravel()
        blocks.append(sp.csr_matrix((Z.ravel(), ind, np.arange(0, n * q + 1, q)),
                                    shape=(n, f.n_levels * q)))
    return sp.hstack(blocks, format="csr")


def raw_crossprods(design) -> sp.csc_matrix:
    """M = [Z X]ᵀ[Z X] (Z of :func:`_expanded_z`), independent of θ and of y: the bootstrap's
    refits on the same design share it."""
    W = sp.hstack([_expanded_z(design), sp.csr_matrix(np.asarray(design.X, dtype=float))],
                  format="csc")
    return (W.T @ W).tocsc()


def _lambda_full(design, theta: np.ndarray) -> sp.csc_matrix:
    """D = blockdiag(I_ℓ₁ ⊗ T₁, …, I_ℓK ⊗ T_K, I_p), so that [ZΛ X] = [Z X] D (built from its
    arrays: column ℓq + c of a factor's block holds T[:, c] at rows ℓq … ℓq + q − 1)."""
    data, rows, cols = [], [], []
    off = 0
    for k, f in enumerate(design.factors):
        T = design.factor_T(theta, k)
        q, n = f.q, f.n_levels
        base = off + np.arange(n)[:, None, None] * q  # (ℓ, 1, 1)
        r = base + np.arange(q)[None, :, None]  # (ℓ, q_r, 1)
        c = base + np.arange(q)[None, None, :]  # (ℓ, 1, q_c)
        data.append(np.broadcast_to(T, (n, q, q)).ravel())
        rows.append(np.broadcast_to(r, (n, q, q)).ravel())
        cols.append(np.broadcast_to(c, (n, q, q)).ravel())
        off += n * q
    data.append(np.ones(design.p))
    rows.append(off + np.arange(design.p))
    cols.append(off + np.arange(design.p))
    size = off + design.p
    return sp.csc_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(size, size))


def joint_system(fit, raw: sp.csc_matrix | None = None) -> sp.csc_matrix:
    """The unscaled penalised matrix A of the module docstring at θ̂ (sparse, symmetric):
    A = DᵀMD + (I_q ⊕ 0) with M = [Z X]ᵀ[Z X] and D = blockdiag(I ⊗ T_k, I_p).

    Parameters
    ----------
    fit : a :class:`~twolevel.models.lmm.multi_results.MultiFit` with its rows in memory.
    raw : M of :func:`raw_crossprods` for the fit's design (None: computed from the rows).

    Returns
    -------
    scipy.sparse.csc_matrix
        A, of size (Σℓ_kq_k + p)².

    Examples
    --------
    >>> A = joint_system(fit)   # doctest: +SKIP
    """
    d = fit.design
    M = raw_crossprods(d) if raw is None else raw
    D = _lambda_full(d, fit.theta)
    A = (D.T @ M @ D).tocsc()
    q = M.shape[0] - d.p
    A.setdiag(A.diagonal()[:q] + 1.0)
    return A


def _factorised(fit, raw: sp.csc_matrix | None = None):
    """SuperLU of A, kept on the fit (a frozen dataclass: in its ``__dict__``, as
    ``cached_property`` does)."""
    lu = fit.__dict__.get("_joint_splu")
    if lu is None:
        lu = fit.__dict__["_joint_splu"] = splu(joint_system(fit, raw),
                                                permc_spec="MMD_AT_PLUS_A")
    return lu


def _w_matrix(fit, rows, use: list[np.ndarray]) -> np.ndarray:
    """(m, Σℓ_kq_k + p) rows w = [Λᵀz₀ at the known levels; x₀] (dense: m is small)."""
    d = fit.design
    sizes = [f.n_levels * f.q for f in d.factors]
    off = np.concatenate([[0], np.cumsum(sizes)])
    m = rows.X.shape[0]
    w = np.zeros((m, int(off[-1]) + d.p))
    w[:, off[-1]:] = rows.X
    for k, f in enumerate(d.factors):
        ok = use[k]
        if not ok.any():
            continue
        zt = (rows.Z[k][ok] * rows.masks[k]) @ d.factor_T(fit.theta, k)  # (Λᵀz)_level = Tᵀz
        cols = off[k] + rows.idx[k][ok][:, None] * f.q + np.arange(f.q)[None, :]
        w[np.flatnonzero(ok)[:, None], cols] = zt
    return w


def prediction_error_variance_multi(fit, rows, raw: sp.csc_matrix | None = None) -> np.ndarray:
    """PEV = σ̂² wᵀA⁻¹w of each new row (module docstring), over the factors whose level the
    row has and ``re_form`` keeps.

    Parameters
    ----------
    fit : the MultiFit.
    rows : :class:`~twolevel.models.lmm.multi_results.MultiNewRows`.
    raw : M of :func:`raw_crossprods` (None: computed from the rows).

    Returns
    -------
    numpy.ndarray
        One PEV per row.

    Examples
    --------
    >>> prediction_error_variance_multi(fit, multi_new_rows(fit, nd))   # doctest: +SKIP
    """
    use = [(rows.idx[k] >= 0) & bool(rows.masks[k].any()) for k in range(len(rows.idx))]
    w = _w_matrix(fit, rows, use)
    sol = _factorised(fit, raw).solve(np.ascontiguousarray(w.T))
    return fit.sigma**2 * np.einsum("mj,jm->m", w, sol)


def point_predictions_multi(fit, rows) -> np.ndarray:
    """x₀ᵀβ̂ + Σ_k z₀ₖᵀb̃ₖ over the factors whose level the row has and ``re_form`` keeps
    (lme4's ``predict``; an unseen level contributes 0).

    Parameters
    ----------
    fit : the MultiFit.  rows : :class:`MultiNewRows`.

    Returns
    -------
    numpy.ndarray
        One prediction per row.

    Examples
    --------
    >>> point_predictions_multi(fit, multi_new_rows(fit, nd))   # doctest: +SKIP
    """
    pred = rows.X @ fit.state.beta
    for k in range(len(fit.design.factors)):
        known = rows.idx[k] >= 0
        if rows.masks[k].any() and known.any():
            pred[known] += np.einsum("nq,nq->n", rows.Z[k][known] * rows.masks[k],
                                     fit._b(k)[rows.idx[k][known]])
    return pred


def plugin_variance_multi(fit, rows, interval: str = "prediction",
                          raw: sp.csc_matrix | None = None) -> np.ndarray:
    """The plug-in variance behind each row's interval (module docstring): PEV for
    ``"confidence"``; PEV + Σ_{k unseen} z₀ₖᵀΣ̂ₖz₀ₖ + σ̂² for ``"prediction"``.

    Parameters
    ----------
    fit : the MultiFit.  rows : :class:`MultiNewRows`.
    interval : "confidence" or "prediction".
    raw : M of :func:`raw_crossprods` (None: computed from the rows).

    Returns
    -------
    numpy.ndarray
        One variance per row.

    Examples
    --------
    >>> plugin_variance_multi(fit, multi_new_rows(fit, nd), "prediction")   # doctest: +SKIP
    """
    d = fit.design
    var = prediction_error_variance_multi(fit, rows, raw)
    if interval == "prediction":
        s2 = fit.sigma**2
        for k in range(len(d.factors)):
            new = ~((rows.idx[k] >= 0) & bool(rows.masks[k].any()))
            if new.any():
                T = d.factor_T(fit.theta, k)
                Sig = s2 * T @ T.T
                var[new] += np.einsum("mq,qr,mr->m", rows.Z[k][new], Sig, rows.Z[k][new])
        var += s2
    return var


def predict_intervals_multi(fit, newdata=None, re_form=None, allow_new_levels: bool = False,
                            interval: str = "prediction", level: float = 0.95, *,
                            nsim: int = 1000, rng=None, seed: int | None = None
                            ) -> pd.DataFrame:
    """Predictions with confidence or prediction intervals for a several-factor fit.

    Parameters
    ----------
    fit : a MultiFit.  newdata : new rows (None: the fitted rows).
    re_form : None (every factor) or "NA"/"~0" (fixed part only).
    allow_new_levels : predict levels the fit never saw (their effect 0, their variance added
        to a prediction interval).
    interval : "confidence", "prediction" or "bootstrap" (studentized parametric-bootstrap
        prediction intervals, which carry the uncertainty of θ̂:
        :func:`twolevel.models.inference.predict_multi_boot.bootstrap_predict_multi`).
    level : coverage.
    nsim, rng : bootstrap replicates and random numbers, a seed or a
        ``numpy.random.Generator`` (``interval="bootstrap"`` only; default seed 1; ``seed=`` is
        the older spelling).

    Returns
    -------
    pandas.DataFrame
        ``fit``, ``se`` (the SD behind the interval; NaN for "bootstrap"), ``lwr``, ``upr``, one
        row per new row.

    Raises
    ------
    TwolevelError
        An unknown interval, a level outside (0, 1), a partial ``re_form`` (intervals need
        every factor or none), or (bootstrap) ``nsim`` not a positive whole number.

    Examples
    --------
    >>> predict_intervals_multi(fit, nd, allow_new_levels=True)   # doctest: +SKIP
    """
    if interval not in INTERVALS:
        raise TwolevelError(f"unknown interval {interval!r} for several grouping factors; "
                            f"choose one of: {', '.join(INTERVALS)} (or None)")
    if not 0.0 < float(level) < 1.0:
        raise TwolevelError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    rows = multi_new_rows(fit, newdata, re_form, allow_new_levels)
    partial = [m.any() and not m.all() for m in rows.masks]
    kinds = {bool(m.any()) for m in rows.masks}
    if any(partial) or len(kinds) > 1:
        raise TwolevelError(f"intervals need re_form=None (every factor) or 'NA' (none), not "
                            f"{re_form!r}")
    pred = point_predictions_multi(fit, rows)
    index = newdata.index if isinstance(newdata, pd.DataFrame) else pd.RangeIndex(len(pred))
    if interval == "bootstrap":
        from twolevel.models.fit_base import as_generator
        from twolevel.models.inference.predict_multi_boot import bootstrap_predict_multi

        bp = bootstrap_predict_multi(fit, rows, nsim=nsim, level=level,
                                     rng=as_generator(rng, seed, default=1))
        return pd.DataFrame({"fit": pred, "se": np.nan, "lwr": bp.lwr, "upr": bp.upr},
                            index=index)
    var = plugin_variance_multi(fit, rows, interval)
    se = np.sqrt(var)
    z = float(stats.norm.ppf(0.5 + float(level) / 2.0))
    return pd.DataFrame({"fit": pred, "se": se, "lwr": pred - z * se, "upr": pred + z * se},
                        index=index)
