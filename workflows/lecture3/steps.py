"""The steps of the several-level workflow, one function each: load the data, fit the three models
(``models`` does every computation), and write each report section.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from twolevel.workflows.lecture3.spec import MultilevelSpec

Z95 = 1.959963984540054


@dataclass(frozen=True)
class LevelData:
    """The validated rows and the group sizes at every level (outermost first)."""

    frame: pd.DataFrame
    source: str
    notes: tuple[str, ...]
    sizes: tuple[pd.Series, ...]


def load_levels(spec: MultilevelSpec) -> LevelData:
    """Load the data, drop (and count) rows with a missing value, and count the groups of every
    level: level k's groups are the distinct combinations of the first k grouping columns (so that
    class labels restarting in every school still name distinct classes)."""
    from twolevel.data.loaders import load_data, require_columns

    df = load_data(spec.data)
    source = df.attrs.get("source", str(spec.data))
    num = [spec.y, spec.x, *spec.level2]
    checked = require_columns(df, [*num, *spec.groups], numeric=num, group=spec.groups[0],
                              source=source)
    frame = checked.frame
    sizes = tuple(frame.groupby(list(spec.groups[: k + 1]), sort=False, observed=True).size()
                  for k in range(len(spec.groups)))
    return LevelData(frame, source, tuple(checked.notes), sizes)


def add_data_section(sec, spec: MultilevelSpec, d: LevelData) -> None:
    """Step 1's section: rows, groups and group sizes per level."""
    rows = [("data", d.source), ("observations N", f"{len(d.frame):,}")]
    for g, s in zip(spec.groups, d.sizes, strict=True):
        rows.append((f"groups of '{g}'", f"{s.size:,}"))
    for k in range(1, len(spec.groups)):
        inner = d.frame.groupby(list(spec.groups[:k]), observed=True)[spec.groups[k]].nunique()
        rows.append((f"'{spec.groups[k]}' per '{spec.groups[k - 1]}': min / median / max",
                     f"{inner.min()} / {inner.median():g} / {inner.max()}"))
    s = d.sizes[-1]
    rows.append((f"observations per '{spec.groups[-1]}': min / median / max",
                 f"{s.min()} / {s.median():g} / {s.max()}"))
    rows.append((f"response {spec.y}: mean (SD)",
                 f"{d.frame[spec.y].mean():.3f} ({d.frame[spec.y].std():.3f})"))
    sec.table("data_description", pd.DataFrame(rows, columns=["quantity", "value"]),
              caption="The data")
    for n in d.notes:
        sec.text(f"Note: {n}")
    inner, outer = spec.groups[-1], spec.groups[-2]
    n_labels = d.frame[inner].nunique()
    if n_labels < d.sizes[-1].size:
        sec.text(f"'{inner}' has {n_labels} distinct labels but {d.sizes[-1].size} "
                 f"{outer}:{inner} combinations: the labels are reused across '{outer}' groups. "
                 f"The nested term `(1 | {spec.nesting})` treats each combination as its own "
                 f"group (lme4's `{inner}:{outer}`), which is what a nested design means.")


def fit_models(spec: MultilevelSpec, d: LevelData) -> dict[str, Any]:
    """The null model m0, the model m1 and m1 without the innermost level, by REML; the ML
    likelihood-ratio test of the innermost level (:func:`twolevel.models.lmm.multi.anova_multi`)."""
    from twolevel.models.lmm.lmer import lmer
    from twolevel.models.lmm.multi import anova_multi

    name = Path(str(spec.data)).name
    out: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["m0"] = lmer(spec.formula_m0, d.frame, REML=True, data_name=name)
        out["m1"] = lmer(spec.formula_m1, d.frame, REML=True, data_name=name)
        out["drop"] = lmer(spec.formula_drop, d.frame, REML=True, data_name=name)
        out["lrt"] = anova_multi(out["drop"], out["m1"], names=("without", "m1"))
    out["warnings"] = [str(w.message) for w in caught]
    return out


