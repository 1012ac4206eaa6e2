"""Inference options of ``twolevel fit``: denominator df, confidence intervals, HLM's statistics.

``--ddf kenward-roger|satterthwaite|hlm``
    The t-tests of ``summary()`` (lmerTest's ``ddf=``; ``hlm`` is HLM's J − S − 1 rule). With
    ``--json`` and Kenward-Roger, the keys ``kr_se`` and ``kr_df`` are added.
``--confint profile|wald|boot``
    lme4's ``confint(method = ...)`` (``--level``, and ``--nsim`` / ``--seed`` for the bootstrap);
    JSON key ``confint``: {name: [lo, hi]} (null where lme4 prints NA).
``--hlm``
    HLM's reliabilities, χ² tests of τ_qq = 0, plausible-value ranges, robust SEs and the
    lecture's level-2 residual summary; JSON keys ``reliability``, ``chi2_tau``
    ({name: {chisq, df, p}}), ``plausible_range``, ``robust_se``, ``hlm_df``.
``--schools CSV``
    The per-school table (n_j, OLS, BLUPs, conditional SDs, EB, reliability, weights).

Everything is computed before anything is printed or written, so an error (e.g. Kenward-Roger on
an ML fit) leaves no partial output.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

import pandas as pd

from twolevel.data.errors import TwolevelError

# the inference modules (and scipy.stats) are imported where a flag asks for them: a plain
# `twolevel fit` does not pay for them (benchmarks/startup.py)

__all__ = ["DDF_CHOICES", "CONFINT_CHOICES", "InferenceExtras", "add_arguments", "compute"]

DDF_CHOICES = {"satterthwaite": "Satterthwaite", "kenward-roger": "Kenward-Roger", "hlm": "HLM"}
CONFINT_CHOICES = {"profile": "profile", "wald": "Wald", "boot": "boot"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--ddf``, ``--confint``, ``--level``, ``--nsim``, ``--seed``, ``--hlm``,
    ``--schools``."""
    p.add_argument("--ddf", choices=tuple(DDF_CHOICES), default="satterthwaite",
                   help="denominator df of the t-tests (default satterthwaite; hlm = J - S - 1)")
    p.add_argument("--confint", choices=tuple(CONFINT_CHOICES),
                   help="confidence intervals: profile likelihood (lme4's default), wald, boot")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--nsim", type=int, default=500, help="bootstrap simulations (default 500)")
    p.add_argument("--seed", type=int, default=1, help="bootstrap seed (default 1)")
    p.add_argument("--hlm", action="store_true",
                   help="HLM's reliabilities, chi-square tests of tau = 0, plausible ranges, "
                   "robust SEs and the level-2 residual summary")
    p.add_argument("--schools", metavar="CSV",
                   help="write the per-school table (OLS, BLUP, condSD, reliability) to CSV")


@dataclass
class InferenceExtras:
    """What the options produced: the ddf name for ``summary()``, text blocks to print after it,
    keys to merge into the JSON object, and a school table to write."""

    ddf: str
    text: list[str] = field(default_factory=list)
    json: dict = field(default_factory=dict)
    schools: pd.DataFrame | None = None

    def write_files(self, args: argparse.Namespace) -> None:
        """Write ``--schools`` (atomically)."""
        if self.schools is not None and args.schools:
            from twolevel.models.inference.residuals import write_csv_atomic

            write_csv_atomic(self.schools, args.schools)


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def compute(fit, args: argparse.Namespace) -> InferenceExtras:
    """Compute everything the options ask for (raises :class:`TwolevelError` on user errors)."""
    ddf = DDF_CHOICES[getattr(args, "ddf", "satterthwaite") or "satterthwaite"]
    ex = InferenceExtras(ddf=ddf)
    if ddf == "Kenward-Roger":
        from twolevel.models.inference.kenward_roger import kenward_roger_fit

        kr = kenward_roger_fit(fit)
        ex.json["kr_se"] = {n: float(v) for n, v in zip(kr.names, kr.se, strict=True)}
        ex.json["kr_df"] = {n: float(v) for n, v in zip(kr.names, kr.df, strict=True)}
    if getattr(args, "confint", None):
        method = CONFINT_CHOICES[args.confint]
        if method == "boot" and args.nsim < 2:
            raise TwolevelError(
                f"--nsim must be at least 2 for bootstrap intervals, got {args.nsim}"
            )
        from twolevel.models.inference.intervals import confint

        ci = confint(fit, method, level=args.level, nsim=args.nsim, seed=args.seed,
                     progress=not args.json)
        ex.json["confint"] = {str(n): [_num(r.iloc[0]), _num(r.iloc[1])] for n, r in ci.iterrows()}
        title = {"profile": "profile likelihood (ML)", "Wald": "Wald",
                 "boot": f"parametric bootstrap, {args.nsim} simulations, seed {args.seed}"}
        ex.text.append(f"Confidence intervals ({title[method]}):\n"
                       + ci.to_string(float_format=lambda v: f"{v:.4f}", na_rep="NA"))
    if getattr(args, "hlm", False):
        from twolevel.models.inference.hlm import hlm_statistics_fit

        s = hlm_statistics_fit(fit)
        ex.json["reliability"] = {n: float(v) for n, v in zip(s.coefficients, s.reliability,
                                                              strict=True)}
        ex.json["chi2_tau"] = {n: {"chisq": c, "df": d, "p": p} for n, (c, d, p) in s.chi2.items()}
        ex.json["plausible_range"] = {n: [lo, hi] for n, (lo, hi) in s.plausible.items()}
        ex.json["robust_se"] = {n: float(v) for n, v in zip(s.x_names, s.robust_se, strict=True)}
        ex.json["hlm_df"] = {n: float(v) for n, v in zip(s.x_names, s.hlm_df, strict=True)}
        ex.text.append("HLM statistics:\n" + s.summary())
        from twolevel.models.inference.residuals import (
            format_residual_summary,
            residual_summary_fit,
        )

        ex.text.append("Level-2 residuals (BLUPs):\n"
                       + format_residual_summary(residual_summary_fit(fit)))
    if getattr(args, "schools", None):
        from twolevel.models.inference.residuals import school_table_fit

        ex.schools = school_table_fit(fit)
    return ex
