"""Shrinkage of per-school estimates: OLS (no pooling) → REML BLUP → posterior mean (partial
pooling).

Pure functions on per-school tables; no plotting (``workflows/plots.py`` draws them).

For a school j with OLS estimate β̂_j (sampling covariance V_j = σ²(X_jᵀX_j)⁻¹) the empirical-Bayes
(BLUP) coefficient is approximately the precision-weighted compromise

    β*_j = Λ_j β̂_j + (I − Λ_j) γ,   Λ_j = T (T + V_j)⁻¹,

so schools with few students, or little spread of SES, are pulled furthest towards γ. The posterior
mean does the same but averages over the uncertainty in (γ, T, σ) instead of plugging in the REML
estimates; where T is poorly determined (the slope variance τ11 and the correlation) the two differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "ShrinkageSummary",
    "caterpillar_ratios",
    "caterpillar_table",
    "describe_shrinkage",
    "shrinkage_summary",
    "shrinkage_table",
    "t_ellipse",
]

SOURCES = ("ols", "reml", "bayes")


def shrinkage_table(
    n: pd.Series,
    ols: pd.DataFrame,
    reml: pd.DataFrame,
    bayes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per school: its size and, for each coefficient, the OLS, REML BLUP and posterior-mean
    *absolute* coefficients (β_qj = γ_q + u_qj), and the shifts between them.

    Parameters
    ----------
    n : school sizes n_j, indexed by school.
    ols : per-school OLS coefficients (columns = coefficient names, e.g. ``(Intercept)``,
        ``famsesc``; NaN where a school's OLS fit is not estimable).
    reml : REML coefficients ``coef()`` = fixef + BLUP, same columns.
    bayes : posterior means of the school coefficients, same columns (optional).

    Returns
    -------
    DataFrame indexed by school with ``n`` and, per coefficient ``c``: ``c.ols``, ``c.reml``,
    ``c.bayes``, ``c.shift_reml`` = reml − ols, ``c.shift_bayes`` = bayes − ols and
    ``c.bayes_minus_reml``.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", d)
    >>> ols = tl.group_ols("g1rscore ~ famsesc", d, "schid")
    >>> t = ols.table.set_index(ols.table.columns[0])
    >>> est = t[["B0_hat", "B1_hat"]].set_axis(["(Intercept)", "famsesc"], axis=1)
    >>> tab = tl.shrinkage_table(t["n_j"], est, fit.coef())
    >>> "famsesc.shift_reml" in tab.columns
    True
    """
    coefs = list(reml.columns)
    missing = [c for c in coefs if c not in ols.columns]
    if missing:
        raise ValueError(f"OLS table lacks coefficient column(s) {missing}")
    idx = reml.index
    out = pd.DataFrame({"n": pd.Series(n).reindex(idx).to_numpy()}, index=idx)
    for c in coefs:
        out[f"{c}.ols"] = ols[c].reindex(idx).to_numpy(dtype=float)
        out[f"{c}.reml"] = reml[c].to_numpy(dtype=float)
        if bayes is not None:
            out[f"{c}.bayes"] = bayes[c].reindex(idx).to_numpy(dtype=float)
    for c in coefs:
        out[f"{c}.shift_reml"] = out[f"{c}.reml"] - out[f"{c}.ols"]
        if bayes is not None:
            out[f"{c}.shift_bayes"] = out[f"{c}.bayes"] - out[f"{c}.ols"]
            out[f"{c}.bayes_minus_reml"] = out[f"{c}.bayes"] - out[f"{c}.reml"]
    out.index.name = idx.name or "school"
    return out


def coefficient_names(table: pd.DataFrame) -> list[str]:
    """The coefficient names of a :func:`shrinkage_table` (in column order)."""
    return [c[: -len(".reml")] for c in table.columns if c.endswith(".reml")]


