"""Caterpillar and shrinkage plots per level of a Bayesian fit with several grouping factors.

Takes a :class:`twolevel.models.bayes.fit_multi.MultiBayesFit` (``fit_bayes`` with
``(1 | school/class)`` …) and the REML fit of the same formula (``twolevel.lmer``); the tables
come from the fits (``MultiBayesFit.ranef``, ``MultiBayesFit.shrinkage_table``,
``MultiFit.ranef(cond_var=True)``, :func:`twolevel.models.tables.shrinkage.caterpillar_table`);
nothing here computes a statistic.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from twolevel.models.tables.shrinkage import caterpillar_table  # noqa: E402
from twolevel.workflows.plots import C_BAYES, C_OLS, caterpillar_figure  # noqa: E402

__all__ = ["level_caterpillar_figures", "level_shrinkage_figures"]


def level_caterpillar_figures(bfit, rfit, effect: str = "(Intercept)") -> dict[str, Figure]:
    """Per grouping factor (lme4's name), a caterpillar plot of ``effect``: REML conditional
    mode ± 1.96 conditional SD (left) and posterior mean with its 95% interval (right), groups
    ranked by the REML mode. Factors without ``effect`` are skipped.

    Parameters
    ----------
    bfit : MultiBayesFit
    rfit : MultiFit (``twolevel.lmer`` of the same formula)
    effect : str

    Returns
    -------
    dict of Figure, keyed by factor name.
    """
    re = rfit.ranef(cond_var=True)
    n_levels = len(bfit.factor_names)
    out = {}
    for k, g in enumerate(bfit.factor_names):
        if g not in re or effect not in re[g].columns:
            continue
        fr = re[g]
        b = bfit.ranef(g)
        b = b[b["effect"] == effect].set_index("level").loc[[str(v) for v in fr.index]]
        tab = caterpillar_table(fr.index, fr[effect].to_numpy(),
                                fr[f"condsd_{effect}"].to_numpy(), bayes=b["mean"].to_numpy(),
                                bayes_lo=b["q2.5"].to_numpy(), bayes_hi=b["q97.5"].to_numpy())
        out[g] = caterpillar_figure(
            tab, f"Level {k + 2} of {n_levels + 1} ('{g}'): {effect}, {len(tab)} groups",
            f"{effect} deviation", panel_names=("REML mode ± 1.96 conditional SD",
                                                "posterior mean, 95% interval"),
            rank_by="REML mode", unit=g.split(":")[0])
    return out


def level_shrinkage_figures(bfit) -> dict[str, Figure]:
    """Per grouping factor with a random intercept: each group's intercept without pooling
    (x; mean residual of its rows after the fixed part and the outer levels) against its
    posterior mean (y), point size by group size, the identity line dashed — partial pooling
    pulls small groups towards 0.

    Parameters
    ----------
    bfit : MultiBayesFit

    Returns
    -------
    dict of Figure, keyed by factor name.
    """
    out = {}
    for g in bfit.factor_names:
        f = bfit.design.factors[bfit.factor_names.index(g)]
        if "(Intercept)" not in f.z_names:
            continue
        tab = bfit.shrinkage_table(g)
        fig, ax = plt.subplots(figsize=(6.4, 5.6), layout="constrained")
        size = tab["size"].to_numpy()
        ax.scatter(tab["raw"], tab["posterior"], s=4 + 40 * size / size.max(), color=C_BAYES,
                   alpha=0.6, linewidths=0)
        lim = float(np.nanmax(np.abs(tab[["raw", "posterior"]].to_numpy()))) * 1.05
        ax.plot([-lim, lim], [-lim, lim], color=C_OLS, ls="--", lw=1, label="no pooling")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xlabel(f"'{g}' intercept without pooling (mean residual of its rows)")
        ax.set_ylabel("posterior mean of the intercept")
        rows = (f"{int(size.min())}" if size.min() == size.max()
                else f"{int(size.min())}–{int(size.max())}")
        ax.set_title(f"Shrinkage at level '{g}': {len(tab)} groups of {rows} rows", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        out[g] = fig
    return out
