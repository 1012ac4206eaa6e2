"""Steps 5-7 for a binary or count outcome: caterpillar plots of the school effects on the link
scale (log-odds) with odds ratios in the tables, shrinkage of the school log-odds from the
empirical logits to the conditional modes and the posterior means, and the conditional modes
against school size and school mean of the predictor.
"""

from __future__ import annotations

import pandas as pd

from twolevel.models.tables.glmm_answers import SCALES
from twolevel.workflows.lecture.residuals import add_residuals_against_groups
from twolevel.workflows.lecture.spec import _labels
from twolevel.workflows.lecture.views import BayesView, RemlView
from twolevel.workflows.lecture_glmm.prepare import PreparedGlmmData
from twolevel.workflows.lecture_glmm.spec import GlmmWorkflowSpec

PANELS = ("conditional mode ± 1.96 conditional SD (Laplace)", "posterior mean, 95% interval")


def add_glmm_caterpillar_section(sec, spec: GlmmWorkflowSpec, rv: RemlView, bv: BayesView,
                                 plots) -> None:
    """Step 5: u0j, u1j and the absolute coefficients β_qj on the link scale: conditional mode ±
    1.96 conditional SD beside the posterior mean and 95% interval, with exp() of each in the
    tables (odds ratios against an average school; the school's odds and odds ratios)."""
    from twolevel.models.tables.shrinkage import caterpillar_ratios, caterpillar_table

    _, x_label = _labels(spec)
    gl, sc = spec.group_label, SCALES[spec.family]
    ratio = "OR" if spec.family == "binomial" else "RR"
    pre = ratio.lower()
    z = 1.959963984540054
    for k, e in enumerate(rv.effects):
        nice = "intercept" if e == "(Intercept)" else f"{x_label} slope"
        tab = caterpillar_ratios(caterpillar_table(rv.u.index, rv.u[e], rv.u_sd[e],
                                                   bv.u_mean[e], bv.u_lo[e], bv.u_hi[e], z=z),
                                 prefix=pre)
        what = (f"exp(u0j) = the {gl}'s {sc.ratio} against an average {gl}" if k == 0 else
                f"exp(u{k}j) = the factor by which the {gl}'s {sc.ratio} of {x_label} differs "
                "from the average one")
        sec.table(f"caterpillar_u{k}", tab, max_rows=0,
                  caption=f"u{k}j ({nice}, {sc.link} scale): conditional mode ± 1.96 cond. SD "
                          f"and posterior mean with 95% interval, sorted; {pre}_* columns: "
                          f"{what}")
        ext = pd.concat([tab.head(5), tab.tail(5)])
        sec.table(f"caterpillar_u{k}_extremes", ext, digits=3,
                  columns=["rank", "school", "reml", f"{pre}_reml", f"{pre}_reml_lo",
                           f"{pre}_reml_hi", "bayes", f"{pre}_bayes", f"{pre}_bayes_lo",
                           f"{pre}_bayes_hi"],
                  caption=f"The five lowest and highest {gl}s by u{k}j: conditional mode and "
                          f"posterior mean on the {sc.link} scale, and their {sc.ratio}s with "
                          "95% intervals")
        fig = plots.caterpillar_figure(
            tab, f"{gl.capitalize()} effects u{k}j ({nice} deviation from γ{k}0, {sc.link}), "
                 f"{len(tab)} {gl}s", f"u{k}j ({sc.link}; {ratio} = exp)", reference=0.0,
            ratio=ratio, panel_names=PANELS, rank_by="conditional mode")
        sec.figure(f"caterpillar_u{k}", fig,
                   caption=f"u{k}j on the {sc.link} scale, sorted by the conditional mode; the "
                           f"box names the extremes with their {sc.ratio} exp(u{k}j)")
        gamma = float(rv.fixef[e]) if e in rv.fixef.index else 0.0
        tab_a = caterpillar_ratios(caterpillar_table(
            rv.coef.index, rv.coef[e], rv.u_sd[e], bv.coef_mean[e], bv.coef_lo[e],
            bv.coef_hi[e], z=z, reference=gamma), prefix=pre if k else sc.level)
        what_a = (f"exp(β0j) = the {gl}'s {sc.level} for a student at its mean {x_label}"
                  if k == 0 else f"exp(β{k}j) = the {gl}'s {sc.ratio} of one unit of {x_label}")
        sec.table(f"caterpillar_beta{k}", tab_a, max_rows=0,
                  caption=f"β{k}j = γ{k}0 + u{k}j ({sc.link} scale), sorted; exponentiated "
                          f"columns: {what_a}")
        fig = plots.caterpillar_figure(
            tab_a, f"{gl.capitalize()} {nice}s β{k}j = γ{k}0 + u{k}j ({sc.link}), "
                   f"{len(tab_a)} {gl}s", f"β{k}j ({sc.link})", reference=gamma,
            reference_label=f"γ{k}0 = {gamma:.2f}",
            ratio=sc.level if k == 0 else ratio, panel_names=PANELS, rank_by="conditional mode")
        sec.figure(f"caterpillar_beta{k}", fig,
                   caption=f"β{k}j: the {gl}s' {'log-odds' if k == 0 else 'slopes'} on the "
                           f"{sc.link} scale")
    sec.text(
        f"Each vertical bar is one {gl}'s 95% interval on the {sc.link} scale (exponentiate the "
        f"ends for the interval of the {sc.ratio}: the tables' {pre}_* columns); {gl}s are in "
        f"the order of their conditional mode (rank 1 = lowest) in both panels. The conditional "
        f"mode is the peak of the {gl} effect's conditional distribution given the Laplace "
        "estimates (lme4's ranef); its SD is the Laplace approximation's (condVar). The five "
        f"highest and lowest {gl}s are drawn in orange and named beside the plot.")


