"""Statistics sources: per-group cross-products from data that need not fit in memory.

The (RE)ML criterion, Satterthwaite, Kenward–Roger, profiles, BLUPs and the collapsed Bayesian
likelihood need only :class:`~twolevel.models.design.crossprods.GroupCrossprods`. A *source*
computes them where the rows are, and hands back a :class:`ScaleDesign` (everything a fit needs,
without the rows) with them:

* ``memory``: a pandas frame, today's NumPy path (:func:`make_design` + :func:`group_crossprods`);
* ``duckdb``: Parquet/CSV files, globs, directories or a frame, by SQL in DuckDB
  (:mod:`twolevel.models.design.duckdb_source`);
* ``dask``: a ``dask.dataframe`` or files on a ``distributed`` cluster, the same SQL run by DuckDB
  inside each task and the partial sums added in a tree (:mod:`twolevel.models.design.dask_source`).

The SQL engines make these passes (a *runner* executes each, on all rows or per partition):

1. the first 100,000 rows give rough centres m_k (the shift constants); the grouping column
   alone gives the row count and NULL groups, the factor columns alone their levels (cheap scans,
   kept apart: see the comment in :func:`scale_statistics`);
2. per-group means, only when the formula names a centred column (grouped);
3. the per-group sums: n_j, Σ(e_k − m_k), Σ(e_k − m_k)(e_l − m_l) for the Z×Z, Z×X, Z×y and y×y
   pairs (grouped; the one pass over all rows that cannot be avoided);
4. the global sums the per-group ones do not give (pairs of X and y columns not in Z), grouped by
   the factor when there is one (which yields its levels among complete rows; the passes are
   redone once if a level has no complete row, lme4's ``drop.unused.levels``); skipped when
   nothing is left to sum.

±Inf and terms undefined on complete rows (log of 0) make a sum non-finite; a diagnostic query
then names the column (lme4 refuses them too).

Every sum is ``fsum`` (Kahan) of a column shifted by a rough global centre m_k (spec §0, §3.5), so
two runs give the same numbers; the sums are then un-shifted in NumPy,
Σ e_k e_l = S̃_kl + m_l S̃_k + m_k S̃_l + n m_k m_l, to lme4's parametrization.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.models.design.crossprods import GroupCrossprods, group_crossprods
from twolevel.models.design.matrices import RandomTerm, make_design
from twolevel.models.design.scale_design import GroupMoments, ScaleDesign, ScaleError
from twolevel.models.design.sql import (
    CenteredName,
    SqlColumn,
    centered_names,
    compile_terms,
    complete_case_sql,
    expand_columns,
    formula_parts,
    is_numeric_type,
    quote,
    sql_literal,
)

__all__ = ["ENGINES", "Runner", "ScaleDesign", "ScaleError", "crossprods_from", "scale_statistics"]

ENGINES = ("auto", "memory", "duckdb", "dask")
SAMPLE_ROWS = 100_000  # first rows read for the shift constants (rough centres suffice)
_RANK_TOL = 1e-7


class Runner(Protocol):
    """Executes the passes of a source (see module docstring); DuckDB on all rows, or Dask per
    partition with the partial results added.

    ``scalar`` merges by name prefix: ``n_``/``s_`` add, ``lo_`` min, ``hi_`` max, ``lv_`` set
    union, ``w_`` list concatenation. ``grouped`` returns ``__key`` (sorted) and the sums;
    ``n_groups`` (an estimate) lets it size its hash tables to the memory limit."""

    engine: str
    description: str

    def types(self) -> dict[str, str]: ...
    def check_columns(self, columns: list[str]) -> None: ...
    def set_table(self, name: str, frame: pd.DataFrame) -> None: ...
    def scalar(self, select: list[str], from_: str, where: str) -> dict[str, Any]: ...
    def grouped(self, select: list[str], from_: str, where: str, key: str,
                n_groups: int | None = None) -> dict[str, np.ndarray]: ...
    @property
    def rows_read(self) -> int: ...


# ----------------------------------------------------------------------------- the passes


def _centered_lookup(types: dict[str, str]) -> dict[str, CenteredName]:
    out = {}
    for col, t in types.items():
        if is_numeric_type(t):
            for c in centered_names(col):
                if c.name not in types:
                    out[c.name] = c
    return out


def _mean_or_zero(s: float, n: int) -> float:
    m = s / n if n else 0.0
    return float(m) if np.isfinite(m) else 0.0


def scale_statistics(formula: str, runner: Runner, per_group_x: bool = False
                     ) -> tuple[ScaleDesign, GroupCrossprods]:
    """The :class:`ScaleDesign` and :class:`GroupCrossprods` of ``formula`` from a runner's
    passes (module docstring). ``per_group_x`` also returns X_jᵀX_j, X_jᵀy_j per group (for the
    per-school log-likelihood), attached as ``cp.XtX_groups`` / ``cp.Xty_groups``."""
    parsed, group = formula_parts(formula)
    types = runner.types()
    if group not in types:
        raise DataError(f"grouping column '{group}' is not in the data; available columns: "
                        f"{', '.join(types)}")
    centered = _centered_lookup(types)
    _, y_terms = compile_terms(parsed.response, types, centered)
    if len(y_terms) != 1 or any(a.factor for a in y_terms[0].atoms) or len(y_terms[0].atoms) != 1:
        raise FormulaError(f"response '{parsed.response}' must be one numeric column or I()/log() "
                           "of numeric columns")
    x_icpt, x_terms = compile_terms(parsed.fixed, types, centered)
    bars = [(b, *compile_terms(b.lhs, types, centered)) for b in parsed.bars]
    all_terms = y_terms + x_terms + [t for _, _, ts in bars for t in ts]
    atoms = {a.name: a for t in all_terms for a in t.atoms}
    used = list(dict.fromkeys([c for a in atoms.values() for c in a.columns] + [group]))
    runner.check_columns(used)
    where = complete_case_sql(used, types, group)

    # pass 1 (cheap): shift constants from the first rows, factor levels from the factor columns
    factors = sorted({a.factor for a in atoms.values() if a.factor})
    plain = [a for a in atoms.values() if a.factor is None and not a.centering]
    sel = ["count(*) AS n_s", f"count(*) FILTER (WHERE {where}) AS n_sc"]
    sel += [f"fsum({a.sql}) FILTER (WHERE {where} AND isfinite({a.sql})) AS s_atom{k}"
            for k, a in enumerate(plain)]
    rs = runner.scalar(sel, f"(SELECT * FROM __src LIMIT {SAMPLE_ROWS}) AS __s", "TRUE")
    n_s = int(rs["n_sc"])
    atom_mean = {a.name: _mean_or_zero(float(rs[f"s_atom{k}"]), n_s) for k, a in enumerate(plain)}
    # reads only the grouping and factor columns: row counts and the factors' levels
    sel = ["count(*) AS n_total",
           f"count(*) FILTER (WHERE {quote(group)} IS NULL) AS n_nullgroup"]
    if getattr(runner, "memory_limit", None):  # J, to size the grouped pass to the limit
        sel.append(f"approx_count_distinct({quote(group)}) AS n_groups_est")
    r1 = runner.scalar(sel, "__src", "TRUE")
    n_total = int(r1["n_total"])
    # the levels in a query of their own: DuckDB plans a DISTINCT aggregate beside others by
    # materialising the rows (2×10⁸ rows: 13 s and 2.1 GB, against 0.4 s and 80 MB alone)
    levels: dict[str, list] = {}
    if factors:
        rl = runner.scalar([f"list(DISTINCT {quote(f)}) FILTER (WHERE {quote(f)} IS NOT NULL) "
                            f"AS lv_{k}" for k, f in enumerate(factors)], "__src", "TRUE")
        levels = {f: sorted(v for v in rl[f"lv_{k}"] if v is not None)
                  for k, f in enumerate(factors)}

    # pass 2: group means (and grand means) of centred columns
    from_ = "__src"
    cen_sql: dict[str, str] = {}
    cen = sorted({c.column for a in atoms.values() for c in a.centering})
    grand: dict[str, float] = {}
    if cen:
        sel = ["count(*) AS n"] + [f"fsum(CAST({quote(c)} AS DOUBLE)) AS s_{k}"
                                   for k, c in enumerate(cen)]
        r2 = runner.grouped(sel, "__src", where, group)
        gm = pd.DataFrame({group: r2["__key"]})
        for k, c in enumerate(cen):
            gm[f"__m_{c}"] = r2[f"s_{k}"] / r2["n"]
            grand[c] = _mean_or_zero(float(np.sum(r2[f"s_{k}"])), int(np.sum(r2["n"])))
        runner.set_table("__gm", gm)
        from_ = f"__src LEFT JOIN __gm USING ({quote(group)})"
    for a in atoms.values():
        for c in a.centering:
            x = f"CAST({quote(c.column)} AS DOUBLE)"
            cen_sql[a.name] = {"group-mean": f"({x} - {quote('__m_' + c.column)})",
                               "group-means": quote("__m_" + c.column),
                               "grand-mean": f"({x} - {sql_literal(grand[c.column])})"}[c.kind]
            atom_mean[a.name] = grand[c.column] if c.kind == "group-means" else 0.0

    # the columns and passes 3-4; again (once) if a level has no complete row (lme4 drops it)
    for _attempt in range(2):
        # columns of y, X, Z
        y_col = expand_columns(False, y_terms, levels, cen_sql)[0]
        x_cols = expand_columns(x_icpt, x_terms, levels, cen_sql)
        z_cols: list[SqlColumn] = []
        terms: list[RandomTerm] = []
        for bar, icpt, ts in bars:
            cols = expand_columns(icpt, ts, levels, cen_sql)
            if not cols:
                raise FormulaError(f"random-effects term '({bar.lhs} | {bar.group})' has no "
                                   "columns")
            pieces = [[c] for c in cols] if not bar.correlated else [cols]
            for piece in pieces:
                idx = []
                for c in piece:
                    if c.name in [z.name for z in z_cols]:
                        raise FormulaError(f"random effect '{c.name}' appears twice for "
                                           f"'{group}' in '{formula}'; list each random effect "
                                           "once")
                    idx.append(len(z_cols))
                    z_cols.append(c)
                terms.append(RandomTerm(names=tuple(c.name for c in piece), columns=tuple(idx),
                                        group=group))

        def shift(c: SqlColumn) -> float:
            if c.kind != "numeric":
                return 0.0
            m = 1.0
            for nm in c.name.split(":"):
                if nm in atom_mean:
                    m *= atom_mean[nm]
            return m if np.isfinite(m) else 0.0

        # distinct columns (by SQL); -1 is the intercept
        dcols: list[SqlColumn] = []

        def cid(c: SqlColumn, dcols: list[SqlColumn] = dcols) -> int:
            if c.kind == "intercept":
                return -1
            for k, d in enumerate(dcols):
                if d.sql == c.sql:
                    return k
            dcols.append(c)
            return len(dcols) - 1

        zid = [cid(c) for c in z_cols]
        xid_full = [cid(c) for c in x_cols]
        yid = cid(y_col)
        m = np.array([shift(c) for c in dcols])

        # pass 3: grouped sums; the shifted columns are computed once per row in a sub-query
        gpairs = {(min(a, b), max(a, b)) for a in zid if a >= 0
                  for b in zid + xid_full + [yid] if b >= 0}
        gpairs.add((yid, yid))
        if per_group_x:
            gpairs |= {(min(a, b), max(a, b)) for a in xid_full + [yid] if a >= 0
                       for b in xid_full + [yid] if b >= 0}
        gpairs = sorted(gpairs)
        # Rows with NULL/NaN go (complete cases); ±Inf and undefined terms (log of 0) are let
        # through so that a non-finite sum reveals them (a diagnostic query then names them).
        lax = complete_case_sql(used, types, group, finite=False)
        sub = _shifted_subquery(dcols, m, from_, lax, [group])
        sel = ["count(*) AS n"] + [f"fsum(__c{k}) AS s_{k}" for k in range(len(dcols))]
        sel += [f"fsum(__c{i} * __c{k}) AS s_{i}_{k}" for i, k in gpairs]
        g = runner.grouped(sel, sub, "TRUE", group, n_groups=int(r1.get("n_groups_est", 0)))
        keys, nj = g["__key"], np.asarray(g["n"], dtype=float)
        J = int(nj.shape[0])
        n = int(nj.sum())
        if n == 0 or not all(np.all(np.isfinite(v)) for k, v in g.items() if k != "__key"):
            _diagnose(runner, used, types, plain, where, formula)
            raise TwolevelError(f"the per-group sums over {runner.description} overflowed")

        # pass 4: the global sums that the per-group ones do not give (pairs of columns not in
        # Z). With one factor the pass is grouped by it, which also gives its levels among the
        # complete rows; without factors and with nothing left to sum, it is skipped.
        xy = sorted({k for k in xid_full + zid + [yid] if k >= 0})
        t = {"n": float(n)} | {f"s_{k}": float(np.sum(g[f"s_{k}"])) for k in xy}
        tpairs = []
        for i, k in sorted({(min(a, b), max(a, b)) for a in xy for b in xy}):
            if f"s_{i}_{k}" in g:
                t[f"s_{i}_{k}"] = float(np.sum(g[f"s_{i}_{k}"]))
            else:
                tpairs.append((i, k))
        sel = ["count(*) AS n"] + [f"fsum(__c{i} * __c{k}) AS s_{i}_{k}" for i, k in tpairs]
        sub = _shifted_subquery(dcols, m, from_, lax, factors)
        cc_levels = levels
        if len(factors) == 1:
            tg = runner.grouped(sel, sub, "TRUE", factors[0])
            tt = {k: float(np.sum(v)) for k, v in tg.items() if k != "__key"}
            cc_levels = {factors[0]: sorted(tg["__key"][tg["n"] > 0].tolist())}
        elif factors or tpairs:
            sel += [f"list(DISTINCT {quote(f)}) AS lv_{k}" for k, f in enumerate(factors)]
            tt = runner.scalar(sel, sub, "TRUE")
            cc_levels = {f: sorted(v for v in tt[f"lv_{k}"] if v is not None)
                         for k, f in enumerate(factors)}
        else:
            tt = {"n": n}
        if int(tt["n"]) != n:
            raise TwolevelError(f"the passes over {runner.description} saw different row counts "
                                f"({n}, {int(tt['n'])}): did the files change while being read?")
        t |= {k: float(v) for k, v in tt.items() if k.startswith("s_")}
        if cc_levels == levels:
            break
        levels = cc_levels

    def unshift(res: dict, cnt, i: int, k: int | None = None):
        """Σ e_i (k None) or Σ e_i e_k from the shifted sums; −1 is the intercept."""
        if k is None:
            return cnt if i == -1 else res[f"s_{i}"] + cnt * m[i]
        if i == -1:
            return unshift(res, cnt, k)
        if k == -1:
            return unshift(res, cnt, i)
        a, b = min(i, k), max(i, k)
        return (res[f"s_{a}_{b}"] + m[b] * res[f"s_{a}"] + m[a] * res[f"s_{b}"]
                + cnt * m[a] * m[b])

    # rank of X from the global Gram matrix (R's dqrdc2 tolerance on norms)
    pf = len(x_cols)
    G = np.empty((pf, pf))
    for a in range(pf):
        for b in range(a, pf):
            G[a, b] = G[b, a] = float(unshift(t, float(n), xid_full[a], xid_full[b]))
    keep = _full_rank_gram(G)
    dropped = tuple(x_cols[k].name for k in range(pf) if k not in keep)
    xid = [xid_full[k] for k in keep]
    x_cols = [x_cols[k] for k in keep]
    p, q = len(xid), len(zid)

    A = np.empty((J, q, q))
    for a in range(q):
        for b in range(a, q):
            A[:, a, b] = A[:, b, a] = unshift(g, nj, zid[a], zid[b])
    B = np.empty((J, q, p))
    for a in range(q):
        for b in range(p):
            B[:, a, b] = unshift(g, nj, zid[a], xid[b])
    c = np.empty((J, q))
    for a in range(q):
        c[:, a] = unshift(g, nj, zid[a], yid)
    cp = GroupCrossprods(
        A=A, B=B, c=c, XtX=G[np.ix_(keep, keep)],
        Xty=np.array([float(unshift(t, float(n), k, yid)) for k in xid]),
        yty=float(unshift(t, float(n), yid, yid)), n=n, p=p,
    )
    gmoments = None
    if per_group_x:
        XtXg = np.empty((J, p, p))
        for a in range(p):
            for b in range(a, p):
                XtXg[:, a, b] = XtXg[:, b, a] = unshift(g, nj, xid[a], xid[b])
        gmoments = GroupMoments(
            Xsum=np.stack([np.broadcast_to(unshift(g, nj, k), (J,)) for k in xid], axis=1),
            XtX=XtXg, Xty=np.stack([unshift(g, nj, k, yid) for k in xid], axis=1),
            Zsq=np.stack([np.diagonal(A, axis1=1, axis2=2)[:, a] for a in range(q)], axis=1),
            ZX=B)
    yty_g = np.asarray(unshift(g, nj, yid, yid), dtype=float)

    def moments(col: SqlColumn, i: int) -> tuple[float, float]:
        """(mean, sd with ddof 1) of a column over the rows used, from the global sums."""
        if i == -1:
            return 1.0, 0.0
        mean = float(unshift(t, float(n), i)) / n
        ss = float(t[f"s_{i}_{i}"]) - n * (mean - m[i]) ** 2  # Σ(e − ē)², from the shifted sums
        sd = float(np.sqrt(max(ss, 0.0) / (n - 1))) if n > 1 else 0.0
        return mean, (0.0 if sd <= 1e-7 * max(abs(mean), 1e-300) else sd)

    col_moments = {"(response)": moments(y_col, yid)}
    col_moments |= {f"x:{c.name}": moments(c, k) for c, k in zip(x_cols, xid, strict=True)}
    col_moments |= {f"z:{c.name}": moments(c, k) for c, k in zip(z_cols, zid, strict=True)}
    n_dropped = n_total - n
    notes = []
    if n_dropped:
        nn = int(r1["n_nullgroup"])
        extra = f", {nn} of them with a NULL '{group}'" if nn else ""
        notes.append(f"{n_dropped} row(s) with missing or non-finite values removed "
                     f"(na.omit){extra}")
    if dropped:
        notes.append("fixed-effect model matrix is rank deficient so dropping "
                     f"{len(dropped)} column(s): {', '.join(dropped)}")
    h = hashlib.sha1()
    for arr in (nj, yty_g):  # the rows used and their response (not the model's columns)
        h.update(np.ascontiguousarray(arr))
    h.update(f"{n}:{J}:{parsed.response}".encode())
    design = ScaleDesign(
        formula=formula, response=parsed.response, group=group,
        x_names=tuple(c.name for c in x_cols), z_names=tuple(c.name for c in z_cols),
        terms=tuple(terms), group_levels=np.asarray(keys), group_sizes_=nj.astype(np.int64),
        n_rows=n, engine=runner.engine, source=runner.description, rows_read=runner.rows_read,
        x_sql=tuple(c.sql for c in x_cols), z_sql=tuple(c.sql for c in z_cols), y_sql=y_col.sql,
        from_sql=from_, where_sql=where, stats_fingerprint=h.hexdigest(),
        n_na_dropped=n_dropped, dropped_columns=dropped, notes=tuple(notes), runner=runner,
        yty_groups=yty_g, group_moments=gmoments, column_moments=col_moments,
    )
    _check_scale_design(design)
    return design, cp


def _shifted_subquery(dcols: list[SqlColumn], m: np.ndarray, from_: str, where: str,
                      keys: list[str]) -> str:
    """``(SELECT keys, e_0 − m_0 AS __c0, ... FROM from_ WHERE where)``: each shifted column once
    per row, for the sums of products above it."""
    cols = [quote(k) for k in keys]
    cols += [f"({c.sql}) AS __c{k}" if m[k] == 0.0
             else f"(({c.sql}) - {sql_literal(m[k])}) AS __c{k}" for k, c in enumerate(dcols)]
    return f"(SELECT {', '.join(cols) or '1 AS __one'} FROM {from_} WHERE {where}) AS __s"


def _diagnose(runner: Runner, used: list[str], types: dict, plain: list, where: str,
              formula: str) -> None:
    """Raise the message for a non-finite sum or no complete row: infinite values (lme4 does not
    drop ±Inf silently), a term undefined on complete rows (log of a value ≤ 0), no rows left.
    Runs only when something is wrong (its filtered counts are slower than the passes)."""
    sel = [f"count(*) FILTER (WHERE {where}) AS n_complete"]
    for k, c in enumerate(used):
        if is_numeric_type(types[c]):
            sel.append(f"count(*) FILTER (WHERE isinf(CAST({quote(c)} AS DOUBLE))) AS n_inf{k}")
    for k, a in enumerate(plain):
        if a.check:
            sel.append(f"count(*) FILTER (WHERE {where} AND NOT coalesce({a.check}, FALSE))"
                       f" AS n_bad{k}")
    t = runner.scalar(sel, "__src", "TRUE")
    for k, c in enumerate(used):
        if int(t.get(f"n_inf{k}", 0) or 0):
            raise DataError(f"column '{c}' has {int(t[f'n_inf{k}'])} infinite value(s) in "
                            f"{runner.description}; lme4 does not drop ±Inf silently: remove or "
                            "recode those rows")
    for k, a in enumerate(plain):
        bad = int(t.get(f"n_bad{k}", 0) or 0)
        if bad:
            raise DataError(f"term '{a.name}' is undefined or not finite on {bad} complete "
                            "row(s) (e.g. log of a value <= 0); fix the data or the term")
    if int(t["n_complete"]) == 0:
        raise DataError(f"no complete rows left for formula '{formula}' in "
                        f"{runner.description} after removing missing values")


def _full_rank_gram(G: np.ndarray, tol: float = _RANK_TOL) -> list[int]:
    """Columns kept by R's rule (a column whose norm after projection on the kept ones is below
    ``tol`` times its own is dropped), from the Gram matrix XᵀX: r_k² = G_kk − g_kᵀG_KK⁻¹g_k."""
    kept: list[int] = []
    for k in range(G.shape[0]):
        d = G[k, k]
        if d <= 0:
            continue
        if kept:
            gk = G[kept, k]
            r2 = d - gk @ np.linalg.solve(G[np.ix_(kept, kept)], gk)
        else:
            r2 = d
        if r2 > tol**2 * d:
            kept.append(k)
    return kept


def _check_scale_design(d: ScaleDesign) -> None:
    J = d.n_groups
    if J < 2:
        raise DataError(f"grouping column '{d.group}' has only {J} group; a two-level model "
                        "needs at least 2 groups")
    if J >= d.n:
        raise DataError(f"grouping column '{d.group}' has {J} groups for {d.n} rows: the number "
                        "of groups must be smaller than the number of observations")
    if d.n <= J * d.q:
        raise DataError(f"number of observations ({d.n}) <= number of random effects "
                        f"({J * d.q}) for '{d.group}': use fewer random slopes")


# ----------------------------------------------------------------------------- entry point


def _is_dask_collection(data) -> bool:
    return type(data).__module__.startswith("dask")


def choose_engine(data, engine: str = "auto", scheduler=None) -> str:
    """The engine for ``data``: ``auto`` → dask for a dask collection or with a scheduler,
    memory for a pandas frame, duckdb for files, globs and directories."""
    if engine not in ENGINES:
        raise TwolevelError(f"unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if scheduler is not None or _is_dask_collection(data):
        return "dask"
    if isinstance(data, pd.DataFrame):
        return "memory"
    return "duckdb"


# the packages of each out-of-memory engine: twolevel's ``scale`` extra (pyproject.toml)
SCALE_PACKAGES = {"duckdb": ("duckdb",), "dask": ("dask", "distributed", "duckdb")}


def require_scale_extra(engine: str, what: str | None = None) -> None:
    """A :class:`TwolevelError` naming the ``scale`` extra when a package of ``engine`` (duckdb,
    dask) is not installed; ``what`` says what needed it (default: the engine)."""
    import importlib

    for name in SCALE_PACKAGES.get(engine, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            raise TwolevelError(f"{what or f'engine {engine!r}'} needs the package '{name}', "
                                "which comes with twolevel's 'scale' extra: pip install "
                                "'twolevel[scale]'") from None


def crossprods_from(formula: str, data, engine: str = "auto", *, memory_limit: str | None = None,
                    threads: int | None = None, scheduler=None, progress: bool = False,
                    per_group_x: bool = False):
    """(design, cross-products) of ``formula`` on ``data`` from the chosen engine
    (``per_group_x``: also the per-group moments of X, :class:`GroupMoments`).

    ``data``: a pandas frame, a path, glob, directory or list of Parquet/CSV files, or a
    ``dask.dataframe``. ``memory_limit`` (e.g. "4GB") and ``threads`` bound DuckDB;
    ``scheduler`` is a ``distributed`` address, ``Client`` or None (dask engine).

    Parameters
    ----------
    formula : str
        lme4 syntax, one grouping factor.
    data : DataFrame, path, glob, directory, list of files, or dask.dataframe
        Where the rows are.
    engine : {"auto", "memory", "duckdb", "dask"}
        Where the per-group sums are computed.

    Returns
    -------
    tuple
        (design, cross-products): a :class:`Design` (memory) or :class:`ScaleDesign`, and the
        :class:`GroupCrossprods`.

    Raises
    ------
    ScaleError, DataError
        Unreadable files, differing schemas, a column named twice, memory exhausted.

    Examples
    --------
    >>> import twolevel as tl
    >>> des, cp = tl.crossprods_from("g1rscore ~ famsesc + (1 | schid)", tl.load_data("lecture"),
    ...                              engine="duckdb")
    >>> des.n_groups, cp.A.shape[0]
    (742, 742)
    """
    engine = choose_engine(data, engine, scheduler)
    if engine == "memory":
        if not isinstance(data, pd.DataFrame):
            require_scale_extra("duckdb", "reading data files")
            from twolevel.models.design.duckdb_source import read_all
            data = read_all(data)
        design = make_design(formula, data)
        return design, group_crossprods(design)
    require_scale_extra(engine)
    if engine == "duckdb":
        from twolevel.models.design.duckdb_source import DuckDBRunner
        runner = DuckDBRunner(data, memory_limit=memory_limit, threads=threads, progress=progress)
    else:
        from twolevel.models.design.dask_source import DaskRunner
        runner = DaskRunner(data, scheduler=scheduler, memory_limit=memory_limit)
    return scale_statistics(formula, runner, per_group_x=per_group_x)
