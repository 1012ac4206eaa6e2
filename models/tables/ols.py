"""Per-group ordinary least squares: the lecture's table of school intercepts and slopes.

For a level-1 formula such as ``g1rscore ~ famsesc`` and a grouping column such as ``schid``, each
school j gets its own regression ``y_j = X_j β_j + r_j`` (R's ``lm`` on that school's rows):

    β̂_j = (X_jᵀX_j)⁻¹ X_jᵀy_j,    s_j² = ‖y_j − X_j β̂_j‖² / (n_j − p),
    SE(β̂_jk) = s_j · sqrt([(X_jᵀX_j)⁻¹]_kk).

The model matrix comes from :func:`twolevel.models.design.make_design` (same formula handling, R's
names, listwise deletion counted). Full-rank groups are solved together from per-group
cross-products; groups where a coefficient is not estimable (fewer rows than coefficients, or a
predictor with no variation in the group) are handled one by one as R's ``lm`` does (aliased columns
get ``NaN``) and flagged with the reason — never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from twolevel.data.errors import FormulaError
from twolevel.models.design import make_design, parse_formula
from twolevel.models.design.matrices import _full_rank_columns

__all__ = ["GroupOLS", "group_ols"]

_ALIAS_TOL = 1e-12  # smallest eigenvalue of the scaled X_jᵀX_j treated as rank deficient


@dataclass(frozen=True)
class GroupOLS:
    """Per-group OLS estimates.

    Fields
    ------
    formula : the level-1 formula.  group : the grouping column.
    coef_names : R's names of the coefficients, e.g. ``("(Intercept)", "famsesc")``; estimate
        ``k`` is column ``B{k}_hat`` of the table (``B0_hat`` = ``(Intercept)``).
    table : one row per group, in sorted group order: the group label, ``n_j``, ``df_resid``
        (n_j − rank), ``B0_hat, B1_hat, …``, ``SE_B0, SE_B1, …``, ``sigma`` (s_j), ``estimable``
        (all coefficients and SEs exist) and ``note`` (why not, empty when fine).
    n, n_groups : rows used and number of groups.
    n_na_dropped : rows removed for missing or non-finite values (listwise deletion).
    notes : sentences on what was removed or flagged.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> ols = tl.group_ols("g1rscore ~ famsesc", d, "schid")
    >>> ols.n_groups
    742
    """

    formula: str
    group: str
    coef_names: tuple[str, ...]
    table: pd.DataFrame
    n: int
    n_groups: int
    n_na_dropped: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def estimate_columns(self) -> tuple[str, ...]:
        """``("B0_hat", "B1_hat", …)``."""
        return tuple(f"B{k}_hat" for k in range(len(self.coef_names)))

    @property
    def se_columns(self) -> tuple[str, ...]:
        """``("SE_B0", "SE_B1", …)``."""
        return tuple(f"SE_B{k}" for k in range(len(self.coef_names)))

    @property
    def flagged(self) -> pd.DataFrame:
        """Rows of groups where some coefficient or SE is not estimable."""
        return self.table.loc[~self.table["estimable"]]

    def to_frame(self, r_names: bool = False) -> pd.DataFrame:
        """The table; with ``r_names`` the estimate columns get R's names (``(Intercept)``,
        ``famsesc``) and the SE columns ``SE (Intercept)``, ``SE famsesc``."""
        out = self.table.copy()
        if r_names:
            ren = dict(zip(self.estimate_columns, self.coef_names, strict=True))
            ren |= {s: f"SE {c}" for s, c in zip(self.se_columns, self.coef_names, strict=True)}
            out = out.rename(columns=ren)
        return out

    def summary(self, rows: int = 20, digits: int = 2) -> str:
        """The lecture's table (group, B0_hat, B1_hat, …) for the first ``rows`` groups, with a
        legend and the flagged groups."""
        legend = ", ".join(f"{b} = {c}" for b, c in zip(self.estimate_columns, self.coef_names,
                                                        strict=True))
        head = self.table[[self.group, *self.estimate_columns]].head(rows)
        lines = [
            f"Per-{self.group} OLS: {self.formula}  ({self.n} rows, {self.n_groups} groups; "
            f"{legend})",
            head.to_string(index=False, float_format=lambda v: f"{v:.{digits}f}"),
        ]
        if len(self.table) > rows:
            lines.append(f"... {len(self.table) - rows} more groups")
        flagged = self.flagged
        if len(flagged):
            lines.append(f"{len(flagged)} group(s) flagged (not estimable, kept with NaN):")
            for _, r in flagged.head(10).iterrows():
                lines.append(f"  {self.group} {r[self.group]}: {r['note']}")
            if len(flagged) > 10:
                lines.append(f"  ... {len(flagged) - 10} more")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _crossprods(X: np.ndarray, y: np.ndarray, g: np.ndarray, J: int):
    """Per-group X_jᵀX_j (J, p, p) and X_jᵀy_j (J, p), one pass with ``bincount``."""
    p = X.shape[1]
    XtX = np.empty((J, p, p))
    for a in range(p):
        for b in range(a, p):
            XtX[:, a, b] = XtX[:, b, a] = np.bincount(g, weights=X[:, a] * X[:, b], minlength=J)
    Xty = np.stack([np.bincount(g, weights=X[:, a] * y, minlength=J) for a in range(p)], axis=1)
    return XtX, Xty


def _rank_deficient(XtX: np.ndarray, n_j: np.ndarray) -> np.ndarray:
    """Groups whose X_j is (numerically) rank deficient: fewer rows than columns, an all-zero
    column, or a smallest eigenvalue of D⁻½ X_jᵀX_j D⁻½ (D = diag X_jᵀX_j) below 1e-12."""
    p = XtX.shape[1]
    d = np.sqrt(np.einsum("jkk->jk", XtX))
    bad = (n_j < p) | (d == 0).any(axis=1)
    ok = ~bad
    if ok.any():
        dd = d[ok]
        scaled = XtX[ok] / (dd[:, :, None] * dd[:, None, :])
        bad[np.flatnonzero(ok)] = np.linalg.eigvalsh(scaled)[:, 0] < _ALIAS_TOL
    return bad


def group_ols(formula: str, data: pd.DataFrame, group: str) -> GroupOLS:
    """Fit ``formula`` by OLS separately in every group of ``group`` (R's ``lm`` per group).

    Parameters
    ----------
    formula : a level-1 formula without random effects, e.g. ``"g1rscore ~ famsesc"``.
    data : the data frame.
    group : the grouping column, e.g. ``"schid"``.

    Returns
    -------
    GroupOLS
        Estimates, SEs, n_j, residual df and a reason for every group where something is not
        estimable (those groups are kept, with NaN).

    Examples
    --------
    >>> import twolevel as tl
    >>> ols = tl.group_ols("g1rscore ~ famsesc", tl.load_data("lecture"), "schid")
    >>> type(ols).__name__
    'GroupOLS'
    """
    if parse_formula(formula).bars:
        raise FormulaError(
            f"formula '{formula}' has a random-effects term; per-group OLS takes a level-1 formula "
            "such as 'y ~ x' and the grouping column separately"
        )
    design = make_design(f"{formula} + (1 | {group})", data)
    X, y, g = design.X, design.y, design.group_index
    J, p = design.n_groups, design.p
    n_j = design.group_sizes
    XtX, Xty = _crossprods(X, y, g, J)
    deficient = _rank_deficient(XtX, n_j)

    beta = np.full((J, p), np.nan)
    se = np.full((J, p), np.nan)
    rank = np.full(J, p)
    sigma = np.full(J, np.nan)
    notes = [""] * J
    full = np.flatnonzero(~deficient)
    if full.size:
        inv = np.linalg.inv(XtX[full])
        beta[full] = np.einsum("jab,jb->ja", inv, Xty[full])
        resid = y - np.einsum("ia,ia->i", X, np.nan_to_num(beta[g]))
        rss = np.bincount(g, weights=resid**2, minlength=J)[full]
        df = n_j[full] - p
        with np.errstate(divide="ignore", invalid="ignore"):
            s2 = np.where(df > 0, rss / np.maximum(df, 1), np.nan)
        se[full] = np.sqrt(s2[:, None] * np.einsum("jkk->jk", inv))
        sigma[full] = np.sqrt(s2)
    order = np.argsort(g, kind="stable")
    starts = np.concatenate([[0], np.cumsum(n_j)])
    for j in np.flatnonzero(deficient):
        rows = order[starts[j] : starts[j + 1]]
        Xj, yj = X[rows], y[rows]
        kept = _full_rank_columns(Xj)[: len(rows)]
        rank[j] = len(kept)
        if kept:
            coef, *_ = np.linalg.lstsq(Xj[:, kept], yj, rcond=None)
            beta[j, kept] = coef
            dfj = len(rows) - len(kept)
            if dfj > 0:
                r = yj - Xj[:, kept] @ coef
                sigma[j] = np.sqrt(r @ r / dfj)
                cov = sigma[j] ** 2 * np.linalg.inv(Xj[:, kept].T @ Xj[:, kept])
                se[j, kept] = np.sqrt(np.diag(cov))
        missing = [design.x_names[k] for k in range(p) if k not in kept]
        if len(rows) < p:
            notes[j] = (
                f"too few rows (n_j = {len(rows)}) for {p} coefficients: "
                f"{', '.join(missing)} not estimable"
                + (", no residual df for SEs" if len(rows) <= len(kept) else "")
            )
        else:
            preds = [m for m in missing if m != "(Intercept)"] or missing
            notes[j] = (
                f"no variation in {', '.join(preds)} within the group (aliased with the other "
                "columns): not estimable"
            )
    df_resid = n_j - rank
    for j in np.flatnonzero(~deficient & (df_resid == 0)):
        notes[j] = (
            f"no residual degrees of freedom (n_j = {n_j[j]} = number of coefficients): "
            "exact fit, SEs not estimable"
        )

    table = pd.DataFrame({group: design.group_levels, "n_j": n_j, "df_resid": df_resid})
    for k in range(p):
        table[f"B{k}_hat"] = beta[:, k]
    for k in range(p):
        table[f"SE_B{k}"] = se[:, k]
    table["sigma"] = sigma
    table["estimable"] = np.isfinite(se).all(axis=1) & np.isfinite(beta).all(axis=1)
    table["note"] = notes

    run_notes = list(design.notes)
    n_flag = int((~table["estimable"]).sum())
    if n_flag:
        run_notes.append(
            f"{n_flag} of {J} group(s) have a coefficient or SE that is not estimable; they are "
            "kept with NaN and the reason in 'note'"
        )
    return GroupOLS(
        formula=formula,
        group=group,
        coef_names=design.x_names,
        table=table,
        n=design.n,
        n_groups=J,
        n_na_dropped=design.n_na_dropped,
        notes=tuple(run_notes),
    )
