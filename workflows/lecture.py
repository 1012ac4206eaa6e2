"""The lecture workflow: from data to a report that answers Lecture 5's questions.

Orchestration only: every statistic comes from ``models/`` (OLS, lmer, anova, HLM statistics,
Kenward-Roger, the PyMC sampler, shrinkage, the lecture answers), every figure from
``workflows/plots.py``, and the report is written atomically by ``workflows/report.py``.

Steps (each prints a progress line and is timed)::

    1 data           description, centering, per-school OLS
    2 reml           m1 (1 + x | g), m2 (1 | g): lme4 + lmerTest summaries, LRT (ML refit)
    3 bayes          the same two models with NUTS, diagnostics, prior and posterior predictive
    4 compare        PSIS-LOO per student and leave-one-school-out, beside the LRT
    5 caterpillar    u0j and u1j, REML BLUP ± 1.96 cond. SD and posterior 95% intervals
    6 shrinkage      OLS → BLUP → posterior mean, table and figure with the T ellipse
    7 residuals      level-2 residual summary and plots against school size and mean x
    8 answers        the lecture's six questions, REML and Bayes side by side
    9 report         HTML + Markdown + CSV + PNG + NetCDF, swapped into place atomically
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twolevel.data.centering import Centering, center
from twolevel.data.errors import DataError
from twolevel.data.loaders import load_data, require_columns
from twolevel.models.tables.ols import GroupOLS, group_ols

__all__ = ["LECTURE_SPEC", "RunSettings", "WorkflowSpec", "run_workflow"]

N_STEPS = 9


@dataclass(frozen=True)
class WorkflowSpec:
    """What to fit: ``y ~ 1 + xc (+ W + W:xc) + (1 + xc | group)`` with ``xc`` = x centred within
    groups (group-mean centering, recorded in the report).

    Fields
    ------
    data : a built-in data set name (``lecture``, ``hsb``) or a file path.
    y, x, group : response, level-1 predictor, grouping column.
    level2 : level-2 predictors W (each enters as W and the cross-level interaction W:xc).
    x_centered : name of the centred column (default ``c<x>``); an existing column of that name is
        used when it equals the recomputed centring (to 1e-9), so published numbers are reproduced.
    y_label, x_label : words for the report ("reading score", "SES").
    title : the report's title.  group_label : the word for a group ("school").
    """

    data: str
    y: str
    x: str
    group: str
    level2: tuple[str, ...] = ()
    x_centered: str | None = None
    y_label: str | None = None
    x_label: str | None = None
    title: str | None = None
    group_label: str = "school"

    @property
    def xc(self) -> str:
        """Name of the group-mean-centred predictor."""
        return self.x_centered or f"c{self.x}"

    def fixed_rhs(self) -> str:
        """Fixed part: ``1 + xc`` plus ``W + W:xc`` for each level-2 predictor."""
        terms = ["1", self.xc]
        for w in self.level2:
            terms += [w, f"{w}:{self.xc}"]
        return " + ".join(terms)

    @property
    def formula_m1(self) -> str:
        """Random intercept and slope."""
        return f"{self.y} ~ {self.fixed_rhs()} + (1 + {self.xc} | {self.group})"

    @property
    def formula_m2(self) -> str:
        """Random intercept only."""
        return f"{self.y} ~ {self.fixed_rhs()} + (1 | {self.group})"


LECTURE_SPEC = WorkflowSpec(
    data="lecture",
    y="g1rscore",
    x="ses",
    group="schid",
    x_centered="famsesc",
    y_label="reading score",
    x_label="SES",
    title="Lecture 5: two-level model with random intercept and random slope (ECLS-K:2011-like data)",
)


@dataclass(frozen=True)
class RunSettings:
    """Sampling settings. ``quick`` uses few draws (for tests and a first look)."""

    seed: int = 20250121
    quick: bool = False
    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    ppc_draws: int = 200

    def effective(self) -> RunSettings:
        """The settings actually used (``quick`` shrinks chains, draws and tuning)."""
        if not self.quick:
            return self
        return RunSettings(seed=self.seed, quick=True, chains=2, draws=150, tune=150, ppc_draws=60)

    def seed_for(self, step: str) -> int:
        """A fixed seed per random step, derived from the run's seed."""
        offsets = {"prior_m1": 1, "bayes_m1": 2, "bayes_m2": 3, "ppc_m1": 4, "ppc_m2": 5, "prior_m2": 6}
        return int(self.seed) * 10 + offsets[step]


@dataclass
class Progress:
    """Prints one line per step with its wall time; keeps the timings for the report."""

    emit: Callable[[str], None] = print
    timings: list[tuple[str, float]] = field(default_factory=list)
    k: int = 0

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.k += 1
        self.emit(f"[{self.k}/{N_STEPS}] {name} ...")
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.timings.append((name, dt))
        self.emit(f"[{self.k}/{N_STEPS}] {name}: done in {dt:.1f} s")

    def note(self, text: str) -> None:
        self.emit(f"      {text}")


# ----------------------------------------------------------------------------- step 1: data


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


def prepare_data(spec: WorkflowSpec) -> PreparedData:
    """Load, validate and centre the data; fit OLS in every school."""
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
            note += f"; the stored column '{spec.xc}' equals it (max difference {diff:.1e}) and is used"
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
    ols = group_ols(f"{spec.y} ~ {spec.xc}", df, spec.group)
    sizes = df.groupby(spec.group).size()
    return PreparedData(df, source, cen, note, ols, sizes, tuple(checked.notes))


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
        (f"response {spec.y}: mean (SD)", f"{d.frame[spec.y].mean():.3f} ({d.frame[spec.y].std():.3f})"),
        (f"predictor {spec.x}: mean (SD)", f"{d.frame[spec.x].mean():.3f} ({d.frame[spec.x].std():.3f})"),
        ("groups with a non-estimable OLS fit", int((~d.ols.table["estimable"]).sum())),
    ]
    return pd.DataFrame(rows, columns=["quantity", "value"]).astype({"value": str})


# ----------------------------------------------------------------------------- report helpers


