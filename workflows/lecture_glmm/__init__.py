"""The lecture workflow for a binary or count outcome (issue 11, item 4): from data to a report that
answers Lecture 5's questions on the log-odds (or log-rate) scale.

Orchestration only, as :mod:`twolevel.workflows.lecture` (whose report machinery, progress lines,
views, LOO comparison and records it reuses): :mod:`.run` calls one small unit per step. Every
statistic comes from ``models/`` (glmer, anova, the PyMC GLMM sampler, empirical logits, the median
odds ratio and the answers), every figure from ``workflows/plots.py``.

Steps (each prints a progress line and is timed)::

    1 data           description, centering, per-school empirical logits (½ added), and why
                     per-school ML fails (separation: schools with all 0 or all 1, counted)
    2 ml             m1 (1 + x | g) and m2 (1 | g) by Laplace, m2 also by AGQ (nAGQ nodes),
                     glmer summaries, odds ratios with Wald intervals, the LRT (mixture p)
    3 bayes          the same two models by NUTS (school effects integrated out by quadrature
                     and drawn afterwards; sampled non-centred where that does not apply)
    4 compare        PSIS-LOO per student and leave-one-school-out (effects integrated out by
                     AGQ per draw), beside the LRT
    5 caterpillar    u0j, u1j and β0j, β1j on the log-odds scale, odds ratios in the tables
    6 shrinkage      empirical logit → conditional mode → posterior mean
    7 residuals      conditional-mode summary and plots against school size and mean x
    8 answers        odds ratio of x, school log-odds and their 95% range, median odds ratio,
                     slope variation, correlation; Laplace and Bayes side by side
    9 predictions    probability by school type (average, 2.5%, 97.5%, new school), MOR, latent ICC
   10 report         HTML + Markdown + CSV + PNG + NetCDF, swapped into place atomically

For counts (``family="poisson"``, log link) the same steps speak of log rates, rate ratios and
the median rate ratio.
"""

from twolevel.workflows.lecture_glmm.run import run_glmm_workflow
from twolevel.workflows.lecture_glmm.spec import (
    LECTURE_BINARY_SPEC,
    GlmmWorkflowSpec,
    glmm_run_settings,
)

__all__ = ["LECTURE_BINARY_SPEC", "GlmmWorkflowSpec", "glmm_run_settings", "run_glmm_workflow"]
