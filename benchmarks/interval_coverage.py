"""Coverage of 95% intervals at the lecture's design (a script, not a test).

Design: the 742 schools and 11,091 students of the lecture data (``data/ecls_k_like.csv``: school
sizes 10–25, its group-mean-centred ``famsesc``), held fixed. Generating values (the lecture's
lme4 estimates): γ00 = 95.26, γ10 = 7.38, τ00 = 54.893, τ11 = 4.656, ρ = −0.24, σ² = 233.954, for
``g1rscore ~ 1 + famsesc + (1 + famsesc | schid)``.

Simulation straight to the sufficient statistics (exact, O(J) per data set): with X_j = Z_j =
[1, x_j], A_j = X_jᵀX_j and β_j = γ + u_j, u_j ~ N(0, T),

    c_j = Z_jᵀy_j = A_jβ_j + w_j,     w_j = Z_jᵀe_j ~ N(0, σ²A_j)
    Xᵀy = Σ_j c_j,   yᵀy = Σ_j [β_jᵀA_jβ_j + 2β_jᵀw_j + w_jᵀA_j⁻¹w_j] + σ²·χ²_{n − 2J},

because e_jᵀe_j splits into the projection on span(X_j) (= w_jᵀA_j⁻¹w_j) and an independent
σ²χ²_{n_j − 2} remainder. The REML fit, Satterthwaite, Kenward–Roger and the ML profile all work
on these cross-products.

Intervals for γ00, γ10: β̂ ± t_{df,.975}·SE with Satterthwaite (lmerTest), Kenward–Roger (SE_KR and
KR df), Wald-z (z_{.975}, model SE) and HLM's df (J − S − 1 = 741, model SE); profile-likelihood
intervals (lme4's ML profile) for τ00, τ11 (and γ00, γ10): the true value is inside the 95%
profile interval iff the profile LR statistic at it is ≤ χ²₁(.95) = 3.841 (a monotone ζ, lme4's
spline inversion aside). Monte-Carlo SE = √(p(1 − p)/N).

Usage::

    nice -n 10 .venv/bin/python benchmarks/interval_coverage.py --nsim 1000 --seed 20251125 \\
        --out outputs/coverage.csv
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twolevel.data.loaders import load_lecture  # noqa: E402
from twolevel.models.design import GroupCrossprods, group_crossprods, make_design  # noqa: E402
from twolevel.models.inference.hlm import hlm_ddf  # noqa: E402
from twolevel.models.inference.kenward_roger import kenward_roger_fit  # noqa: E402
from twolevel.models.inference.profile import ml_refit, profile_lrt  # noqa: E402
from twolevel.models.lmm.lmer import fit_design  # noqa: E402
from twolevel.models.lmm.satterthwaite import ddf_satterthwaite  # noqa: E402

FORMULA = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"
TRUE = {"gamma00": 95.26, "gamma10": 7.38, "tau00": 54.893, "tau11": 4.656, "rho": -0.24,
        "sigma2": 233.954}
CHI2_95 = float(stats.chi2.ppf(0.95, 1))


def simulate_crossprods(
    A: np.ndarray, Lc: np.ndarray, n: int, rng: np.random.Generator
) -> GroupCrossprods:
    """One data set's cross-products (module docstring); A (J, 2, 2), Lc its Cholesky factors."""
    J = A.shape[0]
    t00, t11, rho, s2 = TRUE["tau00"], TRUE["tau11"], TRUE["rho"], TRUE["sigma2"]
    G = np.array([[t00, rho * np.sqrt(t00 * t11)], [rho * np.sqrt(t00 * t11), t11]])
    u = rng.standard_normal((J, 2)) @ np.linalg.cholesky(G).T
    beta = np.array([TRUE["gamma00"], TRUE["gamma10"]]) + u
    w = np.sqrt(s2) * np.einsum("jab,jb->ja", Lc, rng.standard_normal((J, 2)))
    Ab = np.einsum("jab,jb->ja", A, beta)
    c = Ab + w
    proj = np.einsum("ja,ja->j", w, np.linalg.solve(A, w[:, :, None])[:, :, 0])
    yty = float(np.sum(np.einsum("ja,ja->j", beta, Ab) + 2 * np.einsum("ja,ja->j", beta, w) + proj)
                + s2 * rng.chisquare(n - 2 * J))
    return GroupCrossprods(A=A, B=A, c=c, XtX=A.sum(axis=0), Xty=c.sum(axis=0), yty=yty, n=n, p=2)