def software_versions() -> pd.DataFrame:
    """Versions of Python, the platform and the libraries used (and the git commit if any)."""
    rows = [("python", sys.version.split()[0]), ("platform", platform.platform())]
    for pkg in ("twolevel", "numpy", "scipy", "pandas", "formulae", "nlopt", "pymc", "pytensor",
                "arviz", "arviz-base", "arviz-stats", "arviz-plots", "xarray", "h5netcdf",
                "matplotlib"):
        try:
            rows.append((pkg, importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            rows.append(("git commit", sha + (" (with local changes)" if dirty else "")))
    except (OSError, subprocess.SubprocessError):
        pass
    return pd.DataFrame(rows, columns=["software", "version"])


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (``twolevel ...``)."""
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name if argv else "twolevel"
    if prog in ("cli.py", "__main__.py", "-m"):
        prog = "python -m twolevel.workflows.cli"
    elif prog != "twolevel":
        prog = "twolevel"
    return " ".join([prog, *map(shlex.quote, argv[1:])])


def jsonable(obj: Any) -> Any:
    """Numbers and containers made JSON-friendly (NaN → null)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def run_workflow(
    spec: WorkflowSpec,
    settings: RunSettings,
    out: str | Path,
    command: str | None = None,
    emit: Callable[[str], None] = print,
) -> Path:
    """Run the nine steps and write the report folder ``out`` (atomically). Returns its path."""
    return _run_steps(spec, settings, Path(out), command or command_line(), Progress(emit))


def settings_record(spec: WorkflowSpec, settings: RunSettings) -> dict:
    """The specification and the settings as a JSON-friendly dict."""
    return jsonable({"spec": asdict(spec), "settings": asdict(settings.effective()),
                     "formula_m1": spec.formula_m1, "formula_m2": spec.formula_m2})


def dumps(obj: Any) -> str:
    """JSON text with sorted keys."""
    return json.dumps(jsonable(obj), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- views of the fits


@dataclass(frozen=True)
class RemlView:
    """What the later steps need from an REML random-slope fit (copied from the fit's API).

    ``fixef``/``se`` by lme4 name; ``T`` (q × q) covariance of the school effects with names
    ``effects``; ``sigma2``; per school (index = group levels): ``u`` BLUPs, ``u_sd`` conditional
    SDs, ``coef`` = fixef + BLUP (absolute coefficients).
    """

    fixef: pd.Series
    se: pd.Series
    effects: tuple[str, ...]
    T: np.ndarray
    sigma2: float
    u: pd.DataFrame
    u_sd: pd.DataFrame
    coef: pd.DataFrame


@dataclass(frozen=True)
class BayesView:
    """What the later steps need from a posterior of the random-slope model.

    Draws flattened over chains: ``beta`` (S, p) with names ``fixed``, ``T`` (S, q, q),
    ``sigma`` (S,). Per school: ``u_mean``, ``u_lo``, ``u_hi`` (2.5%, 97.5%) and the same for the
    absolute coefficients ``coef_*`` (each school × effect).
    """

    fixed: tuple[str, ...]
    beta: np.ndarray
    T: np.ndarray
    sigma: np.ndarray
    u_mean: pd.DataFrame
    u_lo: pd.DataFrame
    u_hi: pd.DataFrame
    coef_mean: pd.DataFrame
    coef_lo: pd.DataFrame
    coef_hi: pd.DataFrame


def reml_view(fit) -> RemlView:
    """Copy what the later steps need out of an :class:`twolevel.models.lmm.results.LmerFit`."""
    names = list(fit.design.z_names)
    vc = fit.VarCorr()
    re = fit.ranef(cond_var=True)
    return RemlView(
        fixef=fit.fixef(),
        se=fit.se(),
        effects=tuple(names),
        T=np.asarray(vc.cov, float),
        sigma2=float(vc.residual),
        u=re[names],
        u_sd=re[[f"condsd_{n}" for n in names]].set_axis(names, axis=1),
        coef=fit.coef()[names],
    )


def reml_quantities(view: RemlView, xc: str):
    """The REML numbers the lecture's questions use (γ00, γ10, SEs, T, σ²)."""
    from twolevel.models.tables.lecture_answers import REMLQuantities

    i0, i1 = view.effects.index("(Intercept)"), view.effects.index(xc)
    return REMLQuantities(
        gamma00=float(view.fixef["(Intercept)"]), gamma10=float(view.fixef[xc]),
        se00=float(view.se["(Intercept)"]), se10=float(view.se[xc]),
        tau00=float(view.T[i0, i0]), tau11=float(view.T[i1, i1]), tau01=float(view.T[i0, i1]),
        sigma2=view.sigma2,
    )


def bayes_answer_draws(view: BayesView, xc: str, effects: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Posterior draws of γ00, γ10, τ00, τ11, τ01 for :func:`twolevel.models.tables.lecture_answers.lecture_answers`."""
    i0, i1 = effects.index("(Intercept)"), effects.index(xc)
    f0, f1 = view.fixed.index("(Intercept)"), view.fixed.index(xc)
    return {
        "gamma00": view.beta[:, f0], "gamma10": view.beta[:, f1],
        "tau00": view.T[:, i0, i0], "tau11": view.T[:, i1, i1], "tau01": view.T[:, i0, i1],
    }


# ----------------------------------------------------------------------------- the steps


def _labels(spec: WorkflowSpec) -> tuple[str, str]:
    return spec.y_label or spec.y, spec.x_label or spec.x


def _fixef_frame(fit, ddf: str = "Satterthwaite") -> pd.DataFrame:
    t = fit.coef_table(ddf=ddf).reset_index(names="term")
    return t


def _run_steps(
    spec: WorkflowSpec, settings: RunSettings, out: Path, command: str, progress: Progress
) -> Path:
    from twolevel.models.tables.lecture_answers import lecture_answers
    from twolevel.models.tables.shrinkage import (
        caterpillar_table,
        describe_shrinkage,
        shrinkage_summary,
        shrinkage_table,
        t_ellipse,
    )
    from twolevel.workflows import plots
    from twolevel.workflows.report import ReportWriter

    eff = settings.effective()
    y_label, x_label = _labels(spec)
    xc, g, gl = spec.xc, spec.group, spec.group_label
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

        # 1 ---------------------------------------------------------------- data
        with progress.step("data: description, centering, per-school OLS"):
            d = prepare_data(spec)
            desc = describe_data(d, spec)
            progress.note(f"N = {int(d.sizes.sum()):,} students, J = {d.sizes.size} groups; "
                          f"{d.centering_note}")
            s_data.table("data_description", desc, caption="The data")
            for n in d.notes:
                s_data.text(f"Note: {n}")
            s_data.text(
                f"Centering: {d.centering_note}. Because {x_label} is centred on its {gl} means, "
                f"the intercept of {gl} j is its mean {y_label}, and the slope is the within-{gl} "
                f"relation of {y_label} to {x_label}."
            )
            sizes = d.sizes.value_counts().sort_index().rename_axis(f"students per {gl}")
            s_data.table("group_sizes", sizes.reset_index(name=f"{gl}s"),
                         caption=f"How many {gl}s have each size")
            ols_tab = d.ols.to_frame()
            s_data.text(
                f"Per-{gl} OLS of `{spec.y} ~ {xc}` (the lecture's B0_hat = intercept, "
                f"B1_hat = slope): the first 20 {gl}s as the lecture shows them."
            )
            s_data.table("per_school_ols", ols_tab, max_rows=20, digits=2,
                         columns=[g, "n_j", "B0_hat", "B1_hat"],
                         caption=f"Per-{gl} OLS estimates")
            if len(d.ols.flagged):
                s_data.text(f"{len(d.ols.flagged)} {gl}(s) have no estimable OLS slope "
                            "(kept with NaN; see the `note` column of the CSV).")

        # 2 ---------------------------------------------------------------- REML
        with progress.step("REML: m1 (1 + x | g), m2 (1 | g), likelihood-ratio test"):
            reml = fit_reml(spec, d, profile_ci=not eff.quick)
            m1, m2 = reml["m1"], reml["m2"]
            rv = reml_view(m1)
            progress.note(f"m1 REML criterion {m1.reml_criterion:.4f}, m2 {m2.reml_criterion:.4f}")
            add_reml_section(s_reml, spec, reml)

        # 3 ---------------------------------------------------------------- Bayes
        with progress.step(f"Bayes: NUTS {eff.chains} chains x {eff.draws} draws, m1 and m2"):
            bayes = fit_bayes(spec, d, reml, eff, progress)
            bv = bayes["view"]
            add_bayes_section(s_bayes, rep, spec, d, reml, bayes, eff, plots)

        # 4 ---------------------------------------------------------------- comparison
        with progress.step("model comparison: PSIS-LOO per student and per school, LRT"):
            verdict = add_comparison_section(s_cmp, spec, reml, bayes, plots)
            progress.note(verdict)

        # 5 ---------------------------------------------------------------- caterpillar
        with progress.step("caterpillar plots"):
            z = 1.959963984540054
            for k, e in enumerate(rv.effects):
                nice = "intercept" if e == "(Intercept)" else f"{x_label} slope"
                tab = caterpillar_table(rv.u.index, rv.u[e], rv.u_sd[e], bv.u_mean[e],
                                        bv.u_lo[e], bv.u_hi[e], z=z)
                s_cat.table(f"caterpillar_u{k}", tab, max_rows=0,
                            caption=f"u{k}j ({nice}): REML BLUP ± 1.96 cond. SD and posterior "
                                    "mean with 95% interval, sorted")
                fig = plots.caterpillar_figure(
                    tab, f"School effects u{k}j ({nice} deviation from γ{k}0), {len(tab)} {gl}s",
                    f"u{k}j", reference=0.0)
                s_cat.figure(f"caterpillar_u{k}", fig,
                             caption=f"u{k}j: {nice} deviations, sorted by the REML BLUP")
                gamma = float(rv.fixef[e]) if e in rv.fixef.index else 0.0
                tab_a = caterpillar_table(rv.coef.index, rv.coef[e], rv.u_sd[e], bv.coef_mean[e],
                                          bv.coef_lo[e], bv.coef_hi[e], z=z, reference=gamma)
                s_cat.table(f"caterpillar_beta{k}", tab_a, max_rows=0,
                            caption=f"β{k}j = γ{k}0 + u{k}j (absolute {nice}s), sorted")
                fig = plots.caterpillar_figure(
                    tab_a, f"School {nice}s β{k}j = γ{k}0 + u{k}j, {len(tab_a)} {gl}s",
                    f"β{k}j", reference=gamma, reference_label=f"γ{k}0 = {gamma:.2f}")
                s_cat.figure(f"caterpillar_beta{k}", fig,
                             caption=f"β{k}j: absolute school {nice}s (option 'absolute')")
            s_cat.text(
                "Each vertical bar is one school's 95% interval; schools are in the order of their "
                "REML BLUP (rank 1 = lowest) in both panels. The five highest and lowest schools "
                "are drawn in orange and named beside the plot; the full sorted tables are in the "
                "CSV files."
            )

        # 6 ---------------------------------------------------------------- shrinkage
        with progress.step("shrinkage: OLS → REML BLUP → posterior mean"):
            ols_coef = d.ols.to_frame(r_names=True).set_index(g)[list(rv.effects)]
            ols_coef.index = rv.coef.index
            shr = shrinkage_table(d.sizes.reindex(rv.coef.index), ols_coef, rv.coef, bv.coef_mean)
            T_post = bv.T.mean(axis=0)
            tau_reml = {e: float(rv.T[i, i]) for i, e in enumerate(rv.effects)}
            tau_bayes = {e: float(T_post[i, i]) for i, e in enumerate(rv.effects)}
            ssum = shrinkage_summary(shr, tau_reml, tau_bayes)
            labels = {"(Intercept)": f"school mean {y_label} (intercept)",
                      xc: f"{x_label} slope"}
            s_shr.text(describe_shrinkage(ssum, labels))
            s_shr.table("shrinkage_summary", ssum.spread.reset_index(),
                        caption="Spread of the per-school estimates (variance across schools)")
            s_shr.table("shrinkage_by_size", ssum.by_size,
                        caption="Mean movement by school size band")
            s_shr.table("shrinkage_per_school", shr.reset_index(), max_rows=10, digits=3,
                        columns=[g, "n"] + [f"{e}.{k}" for e in rv.effects
                                            for k in ("ols", "reml", "bayes")],
                        caption="Per school: OLS, REML and posterior-mean coefficients")
            gam = np.array([float(rv.fixef[e]) for e in rv.effects[:2]])
            gpost = np.array([bv.beta[:, bv.fixed.index(e)].mean() for e in rv.effects[:2]])
            fig = plots.shrinkage_figure(
                shr, tuple(rv.effects[:2]), gam, t_ellipse(gam, rv.T[:2, :2]),
                t_ellipse(gpost, T_post[:2, :2]),
                labels=(f"mean {y_label}", f"{x_label} slope"))
            s_shr.figure("shrinkage", fig, caption="OLS → REML BLUP → posterior mean, with the "
                                                   "95% ellipse of the estimated T")
            fig = plots.shrinkage_by_size_figure(shr, list(rv.effects[:2]), labels)
            s_shr.figure("shrinkage_by_size", fig, caption="Movement from OLS by school size, "
                                                           "and posterior mean − BLUP")

        # 7 ---------------------------------------------------------------- residuals
        with progress.step("level-2 residuals"):
            add_residual_section(s_res, spec, d, reml, rv, plots)

        # 8 ---------------------------------------------------------------- answers
        with progress.step("the lecture's questions"):
            ans = lecture_answers(reml_quantities(rv, xc), bayes_answer_draws(bv, xc, rv.effects),
                                  y_label=y_label, x_label=x_label)
            s_ans.table("lecture_answers", ans.table, digits=4,
                        caption="REML estimate (SE for fixed effects) and posterior mean, SD, "
                                "2.5% and 97.5% quantiles")
            s_ans.text("\n".join(f"- {a}" for a in ans.answers))
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

        # 9 ---------------------------------------------------------------- report
        with progress.step("report: HTML, Markdown, CSV, figures, NetCDF"):
            add_repro_section(s_repro, spec, settings, eff, command, progress, rep,
                              time.perf_counter() - t_start)
            rep.save_file("settings.json", lambda p: p.write_text(dumps(settings_record(spec, settings))))
            rep.finish()
    progress.emit(f"report written to {out}/index.html (and report.md)")
    return out


# ----------------------------------------------------------------------------- step 2: REML


def fit_reml(spec: WorkflowSpec, d: PreparedData, profile_ci: bool = True) -> dict[str, Any]:
    """m1, m2 by REML; LRT with ML refits; Kenward-Roger, HLM statistics and (optionally) profile
    confidence intervals for m1. All computed by ``models``."""
    import warnings

    from twolevel.models.inference.anova import anova
    from twolevel.models.inference.hlm import hlm_statistics
    from twolevel.models.inference.kenward_roger import kenward_roger
    from twolevel.models.lmm.lmer import lmer

    name = Path(str(spec.data)).name
    out: dict[str, Any] = {"warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["m1"] = lmer(spec.formula_m1, d.frame, REML=True, data_name=name)
        out["m2"] = lmer(spec.formula_m2, d.frame, REML=True, data_name=name)
        out["anova"] = anova(out["m2"], out["m1"], names=["m2", "m1"])
    out["warnings"] = [str(w.message) for w in caught]
    m1 = out["m1"]
    out["kr"] = kenward_roger(m1.design, m1.crossprods, m1.theta, m1.sigma, beta=m1.beta)
    out["hlm"] = hlm_statistics(m1.design, m1.crossprods, m1.theta, m1.sigma, m1.beta)
    out["profile"] = None
    if profile_ci:
        from twolevel.models.inference.profile import confint_profile

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["profile"] = confint_profile(m1.design, m1.crossprods)
        out["profile_warnings"] = [str(w.message) for w in caught]
    return out


def add_reml_section(sec, spec: WorkflowSpec, reml: dict[str, Any]) -> None:
    """Summaries, LRT, KR, HLM statistics and profile intervals."""
    m1, m2 = reml["m1"], reml["m2"]
    sec.text(f"m1 (random intercept and slope): `{spec.formula_m1}`\n\n"
             f"m2 (random intercept only): `{spec.formula_m2}`")
    sec.pre(m1.summary(), caption="summary(m1), lme4 + lmerTest layout")
    sec.pre(m2.summary(), caption="summary(m2)")
    sec.table("fixef_m1", _fixef_frame(m1), caption="m1 fixed effects (Satterthwaite df)")
    sec.table("varcorr_m1", m1.VarCorr().to_frame(), caption="m1 variance components "
              "(lme4's as.data.frame(VarCorr(m1)))")
    sec.table("fixef_m2", _fixef_frame(m2), caption="m2 fixed effects (Satterthwaite df)")
    sec.table("varcorr_m2", m2.VarCorr().to_frame(), caption="m2 variance components")
    a = reml["anova"]
    sec.pre(str(a), caption="anova(m2, m1): likelihood-ratio test (models refitted by ML)")
    sec.table("lrt", a.to_frame().reset_index(), caption="LRT table")
    kr = reml["kr"]
    sat = m1.coef_table()
    sec.table("fixef_m1_ddf", pd.DataFrame({
        "term": list(kr.names), "Estimate": m1.beta, "SE": sat["Std. Error"].to_numpy(),
        "df Satterthwaite": sat["df"].to_numpy(), "SE Kenward-Roger": kr.se,
        "df Kenward-Roger": kr.df, "p Kenward-Roger": kr.p_value,
        "df HLM (J-S-1)": reml["hlm"].hlm_df,
    }), caption="m1 fixed effects: Satterthwaite and Kenward-Roger")
    sec.pre(reml["hlm"].summary(), caption="HLM's statistics for m1 (reliability, χ² tests of τ, "
                                           "plausible-value ranges, robust SEs)")
    sec.table("hlm_m1", reml["hlm"].to_frame(), caption="HLM statistics per random coefficient")
    if reml.get("profile") is not None:
        sec.table("confint_profile_m1", reml["profile"].reset_index(),
                  caption="m1 profile-likelihood 95% confidence intervals (lme4's "
                          "confint(method = 'profile'))")
        for w in reml.get("profile_warnings", []):
            sec.text(f"Profile note: {w}. An interval left empty could not be found from the "
                     "profile; read the Bayesian interval of that parameter instead.")
    else:
        sec.text("Profile-likelihood intervals were skipped (--quick).")
    for w in reml["warnings"]:
        sec.text(f"Fit note: {w}")


# ----------------------------------------------------------------------------- step 9: repro


def r_code(spec: WorkflowSpec) -> str:
    """The same REML analysis in R (lme4 + lmerTest), for readers who want to check."""
    return "\n".join([
        "library(lme4); library(lmerTest)",
        f"d <- read.csv('<your data>')  # {spec.data}",
        f"d${spec.xc} <- d${spec.x} - ave(d${spec.x}, d${spec.group})  # group-mean centering",
        f"m1 <- lmer({spec.formula_m1}, data = d)",
        f"m2 <- lmer({spec.formula_m2}, data = d)",
        "summary(m1); summary(m2)",
        "anova(m2, m1)  # refits with ML",
        "ranef(m1, condVar = TRUE)",
    ])


def add_repro_section(sec, spec, settings, eff, command, progress, rep, elapsed) -> None:
    """Commands, seeds, settings, software versions, timings and the list of files."""
    sec.text("Command that produced this report:")
    sec.pre(command)
    sec.text("The two models in R (lme4 + lmerTest) — the REML numbers above match lme4's:")
    sec.pre(r_code(spec))
    seeds = pd.DataFrame(
        [(k, eff.seed_for(k)) for k in ("prior_m1", "bayes_m1", "ppc_m1", "prior_m2", "bayes_m2",
                                        "ppc_m2")],
        columns=["random step", "seed"])
    sec.text(f"Run seed: {settings.seed} (`--seed`); every random step uses a seed derived from "
             f"it. Sampling: {eff.chains} chains × {eff.draws} draws after {eff.tune} tuning steps"
             + (" (--quick: too few draws for reporting)" if eff.quick else "") + ".")
    sec.table("seeds", seeds, caption="Seeds of the random steps")
    sec.table("software", software_versions(), caption="Software")
    tim = pd.DataFrame(progress.timings, columns=["step", "seconds"])
    tim.loc[len(tim)] = ["total until the report was written", elapsed]
    sec.table("timings", tim, digits=1, caption="Wall time of each step")
    files = sorted(rep.files + ["index.html", "report.md"])
    sec.text("Files in this folder:\n\n" + "\n".join(f"- `{f}`" for f in files))


# ----------------------------------------------------------------------------- step 7: residuals


def add_residual_section(sec, spec: WorkflowSpec, d: PreparedData, reml: dict, rv: RemlView,
                         plots) -> None:
    """The lecture's level-2 residual summary table and residual plots."""
    from twolevel.models.inference.residuals import format_residual_summary, level2_residual_summary, school_table

    y_label, x_label = _labels(spec)
    gl = spec.group_label
    m1 = reml["m1"]
    summ = level2_residual_summary(rv.u.to_numpy())
    sec.text("Level-2 residuals are the REML BLUPs of u0j (school mean deviation from γ00) and "
             "u1j (slope deviation from γ10), as in the lecture's summary table.")
    sec.pre(format_residual_summary(summ), caption="Level-2 residual summary (mean, sd, "
                                                   "percentiles, histogram)")
    sec.table("level2_residual_summary", summ, caption="Level-2 residual summary")
    per = school_table(m1.design, m1.crossprods, m1.theta, m1.sigma)
    names = list(m1.design.z_names)
    sec.table("level2_residuals_per_school", per, max_rows=10, digits=3,
              columns=[spec.group, "n_j"] + [f"{k}_{n}" for n in names for k in ("BLUP", "condSD")]
              + [f"reliability_{n}" for n in names],
              caption="Per school: n_j, OLS estimates, BLUPs, conditional SDs, EB coefficients, "
                      "reliability, precision weights")
    means_name = d.centering.means.name
    cov = pd.DataFrame({
        "n": d.sizes.reindex(rv.u.index).to_numpy(),
        "xbar": d.frame.groupby(spec.group)[means_name].first().reindex(rv.u.index).to_numpy(),
    }, index=rv.u.index)
    u = rv.u.set_axis([f"u{k}j" for k in range(len(rv.effects))], axis=1)
    fig = plots.residual_figure(
        u, cov, {c: c for c in u.columns},
        {"n": f"{gl} size n_j", "xbar": f"{gl} mean {x_label} ({means_name})"})
    sec.figure("level2_residuals", fig,
               caption=f"u0j and u1j against {gl} size and {gl} mean {x_label}")
    r_xbar = [float(np.corrcoef(cov["xbar"], u[c])[0, 1]) for c in u.columns]
    sec.text(
        f"Correlation with {gl} mean {x_label}: u0j {r_xbar[0]:+.2f}, u1j {r_xbar[1]:+.2f}. "
        + ("A clear trend of u0j with mean " + x_label + " means part of the between-school "
           "variation is explained by school composition (a contextual effect): adding "
           f"`--level2 {means_name}` models it." if abs(r_xbar[0]) > 0.2 else
           "No strong trend with school composition.")
    )


# ----------------------------------------------------------------------------- step 3: Bayes


def _stack(da, *dims: str) -> np.ndarray:
    """Draws of a posterior variable as an array (S, *dims), chains and draws flattened."""
    return da.stack(sample=("chain", "draw")).transpose("sample", *dims).to_numpy()


def bayes_view(dt, school_index: pd.Index) -> BayesView:
    """Copy what the later steps need out of a posterior DataTree with the builders' fixed names
    (``beta`` [fixed], ``sigma``, ``sd`` [effect], ``corr`` [effect, effect_b], ``b_school``
    [school, effect]; see :mod:`twolevel.models.bayes.pymc_model`)."""
    post = dt["posterior"]
    schools = [str(v) for v in post["school"].to_numpy()]
    if schools != [str(v) for v in school_index]:
        raise ValueError("posterior schools are not in the order of the REML fit's groups")
    fixed = tuple(str(v) for v in post["fixed"].to_numpy())
    effects = [str(v) for v in post["effect"].to_numpy()]
    beta = _stack(post["beta"], "fixed")
    sd = _stack(post["sd"], "effect")
    if "corr" in post:
        corr = _stack(post["corr"], "effect", "effect_b")
    else:
        corr = np.repeat(np.eye(len(effects))[None], sd.shape[0], axis=0)
    T = sd[:, :, None] * sd[:, None, :] * corr
    b = post["b_school"]
    q = b.quantile([0.025, 0.975], dim=("chain", "draw"))
    idx = pd.Index(school_index, name=school_index.name)

    def frame(da) -> pd.DataFrame:
        return pd.DataFrame(da.transpose("school", "effect").to_numpy(), index=idx, columns=effects)

    u_mean, u_lo, u_hi = frame(b.mean(("chain", "draw"))), frame(q.sel(quantile=0.025)), \
        frame(q.sel(quantile=0.975))
    gamma = post["beta"].sel(fixed=[e for e in effects if e in fixed])
    absb = b + gamma.rename(fixed="effect").reindex(effect=effects, fill_value=0.0)
    qa = absb.quantile([0.025, 0.975], dim=("chain", "draw"))
    return BayesView(
        fixed=fixed, beta=beta, T=T, sigma=_stack(post["sigma"]),
        u_mean=u_mean, u_lo=u_lo, u_hi=u_hi,
        coef_mean=frame(absb.mean(("chain", "draw"))), coef_lo=frame(qa.sel(quantile=0.025)),
        coef_hi=frame(qa.sel(quantile=0.975)),
    )


def fit_bayes(spec: WorkflowSpec, d: PreparedData, reml: dict[str, Any], eff: RunSettings,
              progress: Progress) -> dict[str, Any]:
    """m1 and m2 by NUTS (:func:`twolevel.models.bayes.fit.fit_bayes`), with prior and posterior predictive
    draws; each random step has its own seed derived from the run's seed.

    Returns ``m1``, ``m2`` (:class:`twolevel.models.bayes.fit.BayesFit`), ``prior_m1``/``prior_m2`` and
    ``ppc_m1``/``ppc_m2`` (replicated scores, draws × students, in the design's row order),
    ``view`` (:class:`BayesView` of m1, schools in the REML fit's order) and ``warnings`` (messages
    of the sampler other than the diagnostics gate, which is in ``fit.diagnostics``).
    """
    import warnings

    from twolevel.models.bayes.fit import SamplerSettings, posterior_predictive, prior_predictive
    from twolevel.models.bayes.fit import fit_bayes as nuts

    out: dict[str, Any] = {"warnings": []}
    for m, formula in (("m1", spec.formula_m1), ("m2", spec.formula_m2)):
        t0 = time.perf_counter()
        settings = SamplerSettings(chains=eff.chains, draws=eff.draws, tune=eff.tune,
                                   seed=eff.seed_for(f"bayes_{m}"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = nuts(formula, d.frame, settings=settings, progress=False)
            out[f"prior_{m}"] = prior_predictive(fit.design, None, eff.ppc_draws,
                                                 eff.seed_for(f"prior_{m}"))["y"]
            out[f"ppc_{m}"] = posterior_predictive(fit, eff.ppc_draws, eff.seed_for(f"ppc_{m}"))
        for w in caught:
            msg = str(w.message)
            if issubclass(w.category, RuntimeWarning) and not msg.startswith("NUTS fit of") \
                    and msg not in out["warnings"]:
                out["warnings"].append(msg)
        out[m] = fit
        dg = fit.diagnostics
        progress.note(
            f"{m}: {dg.divergences} divergences, max R-hat {dg.max_rhat:.3f}, min ESS bulk "
            f"{dg.min_ess_bulk:.0f} / tail {dg.min_ess_tail:.0f}, min BFMI "
            f"{min(dg.bfmi) if dg.bfmi else float('nan'):.2f}: gate "
            f"{'passed' if dg.passed else 'FAILED'} ({time.perf_counter() - t0:.1f} s, of which "
            f"sampling {fit.timings.get('compile+sample', float('nan')):.1f} s)")
    out["view"] = bayes_view(out["m1"].datatree, reml_view(reml["m1"]).u.index)
    return out


def _reml_value(fit, parameter: str) -> float:
    """The REML estimate named like a row of :meth:`twolevel.models.bayes.fit.BayesFit.to_frame`."""
    vc = fit.VarCorr()
    kind, _, name = parameter.partition(":")
    if kind == "fixef":
        return float(fit.fixef()[name])
    if kind == "sd":
        return float(vc.sds[name])
    if kind == "corr":
        a, b = name.split(":")
        return float(vc.correlations.loc[a, b])
    if parameter == "sigma":
        return float(vc.residual_sd)
    raise ValueError(f"no REML estimate for posterior parameter '{parameter}'")


def bayes_vs_reml(fits: dict[str, Any], reml: dict[str, Any]) -> pd.DataFrame:
    """Posterior mean, SD and 95% interval beside the REML estimate, per model and parameter."""
    rows = []
    for m, fit in fits.items():
        post = fit.to_frame()
        for p, r in post.iterrows():
            est = _reml_value(reml[m], str(p))
            rows.append({"model": m, "parameter": p, "reml": est, "post_mean": r["mean"],
                         "post_sd": r["sd"], "q2.5": r["q2.5"], "q97.5": r["q97.5"],
                         "diff_in_post_sd": (r["mean"] - est) / r["sd"],
                         "reml_inside_95": bool(r["q2.5"] <= est <= r["q97.5"])})
    return pd.DataFrame(rows)


def _compare_words(tab: pd.DataFrame) -> str:
    """Plain words on how posterior means relate to the REML estimates."""
    worst = tab.loc[tab["diff_in_post_sd"].abs().idxmax()]
    outside = tab[~tab["reml_inside_95"]]
    text = (f"Posterior means and REML estimates agree closely: the largest gap is "
            f"{worst['parameter']} in {worst['model']} (posterior mean {worst['post_mean']:.4g}, "
            f"REML {worst['reml']:.4g}, {abs(worst['diff_in_post_sd']):.2f} posterior SDs apart). ")
    if outside.empty:
        text += "Every REML estimate lies inside its 95% posterior interval."
    else:
        text += ("REML estimates outside the 95% posterior interval: "
                 + ", ".join(f"{r.parameter} ({r.model})" for r in outside.itertuples()) + ".")
    if abs(worst["diff_in_post_sd"]) > 0.25:
        text += (f" {worst['parameter']} is the least sharply estimated: its 95% posterior interval "
                 f"[{worst['q2.5']:.3g}, {worst['q97.5']:.3g}] is wide, and a point estimate "
                 "(REML) and a posterior mean summarise such a posterior differently; the prior "
                 "also weighs more where the data say little.")
    return text


def add_bayes_section(sec, rep, spec: WorkflowSpec, d: PreparedData, reml: dict[str, Any],
                      bayes: dict[str, Any], eff: RunSettings, plots) -> None:
    """Summaries, diagnostics, posterior tables, Bayes vs REML, posterior files, and the prior and
    posterior predictive checks per student and per school."""
    from twolevel.models.bayes.fit import GATE
    from twolevel.workflows.school_stats import SCHOOL_STATISTICS, predictive_pvalues, school_statistics

    y_label, x_label = _labels(spec)
    gl = spec.group_label
    fits = {"m1": bayes["m1"], "m2": bayes["m2"]}
    f1 = fits["m1"]
    sec.text(
        f"Both models are fitted by NUTS (nutpie, {eff.chains} chains × {eff.draws} draws after "
        f"{eff.tune} tuning steps). The {gl} effects are integrated out while sampling (no "
        f"funnel, so no divergences by construction) and each {gl}'s effects are then drawn from "
        "their exact conditional posterior. Priors are weakly informative and scaled to the "
        "data; they are printed in each summary."
        + (" **--quick run: too few draws to report; the diagnostics gate is expected to fail "
           "on effective sample size.**" if eff.quick else ""))
    diag = pd.concat([f.diagnostics.to_frame().assign(model=m, formula=f.formula)
                      for m, f in fits.items()], ignore_index=True)
    diag = diag[["model", "formula", "divergences", "max_rhat", "min_ess_bulk", "min_ess_tail",
                 "min_bfmi", "worst_rhat", "worst_ess", "passed"]]
    sec.table("bayes_diagnostics", diag, digits=4,
              caption=f"Diagnostics over every parameter, including each {gl}'s effects "
                      f"(gate: no divergences, R-hat ≤ {GATE['max_rhat']}, bulk and tail ESS ≥ "
                      f"{GATE['min_ess']:.0f}, BFMI ≥ {GATE['min_bfmi']})")
    failed = {m: f.diagnostics.problems for m, f in fits.items() if f.diagnostics.problems}
    if failed:
        for m, probs in failed.items():
            fix = ("rerun without `--quick`" if eff.quick else
                   "rerun with more tuning steps and draws (`RunSettings`) or another `--seed`")
            sec.text(f"**The diagnostics gate failed for {m}**: " + "; ".join(probs)
                     + f". Its posterior numbers in this report (also in sections 5-8) are "
                       f"provisional: {fix} before reporting them.")
    else:
        sec.text("Both fits pass the diagnostics gate: no divergent transitions, every R-hat "
                 f"≤ {GATE['max_rhat']}, every bulk and tail ESS ≥ {GATE['min_ess']:.0f} and "
                 f"BFMI ≥ {GATE['min_bfmi']} in every chain, so the posterior summaries can be "
                 "reported.")
    for w in bayes.get("warnings", []):
        sec.text(f"Sampler note: {w}")
    for m, f in fits.items():
        sec.pre(f.summary(), caption=f"{m}: {f.formula}")
        sec.table(f"posterior_{m}", f.to_frame().reset_index(), digits=4,
                  caption=f"{m}: posterior mean, SD, 95% interval, ESS and R-hat")
    cmp_tab = bayes_vs_reml(fits, reml)
    sec.table("bayes_vs_reml", cmp_tab, digits=4,
              caption="REML estimate beside the posterior mean, SD and 95% interval")
    sec.text(_compare_words(cmp_tab))
    for m, f in fits.items():
        rep.save_file(f"posterior_{m}.nc", f.save)
    sec.text("The posteriors are saved as `posterior_m1.nc` and `posterior_m2.nc` (NetCDF; "
             "`arviz.from_netcdf(...)` or `xarray.open_datatree(...)` reopens them), with the "
             f"per-{gl} log-likelihood used for leave-one-{gl}-out.")

    # predictive checks --------------------------------------------------------------------
    des = f1.design
    if fits["m2"].design.n != des.n:
        raise ValueError(f"m1 and m2 use different rows ({des.n} vs {fits['m2'].design.n}); "
                         "both formulas must use the same variables")
    x = des.X[:, des.x_names.index(spec.xc)]
    obs = school_statistics(des.y, des.group_index, x)
    labels = {k: f"{v} of {y_label}" for k, v in SCHOOL_STATISTICS.items()}
    labels["slope"] = f"per-{gl} OLS slope on {spec.xc}"
    S = bayes["prior_m1"].shape[0]
    fig = plots.student_ppc_figure(
        des.y, bayes["prior_m1"], xlabel=y_label,
        title=f"Prior predictive check, m1: {y_label} of {des.n:,} students, data (black) and "
              f"{S} data sets drawn from the priors")
    sec.figure("prior_predictive_students", fig,
               caption="Prior predictive: do the priors allow scores of the data's scale?")
    rep_prior = school_statistics(bayes["prior_m1"], des.group_index, x)
    fig = plots.school_ppc_figure(obs, rep_prior, labels,
                                  f"Prior predictive check, m1: {gl}-level statistics "
                                  f"({des.n_groups} {gl}s)")
    sec.figure("prior_predictive_schools", fig,
               caption=f"Prior predictive, per {gl}: the distribution across {gl}s of the "
                       f"{gl} means, within-{gl} SDs and per-{gl} OLS slopes")
    fig = plots.student_ppc_figure(
        des.y, bayes["ppc_m1"], xlabel=y_label,
        title=f"Posterior predictive check, m1: {y_label} of {des.n:,} students, data (black) "
              f"and {bayes['ppc_m1'].shape[0]} replicated data sets")
    sec.figure("posterior_predictive_students", fig,
               caption="Posterior predictive per student (m1)")
    rep_m1 = school_statistics(bayes["ppc_m1"], des.group_index, x)
    rep_m2 = school_statistics(bayes["ppc_m2"], des.group_index, x)
    obs_fig = {**obs, "slope_m2": obs["slope"]}
    rep_fig = {**rep_m1, "slope_m2": rep_m2["slope"]}
    fig = plots.school_ppc_figure(
        obs_fig, rep_fig, {**labels, "slope_m2": f"per-{gl} OLS slope, m2 replicates"},
        f"Posterior predictive check per {gl}: m1 (first three columns) and m2, the model "
        f"without a random slope (last column)")
    sec.figure("posterior_predictive_schools", fig,
               caption=f"Posterior predictive per {gl}: can each model reproduce how much the "
                       f"{gl} means, SDs and slopes vary?")
    rows = []
    for name, rep_stats in (("prior m1", rep_prior), ("posterior m1", rep_m1),
                            ("posterior m2", rep_m2)):
        rows += [{"check": name, **r} for r in predictive_pvalues(obs, rep_stats)]
    ppc = pd.DataFrame(rows)
    sec.table("ppc_school_statistics", ppc, digits=3,
              caption=f"SD across {gl}s of each {gl}-level statistic: data, mean over "
                      "replicates, and share of replicates at least as large (near 0 or 1 = "
                      "the model misses it)")
    p = ppc.set_index(["check", "statistic"])["p_replicated_ge_data"]
    words = []
    for m in ("m1", "m2"):
        v = float(p[(f"posterior {m}", "slope")])
        verb = ("reproduces" if 0.1 <= v <= 0.9 else
                "only just reproduces" if 0.025 <= v <= 0.975 else "does not reproduce")
        words.append(f"{m} {verb} how much the per-{gl} OLS slopes vary (share of replicated "
                     f"data sets with a larger spread {v:.2f})")
    sec.text("Posterior predictive check of the slopes: " + "; ".join(words) + ". In m2 every "
             f"{gl} has the same slope, so its replicated per-{gl} slopes vary only through "
             f"sampling noise; a share near 0 means the data's slopes vary more than that.")


def add_comparison_section(sec, spec: WorkflowSpec, reml: dict[str, Any], bayes: dict[str, Any],
                           plots) -> str:
    """PSIS-LOO per student and leave-one-school-out for m1 and m2 (ArviZ), Pareto k, and the LRT,
    with the plain-words verdict of :func:`twolevel.models.tables.lecture_answers.comparison_verdict`. Returns
    the verdict."""
    import warnings

    import arviz as az

    from twolevel.models.tables.lecture_answers import comparison_verdict

    gl = spec.group_label
    resp = bayes["m1"].design.response
    var = {"students": resp, "schools": f"{resp}_by_school"}
    models = ("m1", "m2")
    loo: dict[str, dict[str, Any]] = {m: {} for m in models}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # high Pareto k is reported below, in a table and figure
        for m in models:
            for lev, v in var.items():
                loo[m][lev] = az.loo(bayes[m].datatree, var_name=v, pointwise=True)
    sec.text(
        f"PSIS-LOO estimates how well each model predicts data it has not seen. **Per student**: "
        f"a new student in one of these {gl}s (the log-likelihood of each student given the "
        f"{gl}'s effects). **Per {gl}** (leave-one-{gl}-out): a new {gl}, with the {gl} effects "
        "integrated out. elpd = expected log predictive density (higher is better); the "
        "tables compare m1 with m2 (elpd_diff = elpd(m1) − elpd(m2), dse its SE).")
    diffs = {}
    for lev in var:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = az.compare({m: loo[m][lev] for m in models}, reference="m2", round_to="none")
        diffs[lev] = (float(c.loc["m1", "elpd_diff"]), float(c.loc["m1", "dse"]))
        unit = "student" if lev == "students" else gl
        sec.table(f"loo_compare_{lev}", c.reset_index(names="model"), digits=3,
                  caption=f"az.compare, leave-one-{unit}-out (reference m2)")
    rows, bad_union = [], {}
    for lev in var:
        thr = float(loo["m1"][lev].good_k)
        bad_union[lev] = int(np.sum(np.logical_or.reduce(
            [np.asarray(loo[m][lev].pareto_k) > thr for m in models])))
        for m in models:
            k = np.asarray(loo[m][lev].pareto_k, float)
            rows.append({"model": m, "level": lev, "n": k.size, "elpd_loo": float(loo[m][lev].elpd),
                         "se": float(loo[m][lev].se), "p_loo": float(loo[m][lev].p),
                         "k_threshold": thr, "n_k_above_threshold": int((k > thr).sum()),
                         "n_k_above_0.7": int((k > 0.7).sum()), "n_k_above_1": int((k > 1).sum()),
                         "max_k": float(k.max())})
    sec.table("pareto_k", pd.DataFrame(rows), digits=3,
              caption="PSIS-LOO per model and level, with Pareto k diagnostics (k above the "
                      "threshold: that point's LOO estimate is unreliable)")
    fig = plots.pareto_k_figure(
        {m: {lev: np.asarray(loo[m][lev].pareto_k, float) for lev in var} for m in models},
        {lev: float(loo["m1"][lev].good_k) for lev in var},
        {"students": "student", "schools": gl},
        "Pareto k of PSIS-LOO per student (left) and per school (right)".replace("school", gl))
    sec.figure("pareto_k", fig, caption="Pareto k per student and per school, both models")
    a = reml["anova"]
    i = list(a.names).index("m1")
    sec.pre(str(a), caption="The likelihood-ratio test of section 2, for comparison")
    p_mix = float(a.p_mixture[i])
    verdict = comparison_verdict(
        float(a.chisq[i]), int(a.df[i]), float(a.p[i]), p_mix if np.isfinite(p_mix) else None,
        loo_student=diffs["students"], loo_school=diffs["schools"],
        bad_k=(bad_union["students"], bad_union["schools"]))
    sec.text(f"**Verdict.** {verdict}")
    return verdict
