"""The lecture workflow: from data to a report that answers Lecture 5's questions.

Orchestration only: :mod:`.run` calls one small unit per step, each in its own module
(:mod:`.prepare`, :mod:`.reml`, :mod:`.bayes`, :mod:`.compare`, :mod:`.effects`,
:mod:`.residuals`, :mod:`.answers`, :mod:`.predictions`, :mod:`.record`; :mod:`.spec` says what is
fitted and :mod:`.views` what the steps share). Every statistic comes from ``models/`` (OLS, lmer,
anova, HLM statistics, Kenward-Roger, the PyMC sampler, shrinkage, the lecture answers), every
figure from ``workflows/plots.py``, and the report is written atomically by ``workflows/report.py``.

Steps (each prints a progress line and is timed)::

    1 data           description, centering, per-school OLS
    2 reml           m1 (1 + x | g), m2 (1 | g): lme4 + lmerTest summaries, LRT (ML refit)
    3 bayes          the same two models with NUTS, diagnostics, prior and posterior predictive
    4 compare        PSIS-LOO per student and leave-one-school-out, beside the LRT
    5 caterpillar    u0j and u1j, REML BLUP ± 1.96 cond. SD and posterior 95% intervals
    6 shrinkage      OLS → BLUP → posterior mean, table and figure with the T ellipse
    7 residuals      level-2 residual summary and plots against school size and mean x
    8 answers        the lecture's six questions, REML and Bayes side by side
    9 predictions    new students in existing and new schools (REML and Bayes intervals),
                     ICC, R², PRV
   10 report         HTML + Markdown + CSV + PNG + NetCDF, swapped into place atomically
"""

from twolevel.workflows.lecture.run import run_workflow
from twolevel.workflows.lecture.spec import LECTURE_SPEC, RunSettings, WorkflowSpec
from twolevel.workflows.lecture.views import reml_quantities, reml_view

__all__ = ["LECTURE_SPEC", "RunSettings", "WorkflowSpec", "reml_quantities", "reml_view",
           "run_workflow"]
