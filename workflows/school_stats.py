"""Descriptive school-level statistics of a data set or of many replicated data sets.

Used by the predictive checks of the lecture workflow: the distribution across schools of the
school means, the within-school SDs and the per-school OLS slopes, in the observed data and in each
prior or posterior predictive replicate. Plain descriptive statistics of data (no model here): a
replicate is just another column of scores.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCHOOL_STATISTICS", "predictive_pvalues", "school_statistics"]

#: Statistic name -> words for figure labels.
SCHOOL_STATISTICS = {
    "mean": "school mean",
    "sd": "within-school SD",
    "slope": "per-school OLS slope",
}


def school_statistics(y: np.ndarray, group_index: np.ndarray, x: np.ndarray | None = None
                      ) -> dict[str, np.ndarray]:
    """Per-school mean, within-school SD (ddof 1) and, if ``x`` is given, OLS slope of y on x.

    ``y`` is one data set (n,) or S replicates (S, n); ``group_index`` (n,) holds codes 0..J-1,
    every school present. Returns arrays of shape (J,) or (S, J); a school with one student has a
    NaN SD, a school where x does not vary has a NaN slope.
    """
    y = np.asarray(y, float)
    g = np.asarray(group_index)
    one = y.ndim == 1
    y2 = y[None, :] if one else y
    if y2.shape[1] != g.shape[0]:
        raise ValueError(f"y has {y2.shape[1]} columns but group_index has {g.shape[0]} entries; "
                         "pass the scores and group codes of the same students")
    J = int(g.max()) + 1
    counts = np.bincount(g, minlength=J)
    if (counts == 0).any():
        raise ValueError(f"group code {int(np.flatnonzero(counts == 0)[0])} has no student; "
                         "pass codes 0..J-1 of the schools present")
    order = np.argsort(g, kind="stable")
    gs = g[order]
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    ys = y2[:, order]
    mean = np.add.reduceat(ys, starts, axis=1) / counts
    dev = ys - mean[:, gs]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.add.reduceat(dev * dev, starts, axis=1) / (counts - 1)
        out = {"mean": mean, "sd": np.where(counts > 1, np.sqrt(var), np.nan)}
        if x is not None:
            xs = np.asarray(x, float)[order]
            xd = xs - (np.add.reduceat(xs, starts) / counts)[gs]
            sxx = np.add.reduceat(xd * xd, starts)
            sxy = np.add.reduceat(dev * xd[None, :], starts, axis=1)
            scale = np.add.reduceat(np.abs(xs), starts) / counts
            ok = sxx > 1e-12 * np.maximum(scale, 1.0) ** 2 * counts
            out["slope"] = np.where(ok, sxy / np.where(ok, sxx, 1.0), np.nan)
    return {k: v[0] if one else v for k, v in out.items()}


def predictive_pvalues(observed: dict[str, np.ndarray], replicated: dict[str, np.ndarray]
                       ) -> list[dict[str, float | str]]:
    """For each statistic: the SD across schools in the data, the mean of that SD over the
    replicates and the share of replicates whose SD is at least the data's (a predictive p)."""
    rows = []
    for k, obs in observed.items():
        rep = np.asarray(replicated[k], float)
        sd_obs = float(np.nanstd(np.asarray(obs, float), ddof=1))
        sd_rep = np.nanstd(rep, axis=1, ddof=1)
        rows.append({"statistic": k, "sd_across_schools_data": sd_obs,
                     "sd_across_schools_replicated_mean": float(np.mean(sd_rep)),
                     "p_replicated_ge_data": float(np.mean(sd_rep >= sd_obs))})
    return rows
