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
    "describe_empirical_shrinkage",
    "empirical_log_rate",
    "empirical_logit",
    "empirical_shrinkage_table",
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


def empirical_shrinkage_table(emp: EmpiricalTable, modes: pd.Series,
                              posterior: pd.Series | None = None) -> pd.DataFrame:
    """One row per school: the no-pooling empirical estimate, the conditional mode and the
    posterior mean of the school's intercept on the link scale, and the moves between them.

    Parameters
    ----------
    emp : from :func:`school_empirical_table` (its group column is the index of the result).
    modes : per school, γ00 + u0j at the conditional mode of a glmer fit (index = school).
    posterior : per school, the posterior mean of γ00 + u0j (optional).

    Returns
    -------
    DataFrame indexed by school with ``n_j``, ``y_sum``, ``separated``, ``empirical``, ``se``,
    ``mode``, ``shift_mode`` = mode − empirical and, with ``posterior``, ``posterior``,
    ``shift_posterior`` = posterior − empirical and ``posterior_minus_mode``.
    """
    tab = emp.table.set_index(emp.table.columns[0])
    idx = pd.Index(modes.index, name=tab.index.name)
    out = tab.reindex(idx)[["n_j", "y_sum", "separated", "empirical", "se"]].copy()
    if out["n_j"].isna().any():
        raise ValueError("the conditional modes name schools the empirical table does not have")
    out["mode"] = modes.to_numpy(dtype=float)
    out["shift_mode"] = out["mode"] - out["empirical"]
    if posterior is not None:
        out["posterior"] = posterior.reindex(idx).to_numpy(dtype=float)
        out["shift_posterior"] = out["posterior"] - out["empirical"]
        out["posterior_minus_mode"] = out["posterior"] - out["mode"]
    return out


def describe_empirical_shrinkage(table: pd.DataFrame, tau_ml: float, tau_post: float | None,
                                 scale: str = "log-odds", school: str = "school",
                                 event: str = "the outcome") -> str:
    """A paragraph, in plain words with the numbers, on how the school estimates move from the
    empirical values (no pooling) to the conditional modes and posterior means (partial pooling),
    for a :func:`empirical_shrinkage_table`. ``tau_ml`` / ``tau_post``: the ML estimate and the
    posterior mean of τ00; ``scale`` the link scale's name; ``event`` words for y = 1."""
    from twolevel.models.tables.shrinkage import size_bands

    v_emp, v_mode = float(table["empirical"].var(ddof=1)), float(table["mode"].var(ddof=1))
    sizes = f"{int(table['n_j'].min())}–{int(table['n_j'].max())}"
    has_post = "posterior" in table.columns
    parts = [
        f"The empirical {scale} of the {len(table)} {school}s vary with variance {v_emp:.3g}, "
        f"{'more' if v_emp > tau_ml else 'less'} than the estimated variance of the true {school} "
        f"{scale}, τ00 = {tau_ml:.3g}; with {sizes} students a {school}'s outcomes carry a lot "
        "of sampling noise. The "
        f"conditional modes vary with variance {v_mode:.3g} ({100 * v_mode / v_emp:.0f}% of "
        "the empirical variance)"
    ]
    if has_post:
        v_post = float(table["posterior"].var(ddof=1))
        parts[0] += f" and the posterior means with {v_post:.3g} ({100 * v_post / v_emp:.0f}%)"
    parts[0] += "."
    band = size_bands(table["n_j"])
    by = table.assign(band=band.to_numpy()).groupby("band", sort=False)["shift_mode"]
    mv = by.apply(lambda s: float(s.abs().mean()))
    order = sorted(mv.index, key=lambda b: table.loc[band.to_numpy() == b, "n_j"].mean())
    if len(order) >= 2:
        parts.append(f"Small {school}s move most: mean |mode − empirical| is "
                     f"{mv[order[0]]:.3g} for {order[0]} against {mv[order[-1]]:.3g} for "
                     f"{order[-1]}.")
    sep = table[table["separated"]]
    if len(sep):
        parts.append(
            f"The {len(sep)} {school}(s) where every outcome is the same have no finite ML "
            f"estimate; their empirical {scale} average {sep['empirical'].mean():.2f}, their "
            f"conditional modes {sep['mode'].mean():.2f}"
            + (f" and posterior means {sep['posterior'].mean():.2f}" if has_post else "")
            + f": partial pooling gives them finite estimates pulled towards the average, "
              f"because a {school} of {sizes} students with no case (or only cases) of {event} "
              f"is also what a "
              f"{school} with a moderate {scale} often produces.")
    if has_post and tau_post is not None:
        d = float(table["posterior_minus_mode"].abs().mean())
        parts.append(
            f"Posterior means and conditional modes differ by {d:.3g} on average; the posterior "
            f"mean of τ00 ({tau_post:.3g}) is {'above' if tau_post > tau_ml else 'below'} the "
            f"Laplace estimate, so the Bayesian estimates are shrunk "
            f"{'less' if tau_post > tau_ml else 'more'}, and a posterior mean also averages over "
            "the skewed posterior of each school's effect where the mode takes its peak.")
    return " ".join(parts)
