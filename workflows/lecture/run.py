"""The lecture workflow's orchestrator: :func:`run_workflow` runs the nine steps in order, each a
small unit of its own module, and writes the report folder atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from twolevel.workflows.lecture.answers import add_answers_section
from twolevel.workflows.lecture.bayes import add_bayes_section, fit_bayes
from twolevel.workflows.lecture.compare import add_comparison_section
from twolevel.workflows.lecture.effects import add_caterpillar_section, add_shrinkage_section
from twolevel.workflows.lecture.prepare import add_data_section, prepare_data
from twolevel.workflows.lecture.record import (
    add_repro_section,
    command_line,
    dumps,
    settings_record,
)
from twolevel.workflows.lecture.reml import add_reml_section, fit_reml
from twolevel.workflows.lecture.residuals import add_residual_section
from twolevel.workflows.lecture.spec import Progress, RunSettings, WorkflowSpec
from twolevel.workflows.lecture.views import reml_view


def run_workflow(
    spec: WorkflowSpec,
    settings: RunSettings,
    out: str | Path,
    command: str | None = None,
    emit: Callable[[str], None] = print,
) -> Path:
    """Run the nine steps and write the report folder ``out`` (atomically). Returns its path."""
    return _run_steps(spec, settings, Path(out), command or command_line(), Progress(emit))


def _run_steps(
    spec: WorkflowSpec, settings: RunSettings, out: Path, command: str, progress: Progress
) -> Path:
    """The orchestrator: one small unit per step, each timed by ``progress``."""
    from twolevel.workflows import plots
    from twolevel.workflows.report import ReportWriter

    eff = settings.effective()
    t_start = time.perf_counter()
    with ReportWriter(out, title=spec.title or f"Two-level model of {spec.y}") as rep:
        s_answers = rep.section("Answers to the lecture's questions")
        s_data = rep.section("1. Data")
        s_reml = rep.section("2. REML fits (lme4 + lmerTest)")
        s_bayes = rep.section("3. Bayesian fits (PyMC NUTS)")
        s_cmp = rep.section("4. Model comparison: random slope or not?")
        s_cat = rep.section("5. Caterpillar plots of the school effects")
        s_shr = rep.section("6. Shrinkage: OLS → REML BLUP → posterior mean")
        s_res = rep.section("7. Level-2 residuals")
        s_ans = rep.section("8. The lecture's questions, REML and Bayes side by side")
        s_repro = rep.section("9. Reproducibility: commands, seeds, software, timings, files")

        with progress.step("data: description, centering, per-school OLS"):
            d = prepare_data(spec)
            progress.note(f"N = {int(d.sizes.sum()):,} students, J = {d.sizes.size} groups; "
                          f"{d.centering_note}")
            add_data_section(s_data, spec, d)

        with progress.step("REML: m1 (1 + x | g), m2 (1 | g), likelihood-ratio test"):
            reml = fit_reml(spec, d, profile_ci=not eff.quick)
            m1, m2 = reml["m1"], reml["m2"]
            rv = reml_view(m1)
            progress.note(f"m1 REML criterion {m1.reml_criterion:.4f}, m2 {m2.reml_criterion:.4f}")
            add_reml_section(s_reml, spec, reml)

        with progress.step(f"Bayes: NUTS {eff.chains} chains x {eff.draws} draws, m1 and m2"):
            bayes = fit_bayes(spec, d, reml, eff, progress)
            bv = bayes["view"]
            add_bayes_section(s_bayes, rep, spec, d, reml, bayes, eff, plots)

        with progress.step("model comparison: PSIS-LOO per student and per school, LRT"):
            progress.note(add_comparison_section(s_cmp, spec, reml, bayes, plots))

        with progress.step("caterpillar plots"):
            add_caterpillar_section(s_cat, spec, rv, bv, plots)

        with progress.step("shrinkage: OLS → REML BLUP → posterior mean"):
            add_shrinkage_section(s_shr, spec, d, rv, bv, plots)

        with progress.step("level-2 residuals"):
            add_residual_section(s_res, spec, d, reml, rv, plots)

        with progress.step("the lecture's questions"):
            add_answers_section(s_ans, s_answers, rep, spec, rv, bv, progress)

        with progress.step("report: HTML, Markdown, CSV, figures, NetCDF"):
            add_repro_section(s_repro, spec, settings, eff, command, progress, rep,
                              time.perf_counter() - t_start)
            rep.save_file("settings.json",
                          lambda p: p.write_text(dumps(settings_record(spec, settings))))
            rep.finish()
    progress.emit(f"report written to {out}/index.html (and report.md)")
    return out
