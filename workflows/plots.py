"""Figures of the lecture workflow (matplotlib, Agg backend; ArviZ for the Bayesian diagnostics).

Every function takes tables computed elsewhere (``twolevel.models.tables.shrinkage``,
``twolevel.models.inference.residuals``, the fits) and returns a matplotlib ``Figure`` (or an ArviZ
``PlotCollection``); nothing here computes a statistic a report quotes. Figures stay legible at 742
schools: schools are plotted by rank, never one tick label per school; only the most extreme schools
are named, in a side box.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "caterpillar_figure",
    "empirical_shrinkage_figure",
    "mean_curve_figure",
    "pareto_k_figure",
    "prediction_figure",
    "residual_figure",
    "school_ppc_figure",
    "shrinkage_figure",
    "shrinkage_by_size_figure",
    "student_ppc_figure",
]

C_REML = "#1f5fa8"
C_BAYES = "#c0392b"
C_OLS = "#7f7f7f"
C_HI = "#e69f00"


def _school_label(s) -> str:
    return str(s)


def caterpillar_figure(
    table: pd.DataFrame,
    title: str,
    ylabel: str,
    reference: float = 0.0,
    reference_label: str = "0",
    n_extremes: int = 5,
    ratio: str | None = None,
    panel_names: tuple[str, str] = ("REML BLUP ± 1.96 conditional SD",
                                    "posterior mean, 95% interval"),
    rank_by: str = "REML estimate",
    unit: str = "school",
) -> Figure:
    """Caterpillar plot: schools sorted by the REML estimate, 95% intervals, REML BLUP ± 1.96
    conditional SD (left) and posterior mean with 95% posterior interval (right) on the same axes.

    ``table`` is from :func:`twolevel.models.tables.shrinkage.caterpillar_table`. The ``n_extremes``
    lowest and highest schools are drawn in orange and named in a box (no per-school tick labels).
    On a log scale (GLMMs), ``ratio`` names exp(value) (e.g. "OR") and the box shows it beside each
    value; ``panel_names`` titles the two panels and ``rank_by`` names what ranks the schools (e.g.
    the conditional modes of a glmer fit); ``unit`` names a group on the x axis ("class").
    """
    has_bayes = "bayes" in table.columns
    ncols = 2 if has_bayes else 1
    fig, axes = plt.subplots(1, ncols, figsize=(12 if has_bayes else 7.5, 4.8), sharey=True,
                             squeeze=False, layout="constrained")
    J = len(table)
    x = table["rank"].to_numpy()
    ext = np.zeros(J, bool)
    k = min(n_extremes, J // 2)
    ext[:k] = True
    ext[J - k :] = True
    lw = 0.6 if J > 300 else 1.0
    ms = 1.5 if J > 300 else 3.0
    panels = [("reml", panel_names[0], C_REML)]
    if has_bayes:
        panels.append(("bayes", panel_names[1], C_BAYES))
    for ax, (src, name, color) in zip(axes[0], panels, strict=True):
        lo, hi, est = (table[f"{src}_lo"].to_numpy(), table[f"{src}_hi"].to_numpy(),
                       table[src].to_numpy())
        segs = np.stack([np.column_stack([x, lo]), np.column_stack([x, hi])], axis=1)
        colors = np.where(ext[:, None], matplotlib.colors.to_rgba(C_HI),
                          matplotlib.colors.to_rgba(color, 0.45))
        ax.add_collection(LineCollection(segs, colors=colors, linewidths=lw))
        ax.scatter(x[~ext], est[~ext], s=ms, color=color, zorder=3, linewidths=0)
        ax.scatter(x[ext], est[ext], s=ms * 6, color=C_HI, zorder=4, edgecolors="k", linewidths=0.3)
        ax.axhline(reference, color="k", lw=0.8, ls="--")
        n_excl = int(table[f"{src}_excludes_ref"].sum())
        ax.set_title(f"{name}\n{n_excl} of {J} intervals exclude {reference_label}", fontsize=10)
        ax.set_xlim(0, J + 1)
        ax.set_xlabel(f"{unit} rank (by {rank_by}, 1 = lowest; {J} {unit}es)"
                      if unit.endswith("s") else
                      f"{unit} rank (by {rank_by}, 1 = lowest; {J} {unit}s)")
        ax.margins(y=0.03)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    low = table.iloc[:k]
    high = table.iloc[J - k :][::-1]
    fmt = "{:+.2f}" if reference == 0 else "{:.2f}"

    def entry(s, v) -> str:
        return f"{_school_label(s)}  {fmt.format(v)}" + (
            f"  {ratio} {np.exp(v):.2f}" if ratio else "")

    lines = ["highest:"] + [entry(s, v) for s, v in zip(high.school, high.reml, strict=True)]
    lines += ["lowest:"] + [entry(s, v) for s, v in zip(low.school, low.reml, strict=True)]
    axes[0][-1].text(
        1.02, 0.5, "\n".join(lines), transform=axes[0][-1].transAxes, va="center", ha="left",
        fontsize=8, family="monospace",
        bbox=dict(boxstyle="round", fc="white", ec=C_HI),
    )
    fig.suptitle(title, fontsize=12)
    return fig


def shrinkage_figure(
    table: pd.DataFrame,
    coefs: tuple[str, str],
    gamma: np.ndarray,
    ellipse_reml: np.ndarray,
    ellipse_bayes: np.ndarray | None = None,
    labels: tuple[str, str] | None = None,
    clip_quantile: float = 0.995,
) -> Figure:
    """Bivariate shrinkage plot of each school's intercept and slope.

    Left: arrows from the OLS estimate (grey circle) to the REML BLUP coefficient (blue), with the
    95% ellipse of the estimated T around γ; axes cover the central ``clip_quantile`` of the OLS
    estimates (the number of schools outside is printed). Right: a zoom on the partially pooled
    estimates, arrows REML BLUP → posterior mean (red), the REML ellipse (solid) and the ellipse of
    the posterior-mean T (dashed).
    """
    a, b = coefs
    labels = labels or (a, b)
    fig, (ax, az_) = plt.subplots(1, 2, figsize=(13, 6.2), layout="constrained")
    ols = table[[f"{a}.ols", f"{b}.ols"]].to_numpy()
    reml = table[[f"{a}.reml", f"{b}.reml"]].to_numpy()
    has_bayes = f"{a}.bayes" in table.columns
    ok = np.isfinite(ols).all(axis=1)
    d = reml[ok] - ols[ok]
    ax.quiver(ols[ok, 0], ols[ok, 1], d[:, 0], d[:, 1], angles="xy", scale_units="xy", scale=1,
              color=C_OLS, alpha=0.5, width=0.0012, headwidth=4, headlength=5)
    ax.scatter(ols[ok, 0], ols[ok, 1], s=6, facecolors="none", edgecolors=C_OLS, linewidths=0.5,
               label="OLS (no pooling)")
    ax.scatter(reml[:, 0], reml[:, 1], s=5, color=C_REML, linewidths=0, zorder=3,
               label="REML BLUP (fixef + ranef)")
    for axis in (ax, az_):
        axis.plot(ellipse_reml[:, 0], ellipse_reml[:, 1], color=C_REML, lw=1.6,
                  label="95% ellipse of REML T around γ")
        axis.plot(*gamma, marker="X", ms=8, color="k", ls="none", label="γ (fixed effects)",
                  zorder=5)
        axis.set_xlabel(f"school intercept: {labels[0]}")
        axis.set_ylabel(f"school slope: {labels[1]}")
        axis.grid(alpha=0.3)
    lo = np.nanquantile(ols, 1 - clip_quantile, axis=0)
    hi = np.nanquantile(ols, clip_quantile, axis=0)
    pad = 0.05 * (hi - lo)
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    outside = int(((ols < lo - pad) | (ols > hi + pad)).any(axis=1).sum())
    note = f"\n({outside} extreme OLS point(s) outside the axes)" if outside else ""
    ax.set_title(f"OLS → REML BLUP, {len(table)} schools{note}", fontsize=10)
    ax.legend(loc="lower left", fontsize=8, markerscale=2, framealpha=0.9)

    pts = [reml, ellipse_reml]
    az_.scatter(reml[:, 0], reml[:, 1], s=6, color=C_REML, linewidths=0, label="REML BLUP")
    if has_bayes:
        post = table[[f"{a}.bayes", f"{b}.bayes"]].to_numpy()
        d = post - reml
        az_.quiver(reml[:, 0], reml[:, 1], d[:, 0], d[:, 1], angles="xy", scale_units="xy", scale=1,
                   color=C_BAYES, alpha=0.6, width=0.0015, headwidth=4, headlength=5)
        az_.scatter(post[:, 0], post[:, 1], s=6, color=C_BAYES, linewidths=0,
                    label="posterior mean")
        pts.append(post)
    if ellipse_bayes is not None:
        az_.plot(ellipse_bayes[:, 0], ellipse_bayes[:, 1], color=C_BAYES, lw=1.4, ls="--",
                 label="95% ellipse of posterior-mean T")
        pts.append(ellipse_bayes)
    allp = np.vstack(pts)
    lo2, hi2 = allp.min(axis=0), allp.max(axis=0)
    pad2 = 0.04 * (hi2 - lo2)
    az_.set_xlim(lo2[0] - pad2[0], hi2[0] + pad2[0])
    az_.set_ylim(lo2[1] - pad2[1], hi2[1] + pad2[1])
    az_.set_title("zoom: REML BLUP → posterior mean (partial pooling)", fontsize=10)
    az_.legend(loc="lower left", fontsize=8, markerscale=2, framealpha=0.9)
    return fig


def empirical_shrinkage_figure(table: pd.DataFrame, gamma: float, scale: str,
                               school: str = "school", names: tuple[str, str, str] = (
                                   "empirical", "conditional mode (Laplace)",
                                   "posterior mean")) -> Figure:
    """Shrinkage of one school coefficient on a link scale (GLMMs), from the columns
    ``empirical``, ``mode``, ``posterior``, ``n_j`` and ``separated`` of
    :func:`twolevel.models.tables.empirical.empirical_shrinkage_table`.

    Left: three parallel axes (empirical → conditional mode → posterior mean), one line per
    school; schools with no finite ML estimate (all outcomes equal) in orange. Right: the
    conditional modes (blue) and posterior means (red) against the empirical values, point area ∝
    school size, with the identity line (no pooling) and γ00 (complete pooling)."""
    has_post = "posterior" in table.columns
    cols = ["empirical", "mode"] + (["posterior"] if has_post else [])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.6), layout="constrained",
                                  gridspec_kw={"width_ratios": [1, 1.25]})
    vals = table[cols].to_numpy(float)
    sep = table["separated"].to_numpy(bool)
    xs = np.arange(len(cols))
    segs = [np.column_stack([xs, v]) for v in vals]
    ax.add_collection(LineCollection([sg for sg, b in zip(segs, sep, strict=True) if not b],
                                     colors=matplotlib.colors.to_rgba(C_OLS, 0.18),
                                     linewidths=0.5))
    if sep.any():
        ax.add_collection(LineCollection([sg for sg, b in zip(segs, sep, strict=True) if b],
                                         colors=matplotlib.colors.to_rgba(C_HI, 0.8),
                                         linewidths=0.8))
    for k, (c, color) in enumerate(zip(cols, (C_OLS, C_REML, C_BAYES), strict=False)):
        ax.scatter(np.full(len(table), k), table[c], s=4, color=color, zorder=3, linewidths=0)
    ax.axhline(gamma, color="k", lw=0.8, ls="--")
    ax.set_xticks(xs, list(names[: len(cols)]))
    ax.set_xlim(-0.2, len(cols) - 0.8)
    ax.set_ylabel(f"{school} intercept, {scale}")
    ax.set_title(f"{len(table)} {school}s; orange: {int(sep.sum())} with all outcomes equal "
                 "(no finite ML estimate)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    size = 4 + 40 * (table["n_j"].to_numpy(float) / table["n_j"].max()) ** 2
    e = table["empirical"].to_numpy(float)
    ax2.scatter(e, table["mode"], s=size, color=C_REML, alpha=0.5, linewidths=0,
                label=names[1])
    if has_post:
        ax2.scatter(e, table["posterior"], s=size, color=C_BAYES, alpha=0.4, linewidths=0,
                    label=names[2])
    lim = np.array([np.nanmin(e), np.nanmax(e)])
    ax2.plot(lim, lim, color=C_OLS, lw=1, label="identity (no pooling)")
    ax2.axhline(gamma, color="k", lw=0.8, ls="--", label=f"γ00 = {gamma:.2f} (complete pooling)")
    ax2.set_xlabel(f"empirical {scale} (no pooling)")
    ax2.set_ylabel(f"partially pooled {scale}")
    ax2.set_title("estimates against the empirical values (point area ∝ school size)",
                  fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="upper left", markerscale=1.5)
    fig.suptitle(f"Shrinkage of the {school} {scale}: empirical → conditional mode → posterior "
                 "mean", fontsize=11)
    return fig


def mean_curve_figure(curves: pd.DataFrame, x_label: str, y_label: str,
                      marks: tuple[float, ...] = ()) -> Figure:
    """Expected outcome (probability or count) against the centred predictor, one line per school
    type: columns ``school_type``, ``x``, ``ml`` (plug-in) and optionally ``post_mean``,
    ``post_lo``, ``post_hi`` (posterior mean and 95% band). ``marks``: x positions of the table
    (dotted)."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    colors = ("k", C_REML, C_BAYES, C_HI)
    for (st, sub), col in zip(curves.groupby("school_type", sort=False), colors, strict=False):
        x = sub["x"].to_numpy(float)
        ax.plot(x, sub["ml"], color=col, lw=1.8, label=f"{st} (Laplace)")
        if "post_lo" in sub.columns:
            ax.fill_between(x, sub["post_lo"], sub["post_hi"], color=col, alpha=0.15,
                            linewidth=0)
            ax.plot(x, sub["post_mean"], color=col, lw=1, ls="--")
    for m in marks:
        ax.axvline(m, color=C_OLS, lw=0.7, ls=":")
    ax.set_xlabel(f"{x_label} relative to the school mean")
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("Laplace plug-in (solid), posterior mean (dashed) and 95% posterior band",
                 fontsize=10)
    return fig


