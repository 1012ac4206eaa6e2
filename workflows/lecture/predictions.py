"""Step 9, predictions and effect sizes: the expected score of a student at the school mean and one
SD below and above it on the level-1 predictor, in an average existing school, in the schools with
the highest and lowest intercept, and in a new school, with REML prediction intervals
(:func:`twolevel.models.inference.predict.predict`) beside Bayesian posterior predictive
intervals (:func:`twolevel.models.bayes.predict.predict_bayes`); and the effect-size table: the
null model's ICC, Nakagawa's R² of m1 and Raudenbush & Bryk's proportion reduction in variance of
m1 against the null model, REML and Bayes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from twolevel.workflows.lecture.prepare import PreparedData
from twolevel.workflows.lecture.spec import WorkflowSpec, _labels
from twolevel.workflows.lecture.views import RemlView

NEW_SCHOOL = "new school"


def prediction_rows(spec: WorkflowSpec, d: PreparedData, rv: RemlView) -> pd.DataFrame:
    """The new rows to predict: 4 schools × 3 positions of the centred predictor (−1 SD, the
    school mean, +1 SD; SD = the within-school SD of the centred predictor). Schools: the one
    whose intercept BLUP is closest to 0 ("average"), the highest and the lowest, and a school
    not in the data (level-2 predictors at their mean over schools)."""
    u0 = rv.u["(Intercept)"]
    picks = [("average school", u0.abs().idxmin()), ("highest intercept", u0.idxmax()),
             ("lowest intercept", u0.idxmin())]
    sd = float(np.std(d.frame[spec.xc].to_numpy(float), ddof=1))
    per_school = d.frame.groupby(spec.group)[list(spec.level2)].first() if spec.level2 else None
    rows = []
    for label, school in [*picks, (NEW_SCHOOL, "new")]:
        for pos, k in (("-1 SD", -1.0), ("mean", 0.0), ("+1 SD", 1.0)):
            row = {"school_type": label, "position": pos, spec.group: school, spec.xc: k * sd}
            for w in spec.level2:
                row[w] = (float(per_school[w].mean()) if school == "new"
                          else per_school.loc[school, w])
            rows.append(row)
    out = pd.DataFrame(rows)
    if school_dtype := d.frame[spec.group].dtype:
        if pd.api.types.is_integer_dtype(school_dtype):
            # a new school needs a label that is not a level: the string 'new' beside integer ids
            out[spec.group] = out[spec.group].astype(object)
    return out


def predictions_table(spec: WorkflowSpec, rows: pd.DataFrame, m1, b1, seed: int,
                      level: float = 0.95) -> pd.DataFrame:
    """REML prediction intervals and Bayesian posterior predictive intervals for ``rows``."""
    from twolevel.models.bayes.predict import predict_bayes
    from twolevel.models.inference.predict import predict

    newdata = rows.drop(columns=["school_type", "position"])
    reml = predict(m1, newdata, allow_new_levels=True, interval="prediction", level=level)
    bayes = predict_bayes(b1, newdata, allow_new_levels=True, seed=seed).summary(level)
    tab = rows[["school_type", spec.group, "position", spec.xc]].copy()
    tab["REML fit"] = reml["fit"].to_numpy()
    tab["REML lwr"] = reml["lwr"].to_numpy()
    tab["REML upr"] = reml["upr"].to_numpy()
    tab["Bayes mean"] = bayes["mu"].to_numpy()  # posterior mean of the expected score
    tab["Bayes lwr"] = bayes["lwr"].to_numpy()
    tab["Bayes upr"] = bayes["upr"].to_numpy()
    return tab


def effect_size_table(spec: WorkflowSpec, d: PreparedData, m1, b1) -> pd.DataFrame:
    """ICC of the null model, Nakagawa's R² of m1, PRV of m1 against the null model (REML), and
    the Bayesian R² and ICC of m1 (posterior means and 95% intervals)."""
    from twolevel.models.bayes.predict import bayes_icc, bayes_r2
    from twolevel.models.inference.effect_sizes import icc, prv, r2_nakagawa
    from twolevel.models.lmm.lmer import lmer

    m0 = lmer(spec.formula_m0, d.frame, REML=True)
    br2, bicc = bayes_r2(b1), bayes_icc(b1)

    def summ(da) -> tuple[float, float, float]:
        v = da.to_numpy().ravel()
        return float(v.mean()), float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))

    none = (np.nan, np.nan, np.nan)
    i0, i1, r2, pv = icc(m0), icc(m1), r2_nakagawa(m1), prv(m0, m1)
    rows = [
        ("ICC of the null model (adjusted)", "null", i0.adjusted, none),
        ("ICC of m1 (adjusted; slope variance averaged over students)", "m1", i1.adjusted,
         summ(bicc["icc"])),
        ("Nakagawa R² marginal (fixed effects)", "m1", r2.marginal, summ(br2["r2_marginal"])),
        ("Nakagawa R² conditional (fixed + school effects)", "m1", r2.conditional,
         summ(br2["r2_conditional"])),
        ("Gelman et al.'s Bayesian R²", "m1", np.nan, summ(br2["r2_bayes"])),
        ("PRV level 1 (σ²)", "m1 vs null", float(pv["sigma2"]), none),
        ("PRV level 2 (τ00)", "m1 vs null", float(pv["tau_(Intercept)"]), none),
    ]
    return pd.DataFrame([(q, m, r, *b) for q, m, r, b in rows],
                        columns=["quantity", "model", "REML", "Bayes mean", "Bayes 2.5%",
                                 "Bayes 97.5%"])


def add_prediction_section(sec, spec: WorkflowSpec, d: PreparedData, reml: dict, bayes: dict,
                           rv: RemlView, plots, seed: int) -> None:
    """Step 9's report section: the prediction table and figure, and the effect sizes."""
    y_label, x_label = _labels(spec)
    gl = spec.group_label
    m1, b1 = reml["m1"], bayes["m1"]
    tab = predictions_table(spec, prediction_rows(spec, d, rv), m1, b1, seed)
    sec.text(
        f"Expected {y_label} of a student at the {gl} mean of {x_label} and one SD below and "
        f"above it, in an average {gl}, in the {gl}s with the highest and lowest intercept, and in "
        f"a {gl} not in the data. REML: 95% prediction intervals for a new student, plugging in "
        f"θ̂ (variance from the joint covariance of β̂ and the {gl}'s BLUPs plus σ̂²; for a new "
        f"{gl} x₀ᵀVar(β̂)x₀ + z₀ᵀT̂z₀ + σ̂²). Bayes: 95% posterior predictive intervals (a new "
        f"{gl}'s effects drawn from N(0, T) at each draw). The new {gl}'s interval is wider: its "
        "effects are unknown."
    )
    sec.table("predictions", tab, digits=2, caption="Predictions for new students, REML and Bayes")
    fig = plots.prediction_figure(tab, spec.group, y_label, x_label)
    sec.figure("predictions", fig, caption="95% prediction intervals, REML (left of each pair) "
                                           "and Bayes (right)")
    es = effect_size_table(spec, d, m1, b1)
    sec.table("effect_sizes", es, digits=4,
              caption="Effect sizes: ICC, R² (Nakagawa; with random slopes as performance's "
                      "r2_nakagawa), proportion reduction in variance (Raudenbush & Bryk)")
    i0 = float(es.loc[0, "REML"])
    sec.text(
        f"In the null model {100 * i0:.1f}% of the variance of {y_label} lies between {gl}s (the "
        f"ICC). With a random slope the share of variance between {gl}s depends on {x_label} "
        f"(τ00 + 2τ01x + τ11x² at {spec.xc} = x); the ICC of m1 averages it over the students, "
        "as performance::icc does. PRV compares variance components of m1 with the null "
        f"model's: with {x_label} centred within {gl}s, m1 explains within-{gl} variance "
        f"(level 1) and leaves the {gl} means' variance (τ00) almost unchanged."
    )
