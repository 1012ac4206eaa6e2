"""The lecture's small-group questions answered from a random-intercept-and-slope fit, REML and
Bayes side by side (Lecture 5, "Small group discussion").

Model (school j, student i, X group-mean centred so β0j is school j's mean score)::

    Y_ij = β0j + β1j X_ij + r_ij,   β0j = γ00 + u0j,   β1j = γ10 + u1j,   (u0j, u1j) ~ N(0, T)

Questions and the quantity that answers each:

1. grand-mean score: γ00;  2. variance of school means: τ00;  3. grand-mean slope: γ10;
4. variance of school slopes: τ11;  5. expected slope one SD below / above the mean slope:
γ10 − √τ11 and γ10 + √τ11;  6. is the slope weaker where mean achievement is higher? the sign
of τ01, i.e. of the correlation ρ01 = τ01 / √(τ00 τ11) (the ``Corr`` column of lme4's random-effects
table); Bayesian: the posterior probability P(ρ01 < 0).

Pure functions: the REML numbers come in as plain values (from ``LmerFit.fixef()`` and
``VarCorr()``), the Bayesian ones as posterior draws (flattened over chains).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "LectureAnswers",
    "REMLQuantities",
    "comparison_verdict",
    "lecture_answers",
    "slope_one_sd",
]


def slope_one_sd(gamma10: float | np.ndarray, tau11: float | np.ndarray, k: float = 1.0):
    """Expected slope of a school ``k`` SDs from the mean slope: (γ10 − k√τ11, γ10 + k√τ11)."""
    s = np.sqrt(tau11)
    return gamma10 - k * s, gamma10 + k * s


def correlation(tau00, tau11, tau01):
    """ρ01 = τ01 / √(τ00 τ11) (NaN when a variance is 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(tau01) / np.sqrt(np.asarray(tau00) * np.asarray(tau11))


@dataclass(frozen=True)
class REMLQuantities:
    """The REML numbers the answers use (copied from the fit).

    ``gamma00``/``gamma10`` fixed effects with standard errors ``se00``/``se10``; ``tau00``,
    ``tau11``, ``tau01`` the elements of T; ``sigma2`` the residual variance.
    """

    gamma00: float
    gamma10: float
    se00: float
    se10: float
    tau00: float
    tau11: float
    tau01: float
    sigma2: float


@dataclass(frozen=True)
class LectureAnswers:
    """Answers to the lecture's questions.

    ``table``: one row per quantity with columns ``question`` (1–6), ``quantity``, ``symbol``,
    ``reml``, ``reml_se`` (fixed effects only), ``post_mean``, ``post_sd``, ``post_q2.5``,
    ``post_q97.5``. ``answers``: one sentence per question, with the numbers.
    ``prob_corr_negative``: the posterior probability that ρ01 < 0 (NaN without draws).
    """

    table: pd.DataFrame
    answers: tuple[str, ...]
    prob_corr_negative: float
    reml: REMLQuantities
    labels: dict[str, str] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The table of quantities (REML and posterior side by side)."""
        return self.table

    def value(self, symbol: str, source: str = "reml") -> float:
        """One number of the table, e.g. ``value("tau00")`` or ``value("rho01", "post_mean")``."""
        return float(self.table.set_index("symbol").loc[symbol, source])

    def summary(self) -> str:
        """The questions and their answers as text."""
        return "\n".join(f"{k + 1}. {a}" for k, a in enumerate(self.answers))


QUESTIONS = (
    "What's the grand-mean {y} (γ00)?",
    "What's the variance of the school mean {y}s (τ00)?",
    "What's the grand-mean {x}–{y} slope (γ10)?",
    "What's the variance of the school {x}–{y} slopes (τ11)?",
    "What's the expected slope for a school 1 SD below / above the grand-mean slope?",
    "Is the {x}–{y} relationship stronger or weaker in schools with higher mean {y}?",
)


def _post(d: np.ndarray) -> dict[str, float]:
    d = np.asarray(d, float).ravel()
    return {
        "post_mean": float(d.mean()),
        "post_sd": float(d.std(ddof=1)),
        "post_q2.5": float(np.quantile(d, 0.025)),
        "post_q97.5": float(np.quantile(d, 0.975)),
    }


def lecture_answers(
    reml: REMLQuantities,
    draws: Mapping[str, np.ndarray] | None = None,
    y_label: str = "score",
    x_label: str = "x",
) -> LectureAnswers:
    """Answer the six questions.

    Parameters
    ----------
    reml : the REML estimates (:class:`REMLQuantities`).
    draws : posterior draws with keys ``gamma00``, ``gamma10``, ``tau00``, ``tau11``, ``tau01``
        (variances and covariance of the school effects), each a 1-D array over all draws.
    y_label, x_label : words for the outcome and the predictor (e.g. "reading score", "SES").
    """
    r = reml
    lo, hi = slope_one_sd(r.gamma10, r.tau11)
    rho = float(correlation(r.tau00, r.tau11, r.tau01))
    rows = [
        (1, "grand-mean score", "gamma00", r.gamma00, r.se00),
        (2, "variance of school means", "tau00", r.tau00, np.nan),
        (2, "SD of school means", "sd00", np.sqrt(r.tau00), np.nan),
        (3, "grand-mean slope", "gamma10", r.gamma10, r.se10),
        (4, "variance of school slopes", "tau11", r.tau11, np.nan),
        (4, "SD of school slopes", "sd11", np.sqrt(r.tau11), np.nan),
        (5, "slope 1 SD below the mean slope", "slope_minus_1sd", lo, np.nan),
        (5, "slope 1 SD above the mean slope", "slope_plus_1sd", hi, np.nan),
        (6, "intercept–slope covariance", "tau01", r.tau01, np.nan),
        (6, "intercept–slope correlation", "rho01", rho, np.nan),
    ]
    table = pd.DataFrame(rows, columns=["question", "quantity", "symbol", "reml", "reml_se"])
    p_neg = np.nan
    if draws is not None:
        d = {k: np.asarray(draws[k], float).ravel() for k in
             ("gamma00", "gamma10", "tau00", "tau11", "tau01")}
        dl, dh = slope_one_sd(d["gamma10"], d["tau11"])
        drho = correlation(d["tau00"], d["tau11"], d["tau01"])
        per = {
            "gamma00": d["gamma00"], "tau00": d["tau00"], "sd00": np.sqrt(d["tau00"]),
            "gamma10": d["gamma10"], "tau11": d["tau11"], "sd11": np.sqrt(d["tau11"]),
            "slope_minus_1sd": dl, "slope_plus_1sd": dh, "tau01": d["tau01"], "rho01": drho,
        }
        post = pd.DataFrame([_post(per[s]) for s in table["symbol"]])
        table = pd.concat([table, post], axis=1)
        p_neg = float(np.mean(drho < 0))

    def b(sym: str) -> str:
        if draws is None:
            return ""
        row = table.set_index("symbol").loc[sym]
        return (f"; Bayes: posterior mean {row['post_mean']:.4g}, 95% interval "
                f"[{row['post_q2.5']:.4g}, {row['post_q97.5']:.4g}]")

    def b5() -> str:
        if draws is None:
            return ""
        t = table.set_index("symbol")
        lo_, hi_ = t.loc["slope_minus_1sd"], t.loc["slope_plus_1sd"]
        return (f"; Bayes: posterior means {lo_['post_mean']:.4g} (95% interval "
                f"[{lo_['post_q2.5']:.4g}, {lo_['post_q97.5']:.4g}]) and {hi_['post_mean']:.4g} "
                f"([{hi_['post_q2.5']:.4g}, {hi_['post_q97.5']:.4g}])")

    direction = "weaker (flatter)" if rho < 0 else "stronger (steeper)"
    opposite = "stronger" if rho < 0 else "weaker"
    a6 = (
        f"{QUESTIONS[5].format(x=x_label, y=y_label)} {direction.capitalize()} in schools with "
        f"higher mean {y_label}, and {opposite} in schools with lower mean {y_label}: the "
        f"correlation of u0j and u1j is {rho:+.2f} (the 'Corr' column of the random-effects table; "
        f"covariance τ01 = {r.tau01:.4g}), {'negative' if rho < 0 else 'positive'}"
    )
    if draws is not None:
        row = table.set_index("symbol").loc["rho01"]
        a6 += (
            f". Bayes: posterior mean correlation {row['post_mean']:+.2f}, 95% interval "
            f"[{row['post_q2.5']:+.2f}, {row['post_q97.5']:+.2f}], posterior probability that it "
            f"is negative {p_neg:.3f}"
        )
    a6 += (f". Because {x_label} is centred within schools, the intercept of a school is its mean "
           f"{y_label}, so this correlation is between school mean {y_label} and the school's "
           "slope.")
    q = [s.format(x=x_label, y=y_label) for s in QUESTIONS]
    answers = (
        f"{q[0]} γ00 = {r.gamma00:.4f} (SE {r.se00:.4f}){b('gamma00')}.",
        f"{q[1]} τ00 = {r.tau00:.4g} (SD {np.sqrt(r.tau00):.4g}){b('tau00')}.",
        f"{q[2]} γ10 = {r.gamma10:.4f} (SE {r.se10:.4f}){b('gamma10')}.",
        f"{q[3]} τ11 = {r.tau11:.4g} (SD {np.sqrt(r.tau11):.4g}){b('tau11')}.",
        f"{q[4]} γ10 − √τ11 = {lo:.4g} and γ10 + √τ11 = {hi:.4g}{b5()}.",
        a6,
    )
    return LectureAnswers(
        table=table, answers=answers, prob_corr_negative=p_neg, reml=reml,
        labels={"y": y_label, "x": x_label},
    )


def comparison_verdict(
    chisq: float,
    df: int,
    p_naive: float,
    p_mixture: float | None,
    loo_student: tuple[float, float] | None = None,
    loo_school: tuple[float, float] | None = None,
    bad_k: tuple[int, int] | None = None,
    alpha: float = 0.05,
    lrt_label: str = "ML refits",
) -> str:
    """Plain words on whether the random slope is needed (m1 vs m2), from the LRT and from LOO.

    Parameters
    ----------
    chisq, df, p_naive, p_mixture : the LRT of m2 (random intercept) against m1 (random slope):
        χ², its df, the naive χ²_df p-value and the boundary-corrected mixture p (None if none).
    loo_student, loo_school : (elpd(m1) − elpd(m2), SE of the difference) for PSIS-LOO per
        student and leave-one-school-out; positive favours the random slope.
    bad_k : (students, schools) with Pareto k above the reliability threshold (in either model).
    alpha : significance level for the LRT sentence.
    lrt_label : how the LRT's fits were obtained ("ML refits" of REML fits; "Laplace" for glmer).

    Rules: the LRT "supports" the random slope when p < alpha (the mixture p when available); a LOO
    difference "favours" a model when it is more than 2 SE from 0, otherwise the models "predict
    about equally well".
    """
    use_mix = p_mixture is not None and bool(np.isfinite(p_mixture))
    p = float(p_mixture) if use_mix else float(p_naive)
    which = "boundary-corrected" if use_mix else "naive"
    parts = [
        f"Likelihood-ratio test ({lrt_label}): χ² = {chisq:.2f} on {df} df, naive p = {p_naive:.3g}"
        + (f", boundary-corrected p = {p:.3g}" if use_mix else "")
        + ". "
        + (f"At the {alpha:g} level the {which} test says the slopes vary across schools "
           "(τ11 > 0): keep the random slope."
           if p < alpha else
           f"At the {alpha:g} level the {which} test does not show that the slopes vary across "
           "schools.")
    ]

    def loo_words(name: str, v: tuple[float, float]) -> str:
        diff, se = v
        if abs(diff) > 2 * se:
            better = "the random-slope model m1" if diff > 0 else "the random-intercept model m2"
            return (f"{name}: elpd difference m1 − m2 = {diff:.1f} (SE {se:.1f}), more than 2 SE: "
                    f"{better} predicts better.")
        return (f"{name}: elpd difference m1 − m2 = {diff:.1f} (SE {se:.1f}), within 2 SE: the two "
                "models predict about equally well, so the random slope adds little for "
                "prediction.")

    if loo_student is not None:
        parts.append(loo_words("PSIS-LOO for new students in these schools", loo_student))
    if loo_school is not None:
        parts.append(loo_words("Leave-one-school-out (school effects integrated out) for new "
                               "schools", loo_school))
    if bad_k is not None:
        s, j = bad_k
        if s or j:
            parts.append(f"Pareto k: {s} student(s) and {j} school(s) above the reliability "
                         "threshold, so those LOO estimates are approximate.")
        else:
            parts.append("Pareto k: every student and school below the reliability threshold, so "
                         "the LOO estimates are reliable.")
    return " ".join(parts)
