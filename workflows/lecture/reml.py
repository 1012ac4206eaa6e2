"""Step 2, REML: m1 ``(1 + x | g)`` and m2 ``(1 | g)`` by REML (lme4 + lmerTest digits), their LRT
with ML refits, Kenward–Roger, HLM's statistics and profile intervals, and the report section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from twolevel.workflows.lecture.prepare import PreparedData
from twolevel.workflows.lecture.spec import WorkflowSpec


def _fixef_frame(fit, ddf: str = "Satterthwaite") -> pd.DataFrame:
    t = fit.coef_table(ddf=ddf).reset_index(names="term")
    return t


def fit_reml(spec: WorkflowSpec, d: PreparedData, profile_ci: bool = True) -> dict[str, Any]:
    """m1, m2 by REML; LRT with ML refits; Kenward-Roger, HLM statistics and (optionally) profile
    confidence intervals for m1. All computed by ``models``."""
    import warnings

    from twolevel.models.inference.anova import anova
    from twolevel.models.inference.hlm import hlm_statistics
    from twolevel.models.inference.kenward_roger import kenward_roger
    from twolevel.models.lmm.lmer import lmer

    name = Path(str(spec.data)).name
    out: dict[str, Any] = {"warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["m1"] = lmer(spec.formula_m1, d.frame, REML=True, data_name=name)
        out["m2"] = lmer(spec.formula_m2, d.frame, REML=True, data_name=name)
        out["anova"] = anova(out["m2"], out["m1"], names=["m2", "m1"])
    out["warnings"] = [str(w.message) for w in caught]
    m1 = out["m1"]
    out["kr"] = kenward_roger(m1.design, m1.crossprods, m1.theta, m1.sigma, beta=m1.beta)
    out["hlm"] = hlm_statistics(m1.design, m1.crossprods, m1.theta, m1.sigma, m1.beta)
    out["profile"] = None
    if profile_ci:
        from twolevel.models.inference.profile import confint_profile

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["profile"] = confint_profile(m1.design, m1.crossprods)
        out["profile_warnings"] = [str(w.message) for w in caught]
    return out


def add_reml_section(sec, spec: WorkflowSpec, reml: dict[str, Any]) -> None:
    """Summaries, LRT, KR, HLM statistics and profile intervals."""
    m1, m2 = reml["m1"], reml["m2"]
    sec.text(f"m1 (random intercept and slope): `{spec.formula_m1}`\n\n"
             f"m2 (random intercept only): `{spec.formula_m2}`")
    sec.pre(m1.summary(), caption="summary(m1), lme4 + lmerTest layout")
    sec.pre(m2.summary(), caption="summary(m2)")
    sec.table("fixef_m1", _fixef_frame(m1), caption="m1 fixed effects (Satterthwaite df)")
    sec.table("varcorr_m1", m1.VarCorr().to_frame(), caption="m1 variance components "
              "(lme4's as.data.frame(VarCorr(m1)))")
    sec.table("fixef_m2", _fixef_frame(m2), caption="m2 fixed effects (Satterthwaite df)")
    sec.table("varcorr_m2", m2.VarCorr().to_frame(), caption="m2 variance components")
    a = reml["anova"]
    sec.pre(str(a), caption="anova(m2, m1): likelihood-ratio test (models refitted by ML)")
    sec.table("lrt", a.to_frame().reset_index(), caption="LRT table")
    kr = reml["kr"]
    sat = m1.coef_table()
    sec.table("fixef_m1_ddf", pd.DataFrame({
        "term": list(kr.names), "Estimate": m1.beta, "SE": sat["Std. Error"].to_numpy(),
        "df Satterthwaite": sat["df"].to_numpy(), "SE Kenward-Roger": kr.se,
        "df Kenward-Roger": kr.df, "p Kenward-Roger": kr.p_value,
        "df HLM (J-S-1)": reml["hlm"].hlm_df,
    }), caption="m1 fixed effects: Satterthwaite and Kenward-Roger")
    sec.pre(reml["hlm"].summary(), caption="HLM's statistics for m1 (reliability, χ² tests of τ, "
                                           "plausible-value ranges, robust SEs)")
    sec.table("hlm_m1", reml["hlm"].to_frame(), caption="HLM statistics per random coefficient")
    if reml.get("profile") is not None:
        sec.table("confint_profile_m1", reml["profile"].reset_index(),
                  caption="m1 profile-likelihood 95% confidence intervals (lme4's "
                          "confint(method = 'profile'))")
        for w in reml.get("profile_warnings", []):
            sec.text(f"Profile note: {w}. An interval left empty could not be found from the "
                     "profile; read the Bayesian interval of that parameter instead.")
    else:
        sec.text("Profile-likelihood intervals were skipped (--quick).")
    for w in reml["warnings"]:
        sec.text(f"Fit note: {w}")
