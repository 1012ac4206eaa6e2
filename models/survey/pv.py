"""Plausible values and multiply imputed data sets: one fit per set, pooled by Rubin's rules.

``tl.lmer(formula, data, pv=[...])`` fits the formula once per plausible value (the formula's
response replaced by each column in turn), ``pv={"pvmath": [...], "pvread": [...]}`` replaces
several variables of the formula at once (set m uses the m-th column of every list), and
``tl.lmer(formula, [d1, d2, …])`` fits each imputed data set. Every set uses the same weights
and scaling. Fixed effects are pooled by :func:`~twolevel.models.survey.rubin.rubin_pool` with
each fit's robust (weighted) or model-based (unweighted) variance; variance components are
averaged (approximate, as EdSurvey and MLMusingR do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError
from twolevel.models.design.formula import parse_formula
from twolevel.models.survey.rubin import RubinPool, rubin_pool

__all__ = ["PooledFit", "fit_sets", "pv_formulas"]


def pv_formulas(formula: str, pv, data: pd.DataFrame) -> list[str]:
    """One formula per set: ``pv`` a list of response columns, or {variable: [columns]}.

    Parameters
    ----------
    formula : the model; its response (list form) or the dict's variables are replaced.
    pv : list of columns, or {variable: [columns]} (lists of equal length).
    data : the frame holding the columns.

    Returns
    -------
    list of str

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"pv1": [1.0], "pv2": [2.0], "g": [1]})
    >>> pv_formulas("pv1 ~ 1 + (1|g)", ["pv1", "pv2"], d)
    ['pv1 ~ 1 + (1|g)', 'pv2 ~ 1 + (1|g)']

    Raises
    ------
    DataError
        A PV column missing or not numeric; lists of different lengths; fewer than two values.
    """
    if isinstance(pv, dict):
        mapping = {str(k): list(v) for k, v in pv.items()}
    elif isinstance(pv, (list, tuple)):
        mapping = {parse_formula(formula).response: list(pv)}
    else:
        raise DataError(f"pv must be a list of columns or a dict of lists, got {type(pv).__name__}")
    lengths = {k: len(v) for k, v in mapping.items()}
    if len(set(lengths.values())) > 1:
        raise DataError("plausible-value lists of different lengths: "
                        + ", ".join(f"'{k}' has {n}" for k, n in lengths.items())
                        + "; give every variable the same number of values")
    M = next(iter(lengths.values()))
    if M < 2:
        raise DataError(f"pv needs at least two columns per variable, got {M}")
    for cols in mapping.values():
        for c in cols:
            if c not in data.columns:
                raise DataError(f"plausible-value column '{c}' is not in the data; available "
                                f"columns: {', '.join(map(str, data.columns))}")
            s = data[c]
            if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
                raise DataError(f"plausible-value column '{c}' is not numeric (dtype {s.dtype}); "
                                "convert it to numbers first")
    lhs, rhs = formula.split("~", 1)
    out = []
    for m in range(M):
        f = formula
        for var, cols in mapping.items():
            pat = re.compile(rf"(?<![\w.]){re.escape(var)}(?![\w.])")
            if not pat.search(f):
                raise DataError(f"plausible-value variable '{var}' does not appear in formula "
                                f"'{formula}'")
            f = pat.sub(cols[m], f)
        out.append(f)
    return out


@dataclass(frozen=True, repr=False)
class PooledFit:
    """M fits combined by Rubin's rules.

    Fields
    ------
    fits : the per-set fits.  pool : :class:`RubinPool` of the fixed effects.
    labels : one label per set (the PV column or ``set 1`` …).  weighted : whether the fits
    used sampling weights (robust within variance).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("sleepstudy")
    >>> d2 = d.assign(Reaction=d["Reaction"] + 1.0)      # a second "imputed" data set
    >>> pooled = tl.lmer("Reaction ~ Days + (1 | Subject)", [d, d2], REML=False)
    >>> pooled.m, len(repr(pooled)) < 300
    (2, True)
    """

    fits: tuple
    pool: RubinPool
    labels: tuple[str, ...]
    weighted: bool

    @property
    def m(self) -> int:
        """Number of sets."""
        return len(self.fits)

    def fixef(self) -> pd.Series:
        """Q̄ of the fixed effects."""
        return self.pool.qbar.rename("Estimate")

    def se(self) -> pd.Series:
        """√T (Rubin's total standard error)."""
        return self.pool.se.rename("Std. Error")

    @property
    def loglik(self) -> float:
        """The mean over sets of the (pseudo) log-likelihood."""
        return float(np.mean([f.loglik for f in self.fits]))

    @property
    def nobs(self) -> int:
        """Rows of the first set."""
        return int(self.fits[0].nobs)

    @property
    def ngroups(self) -> int:
        """Groups of the first set."""
        return int(self.fits[0].ngroups)

    def varcorr(self) -> dict:
        """The variance components averaged over the sets (``VarCorr().to_dict()`` layout)."""
        ds = [f.VarCorr().to_dict() for f in self.fits]
        out: dict = {}
        for key in ("variances", "covariances", "correlations"):
            out[key] = {k: float(np.mean([d[key][k] for d in ds])) for k in ds[0][key]}
        if "residual" in ds[0]:
            out["residual"] = float(np.mean([d["residual"] for d in ds]))
        return out

    def varcorr_se(self) -> dict:
        """Weighted fits: SEs of the averaged variance components by Rubin's rules,
        √(Ū + (1 + 1/M)B) with U_m the squared sandwich SEs (``varcorr_se()`` layout)."""
        if not self.weighted:
            raise DataError("variance-component SEs are computed for weighted fits only")
        vcs = [f.VarCorr().to_dict() for f in self.fits]
        ses = [f.varcorr_se() for f in self.fits]
        M = self.m
        out: dict = {}
        for key in ("variances", "covariances"):
            out[key] = {}
            for k in ses[0][key]:
                q = np.array([v[key][k] for v in vcs])
                u = np.array([s[key][k] for s in ses]) ** 2
                out[key][k] = float(np.sqrt(u.mean() + (1 + 1 / M) * q.var(ddof=1)))
        if "residual" in ses[0] and "residual" in vcs[0]:
            q = np.array([v["residual"] for v in vcs])
            u = np.array([s["residual"] for s in ses]) ** 2
            out["residual"] = float(np.sqrt(u.mean() + (1 + 1 / M) * q.var(ddof=1)))
        return out

    def coef_table(self) -> pd.DataFrame:
        """Pooled Estimate, Std. Error, Barnard–Rubin df, t, p, RIV, FMI."""
        return self.pool.table()

    def __repr__(self) -> str:
        from twolevel.models.fit_base import short_repr

        first = self.fits[0]
        return short_repr(type(self).__name__, [
            ("sets", self.m), ("fit", type(first).__name__), ("weighted", self.weighted)],
            getattr(first, "formula", None) or first.design.formula)

    def summary(self) -> str:
        """The pooled table, the number of sets and the averaged variance components."""
        from twolevel.models.rformat import print_coefmat

        first = self.fits[0]
        kind = ("pseudo-maximum likelihood (sampling weights), robust within-variance"
                if self.weighted else ("REML" if getattr(first, "reml", False) else "ML"))
        tab = self.coef_table()
        vc = self.varcorr()
        out = [
            f"Linear mixed model, {self.m} sets pooled by Rubin's rules ({kind})",
            f"Formula: {first.design.formula}  (set 1 of {self.m})",
            "Sets: " + ", ".join(self.labels),
            f"Mean log{' pseudo' if self.weighted else ''}-likelihood over sets: "
            f"{self.loglik:.4f}",
            "",
            "Random effects (averaged over sets):",
        ]
        for n, v in vc["variances"].items():
            out.append(f" {first.design.group:<10} {n:<14} {v:>14.6g}")
        for k, v in vc["covariances"].items():
            out.append(f" {'':<10} {k:<14} {v:>14.6g}")
        if "residual" in vc:
            out.append(f" {'Residual':<10} {'':<14} {vc['residual']:>14.6g}")
        out.append(f"Number of obs: {self.nobs}, groups:  {first.design.group}, {self.ngroups}")
        out.append("")
        out.append(f"Fixed effects (SE = √T, Barnard–Rubin df with ν_com = {self.pool.df_com:g}):")
        main = tab[["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]]
        out.append(print_coefmat(main.to_numpy(), list(main.index), list(main.columns),
                                 digits=4, has_pvalue=True))
        out.append("")
        out.append("Relative increase in variance and fraction of missing information:")
        out.append(tab[["RIV", "FMI"]].to_string(float_format=lambda v: f"{v:.4f}"))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        """The CLI's JSON: fixef (Q̄), se (√T), varcorr (averaged), loglik (mean), nobs,
        ngroups and the ``pv`` object."""
        out = {
            "formula": self.fits[0].design.formula,
            "nobs": self.nobs,
            "ngroups": self.ngroups,
            "loglik": self.loglik,
            "fixef": {k: float(v) for k, v in self.fixef().items()},
            "se": {k: float(v) for k, v in self.se().items()},
            "varcorr": self.varcorr(),
            "pv": self.pool.to_dict(),
        }
        if self.weighted:
            out["varcorr_se"] = self.varcorr_se()
            out["weights"] = self.fits[0].weights.to_dict()
        return out


def fit_sets(fit_one, formulas: list[str], frames: list[pd.DataFrame], labels: list[str],
             weighted: bool, df_com: float | None = None) -> PooledFit:
    """Fit ``fit_one(formula, frame)`` for each set and pool the fixed effects.

    Parameters
    ----------
    fit_one : (formula, frame) → fit with ``fixef()``, ``vcov()``, ``nobs``, ``design``.
    formulas, frames, labels : one per set.  weighted : the fits used sampling weights.
    df_com : complete-data df; default nobs − p of the first fit (``mice``'s and MLMusingR's
        convention).

    Returns
    -------
    PooledFit

    Raises
    ------
    DataError
        The sets' fits have different fixed effects (factor levels differ).

    Examples
    --------
    >>> # fit_sets(lambda f, d: tl.lmer(f, d, REML=False), ["y1 ~ x + (1|g)", "y2 ~ x + (1|g)"],
    >>> #          [d, d], ["y1", "y2"], weighted=False)
    """
    fits = tuple(fit_one(f, d) for f, d in zip(formulas, frames, strict=True))
    names = [tuple(f.design.x_names) for f in fits]
    if len(set(names)) > 1:
        raise DataError("the sets' fits have different fixed effects ("
                        + " | ".join(", ".join(n) for n in dict.fromkeys(names))
                        + "); make the factor levels the same in every set")
    est = pd.DataFrame([f.fixef().to_numpy() for f in fits], columns=list(names[0]))
    var = pd.DataFrame([np.diag(f.vcov().to_numpy()) for f in fits], columns=list(names[0]))
    if df_com is None:
        df_com = float(fits[0].nobs - len(names[0]))
    return PooledFit(fits=fits, pool=rubin_pool(est, var, df_com), labels=tuple(labels),
                     weighted=weighted)
