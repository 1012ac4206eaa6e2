"""Step 2, maximum likelihood: m1 ``(1 + x | g)`` and m2 ``(1 | g)`` by glmer's Laplace
approximation, m2 also by adaptive Gauss–Hermite quadrature (nAGQ nodes), the likelihood-ratio test
of the random slope (boundary-corrected p), and the report section with odds ratios.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twolevel.models.tables.glmm_answers import SCALES
from twolevel.workflows.lecture_glmm.prepare import PreparedGlmmData
from twolevel.workflows.lecture_glmm.spec import GlmmWorkflowSpec


def fit_ml(spec: GlmmWorkflowSpec, d: PreparedGlmmData) -> dict[str, Any]:
    """m1 and m2 by Laplace, m2 by AGQ with ``spec.nagq`` nodes, and ``anova(m2, m1)``; warnings of
    the fits are kept in ``warnings``. All computed by ``models`` (glmer, anova)."""
    import warnings

    from twolevel.models.glmm.glmer import glmer
    from twolevel.models.inference.anova import anova

    name = Path(str(spec.data)).name
    out: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kw = dict(family=spec.family, link=spec.link, data_name=name)
        out["m1"] = glmer(spec.formula_m1, d.frame, **kw)
        out["m2"] = glmer(spec.formula_m2, d.frame, **kw)
        out["m2_agq"] = glmer(spec.formula_m2, d.frame, nAGQ=spec.nagq, **kw)
        out["anova"] = anova(out["m2"], out["m1"], names=["m2", "m1"])
    out["warnings"] = list(dict.fromkeys(str(w.message) for w in caught))
    return out


def fixef_ratio_table(fit, ratio: str) -> pd.DataFrame:
    """glmer's coefficient table with the 95% Wald interval and the exponentiated estimate and
    interval (odds ratios or rate ratios)."""
    t = fit.coef_table()
    ci = fit.confint(method="Wald")
    lo, hi = ci.iloc[:, 0].to_numpy(), ci.iloc[:, 1].to_numpy()
    t["2.5 %"], t["97.5 %"] = lo, hi
    t[ratio] = np.exp(t["Estimate"].to_numpy())
    t[f"{ratio} 2.5 %"], t[f"{ratio} 97.5 %"] = np.exp(lo), np.exp(hi)
    return t.reset_index(names="term")


def laplace_vs_agq(m2, m2_agq, nagq: int) -> pd.DataFrame:
    """m2's estimates by Laplace beside AGQ, and their difference."""
    rows = []
    for nm in m2.fixef().index:
        rows.append((f"fixef {nm}", float(m2.fixef()[nm]), float(m2_agq.fixef()[nm])))
        rows.append((f"SE {nm}", float(m2.se()[nm]), float(m2_agq.se()[nm])))
    for nm in m2.design.z_names:
        rows.append((f"variance {nm}", float(m2.VarCorr().variances[nm]),
                     float(m2_agq.VarCorr().variances[nm])))
    rows.append(("logLik", m2.loglik, m2_agq.loglik))
    t = pd.DataFrame(rows, columns=["quantity", "Laplace", f"AGQ nAGQ = {nagq}"])
    t["AGQ − Laplace"] = t[f"AGQ nAGQ = {nagq}"] - t["Laplace"]
    return t


def add_ml_section(sec, spec: GlmmWorkflowSpec, ml: dict[str, Any]) -> None:
    """Summaries, fixed effects with odds ratios, variance components, Laplace vs AGQ, LRT."""
    m1, m2, m2a = ml["m1"], ml["m2"], ml["m2_agq"]
    sc = SCALES[spec.family]
    ratio = "OR" if spec.family == "binomial" else "RR"
    sec.text(f"m1 (random intercept and slope): `{spec.formula_m1}`\n\n"
             f"m2 (random intercept only): `{spec.formula_m2}`\n\n"
             f"Family {spec.family}, {spec.link} link: the coefficients are on the {sc.link} "
             f"scale and exp(coefficient) is an {sc.ratio} ({ratio}). Both models are fitted by "
             "maximum likelihood with glmer's Laplace approximation to the integral over the "
             f"{spec.group_label} effects; m2, whose only random effect is the intercept, also "
             f"by adaptive Gauss–Hermite quadrature with {spec.nagq} nodes (glmer's nAGQ), "
             "which is exact to high accuracy. glmer allows nAGQ > 1 only for a single scalar "
             "random effect, so m1 is Laplace only. (There is no REML for these models.)")
    sec.pre(m1.summary(), caption="summary(m1), glmer layout (Laplace)")
    sec.pre(m2.summary(), caption="summary(m2), Laplace")
    sec.pre(m2a.summary(), caption=f"summary(m2), adaptive Gauss–Hermite, nAGQ = {spec.nagq}")
    sec.table("fixef_m1", fixef_ratio_table(m1, ratio),
              caption=f"m1 fixed effects ({sc.link} scale, Wald 95% intervals) and {sc.ratio}s")
    sec.table("varcorr_m1", m1.VarCorr().to_frame(), caption="m1 variance components")
    sec.table("fixef_m2", fixef_ratio_table(m2, ratio), caption="m2 fixed effects (Laplace)")
    sec.table("varcorr_m2", m2.VarCorr().to_frame(), caption="m2 variance components (Laplace)")
    cmp_ = laplace_vs_agq(m2, m2a, spec.nagq)
    sec.table("laplace_vs_agq_m2", cmp_, digits=5,
              caption=f"m2 by Laplace and by AGQ with {spec.nagq} nodes")
    t = cmp_.set_index("quantity")
    v = f"variance {m2.design.z_names[0]}"
    sec.text(
        f"Laplace against AGQ for m2: the intercept variance is {t.loc[v, 'Laplace']:.4g} by "
        f"Laplace and {t.loc[v, f'AGQ nAGQ = {spec.nagq}']:.4g} by AGQ; the fixed effects differ "
        f"by at most {np.max(np.abs(m2.beta - m2a.beta)):.2g}. The Laplace approximation is "
        f"known to underestimate variance components when the {spec.group_label}s are small "
        "and the outcome is binary; AGQ integrates over each school's effect with "
        f"{spec.nagq} nodes placed at its conditional mode. "
        + ("For a 0/1 outcome the two log-likelihoods are on the same footing (AGQ's is the "
           "more accurate)." if spec.family == "binomial" else
           "For counts glmer's AGQ log-likelihood leaves out the saturated constant that its "
           "Laplace value includes, so compare the estimates, not the log-likelihoods."))
    a = ml["anova"]
    sec.pre(str(a), caption="anova(m2, m1): likelihood-ratio test (both Laplace; no refit, "
                            "glmer fits are ML fits)")
    sec.table("lrt", a.to_frame().reset_index(), caption="LRT table")
    for w in ml["warnings"]:
        sec.text(f"Fit note: {w}")
    for m, f in (("m1", m1), ("m2", m2), (f"m2 (nAGQ = {spec.nagq})", m2a)):
        for msg in f.optinfo.messages:
            sec.text(f"Convergence note ({m}): {msg}")
