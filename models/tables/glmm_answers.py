"""The lecture's questions for a binary (or count) outcome, answered from a random-intercept-and-
slope GLMM fitted by Laplace (glmer) and by NUTS, side by side.

Model (school j, student i, X centred within schools, logit link)::

    logit P(Y_ij = 1) = β0j + β1j X_ij,   β0j = γ00 + u0j,   β1j = γ10 + u1j,   (u0j, u1j) ~ N(0, T)

so β0j is school j's log-odds for a student at the school's mean X, exp(γ10) is the odds ratio of
one unit of X for two students *in the same school* (a conditional, school-specific odds ratio),
and τ00 is the variance of the school log-odds. With a log link (counts) the same sentences speak of
log rates and rate ratios.

Quantities (each its own function; formulas in the docstrings): the odds ratio exp(γ10) with its
Wald interval, the range of school log-odds γ00 ± z√τ00 and of school odds, the median odds ratio
MOR = exp(√(2τ00) Φ⁻¹(0.75)), the latent-scale ICC τ00 / (τ00 + π²/3), the range of the schools'
odds ratios exp(γ10 ± z√τ11) and the intercept–slope correlation. Pure functions: the ML numbers
come in as plain values, the Bayesian ones as posterior draws (flattened over chains).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

__all__ = [
    "GlmmAnswers",
    "GlmmQuantities",
    "SCALES",
    "Scale",
    "glmm_answers",
    "latent_icc",
    "median_odds_ratio",
    "population_average",
    "school_range",
    "school_type_means",
    "wald_interval",
]


@dataclass(frozen=True)
class Scale:
    """Words for a family's link scale: ``link`` ("log-odds"), ``ratio`` ("odds ratio"),
    ``level`` ("odds"), ``mean`` ("probability"), ``median_ratio`` ("median odds ratio") and
    its abbreviation ``median_abbr`` ("MOR")."""

    link: str
    ratio: str
    level: str
    mean: str
    median_ratio: str
    median_abbr: str


SCALES = {
    "binomial": Scale("log-odds", "odds ratio", "odds", "probability", "median odds ratio",
                      "MOR"),
    "poisson": Scale("log rate", "rate ratio", "rate", "expected count", "median rate ratio",
                     "MRR"),
}

_Q75 = float(stats.norm.ppf(0.75))


def median_odds_ratio(tau00):
    """Median odds ratio (Larsen & Merlo 2005):

    .. math:: \\mathrm{MOR} = \\exp\\left(\\sqrt{2\\tau_{00}}\\,\\Phi^{-1}(0.75)\\right)
              \\approx \\exp(0.954\\sqrt{\\tau_{00}})

    the median, over pairs of randomly chosen schools, of the odds ratio between the school with
    the higher and the one with the lower log-odds for two students with the same covariates
    (u0j − u0k ~ N(0, 2τ00), and the median of |N(0, 2τ00)| is √(2τ00) Φ⁻¹(0.75)). With a log
    link the same number is the median rate ratio. Works elementwise on arrays (posterior draws).
    """
    t = np.asarray(tau00, dtype=float)
    if np.any(t < 0):
        raise ValueError("tau00 is a variance and must be ≥ 0")
    return np.exp(np.sqrt(2.0 * t) * _Q75)


def school_range(gamma00, tau00, level: float = 0.95):
    """The central ``level`` range of the school log-odds β0j ~ N(γ00, τ00):
    (γ00 − z√τ00, γ00 + z√τ00) with z = Φ⁻¹((1 + level)/2). Exponentiate for school odds."""
    z = stats.norm.ppf(0.5 + level / 2)
    s = np.sqrt(np.asarray(tau00, dtype=float))
    return np.asarray(gamma00) - z * s, np.asarray(gamma00) + z * s


def wald_interval(estimate, se, level: float = 0.95):
    """Wald interval estimate ± z·SE, z = Φ⁻¹((1 + level)/2)."""
    z = stats.norm.ppf(0.5 + level / 2)
    return estimate - z * se, estimate + z * se


def latent_icc(tau00):
    """Intraclass correlation on the latent (logistic) scale (Snijders & Bosker 2012, §17.3):
    ICC = τ00 / (τ00 + π²/3), π²/3 being the variance of the standard logistic distribution of
    the latent level-1 residual. Elementwise on arrays."""
    t = np.asarray(tau00, dtype=float)
    return t / (t + np.pi**2 / 3.0)


def population_average(eta, variance, family: str = "binomial", nodes: int = 40):
    r"""The mean outcome averaged over schools, for a linear predictor ``eta`` without the school
    effect whose variance is ``variance`` (e.g. τ00 + 2xτ01 + x²τ11 at predictor value x):

    .. math:: E_u\,[g^{-1}(\eta + u)],\ u \sim N(0, v)
              = \frac{1}{\sqrt{\pi}} \int g^{-1}(\eta + \sqrt{2v}\,t)\, e^{-t^2}\,dt

    by Gauss–Hermite quadrature with ``nodes`` nodes for the logit link (the probability of a
    student in a new, randomly chosen school), and exactly exp(η + v/2) for the log link.
    Broadcasts over ``eta`` and ``variance`` (posterior draws)."""
    eta = np.asarray(eta, dtype=float)
    v = np.asarray(variance, dtype=float)
    if np.any(v < 0):
        raise ValueError("variance must be ≥ 0")
    if family == "poisson":
        return np.exp(eta + v / 2.0)
    t, w = np.polynomial.hermite.hermgauss(nodes)
    vals = special.expit(eta[..., None] + np.sqrt(2.0 * v)[..., None] * t)
    return (vals * w).sum(axis=-1) / np.sqrt(np.pi)


SCHOOL_TYPES = ("average school", "low-intercept school (2.5%)", "high-intercept school (97.5%)",
                "new school (average over schools)")


def school_type_means(gamma00, gamma10, tau00, tau11, tau01, x: float,
                      family: str = "binomial", level: float = 0.95) -> dict[str, np.ndarray]:
    """The expected outcome (probability, or expected count) of a student with centred predictor
    value ``x`` in four kinds of school (keys :data:`SCHOOL_TYPES`)::

        average school      g⁻¹(γ00 + γ10 x)                  (u0j = u1j = 0)
        low / high school   g⁻¹(γ00 ∓ z√τ00 + γ10 x)          (intercept at the 2.5% / 97.5%
                                                               of schools, z = 1.96)
        new school          E g⁻¹(γ00 + γ10 x + u0 + u1 x)    (u ~ N(0, T): averaged over
                                                               schools, Var = τ00 + 2xτ01 + x²τ11)

    the last by :func:`population_average`. Broadcasts over the parameters (posterior draws)."""
    g0, g1 = np.asarray(gamma00, dtype=float), np.asarray(gamma10, dtype=float)
    lo, hi = school_range(g0, tau00, level)
    eta = g0 + g1 * x
    var = np.asarray(tau00) + 2.0 * x * np.asarray(tau01) + x * x * np.asarray(tau11)
    def inv(e):
        return _inverse_link(e, family)

    return {
        SCHOOL_TYPES[0]: inv(eta),
        SCHOOL_TYPES[1]: inv(lo + g1 * x),
        SCHOOL_TYPES[2]: inv(hi + g1 * x),
        SCHOOL_TYPES[3]: population_average(eta, np.maximum(var, 0.0), family),
    }


@dataclass(frozen=True)
class GlmmQuantities:
    """The maximum-likelihood numbers the answers use (copied from a glmer fit): ``gamma00``,
    ``gamma10`` with standard errors ``se00``, ``se10``; ``tau00``, ``tau11``, ``tau01``, the
    elements of T."""

    gamma00: float
    gamma10: float
    se00: float
    se10: float
    tau00: float
    tau11: float
    tau01: float


@dataclass(frozen=True)
class GlmmAnswers:
    """Answers to the lecture's questions for a binary or count outcome.

    ``table``: one row per quantity (``question``, ``quantity``, ``symbol``, ``ml``, ``ml_lo``,
    ``ml_hi`` (95% Wald interval where there is one), and with draws ``post_mean``, ``post_sd``,
    ``post_q2.5``, ``post_q97.5``). ``answers``: one paragraph per question, in plain words with
    the numbers. ``prob_corr_negative``: posterior P(ρ01 < 0) (NaN without draws).
    """

    table: pd.DataFrame
    answers: tuple[str, ...]
    prob_corr_negative: float

    def value(self, symbol: str, source: str = "ml") -> float:
        """One number of the table, e.g. ``value("mor")`` or ``value("or10", "post_mean")``."""
        return float(self.table.set_index("symbol").loc[symbol, source])


def _post(d: np.ndarray) -> dict[str, float]:
    d = np.asarray(d, float).ravel()
    return {"post_mean": float(d.mean()), "post_sd": float(d.std(ddof=1)),
            "post_q2.5": float(np.quantile(d, 0.025)),
            "post_q97.5": float(np.quantile(d, 0.975))}


def _inverse_link(eta, family: str):
    return special.expit(eta) if family == "binomial" else np.exp(eta)


def glmm_answers(
    ml: GlmmQuantities,
    draws: Mapping[str, np.ndarray] | None = None,
    family: str = "binomial",
    y_label: str = "the outcome",
    x_label: str = "x",
    x_sd: float | None = None,
) -> GlmmAnswers:
    """Answer the lecture's questions for a logit (``family="binomial"``) or log (``"poisson"``)
    random-intercept-and-slope model.

    Parameters
    ----------
    ml : the Laplace (ML) estimates.
    draws : posterior draws with keys ``gamma00``, ``gamma10``, ``tau00``, ``tau11``, ``tau01``,
        each a 1-D array over all draws (optional).
    family : "binomial" (logit link) or "poisson" (log link): chooses the words of :data:`SCALES`.
    y_label, x_label : words for the outcome (e.g. "being below proficiency") and the predictor.
    x_sd : within-school SD of x; when given, the odds ratio per SD is also reported.
    """
    if family not in SCALES:
        raise ValueError(f"family must be one of {', '.join(SCALES)}, got {family!r}")
    sc = SCALES[family]
    r = ml
    lo00, hi00 = wald_interval(r.gamma00, r.se00)
    lo10, hi10 = wald_interval(r.gamma10, r.se10)
    s_lo, s_hi = school_range(r.gamma00, r.tau00)
    z = float(stats.norm.ppf(0.975))
    sl_lo, sl_hi = r.gamma10 - z * np.sqrt(r.tau11), r.gamma10 + z * np.sqrt(r.tau11)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = float(r.tau01 / np.sqrt(r.tau00 * r.tau11))
    def inv(e):
        return _inverse_link(e, family)

    nan = np.nan
    rows = [
        (1, f"{sc.ratio} of {x_label} (1 unit, same school)", "or10", np.exp(r.gamma10),
         np.exp(lo10), np.exp(hi10)),
        (1, f"{x_label} slope on the {sc.link} scale", "gamma10", r.gamma10, lo10, hi10),
        (2, f"{sc.link} in an average school, {x_label} at the school mean", "gamma00",
         r.gamma00, lo00, hi00),
        (2, f"{sc.level} in an average school", "odds00", np.exp(r.gamma00), np.exp(lo00),
         np.exp(hi00)),
        (2, f"{sc.mean} in an average school", "mean00", inv(r.gamma00), inv(lo00), inv(hi00)),
        (3, f"variance of the school {sc.link}", "tau00", r.tau00, nan, nan),
        (3, f"SD of the school {sc.link}", "sd00", np.sqrt(r.tau00), nan, nan),
        (3, f"school {sc.link}: 2.5% of schools", "school_lo", s_lo, nan, nan),
        (3, f"school {sc.link}: 97.5% of schools", "school_hi", s_hi, nan, nan),
        (3, f"school {sc.level}: 2.5% of schools", "odds_school_lo", np.exp(s_lo), nan, nan),
        (3, f"school {sc.level}: 97.5% of schools", "odds_school_hi", np.exp(s_hi), nan, nan),
        (3, f"school {sc.mean}: 2.5% of schools", "mean_school_lo", inv(s_lo), nan, nan),
        (3, f"school {sc.mean}: 97.5% of schools", "mean_school_hi", inv(s_hi), nan, nan),
        (4, f"{sc.median_ratio} ({sc.median_abbr})", "mor", median_odds_ratio(r.tau00), nan,
         nan),
        (5, f"variance of the school {x_label} slopes", "tau11", r.tau11, nan, nan),
        (5, f"SD of the school {x_label} slopes", "sd11", np.sqrt(r.tau11), nan, nan),
        (5, f"school {sc.ratio} of {x_label}: 2.5% of schools", "or_school_lo", np.exp(sl_lo),
         nan, nan),
        (5, f"school {sc.ratio} of {x_label}: 97.5% of schools", "or_school_hi", np.exp(sl_hi),
         nan, nan),
        (6, "intercept–slope covariance", "tau01", r.tau01, nan, nan),
        (6, "intercept–slope correlation", "rho01", rho, nan, nan),
    ]
    if family == "binomial":
        rows.insert(13, (3, "ICC on the latent logistic scale", "icc_latent",
                         latent_icc(r.tau00), nan, nan))
    else:  # with a log link the "level" (rate) is the expected count itself: keep one
        rows = [row for row in rows if not row[2].startswith("odds")]
    table = pd.DataFrame([(q, n, s, float(v), float(lo), float(hi)) for q, n, s, v, lo, hi
                          in rows],
                         columns=["question", "quantity", "symbol", "ml", "ml_lo", "ml_hi"])
    p_neg = nan
    if draws is not None:
        d = {k: np.asarray(draws[k], float).ravel() for k in
             ("gamma00", "gamma10", "tau00", "tau11", "tau01")}
        dlo, dhi = school_range(d["gamma00"], d["tau00"])
        with np.errstate(invalid="ignore", divide="ignore"):
            drho = d["tau01"] / np.sqrt(d["tau00"] * d["tau11"])
        per = {
            "or10": np.exp(d["gamma10"]), "gamma10": d["gamma10"], "gamma00": d["gamma00"],
            "odds00": np.exp(d["gamma00"]), "mean00": inv(d["gamma00"]), "tau00": d["tau00"],
            "sd00": np.sqrt(d["tau00"]), "school_lo": dlo, "school_hi": dhi,
            "odds_school_lo": np.exp(dlo), "odds_school_hi": np.exp(dhi),
            "mean_school_lo": inv(dlo), "mean_school_hi": inv(dhi),
            "icc_latent": latent_icc(d["tau00"]), "mor": median_odds_ratio(d["tau00"]),
            "tau11": d["tau11"], "sd11": np.sqrt(d["tau11"]),
            "or_school_lo": np.exp(d["gamma10"] - z * np.sqrt(d["tau11"])),
            "or_school_hi": np.exp(d["gamma10"] + z * np.sqrt(d["tau11"])),
            "tau01": d["tau01"], "rho01": drho,
        }
        post = pd.DataFrame([_post(per[s]) for s in table["symbol"]], index=table.index)
        table = pd.concat([table, post], axis=1)
        p_neg = float(np.mean(drho < 0))
    t = table.set_index("symbol")

    def b(sym: str, fmt: str = ".3g") -> str:
        if draws is None:
            return ""
        row = t.loc[sym]
        return (f" Bayes: posterior mean {row['post_mean']:{fmt}}, 95% interval "
                f"[{row['post_q2.5']:{fmt}}, {row['post_q97.5']:{fmt}}].")

    orx = float(np.exp(r.gamma10))
    change = (f"{100 * (1 - orx):.0f}% lower" if orx < 1 else f"{100 * (orx - 1):.0f}% higher")
    a1 = (f"What is the {sc.ratio} of {x_label}? Within a school, a student one unit of "
          f"{x_label} higher has {orx:.3f} times the {sc.level} of {y_label} ({change}; 95% "
          f"Wald interval {np.exp(lo10):.3f} to {np.exp(hi10):.3f}; γ10 = {r.gamma10:.4f}, SE "
          f"{r.se10:.4f}).")
    if x_sd is not None and np.isfinite(x_sd):
        a1 += (f" Per within-school SD of {x_label} ({x_sd:.3g}): "
               f"{np.exp(r.gamma10 * x_sd):.3f}.")
    a1 += (f"{b('or10')} It compares students in the same school (a school-specific, "
           "conditional effect)"
           + ("; averaged over schools the population-average odds ratio is a little closer "
              "to 1." if family == "binomial" else "."))
    binary = family == "binomial"
    a2 = ((f"How likely is {y_label} in an average school?" if binary else
           f"What is the expected {y_label} in an average school?")
          + f" For a student at the school's mean {x_label} in a school with u0j = 0: {sc.link} "
          f"γ00 = {r.gamma00:.4f} (SE {r.se00:.4f}), "
          + (f"{sc.level} {np.exp(r.gamma00):.3f}, " if binary else "")
          + f"{sc.mean} {float(inv(r.gamma00)):.3f}.{b('mean00')}")
    a3 = (f"How much do schools vary in their {sc.link} of {y_label}? τ00 = {r.tau00:.4g} (SD "
          f"{np.sqrt(r.tau00):.3g}). For a student at the school mean {x_label}, 95% of schools "
          f"have {sc.link} between {s_lo:.2f} and {s_hi:.2f}: "
          + (f"{sc.level} from {np.exp(s_lo):.3g} to {np.exp(s_hi):.3g}, " if binary else "")
          + f"{sc.mean} from {float(inv(s_lo)):.3f} to {float(inv(s_hi)):.3f}.{b('tau00')}")
    if binary:
        a3 += (f" On the latent logistic scale the schools hold {100 * latent_icc(r.tau00):.1f}% "
               "of the variance (ICC = τ00 / (τ00 + π²/3)).")
    mor = float(median_odds_ratio(r.tau00))
    one = 1.0 / orx if orx < 1 else orx
    cmp_ = "larger" if mor > one else "smaller"
    a4 = (f"What is the {sc.median_ratio}? {sc.median_abbr} = exp(√(2τ00)·Φ⁻¹(0.75)) = "
          f"{mor:.3f}: take two students with the same {x_label} in two randomly chosen schools; "
          f"the one in the school with the higher {sc.link} has, in the median pair of schools, "
          f"{mor:.2f} times the {sc.level} of {y_label}. That is {cmp_} than the {sc.ratio} of "
          f"one unit of {x_label}"
          + (f" turned above 1 as the {sc.median_abbr} is (1/{orx:.3f} = {one:.2f})" if orx < 1
             else f" ({one:.2f})")
          + f", so which school a student "
          f"attends matters {'more' if mor > one else 'less'} than a one-unit difference in "
          f"{x_label}.{b('mor')}")
    a5 = (f"Does the {x_label} {sc.ratio} vary across schools? τ11 = {r.tau11:.4g} (SD "
          f"{np.sqrt(r.tau11):.3g} on the {sc.link} scale): in 95% of schools the {sc.ratio} of "
          f"one unit of {x_label} lies between {np.exp(sl_lo):.3f} and {np.exp(sl_hi):.3f}."
          f"{b('tau11', '.3g')} Whether this variation is needed at all is the question of the "
          "likelihood-ratio test and LOO (model comparison).")
    steeper = "lower (more negative)" if rho < 0 else "higher (more positive)"
    if (rho < 0) == (r.gamma10 < 0):
        stronger = f"a stronger {x_label} association"
    else:
        stronger = f"a weaker {x_label} association"
    a6 = (f"Is the {x_label} association different in schools with a higher {sc.link} of "
          f"{y_label}? The correlation of u0j and u1j is {rho:+.2f} (τ01 = {r.tau01:.4g}): in "
          f"schools with a higher {sc.link} the {x_label} slope tends to be {steeper}, which with "
          f"γ10 = {r.gamma10:.3f} means {stronger} there.")
    if draws is not None:
        row = t.loc["rho01"]
        a6 += (f" Bayes: posterior mean {row['post_mean']:+.2f}, 95% interval "
               f"[{row['post_q2.5']:+.2f}, {row['post_q97.5']:+.2f}], P(ρ < 0) = {p_neg:.3f}.")
    return GlmmAnswers(table=table, answers=(a1, a2, a3, a4, a5, a6), prob_corr_negative=p_neg)
