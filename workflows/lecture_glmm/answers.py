"""Steps 8 and 9 for a binary or count outcome: the lecture's questions in plain words (odds ratio
of the predictor, variation of the school log-odds, median odds ratio, slope variation,
intercept–slope correlation), Laplace and Bayes side by side; and the expected outcome
(probability) of a student in an average, a low, a high and a new school, with the effect sizes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twolevel.models.tables.glmm_answers import SCALES
from twolevel.workflows.lecture.answers import write_answers
from twolevel.workflows.lecture.spec import Progress, _labels
from twolevel.workflows.lecture.views import BayesView, RemlView, bayes_answer_draws
from twolevel.workflows.lecture_glmm.prepare import PreparedGlmmData
from twolevel.workflows.lecture_glmm.spec import GlmmWorkflowSpec


def ml_quantities(view: RemlView, xc: str):
    """The Laplace numbers the questions use (γ00, γ10, SEs, T)."""
    from twolevel.models.tables.glmm_answers import GlmmQuantities

    i0, i1 = view.effects.index("(Intercept)"), view.effects.index(xc)
    return GlmmQuantities(
        gamma00=float(view.fixef["(Intercept)"]), gamma10=float(view.fixef[xc]),
        se00=float(view.se["(Intercept)"]), se10=float(view.se[xc]),
        tau00=float(view.T[i0, i0]), tau11=float(view.T[i1, i1]), tau01=float(view.T[i0, i1]))


def within_sd(spec: GlmmWorkflowSpec, d: PreparedGlmmData) -> float:
    """SD of the centred predictor (the within-school SD used for 'per SD' statements)."""
    return float(np.std(d.frame[spec.xc].to_numpy(float), ddof=1))


def add_glmm_answers_section(sec, s_answers, rep, spec: GlmmWorkflowSpec, d: PreparedGlmmData,
                             rv: RemlView, bv: BayesView, progress: Progress) -> None:
    """Step 8: the questions, Laplace and Bayes side by side (``sec``), the plain-words answers
    also at the top of the report (``s_answers``) and in ``answers.json``."""
    from twolevel.models.tables.glmm_answers import glmm_answers

    y_label, x_label = _labels(spec)
    ans = glmm_answers(ml_quantities(rv, spec.xc), bayes_answer_draws(bv, spec.xc, rv.effects),
                       family=spec.family, y_label=y_label, x_label=x_label,
                       x_sd=within_sd(spec, d))
    write_answers(sec, s_answers, rep, spec, ans, progress,
                  "Laplace estimate (with its 95% Wald interval where there is one) and "
                  "posterior mean, SD, 2.5% and 97.5% quantiles")


def _summ(v: np.ndarray) -> tuple[float, float, float]:
    return float(v.mean()), float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))


def mean_table(spec: GlmmWorkflowSpec, rv: RemlView, bv: BayesView, xs: dict[str, float]
               ) -> pd.DataFrame:
    """Expected outcome per school type
    (:func:`twolevel.models.tables.glmm_answers.school_type_means`) at each position of ``xs``
    (label → centred x), Laplace plug-in and posterior."""
    from twolevel.models.tables.glmm_answers import school_type_means

    q = ml_quantities(rv, spec.xc)
    draws = bayes_answer_draws(bv, spec.xc, rv.effects)
    rows = []
    for pos, x in xs.items():
        ml = school_type_means(q.gamma00, q.gamma10, q.tau00, q.tau11, q.tau01, x, spec.family)
        post = school_type_means(draws["gamma00"], draws["gamma10"], draws["tau00"],
                                 draws["tau11"], draws["tau01"], x, spec.family)
        for st in ml:
            m, lo, hi = _summ(post[st])
            rows.append({"school_type": st, "position": pos, "x": x, "ml": float(ml[st]),
                         "post_mean": m, "post_lo": lo, "post_hi": hi})
    return pd.DataFrame(rows)


def effect_size_table(spec: GlmmWorkflowSpec, ml: dict, bayes: dict) -> pd.DataFrame:
    """Median odds ratio and (logit) latent ICC of m1 and m2: Laplace, AGQ (m2) and posterior."""
    from twolevel.models.tables.glmm_answers import latent_icc, median_odds_ratio

    sc = SCALES[spec.family]
    rows = []
    for m in ("m1", "m2"):
        tau = float(ml[m].VarCorr().variances["(Intercept)"])
        sd = bayes[m].draws("sd", "effect")[:, 0]
        agq = (float(ml["m2_agq"].VarCorr().variances["(Intercept)"]) if m == "m2"
               else np.nan)
        rows.append((f"{sc.median_ratio} ({sc.median_abbr})", m, float(median_odds_ratio(tau)),
                     float(median_odds_ratio(agq)) if np.isfinite(agq) else np.nan,
                     _summ(median_odds_ratio(sd**2))))
        if spec.family == "binomial":
            rows.append(("ICC on the latent logistic scale, τ00 / (τ00 + π²/3)", m,
                         float(latent_icc(tau)), float(latent_icc(agq)) if np.isfinite(agq)
                         else np.nan, _summ(latent_icc(sd**2))))
    return pd.DataFrame([(a, m, lap, agq, *b) for a, m, lap, agq, b in rows],
                        columns=["quantity", "model", "Laplace", f"AGQ (nAGQ = {spec.nagq})",
                                 "Bayes mean", "Bayes 2.5%", "Bayes 97.5%"])


def add_glmm_prediction_section(sec, spec: GlmmWorkflowSpec, d: PreparedGlmmData, ml: dict,
                                bayes: dict, rv: RemlView, bv: BayesView, plots) -> None:
    """Step 9: expected outcome by school type at −1 SD, the mean and +1 SD of the centred
    predictor (table and curves), and the effect sizes (MOR, latent ICC)."""
    y_label, x_label = _labels(spec)
    gl, sc = spec.group_label, SCALES[spec.family]
    sd = within_sd(spec, d)
    tab = mean_table(spec, rv, bv, {"-1 SD": -sd, "mean": 0.0, "+1 SD": sd})
    sec.text(
        f"The {sc.mean} of {y_label} for a student at the {gl} mean of {x_label} and one SD "
        f"({sd:.3g}) below and above it: in an average {gl} (u0j = u1j = 0), in a {gl} whose "
        f"intercept is at the 2.5% or the 97.5% of {gl}s (γ00 ∓ 1.96√τ00, average slope), and "
        f"averaged over {gl}s (a new {gl} drawn from N(0, T); the population-average {sc.mean}, "
        "by Gauss–Hermite quadrature). Laplace: the estimates plugged in; Bayes: the same "
        "quantity at every posterior draw (mean and 95% interval). The average-school and "
        f"population-average values differ because the inverse link is not linear: "
        + (f"averaging over {gl}s pulls the probability towards 0.5." if spec.family == "binomial"
           else f"averaging over {gl}s multiplies the expected count by exp(Var/2)."))
    sec.table("predictions", tab, digits=4, caption=f"Expected {sc.mean} by {gl} type and "
                                                    f"{x_label}")
    grid = np.linspace(-2 * sd, 2 * sd, 41)
    curves = mean_table(spec, rv, bv, {f"{x:.3f}": float(x) for x in grid})
    fig = plots.mean_curve_figure(curves, x_label, f"{sc.mean} of {y_label}", marks=(-sd, sd))
    sec.figure("predictions", fig, caption=f"{sc.mean.capitalize()} of {y_label} against "
                                           f"{x_label} (±2 within-{gl} SD) by {gl} type")
    es = effect_size_table(spec, ml, bayes)
    sec.table("effect_sizes", es, digits=4,
              caption=f"Effect sizes: {sc.median_ratio}"
                      + (" and latent-scale ICC" if spec.family == "binomial" else ""))
    t = es.set_index(["quantity", "model"])
    mor2 = float(t.loc[(f"{sc.median_ratio} ({sc.median_abbr})", "m2"), "Laplace"])
    sec.text(
        f"The {sc.median_ratio} puts the between-{gl} variance on the {sc.ratio} scale: for "
        f"m2, {sc.median_abbr} = {mor2:.2f}, the median {sc.ratio} between two students with "
        f"the same {x_label} in two randomly chosen {gl}s (the higher against the lower)."
        + (" The latent ICC is the share of the variance of a latent logistic outcome that "
           f"lies between {gl}s; unlike the ICC of a normal outcome it is not the correlation "
           "of two students' 0/1 outcomes." if spec.family == "binomial" else ""))