def shrinkage_by_size_figure(
    table: pd.DataFrame, coefs: list[str], labels: dict[str, str]
) -> Figure:
    """Where the estimates move, by school size n_j, one column per coefficient. Top: |BLUP − OLS|
    (blue) and |posterior mean − OLS| (red) per school, with their means by n_j. Bottom: posterior
    mean − BLUP per school (where Bayesian and REML shrinkage differ)."""
    has_bayes = any(f"{c}.bayes_minus_reml" in table.columns for c in coefs)
    nrows = 2 if has_bayes else 1
    fig, axes = plt.subplots(nrows, len(coefs), figsize=(5.5 * len(coefs), 3.3 * nrows),
                             squeeze=False, layout="constrained")
    rng = np.random.default_rng(0)
    n = table["n"].to_numpy(float)
    jit = rng.uniform(-0.2, 0.2, len(n))
    for j, c in enumerate(coefs):
        ax = axes[0][j]
        top = 0.0
        for src, color, lab, off in (("reml", C_REML, "|BLUP − OLS|", -0.12),
                                     ("bayes", C_BAYES, "|posterior mean − OLS|", 0.12)):
            col = f"{c}.shift_{src}"
            if col not in table.columns:
                continue
            v = table[col].abs().to_numpy()
            ax.scatter(n + jit + off, v, s=3, color=color, alpha=0.3, linewidths=0)
            m = pd.Series(v).groupby(n).mean()
            ax.plot(m.index, m.to_numpy(), color=color, lw=2, marker="o", ms=3,
                    label=f"{lab}, mean by n_j")
            top = max(top, float(np.nanquantile(v, 0.99)))
        ax.set_ylim(0, top * 1.05)
        ax.set_xlabel("school size n_j")
        ax.set_ylabel("|shift from OLS|")
        ax.set_title(f"{labels.get(c, c)}: movement from OLS", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if has_bayes:
            ax2 = axes[1][j]
            v = table[f"{c}.bayes_minus_reml"].to_numpy()
            ax2.scatter(n + jit, v, s=3, color=C_BAYES, alpha=0.4, linewidths=0)
            m = pd.Series(np.abs(v)).groupby(n).mean()
            ax2.plot(m.index, m.to_numpy(), color="k", lw=1.6, marker="o", ms=3,
                     label="mean |posterior mean − BLUP| by n_j")
            ax2.axhline(0, color="k", lw=0.8, ls="--")
            ax2.set_xlabel("school size n_j")
            ax2.set_ylabel("posterior mean − BLUP")
            ax2.set_title(f"{labels.get(c, c)}: Bayes vs REML", fontsize=10)
            ax2.grid(alpha=0.3)
            ax2.legend(fontsize=8)
    fig.suptitle("How far estimates move, by school size", fontsize=11)
    return fig


def residual_figure(
    u: pd.DataFrame, covariates: pd.DataFrame, u_labels: dict[str, str], cov_labels: dict[str, str],
    title: str = "Level-2 residuals (REML BLUPs) against school characteristics",
) -> Figure:
    """Level-2 residuals (BLUPs of u_qj, one column each) against school-level covariates (e.g.
    n_j and mean SES), with a lowess-like running mean to show any trend."""
    ucols, ccols = list(u.columns), list(covariates.columns)
    fig, axes = plt.subplots(len(ucols), len(ccols), figsize=(5 * len(ccols), 3.4 * len(ucols)),
                             squeeze=False, layout="constrained")
    for i, uc in enumerate(ucols):
        for j, cc in enumerate(ccols):
            ax = axes[i][j]
            xv = covariates[cc].to_numpy(float)
            yv = u[uc].to_numpy(float)
            discrete = np.unique(xv).size <= 30
            jit = np.random.default_rng(1).uniform(-0.25, 0.25, len(xv)) if discrete else 0.0
            ax.scatter(xv + jit, yv, s=5, alpha=0.5, color=C_REML, linewidths=0)
            ax.axhline(0, color="k", lw=0.8, ls="--")
            trend = _running_mean(xv, yv, discrete)
            ax.plot(trend[0], trend[1], color=C_BAYES, lw=2, label="running mean")
            r = np.corrcoef(xv, yv)[0, 1]
            ax.set_title(f"{u_labels.get(uc, uc)} vs {cov_labels.get(cc, cc)} (r = {r:+.2f})",
                         fontsize=9)
            ax.set_xlabel(cov_labels.get(cc, cc))
            ax.set_ylabel(u_labels.get(uc, uc))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def _running_mean(x: np.ndarray, y: np.ndarray, discrete: bool, bins: int = 15):
    if discrete:
        s = pd.Series(y).groupby(x).mean()
        return s.index.to_numpy(float), s.to_numpy()
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    s = pd.DataFrame({"x": x, "y": y, "b": idx}).groupby("b").mean()
    return s["x"].to_numpy(), s["y"].to_numpy()


def school_ppc_figure(
    observed: dict[str, np.ndarray],
    replicated: dict[str, np.ndarray],
    labels: dict[str, str],
    title: str,
    n_lines: int = 60,
) -> Figure:
    """School-level predictive check: for each statistic (e.g. school means, within-school SDs,
    per-school OLS slopes) the distribution across schools in the data (black) against the same
    distribution in ``n_lines`` replicated data sets (coloured), as ECDFs, plus the observed
    spread (SD across schools) against its predictive distribution.

    ``observed[k]`` has shape (J,), ``replicated[k]`` shape (draws, J).
    """
    keys = list(observed)
    fig, axes = plt.subplots(2, len(keys), figsize=(4.6 * len(keys), 6.4), squeeze=False,
                             layout="constrained")
    for j, k in enumerate(keys):
        obs = np.asarray(observed[k], float)
        rep = np.asarray(replicated[k], float)
        ax = axes[0][j]
        sel = np.linspace(0, rep.shape[0] - 1, min(n_lines, rep.shape[0])).astype(int)
        for d in sel:
            r = np.sort(rep[d][np.isfinite(rep[d])])
            ax.plot(r, np.linspace(0, 1, r.size), color=C_BAYES, alpha=0.12, lw=0.8)
        o = np.sort(obs[np.isfinite(obs)])
        ax.plot(o, np.linspace(0, 1, o.size), color="k", lw=1.6, label="data")
        ax.plot([], [], color=C_BAYES, label="replicated")
        ax.set_title(f"{labels.get(k, k)}: ECDF across schools", fontsize=9)
        ax.set_xlabel(labels.get(k, k))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        lo, hi = np.nanquantile(rep, [0.005, 0.995])
        lo, hi = min(lo, o.min()), max(hi, o.max())
        ax.set_xlim(lo, hi)
        ax2 = axes[1][j]
        sd_rep = np.nanstd(rep, axis=1, ddof=1)
        sd_obs = float(np.nanstd(obs, ddof=1))
        ax2.hist(sd_rep, bins=30, color=C_BAYES, alpha=0.6)
        ax2.axvline(sd_obs, color="k", lw=2)
        p = float(np.mean(sd_rep >= sd_obs))
        ax2.set_title(f"SD across schools: data {sd_obs:.3g}, P(rep ≥ data) = {p:.2f}", fontsize=9)
        ax2.set_xlabel(f"SD of {labels.get(k, k)}")
        ax2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig


def student_ppc_figure(y: np.ndarray, y_rep: np.ndarray, title: str, n_lines: int = 60,
                       xlabel: str = "score") -> Figure:
    """Student-level predictive check: density (histogram outline) of the observed scores against
    ``n_lines`` replicated data sets; ``y_rep`` has shape (draws, N)."""
    fig, ax = plt.subplots(figsize=(7.5, 4), layout="constrained")
    lo, hi = np.nanquantile(np.concatenate([y, y_rep.ravel()]), [0.001, 0.999])
    bins = np.linspace(lo, hi, 70)
    sel = np.linspace(0, y_rep.shape[0] - 1, min(n_lines, y_rep.shape[0])).astype(int)
    centers = 0.5 * (bins[1:] + bins[:-1])
    for d in sel:
        h, _ = np.histogram(y_rep[d], bins=bins, density=True)
        ax.plot(centers, h, color=C_BAYES, alpha=0.12, lw=0.8)
    h, _ = np.histogram(y, bins=bins, density=True)
    ax.plot(centers, h, color="k", lw=1.8, label="data")
    ax.plot([], [], color=C_BAYES, label="replicated")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(textwrap.fill(title, 85), fontsize=10)
    return fig


def pareto_k_figure(
    k: dict[str, dict[str, np.ndarray]],
    thresholds: dict[str, float],
    units: dict[str, str],
    title: str,
) -> Figure:
    """Pareto k of PSIS-LOO per unit, one row per model and one column per level.

    ``k[model][level]`` is the array of k (one per student, or per school), ``thresholds[level]``
    the reliability threshold for that level (drawn dashed, with k = 1 dotted), ``units[level]``
    the words for the x axis ("student", "school"). Points above the threshold are orange; each
    panel's title counts them.
    """
    models = list(k)
    levels = list(next(iter(k.values())))
    fig, axes = plt.subplots(len(models), len(levels),
                             figsize=(5.6 * len(levels), 2.9 * len(models)),
                             squeeze=False, sharey=True, layout="constrained")
    top = max(1.05, max(float(np.nanmax(v)) for d in k.values() for v in d.values()) + 0.05)
    bottom = min(0.0, min(float(np.nanmin(v)) for d in k.values() for v in d.values()) - 0.05)
    for i, m in enumerate(models):
        for j, lev in enumerate(levels):
            ax = axes[i][j]
            v = np.asarray(k[m][lev], float)
            thr = thresholds[lev]
            bad = v > thr
            idx = np.arange(1, v.size + 1)
            ms = 2 if v.size > 2000 else (5 if v.size > 300 else 9)
            ax.scatter(idx[~bad], v[~bad], s=ms, color=C_REML, alpha=0.5, linewidths=0)
            ax.scatter(idx[bad], v[bad], s=ms * 4, color=C_HI, edgecolors="k", linewidths=0.3,
                       zorder=3)
            ax.axhline(thr, color="k", lw=0.9, ls="--", label=f"threshold {thr:.2f}")
            if thr < 1.0:
                ax.axhline(1.0, color="k", lw=0.7, ls=":", label="k = 1")
            ax.set_xlim(0, v.size + 1)
            ax.set_ylim(bottom, top)
            ax.set_title(f"{m}, per {units[lev]}: {int(bad.sum())} of {v.size} above "
                         f"{thr:.2f} (max {np.nanmax(v):.2f})", fontsize=9)
            ax.set_xlabel(f"{units[lev]} (data order)")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("Pareto k")
    handles, labs = axes[0][0].get_legend_handles_labels()
    handles.append(axes[0][0].scatter([], [], s=20, color=C_HI, edgecolors="k", linewidths=0.3))
    labs.append("k above the threshold (LOO estimate unreliable)")
    fig.legend(handles, labs, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


def prediction_figure(tab: pd.DataFrame, group: str, y_label: str, x_label: str) -> Figure:
    """Prediction intervals for new students, one panel per school type (columns
    ``school_type``, ``position``, ``REML fit/lwr/upr``, ``Bayes mean/lwr/upr`` of
    :func:`twolevel.workflows.lecture.predictions.predictions_table`): REML and Bayes side by side
    at each position of the predictor."""
    types = list(dict.fromkeys(tab["school_type"]))
    fig, axes = plt.subplots(1, len(types), figsize=(3.0 * len(types), 3.8), sharey=True,
                             layout="constrained", squeeze=False)
    for ax, st in zip(axes[0], types, strict=True):
        sub = tab[tab["school_type"] == st]
        x = np.arange(len(sub))
        for off, who, col, mid in ((-0.12, "REML", C_REML, "REML fit"),
                                   (0.12, "Bayes", C_BAYES, "Bayes mean")):
            m = sub[mid].to_numpy()
            lo, hi = sub[f"{who} lwr"].to_numpy(), sub[f"{who} upr"].to_numpy()
            ax.errorbar(x + off, m, yerr=[m - lo, hi - m], fmt="o", color=col, ms=4, capsize=3,
                        label=who)
        ax.set_xticks(x, [f"{p}" for p in sub["position"]])
        school = sub[group].iloc[0]
        ax.set_title(st if st == "new school" else f"{st} ({school})", fontsize=9)
        ax.set_xlabel(f"{x_label} relative to the school mean")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(f"predicted {y_label}")
    axes[0][0].legend(fontsize=8, frameon=False)
    fig.suptitle(f"95% prediction intervals for a new student ({y_label})", fontsize=11)
    return fig
