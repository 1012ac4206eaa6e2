"""The several-level workflow's orchestrator: :func:`run_multilevel_workflow` runs the eight steps
in order and writes the report folder atomically (HTML, Markdown, CSV tables, figures, JSON).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from twolevel.workflows.lecture.bayes import gate_line
from twolevel.workflows.lecture.record import command_line, jsonable, software_versions
from twolevel.workflows.lecture.spec import Progress, RunSettings
from twolevel.workflows.lecture3.spec import N_STEPS, MultilevelSpec
from twolevel.workflows.lecture3.steps import (
    add_bayes_section,
    add_data_section,
    add_decomposition_section,
    add_lrt_section,
    add_modes_section,
    add_prediction_section,
    add_reml_section,
    fit_bayes_levels,
    fit_models,
    load_levels,
    r_code,
    settings_record,
    summary_numbers,
)


def run_multilevel_workflow(
    spec: MultilevelSpec,
    settings: RunSettings,
    out: str | Path,
    command: str | None = None,
    emit: Callable[[str], None] = print,
) -> Path:
    """Run the eight steps and write the report folder ``out`` (atomically). Returns its path.

    Parameters
    ----------
    spec : what to fit (grouping columns outermost first).
    settings : the run's seed and ``quick`` flag (the Bayesian step's chains, draws and seed).
    out : the report folder, replaced only when every step succeeded.
    command : the command line to record (default: this process's).
    emit : where the progress lines go.

    Returns
    -------
    pathlib.Path
        The report folder.

    Raises
    ------
    TwolevelError
        Bad data or columns (nothing is written then).

    Examples
    --------
    >>> spec = MultilevelSpec("three.csv", "y", "x", ("school", "class"))   # doctest: +SKIP
    >>> run_multilevel_workflow(spec, RunSettings(quick=True), "outputs/three")   # doctest: +SKIP
    """
    from twolevel.workflows import plots
    from twolevel.workflows.report import ReportWriter

    out = Path(out)
    progress = Progress(emit, n_steps=N_STEPS)
    eff = settings.effective()
    t_start = time.perf_counter()
    levels = " in ".join(reversed(spec.groups))
    with ReportWriter(out, title=spec.title or f"Multilevel model of {spec.y}: {levels}") as rep:
        s_data = rep.section("1. Data")
        s_dec = rep.section("2. Variance decomposition by level (null model)")
        s_reml = rep.section("3. REML fit (lme4 + lmerTest)")
        s_lrt = rep.section(f"4. Likelihood-ratio test for the '{spec.groups[-1]}' level")
        s_modes = rep.section("5. Conditional modes and caterpillar plots per level")
        s_pred = rep.section("6. Predictions for a new student: known and new groups")
        s_bayes = rep.section("7. Bayesian fit: every level integrated out (NUTS)")
        s_repro = rep.section("8. Reproducibility: command, R code, software, timings, files")

        with progress.step("data: rows and groups per level"):
            d = load_levels(spec)
            progress.note(f"N = {len(d.frame):,}; " + ", ".join(
                f"{g}: {s.size:,}" for g, s in zip(spec.groups, d.sizes, strict=True)))
            add_data_section(s_data, spec, d)

        with progress.step("REML: null model, model, model without the innermost level; LRT"):
            fits = fit_models(spec, d)
            progress.note(f"m1 REML criterion {fits['m1'].criterion:.4f}")

        with progress.step("variance decomposition by level"):
            dec = add_decomposition_section(s_dec, spec, fits)
            progress.note(", ".join(f"{g} {100 * v:.1f}%" for g, v in dec["shares"].items()))
            add_reml_section(s_reml, spec, fits)

        with progress.step(f"likelihood-ratio test for '{spec.groups[-1]}'"):
            lrt = add_lrt_section(s_lrt, spec, fits)
            progress.note(f"chi2 = {lrt['chisq']:.3f}, p = {lrt['p']:.4g}")

        with progress.step("conditional modes and caterpillar plots per level"):
            add_modes_section(s_modes, spec, fits, plots)

        with progress.step("predictions: known group, new inner group, new outer group"):
            tab = add_prediction_section(s_pred, spec, d, fits)
            progress.note("prediction SEs: " + ", ".join(
                f"{c} {v:.3f}" for c, v in zip(tab["case"], tab["pred_se"], strict=True)))

        with progress.step("Bayes: NUTS with every level integrated out, effects per level"):
            bfit = fit_bayes_levels(spec, d, eff)
            progress.note(gate_line("m1", bfit) + f" ({bfit.timings.get('compile+sample', 0):.1f} "
                          "s sampling)")
            add_bayes_section(s_bayes, spec, fits, bfit, eff)

        with progress.step("report: HTML, Markdown, CSV, figures"):
            s_repro.text("Command that produced this report:")
            s_repro.pre(command or command_line())
            s_repro.text("The same analysis in R (the REML numbers above match lme4's):")
            s_repro.pre(r_code(spec))
            rep.save_file("results.json", lambda p: p.write_text(
                json.dumps(jsonable(summary_numbers(fits)), indent=2, sort_keys=True)))
            rep.save_file("settings.json", lambda p: p.write_text(json.dumps(
                jsonable(settings_record(spec, eff.quick, eff.seed)), indent=2, sort_keys=True)))
            s_repro.text(f"Only the Bayesian step draws random numbers: seed {eff.seed} (its "
                         f"sampler's {bfit.settings.seed})"
                         + ("; --quick shortened its chains." if eff.quick else "."))
            s_repro.table("software", software_versions(), caption="Software")
            tim = pd.DataFrame(progress.timings, columns=["step", "seconds"])
            tim.loc[len(tim)] = ["total until the report was written",
                                 time.perf_counter() - t_start]
            s_repro.table("timings", tim, digits=1, caption="Wall time of each step")
            files = sorted(rep.files + ["index.html", "report.md"])
            s_repro.text("Files in this folder:\n\n" + "\n".join(f"- `{f}`" for f in files))
            rep.finish()
    progress.emit(f"report written to {out}/index.html (and report.md)")
    return out
