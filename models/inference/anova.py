"""Likelihood-ratio tests between nested fits: lme4's ``anova(m_small, m_big)`` plus a
boundary-corrected p-value for variance components.

lme4's table (``anovaLmer``), for lmer and for glmer fits (GLMMs are never refitted): REML fits
are refitted by ML (``refitML``: "refitting model(s) with
ML (instead of REML)"), the models are sorted by npar, and consecutive rows are compared:
Chisq = 2·max(0, ℓ_i − ℓ_{i−1}), Df = npar_i − npar_{i−1}, p = P(χ²_Df > Chisq).

Boundary correction (not in lme4/lmerTest): when the bigger model adds exactly one random effect
together with its k covariances with the effects already in its term (and nothing else), the null
puts a variance on the boundary and the LRT is asymptotically ½χ²_k + ½χ²_{k+1} (Self & Liang
1987; Stram & Lee 1994), e.g. ``(1 | g)`` → ``(1 + x | g)``: ½χ²₁ + ½χ²₂. (k = 0, an uncorrelated
effect: ½χ²₀ + ½χ²₁, i.e. p = ½·P(χ²₁ > LRT).) Where no such simple mixture applies (several
random effects added at once, fixed effects changed too) the column is left empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import TwolevelError
from twolevel.models.fit_base import has_several_factors
from twolevel.models.lmm.lmer import refit_ml
from twolevel.models.lmm.results import LmerFit
from twolevel.models.rformat import format_pval, print_char_matrix, r_format, r_round, zapsmall

__all__ = ["AnovaResult", "anova", "mixture_pvalue"]

REFIT_MESSAGE = "refitting model(s) with ML (instead of REML)"


@dataclass(frozen=True)
class AnovaResult:
    """lme4's likelihood-ratio table with an extra boundary-corrected p column.

    Fields
    ------
    names, formulas : model labels and formulas, sorted by npar (lme4's order).
    npar, aic, bic, loglik, deviance : per model (ML fits; deviance = −2·logLik).
    chisq, df, p : comparison with the previous row (NaN on the first row).
    p_mixture : boundary-corrected p (NaN where no simple mixture applies).
    mixture : text describing the mixture used for each row ("" where none).
    refitted : REML fits were refitted by ML.  data_name : the data's name.
    fits : the ML fits used.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> m0 = tl.lmer("g1rscore ~ famsesc + (1 | schid)", d)
    >>> res = tl.anova(m0, tl.lmer("g1rscore ~ famsesc + (1 + famsesc | schid)", d))
    >>> res.refitted, float(res.df[1])
    (True, 2.0)
    """

    names: tuple[str, ...]
    formulas: tuple[str, ...]
    npar: np.ndarray
    aic: np.ndarray
    bic: np.ndarray
    loglik: np.ndarray
    deviance: np.ndarray
    chisq: np.ndarray
    df: np.ndarray
    p: np.ndarray
    p_mixture: np.ndarray
    mixture: tuple[str, ...]
    refitted: bool
    data_name: str
    fits: tuple[LmerFit, ...]

    def to_frame(self) -> pd.DataFrame:
        """The table as a data frame (lme4's columns plus p_mixture and mixture)."""
        return pd.DataFrame(
            {
                "npar": self.npar, "AIC": self.aic, "BIC": self.bic, "logLik": self.loglik,
                "deviance": self.deviance, "Chisq": self.chisq, "Df": self.df,
                "Pr(>Chisq)": self.p, "p_mixture": self.p_mixture, "mixture": list(self.mixture),
            },
            index=list(self.names),
        )

    def to_dict(self) -> dict:
        """The CLI's JSON object (two models: keys models, chisq, df, p, p_mixture, mixture)."""

        def num(v: float):
            return None if not np.isfinite(v) else float(v)

        return {
            "models": [
                {
                    "formula": f, "npar": int(n), "aic": float(a), "bic": float(b),
                    "loglik": float(ll), "deviance": float(d),
                }
                for f, n, a, b, ll, d in zip(
                    self.formulas, self.npar, self.aic, self.bic, self.loglik, self.deviance,
                    strict=True,
                )
            ],
            "chisq": num(self.chisq[-1]),
            "df": int(self.df[-1]) if np.isfinite(self.df[-1]) else None,
            "p": num(self.p[-1]),
            "p_mixture": num(self.p_mixture[-1]),
            "mixture": self.mixture[-1],
        }

    def summary(self) -> str:
        """lme4's printout (digits 5), then the boundary-corrected p-values."""
        out = []
        if self.refitted:
            out.append(REFIT_MESSAGE)
        out.append(f"Data: {self.data_name}")
        out.append("Models:")
        from twolevel.models.lmm.results import deparse_formula

        for nm, f in zip(self.names, self.formulas, strict=True):
            out.append(f"{nm}: {deparse_formula(f)}")
        out.append(_print_anova_table(self))
        for i in range(1, len(self.names)):
            if self.mixture[i]:
                out.append(
                    f"Boundary-corrected p ({self.names[i]} vs {self.names[i - 1]}): "
                    f"{format_pval([self.p_mixture[i]], 4)[0].strip()} from the mixture "
                    f"{self.mixture[i]} (naive chi-square p above is conservative)"
                )
            else:
                out.append(
                    f"Boundary-corrected p ({self.names[i]} vs {self.names[i - 1]}): not given; "
                    "no simple chi-square mixture applies to this comparison"
                )
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()


def _print_anova_table(res: AnovaResult, digits: int = 5) -> str:
    """R's ``print.anova`` of lme4's table (zap columns, Chisq as test statistic, p-values)."""
    n = len(res.names)
    cols = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]
    cells = [["" for _ in cols] for _ in range(n)]

    def put(j: int, values: np.ndarray, zap: bool) -> None:
        vals = np.asarray(values, dtype=float)
        ok = np.isfinite(vals)
        if not ok.any():
            return
        v = vals[ok]
        if zap:
            v = zapsmall(v, digits)
        for i, s in zip(np.nonzero(ok)[0], r_format(v, digits), strict=True):
            cells[i][j] = s

    put(0, res.npar, True)
    put(1, res.aic, True)
    put(2, res.bic, True)
    put(3, res.loglik, True)
    put(4, res.deviance, True)
    dig_tst = max(1, min(5, digits - 1))
    ch = np.asarray(res.chisq, dtype=float)
    ok = np.isfinite(ch)
    if ok.any():
        for i, s in zip(np.nonzero(ok)[0], r_format(r_round(ch[ok], dig_tst), digits), strict=True):
            cells[i][5] = s
    put(6, res.df, False)
    pv = np.asarray(res.p, dtype=float)
    okp = np.isfinite(pv)
    if okp.any():
        for i, s in zip(np.nonzero(okp)[0], format_pval(pv[okp], dig_tst), strict=True):
            cells[i][7] = s
    # equal widths within each column (R formats a column as one vector, NA printed as "")
    for j in range(len(cols)):
        w = max(len(c[j]) for c in cells)
        for c in cells:
            c[j] = c[j].rjust(w)
    legend = ""
    if okp.any() and (pv[okp] < 0.1).any():
        stars = [_stars(p) for p in pv]
        w = max(len(s) for s in stars)
        for c, s in zip(cells, stars, strict=True):
            c.append(s.ljust(w))
        cols.append("")
        legend = "\n---\nSignif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1"
    return print_char_matrix(cells, cols, list(res.names), right=True) + legend


def _stars(p: float) -> str:
    if not math.isfinite(p):
        return ""
    for cut, s in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p <= cut:
            return s
    return " "


# ----------------------------------------------------------------------------- nesting


def _cov_pattern(fit: LmerFit) -> set[tuple[str, str]]:
    """The free entries of the random-effects covariance, as (name, name) pairs."""
    pat = set()
    for term in fit.design.terms:
        for a in term.names:
            for b in term.names:
                pat.add((a, b))
    return pat


def _check_same_data(fits: list[LmerFit], names: list[str]) -> None:
    base = fits[0]
    for f, nm in zip(fits[1:], names[1:], strict=True):
        if f.nobs != base.nobs:
            raise TwolevelError(
                f"models were not all fitted to the same size of data set: '{names[0]}' uses "
                f"{base.nobs} rows, '{nm}' uses {f.nobs} rows (missing values in a variable of one "
                "model?); fit all models to the same rows"
            )
        if f.data_fingerprint != base.data_fingerprint:
            raise TwolevelError(
                f"models '{names[0]}' and '{nm}' were not fitted to the same data (response or "
                "groups differ); all models must be fitted to the same data"
            )


def _check_glmm(fits: list, names: list[str]) -> None:
    """glmer fits (they have a ``family``) compare only with glmer fits of the same family
    (GLMMs are not refitted: there is no REML for them)."""
    fams = [getattr(f, "family", None) for f in fits]
    if all(f is None for f in fams):
        return
    if any(f is None for f in fams):
        raise TwolevelError(
            "cannot compare a linear mixed model (lmer) with a binomial/Poisson one (glmer): "
            "their likelihoods are for different response distributions")
    for f, nm in zip(fams[1:], names[1:], strict=True):
        if (f.name, f.link) != (fams[0].name, fams[0].link):
            raise TwolevelError(
                f"models '{names[0]}' ({fams[0].name}, {fams[0].link}) and '{nm}' ({f.name}, "
                f"{f.link}) have different families or links; compare fits of one family")


def _check_nested(small: LmerFit, big: LmerFit, ns: str, nb: str) -> None:
    ds, db = small.design, big.design
    if ds.response != db.response:
        raise TwolevelError(
            f"models '{ns}' and '{nb}' have different responses ('{ds.response}' and "
            f"'{db.response}'); a likelihood-ratio test needs the same response"
        )
    if ds.group != db.group:
        raise TwolevelError(
            f"models '{ns}' and '{nb}' have different grouping factors ('{ds.group}' and "
            f"'{db.group}'); they are not nested"
        )
    missing_fe = [n for n in ds.x_names if n not in db.x_names]
    missing_re = sorted(
        {f"{a}:{b}" if a != b else a for a, b in _cov_pattern(small) - _cov_pattern(big)}
    )
    if missing_fe or missing_re:
        what = []
        if missing_fe:
            what.append("fixed effect(s) " + ", ".join(missing_fe))
        if missing_re:
            what.append("random-effect (co)variance(s) " + ", ".join(missing_re))
        raise TwolevelError(
            f"model '{ns}' is not nested in '{nb}': '{nb}' lacks {' and '.join(what)} of "
            f"'{ns}'; compare nested models (the smaller one's terms all in the bigger one)"
        )


def mixture_pvalue(lrt: float, k: int) -> float:
    """p of the ½χ²_k + ½χ²_{k+1} mixture (χ²_0 is a point mass at 0)."""
    p_k = (0.0 if lrt > 0 else 1.0) if k == 0 else float(stats.chi2.sf(lrt, k))
    return 0.5 * p_k + 0.5 * float(stats.chi2.sf(lrt, k + 1))


def _mixture_k(small: LmerFit, big: LmerFit) -> int | None:
    """k when ``big`` = ``small`` + one random effect with its k covariances (same fixed
    effects); None otherwise."""
    ds, db = small.design, big.design
    if tuple(ds.x_names) != tuple(db.x_names):
        return None
    new = [n for n in db.z_names if n not in ds.z_names]
    if len(new) != 1:
        return None
    added = _cov_pattern(big) - _cov_pattern(small)
    new_name = new[0]
    if any(new_name not in pair for pair in added):
        return None  # other covariances were added too
    k = len({b for a, b in added if a == new_name and b != new_name})
    if db.n_theta - ds.n_theta != k + 1:
        return None
    return k


def _chi2_text(k: int) -> str:
    return f"0.5*chi2({k}) + 0.5*chi2({k + 1})"


def anova(*fits: LmerFit, names: list[str] | None = None, refit: bool = True) -> AnovaResult:
    """Likelihood-ratio table of nested fits (lme4's ``anova(m_small, m_big)``).

    REML fits are refitted by ML first (lme4's ``refitML``; ``refitted`` is set and
    ``summary()`` says so). Raises :class:`~twolevel.data.errors.TwolevelError` when the fits use
    different data or are not nested.

    Parameters
    ----------
    *fits : LmerFit or GlmerFit
        Two or more nested fits of one response on the same rows (lmer fits or glmer fits).
    names : list of str, optional
        Names of the models in the table (default m1, m2, ...).
    refit : bool
        Refit REML fits by ML first (lme4's default).

    Returns
    -------
    AnovaResult
        npar, AIC, BIC, logLik, deviance, χ², df and p per model; ``p_mixture`` the
        boundary-corrected p of a test of a variance; ``print()`` gives lme4's table.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> m0 = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", d)
    >>> m1 = tl.lmer("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", d)
    >>> res = tl.anova(m0, m1)
    >>> res.names, res.refitted
    (('m1', 'm2'), True)
    """
    if any(getattr(f, "pseudo_likelihood", False) for f in fits):
        from twolevel.models.survey.fit import LRT_REFUSED

        raise TwolevelError(LRT_REFUSED)
    if len(fits) < 2:
        raise TwolevelError("anova needs at least two fitted models to compare")
    if any(has_several_factors(f) for f in fits):
        raise TwolevelError("a model has several grouping factors: compare it with "
                            "anova_multi(small, big) (likelihood-ratio test with ML refits)")
    names = list(names) if names is not None else [f"m{i + 1}" for i in range(len(fits))]
    if len(names) != len(fits):
        raise TwolevelError(f"{len(fits)} models but {len(names)} names")
    _check_glmm(list(fits), names)
    _check_same_data(list(fits), names)
    refitted = refit and any(getattr(f, "reml", False) for f in fits)
    ml = [refit_ml(f) if refit and isinstance(f, LmerFit) else f for f in fits]
    order = sorted(range(len(ml)), key=lambda i: ml[i].npar)  # stable: ties keep given order
    ml = [ml[i] for i in order]
    names = [names[i] for i in order]
    for i in range(1, len(ml)):
        _check_nested(ml[i - 1], ml[i], names[i - 1], names[i])
    npar = np.array([f.npar for f in ml], dtype=float)
    ll = np.array([f.loglik for f in ml])
    n = ml[0].nobs
    chisq = np.full(len(ml), np.nan)
    df = np.full(len(ml), np.nan)
    p = np.full(len(ml), np.nan)
    pmix = np.full(len(ml), np.nan)
    mixture = [""] * len(ml)
    for i in range(1, len(ml)):
        chisq[i] = 2.0 * max(0.0, ll[i] - ll[i - 1])
        df[i] = npar[i] - npar[i - 1]
        p[i] = float(stats.chi2.sf(chisq[i], df[i])) if df[i] > 0 else np.nan
        k = _mixture_k(ml[i - 1], ml[i])
        if k is not None:
            pmix[i] = mixture_pvalue(chisq[i], k)
            mixture[i] = _chi2_text(k)
    return AnovaResult(
        names=tuple(names), formulas=tuple(f.design.formula for f in ml), npar=npar,
        aic=-2 * ll + 2 * npar, bic=-2 * ll + math.log(n) * npar, loglik=ll, deviance=-2 * ll,
        chisq=chisq, df=df, p=p, p_mixture=pmix, mixture=tuple(mixture), refitted=refitted,
        data_name=ml[0].data_name, fits=tuple(ml),
    )