def add_decomposition_section(sec, spec: MultilevelSpec, fits: dict[str, Any]) -> dict:
    """Step 2's section: the null model and the variance decomposition by level, both ways.
    Returns the decomposition of m0 (for the progress line)."""
    from twolevel.models.tables.levels import variance_by_level

    m0 = fits["m0"]
    sec.text(f"The null model `{spec.formula_m0}` (REML), random intercepts at every level:")
    sec.pre(m0.summary())
    dec = variance_by_level(m0)
    sec.table("variance_by_level_m0", dec,
              caption="Null model: variance per level, its share of the total (performance's "
                      "icc(by_group = TRUE)) and the correlation of two observations sharing "
                      "that level (and every level above it)")
    rows = dec.iloc[:-1]
    parts = [f"{r.level}: {100 * r.share:.1f}% of the variance" for r in rows.itertuples()]
    sec.text("Two ways to read the same variance components. **Share by level**: "
             + "; ".join(parts)
             + f"; within the innermost groups: {100 * dec.share.iloc[-1]:.1f}%. "
             "**Correlation**: two observations in the same "
             + "; in the same ".join(
                 f"{r.level}" + (f" but a different {rows.level.iloc[k + 1]}"
                                 if k + 1 < len(rows) else "")
                 + f" correlate {r.correlation:.3f}" for k, r in enumerate(rows.itertuples()))
             + ".")
    return {"shares": dict(zip(dec.level, dec.share, strict=True))}


def add_reml_section(sec, spec: MultilevelSpec, fits: dict[str, Any]) -> None:
    """Step 3's section: the model m1 (lme4 + lmerTest summary, fixed-effects table with
    Satterthwaite df, variance components, ICC per level, variance explained per level)."""
    from twolevel.models.tables.levels import variance_by_level, variance_reduction

    m1 = fits["m1"]
    sec.text(f"The model `{spec.formula_m1}` by REML (lme4 + lmerTest's layout):")
    sec.pre(m1.summary())
    sec.table("fixed_effects_m1", m1.coef_table("Satterthwaite").reset_index(names="term"),
              caption="Fixed effects, Satterthwaite df (lmerTest)")
    sec.table("varcorr_m1", m1.VarCorr().to_frame(), caption="Variance components (VarCorr)")
    sec.table("variance_by_level_m1", variance_by_level(m1),
              caption="Model m1: variance per level, share and correlation (conditional on "
                      "the predictors)")
    sec.table("variance_reduction", variance_reduction(fits["m0"], m1),
              caption="Proportional reduction of each level's variance from m0 to m1")
    for w in fits["warnings"]:
        sec.text(f"Note: {w}")


def add_lrt_section(sec, spec: MultilevelSpec, fits: dict[str, Any]) -> dict:
    """Step 4's section: the ML likelihood-ratio test of the innermost level (σ²_class = 0 is on
    the boundary: the ½χ²₀ + ½χ²₁ mixture p-value is given beside the naive one)."""
    lrt = fits["lrt"]
    tab = pd.DataFrame(lrt["models"])
    sec.text(f"Does the '{spec.groups[-1]}' level matter? `{spec.formula_drop}` against "
             f"`{spec.formula_m1}`, refitted by ML (lme4's anova):")
    sec.table("lrt_innermost_level", tab, caption="Likelihood-ratio test (ML refits)")
    mix = lrt.get("p_mixture")
    sec.text(f"χ² = {lrt['chisq']:.3f} on {lrt['df']} df, p = {lrt['p']:.4g}"
             + (f"; on the boundary (a variance tested at 0) the ½χ²₀ + ½χ²₁ mixture gives "
                f"p = {mix:.4g}" if mix is not None else "") + ".")
    return lrt


def add_modes_section(sec, spec: MultilevelSpec, fits: dict[str, Any], plots) -> None:
    """Step 5's section: per level, a summary of the conditional modes and a caterpillar plot
    (mode ± 1.96 conditional SD, sorted)."""
    from twolevel.models.tables.levels import modes_by_level, nested_order
    from twolevel.models.tables.shrinkage import caterpillar_table

    m1 = fits["m1"]
    sec.table("modes_by_level", modes_by_level(m1, z=Z95),
              caption="Conditional modes per level: their SD against the model's SD "
                      "(shrinkage), mean conditional SD, intervals excluding 0")
    re = m1.ranef(cond_var=True)
    order = nested_order(m1)
    for k, g in enumerate(order):
        fr = re[g]
        tab = caterpillar_table(fr.index, fr["(Intercept)"].to_numpy(),
                                fr["condsd_(Intercept)"].to_numpy(), z=Z95)
        safe = g.replace(":", "_in_")
        sec.table(f"caterpillar_{safe}", tab, max_rows=0,
                  caption=f"'{g}' intercepts: conditional mode ± 1.96 conditional SD, sorted")
        unit = spec.groups[min(k, len(spec.groups) - 1)]
        fig = plots.caterpillar_figure(
            tab, f"Level {len(order) + 1 - k} ('{g}'): random intercepts, {len(tab)} groups",
            f"intercept deviation ({spec.y})", panel_names=("conditional mode ± 1.96 "
                                                           "conditional SD", ""),
            rank_by="conditional mode", unit=unit)
        sec.figure(f"caterpillar_{safe}", fig,
                   caption=f"Caterpillar plot of the '{g}' intercepts")
    sec.text("Each bar is one group's 95% interval around its conditional mode; the five highest "
             "and lowest are named beside the plot. Inner-level modes are deviations from their "
             "outer group's effect.")