def add_glmm_shrinkage_section(sec, spec: GlmmWorkflowSpec, d: PreparedGlmmData, ml: dict,
                               rv: RemlView, bv: BayesView, plots) -> None:
    """Step 6: empirical logit → conditional mode → posterior mean of each school's intercept."""
    from twolevel.models.tables.empirical import (
        describe_empirical_shrinkage,
        empirical_shrinkage_table,
    )

    y_label, x_label = _labels(spec)
    gl, sc = spec.group_label, SCALES[spec.family]
    e0 = "(Intercept)"
    shr = empirical_shrinkage_table(d.empirical, rv.coef[e0], bv.coef_mean[e0])
    i0 = rv.effects.index(e0)
    tau_ml, tau_post = float(rv.T[i0, i0]), float(bv.T[:, i0, i0].mean())
    sec.text(
        f"The no-pooling estimate of a {gl}'s {sc.link} is its empirical {sc.link} (section 1); "
        f"partial pooling gives the conditional mode γ00 + u0j of m1 (Laplace) and the posterior "
        f"mean of γ00 + u0j (NUTS). With {x_label} centred within {gl}s, all three describe a "
        f"student at the {gl}'s mean {x_label} (the empirical value is the logit of the {gl}'s "
        "proportion, which averages over its students on the probability scale, so it sits "
        "slightly closer to 0 than the intercept even without noise).")
    sec.text(describe_empirical_shrinkage(shr, tau_ml, tau_post, scale=sc.link, school=gl,
                                          event=y_label))
    cols = ["n_j", "y_sum", "separated", "empirical", "mode", "posterior"]
    sec.table("shrinkage_per_school", shr.reset_index(), max_rows=10, digits=3,
              columns=[shr.index.name, *cols],
              caption=f"Per {gl}: empirical {sc.link}, conditional mode and posterior mean of "
                      f"the {gl} intercept (SEs and shifts in the CSV)")
    spread = pd.DataFrame({
        "estimate": ["empirical", "conditional mode (Laplace)", "posterior mean"],
        "variance across schools": [shr["empirical"].var(ddof=1), shr["mode"].var(ddof=1),
                                    shr["posterior"].var(ddof=1)],
    })
    spread.loc[len(spread)] = ["τ00 (Laplace estimate)", tau_ml]
    spread.loc[len(spread)] = ["τ00 (posterior mean)", tau_post]
    sec.table("shrinkage_summary", spread, digits=4,
              caption=f"Spread of the {gl} intercepts, {sc.link} scale")
    fig = plots.empirical_shrinkage_figure(shr, float(rv.fixef[e0]), sc.link, school=gl)
    sec.figure("shrinkage", fig, caption=f"Empirical {sc.link} → conditional mode → posterior "
                                         f"mean, one line per {gl}")


def add_glmm_residual_section(sec, spec: GlmmWorkflowSpec, d: PreparedGlmmData, rv: RemlView,
                              plots) -> None:
    """Step 7: the lecture's summary of the level-2 residuals (here the conditional modes) and
    their plots against school size and school mean of the predictor."""
    from twolevel.models.inference.residuals import (
        format_residual_summary,
        level2_residual_summary,
    )

    _, x_label = _labels(spec)
    gl, sc = spec.group_label, SCALES[spec.family]
    summ = level2_residual_summary(rv.u.to_numpy())
    sec.text(f"The level-2 residuals of a GLMM are the conditional modes of u0j ({gl} deviation "
             f"of the {sc.link} from γ00) and u1j (slope deviation from γ10), on the {sc.link} "
             "scale, summarised as in the lecture's table.")
    sec.pre(format_residual_summary(summ), caption="Conditional-mode summary (mean, sd, "
                                                   "percentiles, histogram)")
    sec.table("level2_residual_summary", summ, caption="Conditional-mode summary")
    per = pd.concat([rv.u, rv.u_sd.add_prefix("condsd_")], axis=1).reset_index()
    sec.table("level2_residuals_per_school", per, max_rows=10, digits=3,
              caption=f"Per {gl}: conditional modes and conditional SDs")
    means_name = d.centering.means.name
    labels, r_xbar = add_residuals_against_groups(
        sec, d, spec.group, rv, plots, gl, x_label,
        caption=f"Conditional modes against {gl} size and {gl} mean {x_label}",
        title=f"Conditional modes (Laplace, {sc.link}) against {gl} characteristics")
    sec.text(
        f"Correlation with {gl} mean {x_label}: "
        + ", ".join(f"{c} {r:+.2f}" for c, r in zip(labels, r_xbar, strict=True)) + ". "
        + (f"A clear trend of u0j with mean {x_label} means part of the between-{gl} variation "
           f"is explained by {gl} composition: adding `--level2 {means_name}` models it."
           if abs(r_xbar[0]) > 0.2 else f"No strong trend with {gl} composition."))
