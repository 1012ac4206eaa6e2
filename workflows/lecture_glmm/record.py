"""Step 10 for a binary or count outcome: the command, the glmer code of the same analysis in R,
seeds, software versions, timings and the list of files (the normal workflow's record, with
glmer's R code and the seeds these steps use)."""

from __future__ import annotations

from twolevel.workflows.lecture.record import add_run_record
from twolevel.workflows.lecture_glmm.spec import GlmmWorkflowSpec


def r_code_glmer(spec: GlmmWorkflowSpec) -> str:
    """The same maximum-likelihood analysis in R (lme4's glmer)."""
    fam = f"{spec.family}(link = '{spec.link}')"
    return "\n".join([
        "library(lme4)",
        f"d <- read.csv('<your data>')  # {spec.data}",
        f"d${spec.xc} <- d${spec.x} - ave(d${spec.x}, d${spec.group})  # group-mean centering",
        f"m1 <- glmer({spec.formula_m1}, data = d, family = {fam})",
        f"m2 <- glmer({spec.formula_m2}, data = d, family = {fam})",
        f"m2_agq <- glmer({spec.formula_m2}, data = d, family = {fam}, nAGQ = {spec.nagq})",
        "summary(m1); summary(m2); summary(m2_agq)",
        "anova(m2, m1)  # LRT (naive p; halve-and-mix for the boundary)",
        "exp(cbind(fixef(m1), confint(m1, method = 'Wald', parm = 'beta_')))  # "
        + ("odds ratios" if spec.family == "binomial" else "rate ratios"),
        "ranef(m1, condVar = TRUE)",
        "exp(sqrt(2 * VarCorr(m1)$" + spec.group + "[1, 1]) * qnorm(0.75))  # median "
        + ("odds ratio" if spec.family == "binomial" else "rate ratio"),
    ])


def add_glmm_repro_section(sec, spec: GlmmWorkflowSpec, settings, eff, command, progress, rep,
                           elapsed: float) -> None:
    """Commands, seeds, settings, software versions, timings and the list of files."""
    sec.text("Command that produced this report:")
    sec.pre(command)
    sec.text("The maximum-likelihood fits in R (lme4's glmer) — the Laplace and AGQ numbers "
             "above follow glmer's algorithm (twolevel.glmer):")
    sec.pre(r_code_glmer(spec))
    add_run_record(sec, settings, eff, ("bayes_m1", "bayes_m2"), progress, rep, elapsed)