def one_replicate(design, A, Lc, rng, do_profile: bool) -> dict[str, float]:
    """Intervals of one simulated data set → {method/parameter: 1 if covered else 0}."""
    cp = simulate_crossprods(A, Lc, design.n, rng)
    fit = fit_design(design, REML=True, crossprods=cp)
    beta = fit.beta
    truth = np.array([TRUE["gamma00"], TRUE["gamma10"]])
    out: dict[str, float] = {}
    se_m = fit.se().to_numpy()
    se_s, df_s = ddf_satterthwaite(fit, np.eye(2))
    kr = kenward_roger_fit(fit)
    df_h = hlm_ddf(design)
    for k, g in enumerate(("gamma00", "gamma10")):
        for meth, se, q in (
            ("Satterthwaite", se_s[k], stats.t.ppf(0.975, df_s[k])),
            ("Kenward-Roger", kr.se[k], stats.t.ppf(0.975, kr.df[k])),
            ("Wald-z", se_m[k], stats.norm.ppf(0.975)),
            ("HLM df", se_m[k], stats.t.ppf(0.975, df_h[k])),
        ):
            out[f"{meth}|{g}"] = float(abs(beta[k] - truth[k]) <= q * se)
    if do_profile:
        refit = ml_refit(design, cp, theta_start=fit.theta, mode="lme4")
        targets = {
            "tau00": ("sd_(Intercept)|schid", np.sqrt(TRUE["tau00"])),
            "tau11": ("sd_famsesc|schid", np.sqrt(TRUE["tau11"])),
            "gamma00": ("(Intercept)", TRUE["gamma00"]),
            "gamma10": ("famsesc", TRUE["gamma10"]),
        }
        for key, (name, value) in targets.items():
            out[f"Profile (ML)|{key}"] = float(
                profile_lrt(design, cp, refit, name, value) <= CHI2_95
            )
    out["_kr_df10"] = float(kr.df[1])
    out["_satt_df10"] = float(df_s[1])
    return out


def coverage_table(rows: list[dict[str, float]]) -> pd.DataFrame:
    """Coverage, Monte-Carlo SE and a 95% MC interval per method × parameter."""
    frame = pd.DataFrame(rows)
    recs = []
    for col in frame.columns:
        if col.startswith("_"):
            continue
        meth, par = col.split("|")
        x = frame[col].dropna().to_numpy()
        p = float(x.mean())
        se = float(np.sqrt(p * (1 - p) / len(x)))
        recs.append({"method": meth, "parameter": par, "n": len(x), "coverage": p, "mc_se": se,
                     "within_mc_of_95": abs(p - 0.95) <= 1.96 * np.sqrt(0.95 * 0.05 / len(x))})
    return pd.DataFrame(recs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=20251125)
    ap.add_argument("--no-profile", action="store_true", help="skip the profile intervals")
    ap.add_argument("--out", default="outputs/coverage.csv", help="per-replicate results CSV")
    args = ap.parse_args(argv)
    cmd = "nice -n 10 .venv/bin/python benchmarks/interval_coverage.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    design = make_design(FORMULA, load_lecture())
    cp0 = group_crossprods(design)
    A = cp0.A
    Lc = np.linalg.cholesky(A)
    print(f"design: {design.n_groups} schools, {design.n} students, n_j "
          f"{design.group_sizes.min()}–{design.group_sizes.max()}; {args.nsim} data sets; "
          f"seed {args.seed}", flush=True)
    rng = np.random.default_rng(args.seed)
    rows = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(args.nsim):
            rows.append(one_replicate(design, A, Lc, rng, not args.no_profile))
            if (i + 1) % max(1, args.nsim // 20) == 0:
                el = time.perf_counter() - t0
                print(f"  {i + 1}/{args.nsim} data sets, {el:.0f} s "
                      f"({el / (i + 1):.3f} s each)", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    os.replace(tmp, out)
    tab = coverage_table(rows)
    pd.set_option("display.width", 120)
    print(f"\nCoverage of nominal 95% intervals, {args.nsim} data sets "
          f"({elapsed:.0f} s, {elapsed / args.nsim:.3f} s per data set)")
    print(tab.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    kdf = np.array([r["_kr_df10"] for r in rows])
    sdf = np.array([r["_satt_df10"] for r in rows])
    print(f"\nmean df for gamma10: Satterthwaite {sdf.mean():.1f}, Kenward-Roger {kdf.mean():.1f}, "
          f"HLM {design.n_groups - 1}")
    print(f"per-replicate results: {out}")
    print(f"command: {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
