"""Step 7, level-2 residuals: the lecture's summary table of the BLUPs, the per-school table and
plots against school size and school mean of the predictor.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twolevel.workflows.lecture.prepare import PreparedData
from twolevel.workflows.lecture.spec import WorkflowSpec, _labels
from twolevel.workflows.lecture.views import RemlView


def add_residual_section(sec, spec: WorkflowSpec, d: PreparedData, reml: dict, rv: RemlView,
                         plots) -> None:
    """The lecture's level-2 residual summary table and residual plots."""
    from twolevel.models.inference.residuals import (
        format_residual_summary,
        level2_residual_summary,
        school_table,
    )

    y_label, x_label = _labels(spec)
    gl = spec.group_label
    m1 = reml["m1"]
    summ = level2_residual_summary(rv.u.to_numpy())
    sec.text("Level-2 residuals are the REML BLUPs of u0j (school mean deviation from γ00) and "
             "u1j (slope deviation from γ10), as in the lecture's summary table.")
    sec.pre(format_residual_summary(summ), caption="Level-2 residual summary (mean, sd, "
                                                   "percentiles, histogram)")
    sec.table("level2_residual_summary", summ, caption="Level-2 residual summary")
    per = school_table(m1.design, m1.crossprods, m1.theta, m1.sigma)
    names = list(m1.design.z_names)
    sec.table("level2_residuals_per_school", per, max_rows=10, digits=3,
              columns=[spec.group, "n_j"] + [f"{k}_{n}" for n in names for k in ("BLUP", "condSD")]
              + [f"reliability_{n}" for n in names],
              caption="Per school: n_j, OLS estimates, BLUPs, conditional SDs, EB coefficients, "
                      "reliability, precision weights")
    means_name = d.centering.means.name
    _, r_xbar = add_residuals_against_groups(
        sec, d, spec.group, rv, plots, gl, x_label,
        caption=f"u0j and u1j against {gl} size and {gl} mean {x_label}")
    sec.text(
        f"Correlation with {gl} mean {x_label}: u0j {r_xbar[0]:+.2f}, u1j {r_xbar[1]:+.2f}. "
        + ("A clear trend of u0j with mean " + x_label + " means part of the between-school "
           "variation is explained by school composition (a contextual effect): adding "
           f"`--level2 {means_name}` models it." if abs(r_xbar[0]) > 0.2 else
           "No strong trend with school composition.")
    )


def add_residuals_against_groups(sec, d, group: str, rv: RemlView, plots, gl: str, x_label: str,
                                 caption: str, **figure_kw) -> tuple[list[str], list[float]]:
    """The level-2 residuals u0j, u1j, … (``rv.u``) plotted against each group's size and its
    mean of the predictor (the centring means of ``d``), into ``sec`` as ``level2_residuals``;
    returns the residuals' labels and their correlations with the group mean."""
    means_name = d.centering.means.name
    cov = pd.DataFrame({
        "n": d.sizes.reindex(rv.u.index).to_numpy(),
        "xbar": d.frame.groupby(group)[means_name].first().reindex(rv.u.index).to_numpy(),
    }, index=rv.u.index)
    u = rv.u.set_axis([f"u{k}j" for k in range(len(rv.effects))], axis=1)
    fig = plots.residual_figure(
        u, cov, {c: c for c in u.columns},
        {"n": f"{gl} size n_j", "xbar": f"{gl} mean {x_label} ({means_name})"}, **figure_kw)
    sec.figure("level2_residuals", fig, caption=caption)
    return list(u.columns), [float(np.corrcoef(cov["xbar"], u[c])[0, 1]) for c in u.columns]