def t_ellipse(
    center: np.ndarray, T: np.ndarray, level: float = 0.95, n_points: int = 200
) -> np.ndarray:
    """Points of the ellipse holding ``level`` of a bivariate normal N(center, T).

    x(φ) = center + √(χ²₂(level)) · L (cos φ, sin φ)ᵀ with L Lᵀ = T (Cholesky; a singular T gives a
    segment). Returns an (n_points, 2) array.
    """
    T = np.asarray(T, dtype=float)
    if T.shape != (2, 2):
        raise ValueError(f"T must be 2 × 2, got {T.shape}")
    w, V = np.linalg.eigh(T)
    L = V @ np.diag(np.sqrt(np.clip(w, 0.0, None)))
    phi = np.linspace(0.0, 2.0 * np.pi, n_points)
    r = np.sqrt(stats.chi2.ppf(level, df=2))
    return np.asarray(center, dtype=float) + r * (np.column_stack([np.cos(phi), np.sin(phi)]) @ L.T)


@dataclass(frozen=True)
class ShrinkageSummary:
    """How much each kind of estimate varies and moves, per coefficient.

    ``spread`` rows = coefficients; columns: ``var_ols`` (variance of the OLS estimates across
    schools), ``tau_reml`` (REML τ_qq), ``var_reml`` (variance of the BLUP coefficients),
    ``tau_bayes`` (posterior mean of τ_qq, if given), ``var_bayes`` (variance of the posterior
    means), ``ratio_reml`` = var_reml / var_ols, ``ratio_bayes`` = var_bayes / var_ols, and
    ``cor_ols_reml``. ``by_size`` rows = (coefficient, school-size band); columns ``schools``,
    ``mean_abs_shift_reml`` (mean |BLUP − OLS|), ``mean_abs_shift_bayes``,
    ``mean_abs_bayes_minus_reml`` and ``mean_bayes_minus_reml``.
    """

    spread: pd.DataFrame
    by_size: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        """The ``spread`` table."""
        return self.spread


def size_bands(n: pd.Series, k: int = 3) -> pd.Series:
    """School-size bands by quantiles of n_j (labels such as ``n 10–13``)."""
    n = pd.Series(n)
    q = np.unique(np.quantile(n, np.linspace(0, 1, k + 1)))
    if len(q) < 2:
        return pd.Series([f"n {int(n.iloc[0])}"] * len(n), index=n.index)
    edges = q.copy()
    codes = np.clip(np.searchsorted(edges, n.to_numpy(), side="right") - 1, 0, len(edges) - 2)
    labels = []
    for b in range(len(edges) - 1):
        members = n.to_numpy()[codes == b]
        lo, hi = (int(members.min()), int(members.max())) if members.size else (0, 0)
        labels.append(f"n {lo}–{hi}" if lo != hi else f"n {lo}")
    return pd.Series([labels[c] for c in codes], index=n.index)