def prediction_rows(spec: MultilevelSpec, d: LevelData) -> pd.DataFrame:
    """Three new students with the median of x: in a known innermost group (that of the first
    row of the largest outer group), in a new innermost group of that outer group, and in a new
    outer group (higher-level predictors: the outer group's values, or their means for a new
    one)."""
    f = d.frame
    top = spec.groups[0]
    big = f.groupby(top, observed=True).size().idxmax()  # ties: the first label
    i0 = f.index[f[top] == big][0]
    x0 = float(f[spec.x].median())
    rows = []
    for case in ("known", "new_inner", "new_outer"):
        r = {"case": case, spec.x: x0}
        for k, g in enumerate(spec.groups):
            known = case == "known" or (case == "new_inner" and k < len(spec.groups) - 1)
            r[g] = f.at[i0, g] if known else f"new {g}"
        for w in spec.level2:
            r[w] = float(f.at[i0, w]) if case != "new_outer" else float(f[w].mean())
        rows.append(r)
    out = pd.DataFrame(rows)
    for g in spec.groups:
        out[g] = out[g].astype(object)
    return out


def add_prediction_section(sec, spec: MultilevelSpec, d: LevelData, fits: dict[str, Any]
                           ) -> pd.DataFrame:
    """Step 6's section: a new student's predicted score with 95% confidence and prediction
    intervals in a known group, a new innermost group, and a new outer group
    (:func:`twolevel.models.inference.predict.predict`; new levels' effects are 0 and their
    variances are added to the prediction interval)."""
    from twolevel.models.inference.predict import predict

    nd = prediction_rows(spec, d)
    m1 = fits["m1"]
    pi = predict(m1, nd, allow_new_levels=True, interval="prediction")
    ci = predict(m1, nd, allow_new_levels=True, interval="confidence")
    tab = nd.copy()
    for g in spec.groups:  # labels, not numbers, in the tables
        tab[g] = tab[g].map(str)
    tab["fit"] = pi["fit"].to_numpy()
    tab["conf_lwr"], tab["conf_upr"] = ci["lwr"].to_numpy(), ci["upr"].to_numpy()
    tab["pred_lwr"], tab["pred_upr"] = pi["lwr"].to_numpy(), pi["upr"].to_numpy()
    tab["pred_se"] = pi["se"].to_numpy()
    inner, outer = spec.groups[-1], spec.groups[0]
    sec.text(f"A new student with {spec.x} = {nd[spec.x].iloc[0]:.3g} (the median): in a known "
             f"'{inner}', in a new '{inner}' of the same '{outer}', and in a new '{outer}'. A new "
             "group's effect is 0 (lme4's allow.new.levels) and its variance is added to the "
             "prediction interval; the confidence interval is for the mean of the known groups.")
    sec.table("predictions", tab, caption="Predicted scores with 95% confidence and prediction "
                                          "intervals")
    return tab


def r_code(spec: MultilevelSpec) -> str:
    """The same REML analysis in R (lme4 + lmerTest + performance)."""
    return "\n".join([
        "library(lme4); library(lmerTest); library(performance)",
        f"d <- read.csv('<your data>')  # {spec.data}",
        f"m0 <- lmer({spec.formula_m0}, data = d)",
        "icc(m0, by_group = TRUE)",
        f"m1 <- lmer({spec.formula_m1}, data = d)",
        "summary(m1)",
        f"m_drop <- lmer({spec.formula_drop}, data = d)",
        "anova(m_drop, m1)  # refits with ML",
        "lattice::dotplot(ranef(m1, condVar = TRUE))",
    ])


def settings_record(spec: MultilevelSpec, quick: bool, seed: int) -> dict:
    """The specification and the formulas as a JSON-friendly dict."""
    from dataclasses import asdict

    return {"spec": asdict(spec), "quick": bool(quick), "seed": int(seed),
            "formula_m0": spec.formula_m0, "formula_m1": spec.formula_m1,
            "formula_drop": spec.formula_drop}


