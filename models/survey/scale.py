"""Weighted per-school statistics from DuckDB or Dask (files, globs, ``dask.dataframe``).

The unweighted statistics pass (:func:`twolevel.models.design.sources.scale_statistics`) gives
the design — names, terms, the SQL of every column of y, X and Z — then two grouped passes over
the same rows give the weighted sums of :class:`~.crossprods.WeightedCrossprods`:

1. per school: the row count and Σ w2 (the school weight w_j = the mean of its level-2 column);
2. joined with w_j: the rows whose level-2 weight differs from w_j (a school weight that varies),
   the rows with a > 0, Σ a, Σ a² and Σ a·v_k·v_l for the distinct column pairs, with
   a = w1 / w_j (unconditional, WeMix) or w1 (conditional).

Scaling multiplies a school's sums by one factor (n_j/Σa or Σa/Σa²). Schools with w_j = 0 or
Σa = 0 are dropped and counted. A scalar pass first refuses missing, infinite or negative
weights, as the in-memory path does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError
from twolevel.models.design.sources import choose_engine, crossprods_from
from twolevel.models.design.sql import is_numeric_type, quote
from twolevel.models.survey.crossprods import WeightedCrossprods
from twolevel.models.survey.weights import LEVEL2_RTOL, SurveyWeights

__all__ = ["weighted_statistics_at_scale"]


def _check_columns(runner, cols: list[tuple[str | None, str]]) -> None:
    types = runner.types()
    for col, level in cols:
        if col is None:
            continue
        if col not in types:
            raise DataError(f"{level} weight column '{col}' is not in the data; available "
                            f"columns: {', '.join(types)}")
        if not is_numeric_type(types[col]):
            raise DataError(f"{level} weight column '{col}' is not numeric (type {types[col]}); "
                            "convert it to numbers first")
    sel = []
    for k, (col, _) in enumerate(cols):
        if col is None:
            continue
        c = f"CAST({quote(col)} AS DOUBLE)"
        sel += [f"count(*) FILTER (WHERE {c} IS NULL OR isnan({c})) AS n_miss{k}",
                f"count(*) FILTER (WHERE isinf({c})) AS n_inf{k}",
                f"count(*) FILTER (WHERE {c} < 0) AS n_neg{k}"]
    if not sel:
        return
    r = runner.scalar(sel, "__src", "TRUE")
    for k, (col, level) in enumerate(cols):
        if col is None:
            continue
        for key, what in ((f"n_miss{k}", "missing"), (f"n_inf{k}", "infinite"),
                          (f"n_neg{k}", "negative")):
            if int(r[key]):
                raise DataError(f"{level} weight column '{col}' has {int(r[key])} {what} "
                                "value(s); sampling weights must be finite and ≥ 0: fix or "
                                "drop those rows")


def weighted_statistics_at_scale(formula: str, data, engine: str, weights, *,
                                 conditional: bool, scaling: str, memory_limit=None,
                                 scheduler=None):
    """(design, weighted statistics, SurveyWeights, unweighted statistics) from DuckDB/Dask.

    Raises
    ------
    DataError
        As the in-memory path: a weight column missing, non-numeric, missing-valued, infinite
        or negative; a level-2 weight varying within a school; nothing left with weight > 0.
    """
    engine = choose_engine(data, engine, scheduler)
    l1, l2 = weights
    design, cp0 = crossprods_from(formula, data, engine, memory_limit=memory_limit,
                                  scheduler=scheduler)
    runner = design.runner
    _check_columns(runner, [(l1, "level-1"), (l2, "level-2")])
    g = quote(design.group)
    w1 = f"CAST({quote(l1)} AS DOUBLE)" if l1 else "1.0"
    w2 = f"CAST({quote(l2)} AS DOUBLE)" if l2 else "1.0"
    # pass 1: w_j
    r1 = runner.grouped(["count(*) AS n", f"fsum({w2}) AS s_w2"], design.from_sql,
                        design.where_sql, design.group)
    keys = r1["__key"]
    wj = np.asarray(r1["s_w2"], dtype=float) / np.asarray(r1["n"], dtype=float)
    runner.set_table("__wm", pd.DataFrame({design.group: keys, "__wj": wj}))
    # pass 2: the weighted sums
    a = "(" + (w1 if conditional else f"CASE WHEN __wj > 0 THEN {w1} / __wj ELSE 0 END") + ")"
    cols = list(design.z_sql) + list(design.x_sql) + [design.y_sql]
    distinct: list[str] = []
    ids = []
    for c in cols:
        if c not in distinct:
            distinct.append(c)
        ids.append(distinct.index(c))
    pairs = sorted({(min(i, k), max(i, k)) for i in ids for k in ids})
    sel = [f"count(*) FILTER (WHERE abs({w2} - __wj) > {LEVEL2_RTOL} * abs(__wj)) AS n_vary",
           f"count(*) FILTER (WHERE {a} > 0) AS n_pos", f"fsum({a}) AS s_a",
           f"fsum({a} * {a}) AS s_a2"]
    sel += [f"fsum({a} * ({distinct[i]}) * ({distinct[k]})) AS s_{i}_{k}" for i, k in pairs]
    from_ = f"{design.from_sql} LEFT JOIN __wm USING ({g})"
    r = runner.grouped(sel, from_, design.where_sql, design.group)
    if not np.array_equal(r["__key"], keys):
        raise DataError(f"the passes over {runner.description} saw different '{design.group}' "
                        "groups: did the files change while being read?")
    vary = np.asarray(r["n_vary"]) > 0
    if vary.any():
        bad = [str(v) for v in keys[vary][:5]]
        raise DataError(f"level-2 weight column '{l2}' varies within {int(vary.sum())} "
                        f"'{design.group}' group(s) (e.g. {', '.join(bad)}); a school weight "
                        "must be one value per school")
    s_a = np.asarray(r["s_a"], dtype=float)
    n_pos = np.asarray(r["n_pos"], dtype=float)
    ok = (wj > 0) & (s_a > 0)
    if not ok.any():
        raise DataError(f"every '{design.group}' group has a weight of 0: nothing left to fit")
    n_all = np.asarray(r1["n"], dtype=float)
    n_zero_schools = int((~ok).sum())
    n_zero_rows = int((n_all - n_pos)[ok].sum())
    if scaling == "none":
        f = np.ones_like(s_a)
    elif scaling == "size":
        f = n_pos / np.where(s_a > 0, s_a, 1.0)
    else:
        f = s_a / np.where(s_a > 0, np.asarray(r["s_a2"], dtype=float), 1.0)
    m = len(cols)
    J = int(ok.sum())
    M = np.empty((J, m, m))
    for k in range(m):
        for ll in range(k, m):
            i, j = min(ids[k], ids[ll]), max(ids[k], ids[ll])
            M[:, k, ll] = M[:, ll, k] = (f * np.asarray(r[f"s_{i}_{j}"], dtype=float))[ok]
    cp = WeightedCrossprods(M=M, n_star=(f * s_a)[ok], w=wj[ok], n=n_pos[ok].astype(int),
                            q=len(design.z_sql), p=len(design.x_sql))
    levels = np.asarray(design.group_levels)
    if not np.array_equal(levels, keys):
        raise DataError("the group keys of the weighted pass differ from the design's")
    design = dataclasses.replace(design, group_levels=levels[ok],
                                 group_sizes_=n_pos[ok].astype(int), n_rows=int(n_pos[ok].sum()))
    sw = SurveyWeights(level1=l1, level2=l2, conditional=bool(conditional), scaling=scaling,
                       keep=np.ones(0, dtype=bool), a=np.ones(0),
                       w_school=pd.Series(wj[ok], index=levels[ok], name=l2),
                       n_zero_rows=n_zero_rows, n_zero_schools=n_zero_schools)
    return design, cp, sw, cp0
