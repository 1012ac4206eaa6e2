"""Step 3, Bayes: m1 and m2 by NUTS with the default priors, the diagnostic gate, prior and
posterior predictive checks (per student and per school), the saved posteriors, and the report
section.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from twolevel.workflows.lecture.compare import _compare_words, bayes_vs_reml
from twolevel.workflows.lecture.prepare import PreparedData
from twolevel.workflows.lecture.spec import Progress, RunSettings, WorkflowSpec, _labels
from twolevel.workflows.lecture.views import bayes_view, reml_view


def fit_bayes(spec: WorkflowSpec, d: PreparedData, reml: dict[str, Any], eff: RunSettings,
              progress: Progress) -> dict[str, Any]:
    """m1 and m2 by NUTS (:func:`twolevel.models.bayes.fit.fit_bayes`), with prior and posterior
    predictive draws; each random step has its own seed derived from the run's seed.

    Returns ``m1``, ``m2`` (:class:`twolevel.models.bayes.fit.BayesFit`), ``prior_m1``/``prior_m2``
    and ``ppc_m1``/``ppc_m2`` (replicated scores, draws × students, in the design's row order),
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
        keep_sampler_notes(caught, out["warnings"])
        out[m] = fit
        progress.note(f"{gate_line(m, fit)} ({time.perf_counter() - t0:.1f} s, of which "
                      f"sampling {fit.timings.get('compile+sample', float('nan')):.1f} s)")
    out["view"] = bayes_view(out["m1"].datatree, reml_view(reml["m1"]).u.index)
    return out


def add_bayes_section(sec, rep, spec: WorkflowSpec, d: PreparedData, reml: dict[str, Any],
                      bayes: dict[str, Any], eff: RunSettings, plots) -> None:
    """Summaries, diagnostics, posterior tables, Bayes vs REML, posterior files, and the prior and
    posterior predictive checks per student and per school."""
    from twolevel.workflows.school_stats import (
        SCHOOL_STATISTICS,
        predictive_pvalues,
        school_statistics,
    )

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
    fix = ("rerun without `--quick`" if eff.quick else
           "rerun with more tuning steps and draws (`RunSettings`) or another `--seed`")
    add_gate_text(sec, fits, gl, fix, " (also in sections 5-8)", bayes.get("warnings", []))
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


def add_gate_text(sec, fits: dict, gl: str, fix: str, where: str, notes: list[str]) -> None:
    """The diagnostics table of the fits, the gate's verdict in words (``fix`` says what to do
    when it failed; ``where`` names the report's other sections with posterior numbers), and
    the sampler's other messages (``notes``). Shared by the normal and the binary workflow."""
    from twolevel.models.bayes.fit import GATE

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
            sec.text(f"**The diagnostics gate failed for {m}**: " + "; ".join(probs)
                     + f". Its posterior numbers in this report{where} are "
                       f"provisional: {fix} before reporting them.")
    else:
        sec.text("Both fits pass the diagnostics gate: no divergent transitions, every R-hat "
                 f"≤ {GATE['max_rhat']}, every bulk and tail ESS ≥ {GATE['min_ess']:.0f} and "
                 f"BFMI ≥ {GATE['min_bfmi']} in every chain, so the posterior summaries can be "
                 "reported.")
    for w in notes:
        sec.text(f"Sampler note: {w}")


def keep_sampler_notes(caught, notes: list[str]) -> None:
    """Add to ``notes`` the sampler's RuntimeWarnings among the ``caught`` warnings, once each,
    except the gate's own ("NUTS fit of ..."), which the diagnostics table reports."""
    for w in caught:
        msg = str(w.message)
        if issubclass(w.category, RuntimeWarning) and not msg.startswith("NUTS fit of") \
                and msg not in notes:
            notes.append(msg)


def gate_line(m: str, fit) -> str:
    """One progress line of a fit's diagnostics: divergences, R-hat, ESS, BFMI and the gate."""
    dg = fit.diagnostics
    return (f"{m}: {dg.divergences} divergences, max R-hat {dg.max_rhat:.3f}, min ESS bulk "
            f"{dg.min_ess_bulk:.0f} / tail {dg.min_ess_tail:.0f}, min BFMI "
            f"{min(dg.bfmi) if dg.bfmi else float('nan'):.2f}: gate "
            f"{'passed' if dg.passed else 'FAILED'}")