def shrinkage_summary(
    table: pd.DataFrame,
    tau_reml: dict[str, float],
    tau_bayes: dict[str, float] | None = None,
    bands: int = 3,
) -> ShrinkageSummary:
    """Spread and movement of OLS, BLUP and posterior-mean coefficients (see
    :class:`ShrinkageSummary`).

    Parameters
    ----------
    table : from :func:`shrinkage_table`.
    tau_reml : REML variance τ_qq of each coefficient's random effect.
    tau_bayes : posterior mean of τ_qq (optional).
    bands : number of school-size bands (quantiles of n_j).
    """
    coefs = coefficient_names(table)
    has_bayes = all(f"{c}.bayes" in table.columns for c in coefs)
    rows = []
    for c in coefs:
        ols = table[f"{c}.ols"]
        ok = ols.notna()
        v_ols = float(ols[ok].var(ddof=1))
        row = {
            "coefficient": c,
            "var_ols": v_ols,
            "tau_reml": float(tau_reml[c]),
            "var_reml": float(table[f"{c}.reml"].var(ddof=1)),
        }
        if has_bayes:
            if tau_bayes is not None:
                row["tau_bayes"] = float(tau_bayes[c])
            row["var_bayes"] = float(table[f"{c}.bayes"].var(ddof=1))
        row["ratio_reml"] = row["var_reml"] / v_ols
        if has_bayes:
            row["ratio_bayes"] = row["var_bayes"] / v_ols
        row["cor_ols_reml"] = float(np.corrcoef(ols[ok], table.loc[ok, f"{c}.reml"])[0, 1])
        rows.append(row)
    spread = pd.DataFrame(rows).set_index("coefficient")

    band = size_bands(table["n"], bands)
    order = list(dict.fromkeys(band.iloc[np.argsort(table["n"].to_numpy(), kind="stable")]))
    brows = []
    for c in coefs:
        for b in order:
            m = band == b
            r = {
                "coefficient": c,
                "school size": b,
                "schools": int(m.sum()),
                "mean_abs_shift_reml": float(table.loc[m, f"{c}.shift_reml"].abs().mean()),
            }
            if has_bayes:
                r["mean_abs_shift_bayes"] = float(table.loc[m, f"{c}.shift_bayes"].abs().mean())
                d = table.loc[m, f"{c}.bayes_minus_reml"]
                r["mean_abs_bayes_minus_reml"] = float(d.abs().mean())
                # positive: the posterior mean sits further from γ than the BLUP (less shrinkage)
                r["bayes_less_shrunk_share"] = float(
                    np.mean(
                        np.abs(table.loc[m, f"{c}.bayes"] - table[f"{c}.reml"].mean())
                        > np.abs(table.loc[m, f"{c}.reml"] - table[f"{c}.reml"].mean())
                    )
                )
            brows.append(r)
    by_size = pd.DataFrame(brows)
    return ShrinkageSummary(spread=spread, by_size=by_size)


def describe_shrinkage(summary: ShrinkageSummary, labels: dict[str, str] | None = None) -> str:
    """A short paragraph, in plain words with the numbers, on how much each estimate shrinks and
    where the Bayesian and REML shrinkage differ."""
    labels = labels or {}
    sp, bs = summary.spread, summary.by_size
    parts = []
    for c, r in sp.iterrows():
        name = labels.get(c, c)
        s = (
            f"{name}: the per-school OLS estimates vary with variance {r.var_ols:.3g}, more than "
            f"the REML estimate of the true between-school variance τ = {r.tau_reml:.3g}, because "
            f"they carry sampling error; the BLUPs vary less (variance {r.var_reml:.3g}, "
            f"{100 * r.ratio_reml:.0f}% of the OLS variance)"
        )
        if "var_bayes" in sp.columns and not np.isnan(r.get("var_bayes", np.nan)):
            s += (f" and the posterior means similarly ({r.var_bayes:.3g}, "
                  f"{100 * r.ratio_bayes:.0f}%)")
        s += "."
        sub = bs[bs["coefficient"] == c]
        if len(sub) >= 2:
            small, large = sub.iloc[0], sub.iloc[-1]
            s += (
                f" Shrinkage is strongest in small schools: mean |BLUP − OLS| is "
                f"{small.mean_abs_shift_reml:.3g} for {small['school size']} against "
                f"{large.mean_abs_shift_reml:.3g} for {large['school size']}."
            )
            if "mean_abs_bayes_minus_reml" in sub.columns:
                s += (
                    " Posterior means and BLUPs differ by "
                    f"{small.mean_abs_bayes_minus_reml:.3g} on "
                    f"average in the smallest schools and {large.mean_abs_bayes_minus_reml:.3g} in "
                    f"the largest"
                )
                if "tau_bayes" in sp.columns:
                    more = "less" if r.tau_bayes > r.tau_reml else "more"
                    s += (
                        f"; the posterior mean of τ ({r.tau_bayes:.3g}) is "
                        f"{'above' if r.tau_bayes > r.tau_reml else 'below'} the REML estimate, so "
                        f"the Bayesian estimates are shrunk {more}"
                    )
                s += "."
        parts.append(s)
    rel = sp["ratio_reml"]
    weakest = rel.idxmin()
    parts.append(
        f"The {labels.get(weakest, weakest)} is shrunk most (its estimates keep "
        f"{100 * rel.min():.0f}% of their OLS variance): it is the coefficient the data determine "
        "least well within a school, so REML and Bayes also disagree most there, where the "
        "uncertainty in τ that the posterior averages over matters."
    )
    return "\n\n".join(parts)


