"""The binary/count lecture workflow's orchestrator: :func:`run_glmm_workflow` runs the ten steps
in order, each a small unit of its own module, and writes the report folder atomically (the same
report machinery, progress lines and settings record as the normal workflow)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from twolevel.workflows.lecture.compare import add_comparison_section
from twolevel.workflows.lecture.record import command_line, dumps, settings_record
from twolevel.workflows.lecture.spec import Progress, RunSettings
from twolevel.workflows.lecture.views import reml_view
from twolevel.workflows.lecture_glmm.answers import (
    add_glmm_answers_section,
    add_glmm_prediction_section,
)
from twolevel.workflows.lecture_glmm.bayes import add_glmm_bayes_section, fit_bayes_glmm
from twolevel.workflows.lecture_glmm.effects import (
    add_glmm_caterpillar_section,
    add_glmm_residual_section,
    add_glmm_shrinkage_section,
)
from twolevel.workflows.lecture_glmm.ml import add_ml_section, fit_ml
from twolevel.workflows.lecture_glmm.prepare import add_glmm_data_section, prepare_glmm_data
from twolevel.workflows.lecture_glmm.record import add_glmm_repro_section
from twolevel.workflows.lecture_glmm.spec import GlmmWorkflowSpec


def run_glmm_workflow(
    spec: GlmmWorkflowSpec,
    settings: RunSettings,
    out: str | Path,
    command: str | None = None,
    emit: Callable[[str], None] = print,
) -> Path:
    """Run the ten steps for a binary or count outcome and write the report folder ``out``
    (atomically). Returns its path."""
    return _run_steps(spec, settings, Path(out), command or command_line(), Progress(emit))


def _run_steps(spec: GlmmWorkflowSpec, settings: RunSettings, out: Path, command: str,
               progress: Progress) -> Path:
    from twolevel.models.tables.glmm_answers import SCALES
    from twolevel.workflows import plots
    from twolevel.workflows.report import ReportWriter

    eff = settings.effective()
    sc = SCALES[spec.family]
    gl = spec.group_label
    t_start = time.perf_counter()
    title = spec.title or f"Two-level {spec.family} model of {spec.y}"
    with ReportWriter(out, title=title) as rep:
        s_answers = rep.section("Answers to the lecture's questions")
        s_data = rep.section(f"1. Data and per-{gl} empirical {sc.link}")
        s_ml = rep.section("2. Maximum-likelihood fits (glmer: Laplace and adaptive "
                           "Gauss–Hermite)")
        s_bayes = rep.section("3. Bayesian fits (PyMC NUTS)")
        s_cmp = rep.section("4. Model comparison: random slope or not?")
        s_cat = rep.section(f"5. Caterpillar plots of the {gl} effects ({sc.link}, "
                            f"{sc.ratio}s)")
        s_shr = rep.section(f"6. Shrinkage: empirical {sc.link} → conditional mode → "
                            "posterior mean")
        s_res = rep.section("7. Level-2 residuals (conditional modes)")
        s_ans = rep.section("8. The lecture's questions, Laplace and Bayes side by side")
        s_pred = rep.section(f"9. {sc.mean.capitalize()} by {gl} type, {sc.median_ratio} and "
                             "effect sizes")
        s_repro = rep.section("10. Reproducibility: commands, seeds, software, timings, files")

        with progress.step(f"data: description, centering, per-{gl} empirical {sc.link}"):
            d = prepare_glmm_data(spec)
            progress.note(f"N = {int(d.sizes.sum()):,} students, J = {d.sizes.size} groups; "
                          f"{d.empirical.n_separated} {gl}s with all outcomes equal (no finite "
                          f"ML {sc.link}); {d.centering_note}")
            add_glmm_data_section(s_data, spec, d)

        with progress.step(f"ML: m1 (1 + x | g) Laplace, m2 (1 | g) Laplace and "
                           f"nAGQ = {spec.nagq}, likelihood-ratio test"):
            ml = fit_ml(spec, d)
            m1, m2 = ml["m1"], ml["m2"]
            rv = reml_view(m1)
            progress.note(f"m1 −2 log L {m1.minus2loglik:.4f}, m2 {m2.minus2loglik:.4f} "
                          f"(AGQ {ml['m2_agq'].minus2loglik:.4f})")
            add_ml_section(s_ml, spec, ml)

        with progress.step(f"Bayes: NUTS {eff.chains} chains x {eff.draws} draws, m1 and m2"):
            bayes = fit_bayes_glmm(spec, d, ml, eff, progress)
            bv = bayes["view"]
            add_glmm_bayes_section(s_bayes, rep, spec, ml, bayes, eff)

        with progress.step(f"model comparison: PSIS-LOO per student and per {gl}, LRT"):
            progress.note(add_comparison_section(s_cmp, spec, ml, bayes, plots,
                                                 lrt_label="Laplace"))

        with progress.step(f"caterpillar plots ({sc.link}, {sc.ratio}s)"):
            add_glmm_caterpillar_section(s_cat, spec, rv, bv, plots)

        with progress.step(f"shrinkage: empirical {sc.link} → conditional mode → posterior mean"):
            add_glmm_shrinkage_section(s_shr, spec, d, ml, rv, bv, plots)

        with progress.step("level-2 residuals (conditional modes)"):
            add_glmm_residual_section(s_res, spec, d, rv, plots)

        with progress.step("the lecture's questions"):
            add_glmm_answers_section(s_ans, s_answers, rep, spec, d, rv, bv, progress)

        with progress.step(f"{sc.mean} by {gl} type, effect sizes"):
            add_glmm_prediction_section(s_pred, spec, d, ml, bayes, rv, bv, plots)

        with progress.step("report: HTML, Markdown, CSV, figures, NetCDF"):
            add_glmm_repro_section(s_repro, spec, settings, eff, command, progress, rep,
                                   time.perf_counter() - t_start)
            rep.save_file("settings.json",
                          lambda p: p.write_text(dumps(settings_record(spec, settings))))
            rep.finish()
    progress.emit(f"report written to {out}/index.html (and report.md)")
    return out
