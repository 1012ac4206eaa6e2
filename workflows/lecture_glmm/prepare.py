"""Step 1, data: load and validate the data (the outcome must be 0/1, or a count), centre the
level-1 predictor within groups (recorded), compute every school's empirical logit (or log rate),
count the schools where per-school maximum likelihood fails, and write the report's data section.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from twolevel.data.centering import Centering
from twolevel.data.loaders import require_outcome
from twolevel.models.tables.empirical import EmpiricalTable, school_empirical_table
from twolevel.models.tables.glmm_answers import SCALES
from twolevel.workflows.lecture.prepare import load_centered
from twolevel.workflows.lecture.spec import _labels
from twolevel.workflows.lecture_glmm.spec import GlmmWorkflowSpec


@dataclass(frozen=True)
class PreparedGlmmData:
    """The data after validation and centring, with the per-school empirical estimates."""

    frame: pd.DataFrame
    source: str
    centering: Centering
    centering_note: str
    empirical: EmpiricalTable
    sizes: pd.Series
    notes: tuple[str, ...]


def prepare_glmm_data(spec: GlmmWorkflowSpec) -> PreparedGlmmData:
    """Load, validate (outcome 0/1 or a count) and centre the data; empirical estimates per
    school."""
    c = load_centered(spec)
    require_outcome(c.frame, spec.y, spec.family, source=c.source)
    df = c.frame
    emp = school_empirical_table(df[spec.y].to_numpy(float), df[spec.group].to_numpy(),
                                 spec.family, group_name=spec.group)
    sizes = df.groupby(spec.group).size()
    return PreparedGlmmData(df, c.source, c.centering, c.centering_note, emp, sizes, c.notes)


def describe_glmm_data(d: PreparedGlmmData, spec: GlmmWorkflowSpec) -> pd.DataFrame:
    """N, J, school sizes, the outcome and the separated schools as a one-column table."""
    s, y = d.sizes, d.frame[spec.y]
    gl = spec.group_label
    rows = [
        ("data", d.source),
        ("students N", f"{int(s.sum()):,}"),
        (f"groups J ({spec.group})", f"{s.size:,}"),
        ("students per group: min / median / mean / max",
         f"{int(s.min())} / {float(s.median()):g} / {float(s.mean()):.2f} / {int(s.max())}"),
    ]
    if spec.family == "binomial":
        rows.append((f"outcome {spec.y} = 1", f"{int(y.sum()):,} students ({100 * y.mean():.1f}%)"))
        rows.append((f"{gl}s where every {spec.y} = 0", d.empirical.n_all_zero))
        rows.append((f"{gl}s where every {spec.y} = 1", d.empirical.n_all_one))
    else:
        rows.append((f"outcome {spec.y}: mean (variance)", f"{y.mean():.3f} ({y.var():.3f})"))
        rows.append((f"{gl}s where every {spec.y} = 0", d.empirical.n_all_zero))
    rows.append((f"predictor {spec.x}: mean (SD)",
                 f"{d.frame[spec.x].mean():.3f} ({d.frame[spec.x].std():.3f})"))
    return pd.DataFrame(rows, columns=["quantity", "value"]).astype({"value": str})


def separation_words(d: PreparedGlmmData, spec: GlmmWorkflowSpec) -> str:
    """Why the lecture's per-school OLS has no binary/count counterpart by maximum likelihood."""
    gl, e = spec.group_label, d.empirical
    _, x_label = _labels(spec)
    J = len(e.table)
    if spec.family == "binomial":
        return (
            f"Why not fit each {gl} on its own, as the lecture does with per-{gl} OLS? OLS of a "
            f"0/1 outcome is a linear probability model whose fitted values leave [0, 1], and "
            f"its per-{gl} logistic-regression counterpart fails by maximum likelihood: "
            f"**every {spec.y} is 0 in {e.n_all_zero} of the {J} {gl}s, and every {spec.y} is 1 "
            f"in {e.n_all_one} of them**. There the {gl}'s ML logit log(s_j / (n_j − s_j)) is −∞ "
            f"or +∞: the likelihood keeps increasing as the logit runs off to infinity (complete "
            f"separation), so no finite estimate exists. A per-{gl} logistic regression with a "
            f"slope on {x_label} fails in those {gl}s too, and also wherever {x_label} alone "
            f"separates the {gl}'s 0s from its 1s; and where the estimates are finite, "
            f"{int(d.sizes.min())}–{int(d.sizes.max())} students make them very noisy. The "
            f"**empirical logit** log((s_j + ½) / (n_j − s_j + ½)), SE √(1/(s_j + ½) + "
            f"1/(n_j − s_j + ½)), is finite in every {gl}: it is the no-pooling estimate of "
            f"the {gl}'s log-odds (at its mean {x_label}) that section 6 shrinks.")
    return (
        f"Why not fit each {gl} on its own, as the lecture does with per-{gl} OLS? In "
        f"**{e.n_all_zero} of {J} {gl}s every {spec.y} is 0**: there the {gl}'s ML log rate "
        f"log(y_j / n_j) is −∞ (the likelihood keeps increasing as the rate goes to 0), so no "
        f"finite estimate exists, and a per-{gl} Poisson regression with a slope on {x_label} "
        f"fails there too. The **empirical log rate** log((y_j + ½) / n_j), SE 1/√(y_j + ½), is "
        f"finite in every {gl}: the no-pooling estimate that section 6 shrinks.")


def add_glmm_data_section(sec, spec: GlmmWorkflowSpec, d: PreparedGlmmData) -> None:
    """Step 1's report section: data, centring, school sizes, empirical estimates, separation."""
    y_label, x_label = _labels(spec)
    gl, sc = spec.group_label, SCALES[spec.family]
    sec.table("data_description", describe_glmm_data(d, spec), caption="The data")
    for n in d.notes:
        sec.text(f"Note: {n}")
    sec.text(
        f"Centering: {d.centering_note}. Because {x_label} is centred on its {gl} means, "
        f"the intercept of {gl} j is its {sc.link} of {y_label} for a student at the {gl}'s "
        f"mean {x_label}, and the slope is the within-{gl} log {sc.ratio} of {x_label}.")
    sizes = d.sizes.value_counts().sort_index().rename_axis(f"students per {gl}")
    sec.table("group_sizes", sizes.reset_index(name=f"{gl}s"),
              caption=f"How many {gl}s have each size")
    sec.text(separation_words(d, spec))
    tab = d.empirical.table
    y_sum = (f"students with {spec.y} = 1" if spec.family == "binomial" else "total count")
    sec.table("per_school_empirical", tab, max_rows=20, digits=3,
              columns=[spec.group, "n_j", "y_sum", "p_hat", "ml", "empirical", "se", "separated"],
              caption=f"Per-{gl} empirical {sc.link}: y_sum = "
                      f"{y_sum}, "
                      f"ml = the per-{gl} ML {sc.link} (±inf where separated), empirical and se "
                      "with ½ added")