def caterpillar_table(
    school: pd.Index | np.ndarray,
    reml: np.ndarray,
    reml_sd: np.ndarray,
    bayes: np.ndarray | None = None,
    bayes_lo: np.ndarray | None = None,
    bayes_hi: np.ndarray | None = None,
    z: float = 1.959963984540054,
    reference: float = 0.0,
) -> pd.DataFrame:
    """Per-school intervals for a caterpillar plot, sorted by the REML estimate.

    REML: BLUP ± z · conditional SD (z = Φ⁻¹(0.975) by default). Bayes: posterior mean with the
    given (e.g. 2.5% and 97.5%) posterior quantiles. ``rank`` is 1 for the lowest REML estimate;
    ``reml_excludes_ref`` / ``bayes_excludes_ref`` flag intervals not containing ``reference``
    (0 for u_j, γ for absolute coefficients).

    Parameters
    ----------
    school : index or array
        The school labels.
    reml, reml_sd : arrays
        BLUPs and their conditional SDs.
    bayes, bayes_lo, bayes_hi : arrays, optional
        Posterior means and quantiles.
    z : float
        The normal quantile of the REML intervals.
    reference : float
        The value an interval is checked against.

    Returns
    -------
    pandas.DataFrame
        One row per school, sorted by the REML estimate, with ``rank``, the intervals and the flags.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> re = fit.ranef()
    >>> tab = tl.caterpillar_table(re.index, re["(Intercept)"].to_numpy(),
    ...                            re["condsd_(Intercept)"].to_numpy())
    >>> int(tab["rank"].iloc[0])
    1
    """
    df = pd.DataFrame(
        {
            "school": np.asarray(school),
            "reml": np.asarray(reml, float),
            "reml_lo": np.asarray(reml, float) - z * np.asarray(reml_sd, float),
            "reml_hi": np.asarray(reml, float) + z * np.asarray(reml_sd, float),
        }
    )
    if bayes is not None:
        df["bayes"] = np.asarray(bayes, float)
        df["bayes_lo"] = np.asarray(bayes_lo, float)
        df["bayes_hi"] = np.asarray(bayes_hi, float)
    df = df.sort_values(["reml", "school"], kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    df["reml_excludes_ref"] = (df["reml_lo"] > reference) | (df["reml_hi"] < reference)
    if bayes is not None:
        df["bayes_excludes_ref"] = (df["bayes_lo"] > reference) | (df["bayes_hi"] < reference)
    return df


def caterpillar_ratios(table: pd.DataFrame, prefix: str = "ratio") -> pd.DataFrame:
    """A :func:`caterpillar_table` on a log scale (logit or log link) with the exponentiated
    columns added: ``<prefix>_<col>`` = exp(col) for ``reml``, ``reml_lo``, ``reml_hi`` and, if
    present, ``bayes``, ``bayes_lo``, ``bayes_hi``. For school effects u0j that is the school's
    odds ratio (or rate ratio) against an average school; for the slope effects u1j the factor
    by which the school's odds ratio of x differs from the average one; for absolute coefficients
    the school's odds (intercept) or odds ratio (slope). Exponentiating the interval ends gives
    the interval of the ratio."""
    out = table.copy()
    for c in ("reml", "reml_lo", "reml_hi", "bayes", "bayes_lo", "bayes_hi"):
        if c in out.columns:
            out[f"{prefix}_{c}"] = np.exp(out[c].to_numpy(dtype=float))
    return out
