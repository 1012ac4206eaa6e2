"""Tables of a fit with nested random intercepts (students in classes in schools): the variance
decomposition by level, both ways, the proportional reduction of each level's variance, and the
per-level summaries of the conditional modes.

For a nested random-intercept model y = xᵀβ + u_s + u_c(s) + ε with variances σ²_s, σ²_c, σ²,
the total variance is V = σ²_s + σ²_c + σ². Two questions are answered by two sets of numbers:

* **share of the variance at each level** (performance's ``icc(by_group = TRUE)``, the "variance
  partition coefficient"): σ²_k / V for each level k, and σ²/V for the students;
* **correlation of two students** (the intraclass correlations): in the same school but different
  classes, ρ_school = σ²_s / V; in the same class (hence the same school),
  ρ_class = (σ²_s + σ²_c) / V — every level at or above the shared one contributes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twolevel.data.errors import TwolevelError

__all__ = ["variance_by_level", "variance_reduction", "modes_by_level", "nested_order"]


def nested_order(fit) -> list[str]:
    """The factor names of a nested random-intercept fit, outermost first (fewest levels first).

    Raises
    ------
    TwolevelError
        A term with random slopes (the decomposition is of intercept variances).
    """
    vc = fit.VarCorr()
    if any(nms != ("(Intercept)",) for nms in vc.names):
        raise TwolevelError("the variance decomposition by level needs random intercepts only; "
                            "this model has random slopes (use its VarCorr table instead)")
    order = sorted(range(len(vc.groups)), key=lambda k: vc.ngroups[k])
    return [vc.groups[k] for k in order]


def variance_by_level(fit, residual_label: str = "Residual") -> pd.DataFrame:
    """The variance decomposition of a nested random-intercept fit, both ways.

    Columns: ``level`` (lme4's factor name, outermost first, then the residual), ``ngroups``,
    ``variance`` σ²_k, ``share`` = σ²_k / V (performance's ``icc(by_group = TRUE)``; the residual's
    share is σ²/V) and ``correlation`` = Σ_{j ≤ k} σ²_j / V, the correlation of two students who
    share level k and every level above it (NaN for the residual row).

    Parameters
    ----------
    fit : a :class:`~twolevel.models.lmm.multi_results.MultiFit` with random intercepts only.
    residual_label : the name of the last row.

    Returns
    -------
    pandas.DataFrame
        One row per level and one for the residual.

    Raises
    ------
    TwolevelError
        When a term has random slopes.

    Examples
    --------
    >>> variance_by_level(fit)   # doctest: +SKIP
    """
    order = nested_order(fit)
    vc = fit.VarCorr()
    var = {g: float(C[0, 0]) for g, C in zip(vc.groups, vc.covs, strict=True)}
    ng = dict(zip(vc.groups, vc.ngroups, strict=True))
    total = sum(var.values()) + vc.residual
    cum = np.cumsum([var[g] for g in order]) / total
    rows = [(g, ng[g], var[g], var[g] / total, c) for g, c in zip(order, cum, strict=True)]
    rows.append((residual_label, fit.nobs, vc.residual, vc.residual / total, float("nan")))
    return pd.DataFrame(rows, columns=["level", "ngroups", "variance", "share", "correlation"])


def variance_reduction(null, fit) -> pd.DataFrame:
    """Proportional reduction of each level's variance from the null model ``null`` to ``fit``
    (Raudenbush & Bryk's PRV): (σ²_k,null − σ²_k) / σ²_k,null, per level and for the residual.

    Parameters
    ----------
    null, fit : nested random-intercept fits with the same grouping factors.

    Returns
    -------
    pandas.DataFrame
        ``level``, ``null``, ``model``, ``reduction``.

    Raises
    ------
    TwolevelError
        When the two fits do not have the same grouping factors, or a term has random slopes.

    Examples
    --------
    >>> variance_reduction(m0, m1)   # doctest: +SKIP
    """
    a, b = variance_by_level(null), variance_by_level(fit)
    if list(a["level"]) != list(b["level"]):
        raise TwolevelError(f"the null model's levels ({', '.join(a['level'][:-1])}) differ "
                            f"from the model's ({', '.join(b['level'][:-1])}); fit both with the "
                            "same groups")
    with np.errstate(divide="ignore", invalid="ignore"):
        red = (a["variance"].to_numpy() - b["variance"].to_numpy()) / a["variance"].to_numpy()
    return pd.DataFrame({"level": a["level"], "null": a["variance"], "model": b["variance"],
                         "reduction": red})


def modes_by_level(fit, z: float = 1.959963984540054) -> pd.DataFrame:
    """Per level, a summary of the conditional modes of the intercepts: ``ngroups``, the SD of
    the modes, the model's SD σ_k, their ratio (how much the modes are shrunk), the mean
    conditional SD, and how many intervals mode ± z·condsd exclude 0.

    Parameters
    ----------
    fit : a nested random-intercept MultiFit.
    z : the normal quantile of the intervals.

    Returns
    -------
    pandas.DataFrame
        One row per level, outermost first.

    Raises
    ------
    TwolevelError
        When a term has random slopes.

    Examples
    --------
    >>> modes_by_level(fit)   # doctest: +SKIP
    """
    order = nested_order(fit)
    re = fit.ranef(cond_var=True)
    vc = fit.VarCorr()
    sd_model = {g: float(np.sqrt(C[0, 0])) for g, C in zip(vc.groups, vc.covs, strict=True)}
    rows = []
    for g in order:
        fr = re[g]
        m, s = fr["(Intercept)"].to_numpy(), fr["condsd_(Intercept)"].to_numpy()
        sd_modes = float(np.std(m, ddof=1)) if m.size > 1 else float("nan")
        ratio = sd_modes / sd_model[g] if sd_model[g] > 0 else float("nan")
        rows.append((g, m.size, sd_modes, sd_model[g], ratio, float(np.mean(s)),
                     int(np.sum(np.abs(m) > z * s))))
    return pd.DataFrame(rows, columns=["level", "ngroups", "sd_modes", "sd_model",
                                       "ratio", "mean_condsd", "excluding_0"])
