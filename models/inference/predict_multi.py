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

__all__ = ["MultiNewRows", "joint_system", "multi_new_rows", "predict_intervals_multi",
           "prediction_error_variance_multi", "re_form_effects"]

INTERVALS = ("confidence", "prediction")


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


def _zlambda(design, theta: np.ndarray) -> sp.csr_matrix:
    """The sparse N × Σℓ_kq_k matrix ZΛ: row i holds z_kiᵀT_k at the columns of its level of
    every factor k (factors in ``design.factors`` order, levels × effects within a factor)."""
    blocks = []
    for k, f in enumerate(design.factors):
        ZT = np.asarray(f.Z, dtype=float) @ design.factor_T(theta, k)
        n, q = ZT.shape
        ind = (f.codes[:, None] * q + np.arange(q)[None, :]).ravel()
        blocks.append(sp.csr_matrix((ZT.ravel(), ind, np.arange(0, n * q + 1, q)),
                                    shape=(n, f.n_levels * q)))
    return sp.hstack(blocks, format="csr")


def joint_system(fit) -> sp.csc_matrix:
    """The unscaled penalised matrix A of the module docstring at θ̂ (sparse, symmetric).

    Parameters
    ----------
    fit : a :class:`~twolevel.models.lmm.multi_results.MultiFit` with its rows in memory.

    Returns
    -------
    scipy.sparse.csc_matrix
        A, of size (Σℓ_kq_k + p)².

    Examples
    --------
    >>> A = joint_system(fit)   # doctest: +SKIP
    """
    d = fit.design
    ZL = _zlambda(d, fit.theta)
    X = sp.csr_matrix(np.asarray(d.X, dtype=float))
    W = sp.hstack([ZL, X], format="csc")
    A = (W.T @ W).tolil()
    q = ZL.shape[1]
    A[np.arange(q), np.arange(q)] = A.diagonal()[:q] + 1.0
    return A.tocsc()


def _factorised(fit):
    """SuperLU of A, kept on the fit (a frozen dataclass: in its ``__dict__``, as
    ``cached_property`` does)."""
    lu = fit.__dict__.get("_joint_splu")
    if lu is None:
        lu = fit.__dict__["_joint_splu"] = splu(joint_system(fit), permc_spec="MMD_AT_PLUS_A")
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


def prediction_error_variance_multi(fit, rows) -> np.ndarray:
    """PEV = σ̂² wᵀA⁻¹w of each new row (module docstring), over the factors whose level the
    row has and ``re_form`` keeps.

    Parameters
    ----------
    fit : the MultiFit.
    rows : :class:`~twolevel.models.lmm.multi_results.MultiNewRows`.

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
    sol = _factorised(fit).solve(np.ascontiguousarray(w.T))
    return fit.sigma**2 * np.einsum("mj,jm->m", w, sol)


def predict_intervals_multi(fit, newdata=None, re_form=None, allow_new_levels: bool = False,
                            interval: str = "prediction", level: float = 0.95) -> pd.DataFrame:
    """Predictions with confidence or prediction intervals for a several-factor fit.

    Parameters
    ----------
    fit : a MultiFit.  newdata : new rows (None: the fitted rows).
    re_form : None (every factor) or "NA"/"~0" (fixed part only).
    allow_new_levels : predict levels the fit never saw (their effect 0, their variance added
        to a prediction interval).
    interval : "confidence" or "prediction".  level : coverage.

    Returns
    -------
    pandas.DataFrame
        ``fit``, ``se``, ``lwr``, ``upr``, one row per new row.

    Raises
    ------
    TwolevelError
        An unknown interval, a level outside (0, 1), or a partial ``re_form`` (intervals need
        every factor or none).

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
    d = fit.design
    pred = rows.X @ fit.state.beta
    for k in range(len(d.factors)):
        known = rows.idx[k] >= 0
        if rows.masks[k].any() and known.any():
            pred[known] += np.einsum("nq,nq->n", rows.Z[k][known] * rows.masks[k],
                                     fit._b(k)[rows.idx[k][known]])
    var = prediction_error_variance_multi(fit, rows)
    if interval == "prediction":
        s2 = fit.sigma**2
        for k in range(len(d.factors)):
            new = ~((rows.idx[k] >= 0) & bool(rows.masks[k].any()))
            if new.any():
                T = d.factor_T(fit.theta, k)
                Sig = s2 * T @ T.T
                var[new] += np.einsum("mq,qr,mr->m", rows.Z[k][new], Sig, rows.Z[k][new])
        var += s2
    se = np.sqrt(var)
    z = float(stats.norm.ppf(0.5 + float(level) / 2.0))
    index = newdata.index if isinstance(newdata, pd.DataFrame) else pd.RangeIndex(len(pred))
    return pd.DataFrame({"fit": pred, "se": se, "lwr": pred - z * se, "upr": pred + z * se},
                        index=index)
