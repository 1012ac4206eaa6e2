"""lme4's ``VarCorr``: the estimated variance components of a fit, their tables and printout
(:class:`VarCorr`; :mod:`twolevel.models.lmm.results` re-exports it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twolevel.models.rformat import print_char_matrix, r_format, r_round

# ----------------------------------------------------------------------------------- VarCorr


@dataclass(frozen=True)
class VarCorr:
    """Estimated variance components (lme4's ``VarCorr``).

    Fields
    ------
    group : the grouping factor.  names : the random effects (columns of Z).
    terms : the names of each random-effects term (correlations exist only within a term).
    cov : (q, q) covariance matrix σ̂²TTᵀ of the random effects.  residual : σ̂², or None for
    a model without a scale parameter (binomial and Poisson GLMMs: no Residual row).

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", tl.load_data("lecture"))
    >>> fit.VarCorr().to_frame()[["grp", "var1", "var2"]].fillna("-").values.tolist()
    [['schid', '(Intercept)', '-'], ['schid', 'famsesc', '-'],
     ['schid', '(Intercept)', 'famsesc'], ['Residual', '-', '-']]
    """

    group: str
    names: tuple[str, ...]
    terms: tuple[tuple[str, ...], ...]
    cov: np.ndarray
    residual: float | None

    @property
    def variances(self) -> pd.Series:
        """Variance of each random effect."""
        return pd.Series(np.diag(self.cov), index=list(self.names), name="variance")

    @property
    def sds(self) -> pd.Series:
        """Standard deviation of each random effect."""
        return pd.Series(np.sqrt(np.diag(self.cov)), index=list(self.names), name="sd")

    @property
    def correlations(self) -> pd.DataFrame:
        """Correlation matrix Σ_ab / (sd_a sd_b) (NaN where an SD is 0)."""
        sd = np.sqrt(np.diag(self.cov))
        with np.errstate(invalid="ignore", divide="ignore"):
            R = self.cov / np.outer(sd, sd)
        return pd.DataFrame(R, index=list(self.names), columns=list(self.names))

    @property
    def residual_sd(self) -> float:
        """σ̂."""
        return math.sqrt(self.residual)

    def pairs(self) -> list[tuple[str, str, float, float]]:
        """(name_a, name_b, covariance, correlation) within each term, lme4's order."""
        R = self.correlations.to_numpy()
        idx = {n: i for i, n in enumerate(self.names)}
        out = []
        for term in self.terms:
            for a in range(len(term)):
                for b in range(a + 1, len(term)):
                    i, j = idx[term[a]], idx[term[b]]
                    out.append((term[a], term[b], float(self.cov[i, j]), float(R[i, j])))
        return out

    def _term_groups(self) -> list[str]:
        return [self.group if k == 0 else f"{self.group}.{k}" for k in range(len(self.terms))]

    def to_frame(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fit))``: grp, var1, var2, vcov, sdcor; variances, then
        covariances of each term, then the residual."""
        rows = []
        idx = {n: i for i, n in enumerate(self.names)}
        R = self.correlations.to_numpy()
        for grp, term in zip(self._term_groups(), self.terms, strict=True):
            for nm in term:
                i = idx[nm]
                rows.append((grp, nm, None, self.cov[i, i], math.sqrt(self.cov[i, i])))
            for a in range(len(term)):
                for b in range(a + 1, len(term)):
                    i, j = idx[term[a]], idx[term[b]]
                    rows.append((grp, term[a], term[b], self.cov[i, j], R[i, j]))
        if self.residual is not None:
            rows.append(("Residual", None, None, self.residual, math.sqrt(self.residual)))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    def to_dict(self) -> dict:
        """{"variances", "covariances", "correlations", "residual"} (the CLI's JSON layout; no
        "residual" when there is no scale parameter)."""
        out = {
            "variances": {k: float(v) for k, v in self.variances.items()},
            "covariances": {f"{a}:{b}": c for a, b, c, _ in self.pairs()},
            "correlations": {f"{a}:{b}": r for a, b, _, r in self.pairs()},
        }
        if self.residual is not None:
            out["residual"] = float(self.residual)
        return out

    def table(self, digits: int = 4) -> str:
        """lme4's random-effects table (``formatVC``): Groups, Name, Variance, Std.Dev., Corr."""
        groups = self._term_groups()
        idx = {n: i for i, n in enumerate(self.names)}
        resid = [] if self.residual is None else [self.residual]
        var = [self.cov[idx[n], idx[n]] for t in self.terms for n in t] + resid
        sds = [math.sqrt(v) for v in var]
        vs, ss = r_format(var, digits), r_format(sds, digits)
        gcol, ncol = [], []
        for grp, term in zip(groups, self.terms, strict=True):
            for k, nm in enumerate(term):
                gcol.append(grp if k == 0 else "")
                ncol.append(nm)
        if resid:
            gcol.append("Residual")
            ncol.append("")
        maxlen = max(len(t) for t in self.terms)
        corr_cols = max(maxlen - 1, 0)
        corr_cells = []
        Rall = self.correlations.to_numpy()
        dig = max(2, digits - 2)
        for term in self.terms:
            ii = [idx[n] for n in term]
            Rt = Rall[np.ix_(ii, ii)]
            fm = r_format(r_round(Rt, dig).ravel(order="F"), 7, nsmall=dig)
            k = len(term)
            for a in range(k):
                row = [fm[b * k + a] if a > b else "" for b in range(k)]
                row = (row + [""] * maxlen)[:corr_cols]
                corr_cells.append(row)
        if resid:
            corr_cells.append([""] * corr_cols)
        cells = [
            [g, n, v, s] + c for g, n, v, s, c in zip(gcol, ncol, vs, ss, corr_cells, strict=True)
        ]
        cols = ["Groups", "Name", "Variance", "Std.Dev."]
        if corr_cols:
            cols += ["Corr"] + [""] * (corr_cols - 1)
        return print_char_matrix(cells, cols, [""] * len(cells), right=False)

    def summary(self) -> str:
        """The random-effects table as printed by ``summary(fit)``."""
        return self.table()