def summary_numbers(fits: dict[str, Any]) -> dict:
    """The headline numbers as JSON (criteria, β̂, variance components, ICCs, LRT)."""
    from twolevel.models.tables.levels import variance_by_level

    m0, m1, lrt = fits["m0"], fits["m1"], fits["lrt"]
    return {
        "m0": {"reml_criterion": m0.criterion, "icc": m0.icc(),
               "variances": variance_by_level(m0).set_index("level")["variance"].to_dict()},
        "m1": {"reml_criterion": m1.criterion, "fixef": m1.fixef().to_dict(),
               "icc": m1.icc(),
               "variances": variance_by_level(m1).set_index("level")["variance"].to_dict()},
        "lrt": {"chisq": lrt["chisq"], "df": lrt["df"], "p": lrt["p"],
                "p_mixture": lrt.get("p_mixture")},
    }



def fit_bayes_levels(spec: MultilevelSpec, d: LevelData, eff) -> Any:
    """The model m1 by NUTS (:func:`twolevel.models.bayes.fit.fit_bayes`: every level integrated
    out, each level's effects drawn afterwards), with the run's sampler settings and the seed of
    its step ``bayes_m1``."""
    from twolevel.models.bayes.fit import SamplerSettings, fit_bayes

    settings = SamplerSettings(chains=eff.chains, draws=eff.draws, tune=eff.tune,
                               seed=eff.seed_for("bayes_m1"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the gate's verdict is reported in the section
        return fit_bayes(spec.formula_m1, d.frame, settings=settings, progress=False)


def bayes_variance_table(bfit, m1) -> pd.DataFrame:
    """Posterior mean and 95% interval of each variance beside its REML estimate (lme4's
    ``VarCorr``), one row per level and effect and the residual."""
    post = bfit.variance_components()
    vc = m1.VarCorr().to_frame()
    vc = vc[vc["var2"].isna()]
    reml = {("Residual" if g == "Residual" else f"{g}:{v}"): c
            for g, v, c in zip(vc["grp"], vc["var1"], vc["vcov"], strict=True)}
    out = pd.DataFrame({"component": post.index, "posterior_mean": post["mean"].to_numpy(),
                        "q2.5": post["q2.5"].to_numpy(), "q97.5": post["q97.5"].to_numpy(),
                        "reml": [reml.get(c, float("nan")) for c in post.index]})
    out["difference_in_posterior_sd"] = ((out["posterior_mean"] - out["reml"])
                                         / post["sd"].to_numpy())
    return out


def add_bayes_section(sec, spec: MultilevelSpec, fits: dict[str, Any], bfit, eff) -> None:
    """Step 7's section: the Bayesian fit of m1 — the diagnostic gate, the variances per level
    beside REML, caterpillar plots per level (REML beside Bayes) and the shrinkage per level."""
    from twolevel.workflows.bayes_levels import (
        level_caterpillar_figures,
        level_shrinkage_figures,
    )
    from twolevel.workflows.lecture.bayes import gate_line

    m1 = fits["m1"]
    st = bfit.settings
    sec.text(f"The model `{spec.formula_m1}` by NUTS: LKJ/SD priors per level; NUTS samples only "
             "the fixed effects, σ and each level's SDs, with every level's effects integrated "
             "out by the same block elimination as REML; the effects are then drawn for every "
             f"posterior draw from their exact conditional. {st.chains} chains × {st.draws} draws "
             f"after {st.tune} tuning steps, seed {st.seed}.")
    sec.text("Diagnostics: " + gate_line("m1", bfit).removeprefix("m1: ") + "."
             + (" **--quick run: too few draws to report; the gate is expected to fail on "
                "effective sample size.**" if eff.quick else ""))
    sec.table("bayes_variances_m1", bayes_variance_table(bfit, m1), digits=4,
              caption="Variance per level: posterior mean and 95% interval beside REML")
    for g, fig in level_caterpillar_figures(bfit, m1).items():
        sec.figure(f"bayes_caterpillar_{g.replace(':', '_in_')}", fig,
                   caption=f"'{g}' intercepts: REML modes beside posterior means")
    for g, fig in level_shrinkage_figures(bfit).items():
        sec.figure(f"bayes_shrinkage_{g.replace(':', '_in_')}", fig,
                   caption=f"Shrinkage of the '{g}' intercepts: no pooling against the posterior")
