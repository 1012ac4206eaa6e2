"""Step 4, model comparison: PSIS-LOO per student and leave-one-school-out beside the likelihood-
ratio test, Bayes vs REML estimates, and the plain-words verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from twolevel.workflows.lecture.spec import WorkflowSpec


def _reml_value(fit, parameter: str) -> float:
    """The REML estimate named like a row of :meth:`twolevel.models.bayes.fit.BayesFit.to_frame`."""
    vc = fit.VarCorr()
    kind, _, name = parameter.partition(":")
    if kind == "fixef":
        return float(fit.fixef()[name])
    if kind == "sd":
        return float(vc.sds[name])
    if kind == "corr":
        a, b = name.split(":")
        return float(vc.correlations.loc[a, b])
    if parameter == "sigma":
        return float(vc.residual_sd)
    raise ValueError(f"no REML estimate for posterior parameter '{parameter}'")


def bayes_vs_reml(fits: dict[str, Any], reml: dict[str, Any]) -> pd.DataFrame:
    """Posterior mean, SD and 95% interval beside the REML estimate, per model and parameter."""
    rows = []
    for m, fit in fits.items():
        post = fit.to_frame()
        for p, r in post.iterrows():
            est = _reml_value(reml[m], str(p))
            rows.append({"model": m, "parameter": p, "reml": est, "post_mean": r["mean"],
                         "post_sd": r["sd"], "q2.5": r["q2.5"], "q97.5": r["q97.5"],
                         "diff_in_post_sd": (r["mean"] - est) / r["sd"],
                         "reml_inside_95": bool(r["q2.5"] <= est <= r["q97.5"])})
    return pd.DataFrame(rows)


def _compare_words(tab: pd.DataFrame, label: str = "REML") -> str:
    """Plain words on how posterior means relate to the REML (or ``label``) estimates."""
    worst = tab.loc[tab["diff_in_post_sd"].abs().idxmax()]
    outside = tab[~tab["reml_inside_95"]]
    text = (f"Posterior means and {label} estimates agree closely: the largest gap is "
            f"{worst['parameter']} in {worst['model']} (posterior mean {worst['post_mean']:.4g}, "
            f"{label} {worst['reml']:.4g}, {abs(worst['diff_in_post_sd']):.2f} posterior SDs "
            "apart). ")
    if outside.empty:
        text += f"Every {label} estimate lies inside its 95% posterior interval."
    else:
        text += (f"{label} estimates outside the 95% posterior interval: "
                 + ", ".join(f"{r.parameter} ({r.model})" for r in outside.itertuples()) + ".")
    if abs(worst["diff_in_post_sd"]) > 0.25:
        text += (f" {worst['parameter']} is the least sharply estimated: "
                 "its 95% posterior interval "
                 f"[{worst['q2.5']:.3g}, {worst['q97.5']:.3g}] is wide, and a point estimate "
                 f"({label}) and a posterior mean summarise such a posterior differently; the "
                 "prior also weighs more where the data say little.")
    return text


def add_comparison_section(sec, spec: WorkflowSpec, reml: dict[str, Any], bayes: dict[str, Any],
                           plots, lrt_label: str = "ML refits") -> str:
    """PSIS-LOO per student and leave-one-school-out for m1 and m2 (ArviZ), Pareto k, and the LRT,
    with the plain-words verdict of
    :func:`twolevel.models.tables.lecture_answers.comparison_verdict`. Returns the verdict.
    ``lrt_label`` says how the LRT's fits were obtained (glmer: "Laplace")."""
    import warnings

    import arviz as az

    from twolevel.models.bayes.loo import loo as bayes_loo
    from twolevel.models.bayes.loo import relative_efficiency
    from twolevel.models.tables.lecture_answers import comparison_verdict

    gl = spec.group_label
    resp = bayes["m1"].design.response
    var = {"students": resp, "schools": f"{resp}_by_school"}
    models = ("m1", "m2")
    loo: dict[str, dict[str, Any]] = {m: {} for m in models}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # high Pareto k is reported below, in a table and figure
        for m in models:  # r_eff (ArviZ's default) is the model's, the same at both levels
            reff = relative_efficiency(bayes[m].datatree["posterior"].to_dataset())
            for lev, v in var.items():
                # ArviZ's PSIS-LOO, compiled
                loo[m][lev] = bayes_loo(bayes[m].datatree, var_name=v, reff=reff)
    sec.text(
        f"PSIS-LOO estimates how well each model predicts data it has not seen. **Per student**: "
        f"a new student in one of these {gl}s (the log-likelihood of each student given the "
        f"{gl}'s effects). **Per {gl}** (leave-one-{gl}-out): a new {gl}, with the {gl} effects "
        "integrated out. elpd = expected log predictive density (higher is better); the "
        "tables compare m1 with m2 (elpd_diff = elpd(m1) − elpd(m2), dse its SE).")
    diffs = {}
    for lev in var:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = az.compare({m: loo[m][lev] for m in models}, reference="m2", round_to="none")
        diffs[lev] = (float(c.loc["m1", "elpd_diff"]), float(c.loc["m1", "dse"]))
        unit = "student" if lev == "students" else gl
        sec.table(f"loo_compare_{lev}", c.reset_index(names="model"), digits=3,
                  caption=f"az.compare, leave-one-{unit}-out (reference m2)")
    rows, bad_union = [], {}
    for lev in var:
        thr = float(loo["m1"][lev].good_k)
        bad_union[lev] = int(np.sum(np.logical_or.reduce(
            [np.asarray(loo[m][lev].pareto_k) > thr for m in models])))
        for m in models:
            k = np.asarray(loo[m][lev].pareto_k, float)
            rows.append({"model": m, "level": lev, "n": k.size, "elpd_loo": float(loo[m][lev].elpd),
                         "se": float(loo[m][lev].se), "p_loo": float(loo[m][lev].p),
                         "k_threshold": thr, "n_k_above_threshold": int((k > thr).sum()),
                         "n_k_above_0.7": int((k > 0.7).sum()), "n_k_above_1": int((k > 1).sum()),
                         "max_k": float(k.max())})
    sec.table("pareto_k", pd.DataFrame(rows), digits=3,
              caption="PSIS-LOO per model and level, with Pareto k diagnostics (k above the "
                      "threshold: that point's LOO estimate is unreliable)")
    fig = plots.pareto_k_figure(
        {m: {lev: np.asarray(loo[m][lev].pareto_k, float) for lev in var} for m in models},
        {lev: float(loo["m1"][lev].good_k) for lev in var},
        {"students": "student", "schools": gl},
        "Pareto k of PSIS-LOO per student (left) and per school (right)".replace("school", gl))
    sec.figure("pareto_k", fig, caption="Pareto k per student and per school, both models")
    a = reml["anova"]
    i = list(a.names).index("m1")
    sec.pre(str(a), caption="The likelihood-ratio test of section 2, for comparison")
    p_mix = float(a.p_mixture[i])
    verdict = comparison_verdict(
        float(a.chisq[i]), int(a.df[i]), float(a.p[i]), p_mix if np.isfinite(p_mix) else None,
        loo_student=diffs["students"], loo_school=diffs["schools"],
        bad_k=(bad_union["students"], bad_union["schools"]), lrt_label=lrt_label)
    sec.text(f"**Verdict.** {verdict}")
    return verdict
