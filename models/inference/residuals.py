"""Level-2 residuals as the lecture shows them, and the per-school table.

Level-2 residuals are the conditional modes (BLUPs, lme4's ``ranef``) ũ_qj of each random
effect: u0j for the intercept, u1j for the first slope, … The summary has the columns of R's
``skimr::skim`` used on the lecture's slide: mean, sd (n − 1 denominator), p0, p25, p50, p75, p100
(R's default type-7 quantiles) and ``hist``, an inline histogram: 8 equal-width bins over
[min, max], each drawn with one of the Unicode blocks ``▁▂▃▄▅▆▇█`` by its count relative to the
fullest bin (a space for an empty bin).

The per-school table (one row per group, in ``Design.group_levels`` order) has n_j, the per-school
OLS estimates of the random coefficients, the BLUPs ũ_qj and their conditional SDs
(√diag σ̂²T M_j⁻¹Tᵀ, lme4's ``condVar``), the empirical-Bayes coefficients γ̂_q0 + ũ_qj (lme4's
``coef`` for coefficients without level-2 predictors), each school's reliability
λ_qj = τ_qq/(τ_qq + v_qqj) and the precision weight 1/(τ_qq + v_qqj) (for the intercept of a
model with group-mean-centred slopes this is the lecture's 1/(τ00 + σ²/n_j)).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from twolevel.models.design import Design, GroupCrossprods
from twolevel.models.inference.hlm import coefficient_equations, unit_ols
from twolevel.models.lmm.deviance import cond_var_unscaled, pls_state

__all__ = [
    "format_residual_summary",
    "level2_residual_summary",
    "residual_summary_fit",
    "school_table",
    "school_table_fit",
    "sparkline",
    "write_csv_atomic",
]

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(x: np.ndarray, bins: int = 8) -> str:
    """Inline text histogram of ``x``: ``bins`` equal-width bins over [min, max], one Unicode
    block per bin scaled to the fullest bin (``" "`` for an empty bin)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return ""
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return _BLOCKS[-1]
    counts, _ = np.histogram(x, bins=bins, range=(lo, hi))
    top = counts.max()
    out = []
    for c in counts:
        if c == 0:
            out.append(" ")
        else:
            out.append(_BLOCKS[max(1, int(np.ceil(8 * c / top))) - 1])
    return "".join(out)


def level2_residual_summary(u: np.ndarray, names: list[str] | None = None) -> pd.DataFrame:
    """The lecture's table of level-2 residuals: one row per random effect (``u0j``, ``u1j``, …)
    with mean, sd, p0, p25, p50, p75, p100 and an inline histogram ``hist``.

    Parameters
    ----------
    u : (J, q) conditional modes (lme4's ``ranef``) of the q random effects.
    names : row names; default ``u0j``, ``u1j``, ….
    """
    u = np.asarray(u, dtype=float)
    if u.ndim == 1:
        u = u[:, None]
    q = u.shape[1]
    names = names or [f"u{k}j" for k in range(q)]
    rows = []
    for k in range(q):
        x = u[:, k]
        qs = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
        rows.append({
            "variable": names[k], "mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1)),
            "p0": qs[0], "p25": qs[1], "p50": qs[2], "p75": qs[3], "p100": qs[4],
            "hist": sparkline(x),
        })
    return pd.DataFrame(rows)


def format_residual_summary(frame: pd.DataFrame, digits: int = 2) -> str:
    """The summary as the slide prints it (tab-free, aligned, ``digits`` decimals; a mean that
    rounds to zero prints as 0)."""
    head = ["variable", "mean", "sd", "p0", "p25", "p50", "p75", "p100", "hist"]
    lines = [head]
    for _, r in frame.iterrows():
        cells = [str(r["variable"])]
        for c in head[1:-1]:
            v = float(r[c])
            s = f"{v:.{digits}f}"
            cells.append("0" if c == "mean" and float(s) == 0 else s)
        cells.append(str(r["hist"]))
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) if i in (0, len(head) - 1) else c.rjust(w)
                  for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in lines
    )


def school_table(
    design: Design,
    cp: GroupCrossprods,
    theta: np.ndarray,
    sigma: float,
) -> pd.DataFrame:
    """Per-school table (module docstring): group, n_j, OLS_<coef>, BLUP_<coef> (ũ_qj),
    condSD_<coef>, EB_<coef>, reliability_<coef>, weight_<coef>."""
    T = design.theta_to_T(np.asarray(theta, dtype=float))
    st = pls_state(cp, T)
    s2 = float(sigma) ** 2
    cv = s2 * cond_var_unscaled(st)
    tau = s2 * T @ T.T
    ols = unit_ols(design, cp)
    v = s2 * np.diagonal(ols.XtX_inv, axis1=1, axis2=2)
    gamma = np.zeros(design.q)
    for c, e in enumerate(coefficient_equations(design)):
        if e.random and not e.is_level2_predictor and e.coefficient in design.z_names:
            gamma[design.z_names.index(e.coefficient)] = st.beta[c]
    out: dict[str, object] = {design.group: design.group_levels, "n_j": ols.n}
    for k, name in enumerate(design.z_names):
        out[f"OLS_{name}"] = ols.beta[:, k]
    for k, name in enumerate(design.z_names):
        out[f"BLUP_{name}"] = st.b[:, k]
        out[f"condSD_{name}"] = np.sqrt(cv[:, k, k])
        out[f"EB_{name}"] = gamma[k] + st.b[:, k]
    for k, name in enumerate(design.z_names):
        out[f"reliability_{name}"] = tau[k, k] / (tau[k, k] + v[:, k])
        out[f"weight_{name}"] = 1.0 / (tau[k, k] + v[:, k])
    return pd.DataFrame(out)


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` as CSV through a temporary file and a rename, so a failure leaves no
    half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            frame.to_csv(fh, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------ LmerFit adapters


def residual_summary_fit(fit) -> pd.DataFrame:
    """:func:`level2_residual_summary` of a fitted model's BLUPs (lme4's ``ranef``).

    Parameters
    ----------
    fit : LmerFit or GlmerFit

    Returns
    -------
    pandas.DataFrame
        One row per random effect (see :func:`level2_residual_summary`).

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + (1 | schid)", tl.load_data("lecture"))
    >>> len(tl.residual_summary_fit(fit)) >= 1
    True
    """
    return level2_residual_summary(fit._modes())


def school_table_fit(fit) -> pd.DataFrame:
    """:func:`school_table` at a fitted model's θ̂ and σ̂.

    Parameters
    ----------
    fit : LmerFit

    Returns
    -------
    pandas.DataFrame
        One row per school (see :func:`school_table`).

    Raises
    ------
    TwolevelError
        For a glmer fit (the table's reliabilities use σ̂²).

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + (1 | schid)", tl.load_data("lecture"))
    >>> len(tl.school_table_fit(fit)) == fit.ngroups
    True
    """
    from twolevel.models.fit_base import require_lmm

    require_lmm(fit, "school_table_fit", "its OLS and reliability columns use the residual "
                "variance σ̂², which a binomial or Poisson GLMM does not have")
    return school_table(fit.design, fit.crossprods, fit.theta, fit.sigma)
