"""Steps 5 and 6: caterpillar plots of the school effects (REML BLUPs and posterior intervals) and
shrinkage of the per-school coefficients OLS → REML BLUP → posterior mean.
"""

from __future__ import annotations

import numpy as np

from twolevel.workflows.lecture.prepare import PreparedData
from twolevel.workflows.lecture.spec import WorkflowSpec, _labels
from twolevel.workflows.lecture.views import BayesView, RemlView


def add_caterpillar_section(sec, spec: WorkflowSpec, rv: RemlView, bv: BayesView, plots) -> None:
    """Step 5: u0j and u1j (and the absolute coefficients β_qj), REML BLUP ± 1.96 conditional SD
    beside the posterior mean and 95% interval, as sorted tables and caterpillar figures."""
    from twolevel.models.tables.shrinkage import caterpillar_table

    _, x_label = _labels(spec)
    gl = spec.group_label
    z = 1.959963984540054
    for k, e in enumerate(rv.effects):
        nice = "intercept" if e == "(Intercept)" else f"{x_label} slope"
        tab = caterpillar_table(rv.u.index, rv.u[e], rv.u_sd[e], bv.u_mean[e],
                                bv.u_lo[e], bv.u_hi[e], z=z)
        sec.table(f"caterpillar_u{k}", tab, max_rows=0,
                  caption=f"u{k}j ({nice}): REML BLUP ± 1.96 cond. SD and posterior "
                          "mean with 95% interval, sorted")
        fig = plots.caterpillar_figure(
            tab, f"School effects u{k}j ({nice} deviation from γ{k}0), {len(tab)} {gl}s",
            f"u{k}j", reference=0.0)
        sec.figure(f"caterpillar_u{k}", fig,
                   caption=f"u{k}j: {nice} deviations, sorted by the REML BLUP")
        gamma = float(rv.fixef[e]) if e in rv.fixef.index else 0.0
        tab_a = caterpillar_table(rv.coef.index, rv.coef[e], rv.u_sd[e], bv.coef_mean[e],
                                  bv.coef_lo[e], bv.coef_hi[e], z=z, reference=gamma)
        sec.table(f"caterpillar_beta{k}", tab_a, max_rows=0,
                  caption=f"β{k}j = γ{k}0 + u{k}j (absolute {nice}s), sorted")
        fig = plots.caterpillar_figure(
            tab_a, f"School {nice}s β{k}j = γ{k}0 + u{k}j, {len(tab_a)} {gl}s",
            f"β{k}j", reference=gamma, reference_label=f"γ{k}0 = {gamma:.2f}")
        sec.figure(f"caterpillar_beta{k}", fig,
                   caption=f"β{k}j: absolute school {nice}s (option 'absolute')")
    sec.text(
        "Each vertical bar is one school's 95% interval; schools are in the order of their "
        "REML BLUP (rank 1 = lowest) in both panels. The five highest and lowest schools "
        "are drawn in orange and named beside the plot; the full sorted tables are in the "
        "CSV files."
    )


def add_shrinkage_section(sec, spec: WorkflowSpec, d: PreparedData, rv: RemlView, bv: BayesView,
                          plots) -> None:
    """Step 6: shrinkage of the per-school coefficients, OLS → REML BLUP → posterior mean, with
    the spread across schools, movement by school size and the figure with T's ellipse."""
    from twolevel.models.tables.shrinkage import (
        describe_shrinkage,
        shrinkage_summary,
        shrinkage_table,
        t_ellipse,
    )

    y_label, x_label = _labels(spec)
    xc, g = spec.xc, spec.group
    ols_coef = d.ols.to_frame(r_names=True).set_index(g)[list(rv.effects)]
    ols_coef.index = rv.coef.index
    shr = shrinkage_table(d.sizes.reindex(rv.coef.index), ols_coef, rv.coef, bv.coef_mean)
    T_post = bv.T.mean(axis=0)
    tau_reml = {e: float(rv.T[i, i]) for i, e in enumerate(rv.effects)}
    tau_bayes = {e: float(T_post[i, i]) for i, e in enumerate(rv.effects)}
    ssum = shrinkage_summary(shr, tau_reml, tau_bayes)
    labels = {"(Intercept)": f"school mean {y_label} (intercept)",
              xc: f"{x_label} slope"}
    sec.text(describe_shrinkage(ssum, labels))
    sec.table("shrinkage_summary", ssum.spread.reset_index(),
              caption="Spread of the per-school estimates (variance across schools)")
    sec.table("shrinkage_by_size", ssum.by_size,
              caption="Mean movement by school size band")
    sec.table("shrinkage_per_school", shr.reset_index(), max_rows=10, digits=3,
              columns=[g, "n"] + [f"{e}.{k}" for e in rv.effects
                                  for k in ("ols", "reml", "bayes")],
              caption="Per school: OLS, REML and posterior-mean coefficients")
    gam = np.array([float(rv.fixef[e]) for e in rv.effects[:2]])
    gpost = np.array([bv.beta[:, bv.fixed.index(e)].mean() for e in rv.effects[:2]])
    fig = plots.shrinkage_figure(
        shr, tuple(rv.effects[:2]), gam, t_ellipse(gam, rv.T[:2, :2]),
        t_ellipse(gpost, T_post[:2, :2]),
        labels=(f"mean {y_label}", f"{x_label} slope"))
    sec.figure("shrinkage", fig, caption="OLS → REML BLUP → posterior mean, with the "
                                         "95% ellipse of the estimated T")
    fig = plots.shrinkage_by_size_figure(shr, list(rv.effects[:2]), labels)
    sec.figure("shrinkage_by_size", fig, caption="Movement from OLS by school size, "
                                                 "and posterior mean − BLUP")
