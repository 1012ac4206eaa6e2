"""Per-school empirical estimates on the link scale for binary and count outcomes: the no-pooling
end of the shrinkage plot (empirical logits or log rates → conditional modes → posterior means).

For a normal outcome each school's OLS fit is the no-pooling estimate. For a binary outcome the
per-school maximum-likelihood logit log(s_j / (n_j − s_j)) is −∞ in a school where no student has
the outcome (s_j = 0) and +∞ where every student has it (s_j = n_j): the school's outcomes are
completely separated, the likelihood keeps increasing as the logit runs off to infinity, and no
finite estimate exists (a per-school logistic regression with a slope fails in those schools and
also wherever the predictor alone separates the 0s from the 1s). The *empirical logit* adds ½ to
both counts (Cox 1970; the Haldane–Anscombe correction), which gives every school a finite
estimate with an approximate standard error. For counts the same problem is a school whose
counts are all 0 (ML log rate −∞) and the empirical log rate adds ½ to the total.

Pure functions on arrays; no plotting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "EmpiricalTable",
    "empirical_log_rate",
    "empirical_logit",
    "school_empirical_table",
]

FAMILIES = ("binomial", "poisson")


def empirical_logit(successes, trials, correction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Empirical logit and its approximate standard error, per school.

    .. math::

        \\hat\\ell_j = \\log\\frac{s_j + c}{n_j - s_j + c},\\qquad
        \\mathrm{SE}(\\hat\\ell_j) = \\sqrt{\\frac{1}{s_j + c} + \\frac{1}{n_j - s_j + c}}

    with s_j successes in n_j trials and c = ``correction`` (½: finite for s_j = 0 and s_j =
    n_j, where the ML logit log(s_j / (n_j − s_j)) is ∓∞). The SE is the delta-method SE of a
    logit, 1/√(n p (1 − p)), with the corrected counts.

    Returns ``(estimate, se)`` as float arrays.
    """
    s = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    _check_counts(s, n, correction)
    if np.any(s > n):
        raise ValueError("successes exceed trials in some school")
    a, b = s + correction, n - s + correction
    return np.log(a / b), np.sqrt(1.0 / a + 1.0 / b)


def empirical_log_rate(counts, exposure, correction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Empirical log rate and its approximate standard error, per school.

    .. math::

        \\hat\\ell_j = \\log\\frac{y_j + c}{E_j},\\qquad
        \\mathrm{SE}(\\hat\\ell_j) = \\frac{1}{\\sqrt{y_j + c}}

    with y_j the total count over E_j units of exposure (students) and c = ``correction`` (½:
    finite for y_j = 0, where the ML log rate log(y_j / E_j) is −∞). The SE is the delta-method
    SE of a log Poisson mean with the corrected count.

    Returns ``(estimate, se)`` as float arrays.
    """
    y = np.asarray(counts, dtype=float)
    e = np.asarray(exposure, dtype=float)
    _check_counts(y, e, correction)
    return np.log((y + correction) / e), 1.0 / np.sqrt(y + correction)


def _check_counts(s: np.ndarray, n: np.ndarray, correction: float) -> None:
    if s.shape != n.shape:
        raise ValueError(f"counts and trials/exposure differ in shape: {s.shape} vs {n.shape}")
    if not correction > 0:
        raise ValueError(f"correction must be > 0 (½ is usual), got {correction}")
    if np.any(s < 0) or np.any(n <= 0):
        raise ValueError("counts must be ≥ 0 and trials/exposure > 0 in every school")


@dataclass(frozen=True)
class EmpiricalTable:
    """Per-school empirical estimates on the link scale (:func:`school_empirical_table`).

    Fields
    ------
    table : one row per school (sorted by school): ``<group>``, ``n_j`` students, ``y_sum``
        (students with the outcome, or the total count), ``p_hat`` (proportion, or mean count),
        ``ml`` (the per-school ML logit or log rate; ±inf where the school is separated),
        ``empirical`` and ``se`` (:func:`empirical_logit` / :func:`empirical_log_rate`) and
        ``separated`` (no finite ML estimate).
    family : "binomial" or "poisson".  correction : the c added.
    n_all_zero / n_all_one : schools where every outcome is 0 / (binomial) every outcome is 1.
    """

    table: pd.DataFrame
    family: str
    correction: float
    n_all_zero: int
    n_all_one: int

    @property
    def n_separated(self) -> int:
        """Schools without a finite per-school ML estimate."""
        return self.n_all_zero + self.n_all_one

    def to_frame(self) -> pd.DataFrame:
        return self.table


def school_empirical_table(y, group, family: str = "binomial", correction: float = 0.5,
                           group_name: str = "school") -> EmpiricalTable:
    """The per-school table of :class:`EmpiricalTable` from student rows.

    Parameters
    ----------
    y : per student, 0/1 (``family="binomial"``) or a count ≥ 0 (``"poisson"``).
    group : per student, the school.
    family : "binomial" (empirical logits) or "poisson" (empirical log rates per student).
    correction : c of :func:`empirical_logit` / :func:`empirical_log_rate`.
    group_name : name of the school column of the table.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    y = np.asarray(y, dtype=float)
    g = pd.Series(np.asarray(group), name=group_name)
    agg = pd.DataFrame({"y": y}).groupby(g.to_numpy(), sort=True)["y"].agg(["sum", "size"])
    s, n = agg["sum"].to_numpy(float), agg["size"].to_numpy(float)
    with np.errstate(divide="ignore"):
        if family == "binomial":
            est, se = empirical_logit(s, n, correction)
            ml = np.log(s) - np.log(n - s)
            all_one = s == n
        else:
            est, se = empirical_log_rate(s, n, correction)
            ml = np.log(s / n)
            all_one = np.zeros(s.shape, dtype=bool)
    all_zero = s == 0
    table = pd.DataFrame({
        group_name: agg.index.to_numpy(), "n_j": n.astype(np.int64),
        "y_sum": s.astype(np.int64) if np.all(s == np.round(s)) else s, "p_hat": s / n,
        "ml": ml, "empirical": est, "se": se, "separated": all_zero | all_one,
    })
    return EmpiricalTable(table=table, family=family, correction=float(correction),
                          n_all_zero=int(all_zero.sum()), n_all_one=int(all_one.sum()))
