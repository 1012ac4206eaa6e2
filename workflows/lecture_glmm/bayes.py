"""Step 3, Bayes: m1 and m2 by NUTS (the school effects integrated out by adaptive quadrature and
drawn afterwards where the integrated sampler applies, else sampled non-centred; the family's
default priors and sampler settings), the diagnostic gate, posterior tables with odds ratios, the
posterior beside the Laplace estimates, the saved posteriors, and the report section.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from twolevel.models.tables.glmm_answers import SCALES
from twolevel.workflows.lecture.bayes import add_gate_text, gate_line, keep_sampler_notes
from twolevel.workflows.lecture.compare import _compare_words, bayes_vs_reml
from twolevel.workflows.lecture.spec import Progress, RunSettings
from twolevel.workflows.lecture.views import bayes_view, reml_view
from twolevel.workflows.lecture_glmm.prepare import PreparedGlmmData
from twolevel.workflows.lecture_glmm.spec import GlmmWorkflowSpec


def fit_bayes_glmm(spec: GlmmWorkflowSpec, d: PreparedGlmmData, ml: dict[str, Any],
                   eff: RunSettings, progress: Progress) -> dict[str, Any]:
    """m1 and m2 by NUTS (:func:`twolevel.models.bayes.fit.fit_bayes` with ``family``), each
    with its own seed derived from the run's seed: the integrated sampler (school effects
    integrated out by quadrature, drawn afterwards; the per-school log-likelihood stored while
    sampling) where it applies, else every school effect sampled with at least
    the full sampler's default draws and tuning steps (``SamplerSettings.for_family(family,
    sampler="full")``: 2,000 after 1,000; unless quick). Returns ``m1``, ``m2``
    (:class:`~twolevel.models.bayes.fit.BayesFit`), ``view`` (the m1 posterior, schools in the
    glmer fit's order) and ``warnings`` (sampler messages other than the gate's)."""
    import warnings

    from twolevel.models.bayes.fit import SamplerSettings
    from twolevel.models.bayes.fit import fit_bayes as nuts
    from twolevel.models.bayes.glmm_fit import integrated_sampler_reason

    out: dict[str, Any] = {"warnings": []}
    for m, formula in (("m1", spec.formula_m1), ("m2", spec.formula_m2)):
        t0 = time.perf_counter()
        why = integrated_sampler_reason(formula, d.frame, spec.family, spec.link)
        if why is None:
            sampler, draws, tune = "integrated", eff.draws, eff.tune
        else:  # every school effect sampled: the gate needs the full sampler's longer chains
            sampler, full = "full", SamplerSettings.for_family(spec.family, sampler="full")
            draws, tune = ((eff.draws, eff.tune) if eff.quick
                           else (max(eff.draws, full.draws), max(eff.tune, full.tune)))
            progress.note(f"{m}: {why}; sampling every school effect ({draws} draws)")
        settings = SamplerSettings.for_family(spec.family, sampler=sampler, chains=eff.chains,
                                              draws=draws, tune=tune,
                                              seed=eff.seed_for(f"bayes_{m}"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = nuts(formula, d.frame, family=spec.family, link=spec.link, settings=settings,
                       progress=False, sampler=sampler)
        keep_sampler_notes(caught, out["warnings"])
        out[m] = fit
        progress.note(f"{gate_line(m, fit)} ({time.perf_counter() - t0:.1f} s: "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in fit.timings.items()) + ")")
    out["view"] = bayes_view(out["m1"].datatree, reml_view(ml["m1"]).u.index)
    return out


def posterior_ratio_table(fit, ratio: str) -> pd.DataFrame:
    """The posterior table of the fixed effects with exp(β) summarised from the draws (mean and
    95% interval of the odds ratio)."""
    post = fit.to_frame().reset_index()
    fixed = [str(v) for v in fit.posterior["fixed"].to_numpy()]
    beta = fit.draws("beta", "fixed")
    rows = []
    for k, nm in enumerate(fixed):
        e = np.exp(beta[:, k])
        rows.append({"parameter": f"fixef:{nm}", f"{ratio} mean": float(e.mean()),
                     f"{ratio} 2.5%": float(np.quantile(e, 0.025)),
                     f"{ratio} 97.5%": float(np.quantile(e, 0.975))})
    return post.merge(pd.DataFrame(rows), on="parameter", how="left")


def add_glmm_bayes_section(sec, rep, spec: GlmmWorkflowSpec, ml: dict[str, Any],
                           bayes: dict[str, Any], eff: RunSettings) -> None:
    """Settings, diagnostics and gate, posterior tables, Bayes vs Laplace, saved posteriors."""
    gl, sc = spec.group_label, SCALES[spec.family]
    ratio = "OR" if spec.family == "binomial" else "RR"
    fits = {"m1": bayes["m1"], "m2": bayes["m2"]}
    f1 = fits["m1"]
    s = f1.settings
    integrated = all("integrated" in f.sampler for f in fits.values())
    how = (f"Unlike a normal outcome, the {gl} effects cannot be integrated out in closed form; "
           f"here each {gl}'s effects are integrated out numerically, by adaptive Gauss–Hermite "
           "quadrature centred at their conditional mode (glmer's nAGQ construction, with its "
           "exact gradient), so NUTS samples only the fixed effects and the covariance factor; "
           f"every {gl}'s effects are then drawn for every posterior draw from their exact "
           "conditional posterior. The quadrature error (nodes K against 2K + 1 at a few "
           "posterior draws) is in each summary's sampler line" if integrated else
           f"Unlike a normal outcome, the {gl} effects cannot be integrated out in closed form, "
           f"so every {gl}'s effects are sampled, non-centred (b_j = L z_j, z_j ~ N(0, I))")
    sec.text(
        f"Both models are fitted by NUTS (nutpie, {s.chains} chains × {s.draws} draws after "
        f"{s.tune} tuning steps, target_accept {s.target_accept}, {s.adaptation} mass-matrix "
        f"adaptation). {how}, with an LKJ(2) prior on their correlation. Priors are weakly "
        f"informative on the {sc.link} scale and printed in each summary."
        + (" **--quick run: too few draws to report; the diagnostics gate is expected to fail "
           "on effective sample size.**" if eff.quick else ""))
    fix = ("rerun without `--quick`" if eff.quick else
           "rerun with another `--seed`, or with more draws")
    add_gate_text(sec, fits, gl, fix, "", bayes.get("warnings", []))
    sec.table("bayes_timings", pd.DataFrame(
        [(m, k, v) for m, f in fits.items() for k, v in f.timings.items()],
        columns=["model", "stage", "seconds"]), digits=1,
        caption="Where the time of each NUTS fit went (build: design and priors, and the PyMC "
                "model where the compiled C density does not apply; compile+sample: compiling "
                "(PyMC route only) and sampling; school effects: their draws given each "
                "posterior draw (integrated sampler); quadrature error: K against 2K + 1 nodes; "
                "log-likelihood: per student, and per school by AGQ at every draw unless the "
                "integrated sampler stored it while sampling)")
    for m, f in fits.items():
        sec.pre(f.summary(), caption=f"{m}: {f.formula}")
        sec.table(f"posterior_{m}", posterior_ratio_table(f, ratio), digits=4,
                  caption=f"{m}: posterior mean, SD, 95% interval, ESS and R-hat; "
                          f"{sc.ratio}s exp(β) for the fixed effects")
    cmp_tab = bayes_vs_reml(fits, ml)
    sec.table("bayes_vs_laplace", cmp_tab.rename(columns={"reml": "laplace",
                                                          "reml_inside_95": "laplace_inside_95"}),
              digits=4, caption="Laplace estimate beside the posterior mean, SD and 95% interval")
    sec.text(_compare_words(cmp_tab, label="Laplace"))
    for m, f in fits.items():
        rep.save_file(f"posterior_{m}.nc", f.save)
    sec.text("The posteriors are saved as `posterior_m1.nc` and `posterior_m2.nc` (NetCDF; "
             "`arviz.from_netcdf(...)` or `xarray.open_datatree(...)` reopens them), with the "
             f"per-{gl} log-likelihood (effects integrated out by adaptive Gauss–Hermite "
             f"quadrature at each draw; stored by the sampler when it integrated them out) "
             f"used for leave-one-{gl}-out.")
