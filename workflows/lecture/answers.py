"""Step 8: the lecture's six questions answered from the REML fit and the posterior, side by side.
"""

from __future__ import annotations

from twolevel.workflows.lecture.record import dumps
from twolevel.workflows.lecture.spec import Progress, WorkflowSpec, _labels
from twolevel.workflows.lecture.views import (
    BayesView,
    RemlView,
    bayes_answer_draws,
    reml_quantities,
)


def add_answers_section(sec, s_answers, rep, spec: WorkflowSpec, rv: RemlView, bv: BayesView,
                        progress: Progress) -> None:
    """Step 8: the lecture's six questions, REML and Bayes side by side (section ``sec``), the
    plain-words answers also at the top of the report (``s_answers``) and in ``answers.json``."""
    from twolevel.models.tables.lecture_answers import lecture_answers

    y_label, x_label = _labels(spec)
    xc = spec.xc
    ans = lecture_answers(reml_quantities(rv, xc), bayes_answer_draws(bv, xc, rv.effects),
                          y_label=y_label, x_label=x_label)
    write_answers(sec, s_answers, rep, spec, ans, progress,
                  "REML estimate (SE for fixed effects) and posterior mean, SD, 2.5% and 97.5% "
                  "quantiles")


def write_answers(sec, s_answers, rep, spec, ans, progress: Progress, caption: str) -> None:
    """The answers ``ans`` (``table``, ``answers``, ``prob_corr_negative``) as the section's table
    and text, at the top of the report (``s_answers``, with the level-2 caveat), in
    ``answers.json`` and on the progress lines. Shared by the normal and the binary workflow."""
    sec.table("lecture_answers", ans.table, digits=4, caption=caption)
    sec.text("\n".join(f"- {a}" for a in ans.answers))
    s_answers.text("\n".join(f"- {a}" for a in ans.answers))
    if spec.level2:
        s_answers.text(f"With level-2 predictors ({', '.join(spec.level2)}), γ00 and γ10 "
                       "are the intercept and slope of a school with W = 0, and τ are "
                       "residual variances given W.")
    rep.save_file("answers.json", lambda p: p.write_text(dumps({
        "answers": list(ans.answers), "table": ans.table.to_dict(orient="records"),
        "prob_corr_negative": ans.prob_corr_negative})))
    for line in ans.answers:
        progress.note(line)
