"""Step 1, data: load and validate the data, centre the level-1 predictor within groups (recorded),
fit OLS in every school, and write the report's data section.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twolevel.data.centering import Centering, center
from twolevel.data.errors import DataError
from twolevel.data.loaders import load_data, require_columns
from twolevel.models.tables.ols import GroupOLS, group_ols
from twolevel.workflows.lecture.spec import WorkflowSpec, _labels


@dataclass(frozen=True)
class PreparedData:
    """The data after validation and centring, with the per-school OLS fit."""

    frame: pd.DataFrame
    source: str
    centering: Centering
    centering_note: str
    ols: GroupOLS
    sizes: pd.Series
    notes: tuple[str, ...]


@dataclass(frozen=True)
class CenteredData:
    """The validated rows with the centred predictor (and its group means) added."""

    frame: pd.DataFrame
    source: str
    centering: Centering
    centering_note: str
    notes: tuple[str, ...]


def load_centered(spec: WorkflowSpec) -> CenteredData:
    """Load and validate the data, centre the level-1 predictor within groups (an existing column
    of the centred name is used when it equals the recomputed centring) and check that the
    level-2 predictors are constant within groups."""
    df = load_data(spec.data)
    source = df.attrs.get("source", str(spec.data))
    checked = require_columns(df, [spec.y, spec.x, *spec.level2], group=spec.group, source=source)
    df = checked.frame.copy()
    means_name = f"mean{spec.x}" if f"mean{spec.x}" not in spec.level2 else f"mean{spec.x}_"
    cen = center(df, spec.x, by=spec.group, name=spec.xc, means_name=means_name)
    note = cen.describe()
    if spec.xc in df.columns:
        stored = pd.to_numeric(df[spec.xc], errors="coerce").to_numpy(float)
        diff = float(np.nanmax(np.abs(stored - cen.centered.to_numpy())))
        if np.isfinite(diff) and diff <= 1e-9:
            note += (f"; the stored column '{spec.xc}' equals it (max difference {diff:.1e}) "
                     "and is used")
        else:
            df[spec.xc] = cen.centered.to_numpy()
            note += f"; the stored column '{spec.xc}' differed (max {diff:.3g}) and was replaced"
    else:
        df[spec.xc] = cen.centered.to_numpy()
    if means_name not in df.columns:
        df[means_name] = cen.means.to_numpy()
    for w in spec.level2:
        per = df.groupby(spec.group)[w].nunique()
        if (per > 1).any():
            bad = per[per > 1].index[:3].tolist()
            raise DataError(
                f"level-2 predictor '{w}' varies within {spec.group} {', '.join(map(str, bad))}; "
                f"a level-2 predictor must be constant within each {spec.group} "
                f"(use its {spec.group} mean, e.g. '{means_name}' for {spec.x})"
            )
    return CenteredData(df, source, cen, note, tuple(checked.notes))


def prepare_data(spec: WorkflowSpec) -> PreparedData:
    """Load, validate and centre the data; fit OLS in every school."""
    c = load_centered(spec)
    df = c.frame
    ols = group_ols(f"{spec.y} ~ {spec.xc}", df, spec.group)
    sizes = df.groupby(spec.group).size()
    return PreparedData(df, c.source, c.centering, c.centering_note, ols, sizes, c.notes)


def describe_data(d: PreparedData, spec: WorkflowSpec) -> pd.DataFrame:
    """N, J and school sizes as a one-column table."""
    s = d.sizes
    rows = [
        ("data", d.source),
        ("students N", f"{int(s.sum()):,}"),
        (f"groups J ({spec.group})", f"{s.size:,}"),
        ("students per group: min", int(s.min())),
        ("students per group: median", float(s.median())),
        ("students per group: mean", round(float(s.mean()), 2)),
        ("students per group: max", int(s.max())),
        (f"response {spec.y}: mean (SD)",
         f"{d.frame[spec.y].mean():.3f} ({d.frame[spec.y].std():.3f})"),
        (f"predictor {spec.x}: mean (SD)",
         f"{d.frame[spec.x].mean():.3f} ({d.frame[spec.x].std():.3f})"),
        ("groups with a non-estimable OLS fit", int((~d.ols.table["estimable"]).sum())),
    ]
    return pd.DataFrame(rows, columns=["quantity", "value"]).astype({"value": str})


def add_data_section(sec, spec: WorkflowSpec, d: PreparedData) -> None:
    """Step 1's report section: the data description, school sizes, centring and per-school OLS."""
    y_label, x_label = _labels(spec)
    xc, g, gl = spec.xc, spec.group, spec.group_label
    sec.table("data_description", describe_data(d, spec), caption="The data")
    for n in d.notes:
        sec.text(f"Note: {n}")
    sec.text(
        f"Centering: {d.centering_note}. Because {x_label} is centred on its {gl} means, "
        f"the intercept of {gl} j is its mean {y_label}, and the slope is the within-{gl} "
        f"relation of {y_label} to {x_label}."
    )
    sizes = d.sizes.value_counts().sort_index().rename_axis(f"students per {gl}")
    sec.table("group_sizes", sizes.reset_index(name=f"{gl}s"),
              caption=f"How many {gl}s have each size")
    ols_tab = d.ols.to_frame()
    sec.text(
        f"Per-{gl} OLS of `{spec.y} ~ {xc}` (the lecture's B0_hat = intercept, "
        f"B1_hat = slope): the first 20 {gl}s as the lecture shows them."
    )
    sec.table("per_school_ols", ols_tab, max_rows=20, digits=2,
              columns=[g, "n_j", "B0_hat", "B1_hat"],
              caption=f"Per-{gl} OLS estimates")
    if len(d.ols.flagged):
        sec.text(f"{len(d.ols.flagged)} {gl}(s) have no estimable OLS slope "
                 "(kept with NaN; see the `note` column of the CSV).")
