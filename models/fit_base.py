"""What every fitted mixed model of twolevel shares: lme4's generics on one base class, a short
``repr``, the summary as text *and* as tables, and HTML for notebooks.

:class:`MixedFit` is the base of :class:`~twolevel.models.lmm.results.LmerFit` and
:class:`~twolevel.models.glmm.results.GlmerFit`. A subclass supplies the model-specific pieces
(``fixef``, ``vcov``, ``VarCorr``, ``cond_var``, ``_modes``, ``summary``, ``loglik``, ``aic``,
``bic``, ``deviance``, ``nobs``, ``ngroups``, ``predict``); the base class derives the rest
(``ranef``, ``coef``, ``logLik``, ``AIC``, ``BIC``, ``confint``, ``simulate``, ``__repr__``,
``_repr_html_``) once, so the two fits cannot drift apart.

:class:`FitSummary` is what ``summary()`` returns: a ``str`` whose text is lme4's printout
(unchanged, so every golden comparison keeps working) and whose attributes hold the tables as
data frames (``coefficients``, ``random_effects``, ``fit_statistics``).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

__all__ = ["BayesSummary", "FitSummary", "MixedFit", "as_generator", "has_several_factors",
           "require_lmm", "seed_of", "short_repr"]

REPR_MAX = 299  # repr(fit) is shorter than 300 characters


def as_generator(rng=None, seed=None, default=None) -> np.random.Generator:
    """The random-number convention of every twolevel function that draws (SPEC 7): ``rng`` is
    a seed (an int or anything ``numpy.random.default_rng`` takes) or a ``numpy.random.Generator``
    (used as is); ``seed=`` is the older spelling of a seed and still accepted. With neither,
    ``default`` (a function's historical default seed, or None for fresh entropy).

    Raises
    ------
    TwolevelError
        When both ``rng`` and ``seed`` are given.

    Examples
    --------
    >>> as_generator(5).integers(100) == as_generator(seed=5).integers(100)
    True
    """
    from twolevel.data.errors import TwolevelError

    if rng is not None and seed is not None:
        raise TwolevelError("give either rng= (a seed or a numpy Generator) or seed=, not both")
    if isinstance(rng, np.random.Generator):
        return rng
    value = rng if rng is not None else seed if seed is not None else default
    return np.random.default_rng(value)


def require_lmm(fit, what: str, why: str) -> None:
    """Raise a one-line TwolevelError when ``fit`` is a GLMM and ``what`` is defined for LMMs
    only (``why`` says why, e.g. that lme4/pbkrtest refuse it too)."""
    if hasattr(fit, "family"):
        from twolevel.data.errors import TwolevelError

        raise TwolevelError(f"{what} is defined for lmer fits only: {why}")


def seed_of(rng=None, seed=None, default=None):
    """The integer seed recorded in a result (None when a Generator was passed)."""
    if isinstance(rng, np.random.Generator):
        return None
    return rng if rng is not None else seed if seed is not None else default


def has_several_factors(fit) -> bool:
    """True for a fit with several grouping factors (a
    :class:`~twolevel.models.lmm.multi_results.MultiFit`, whose design lists its ``factors``),
    told without importing the several-factors modules (the command line's start-up).

    Parameters
    ----------
    fit : object
        A fit of ``tl.lmer``, ``tl.glmer`` or ``tl.fit_bayes``.

    Returns
    -------
    bool

    Examples
    --------
    >>> import twolevel as tl
    >>> from twolevel.models.fit_base import has_several_factors
    >>> has_several_factors(tl.lmer("g1rscore ~ famsesc + (1 | schid)", tl.load_data("lecture")))
    False
    """
    return hasattr(getattr(fit, "design", None), "factors")


def short_repr(cls: str, fields: list[tuple[str, object]], formula: str) -> str:
    """``<cls 'formula' k=v ...>`` cut to fewer than 300 characters (a long formula is
    shortened with "...")."""
    tail = " ".join(f"{k}={v}" for k, v in fields)
    room = REPR_MAX - len(cls) - len(tail) - 8
    f = " ".join(str(formula).split())
    if len(f) > room:
        f = f[: max(room - 3, 10)] + "..."
    return f"<{cls} '{f}' {tail}>"


class FitSummary(str):
    """lme4's printed summary (the ``str`` itself) with its tables as data.

    Attributes
    ----------
    coefficients : the fixed-effects table (``coef(summary(fit))``).
    random_effects : ``as.data.frame(VarCorr(fit))`` (grp, var1, var2, vcov, sdcor).
    fit_statistics : a Series (nobs, groups, criterion, logLik, AIC, BIC, ...).
    header : the title lines before the tables.  notes : warnings printed after them.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> s = fit.summary()
    >>> s.startswith("Linear mixed model fit by REML")
    True
    >>> list(s.coefficients.columns)
    ['Estimate', 'Std. Error', 'df', 't value', 'Pr(>|t|)']
    """

    coefficients: pd.DataFrame
    random_effects: pd.DataFrame
    fit_statistics: pd.Series
    header: tuple[str, ...]
    notes: tuple[str, ...]

    def __new__(cls, text: str, *, coefficients: pd.DataFrame, random_effects: pd.DataFrame,
                fit_statistics: pd.Series, header=(), notes=()) -> FitSummary:
        obj = super().__new__(cls, text)
        obj.coefficients = coefficients
        obj.random_effects = random_effects
        obj.fit_statistics = fit_statistics
        obj.header = tuple(header)
        obj.notes = tuple(notes)
        return obj

    def __repr__(self) -> str:  # the printout, not a quoted string, at the prompt
        return str(self)

    def _repr_html_(self) -> str:
        return summary_html(self.header, self.fit_statistics, self.random_effects,
                            self.coefficients, self.notes)


def _table_html(frame, caption: str, digits: int = 4) -> str:
    fmt = {c: (lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
               else f"{v:.{digits}g}") for c in getattr(frame, "columns", [])
           if pd.api.types.is_float_dtype(frame[c])}
    body = frame.to_html(formatters=fmt, na_rep="", border=0, classes="twolevel-table")
    return f"<p><b>{html.escape(caption)}</b></p>{body}"


def summary_html(header, fit_statistics: pd.Series, random_effects: pd.DataFrame,
                 coefficients: pd.DataFrame, notes=()) -> str:
    """lme4's summary as HTML: the header lines, then tables of the fit statistics, the random
    effects and the fixed effects, then the notes."""
    parts = ["<div class='twolevel-summary'>"]
    parts += [f"<div><code>{html.escape(h)}</code></div>" for h in header if h.strip()]
    cells = {k: (f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in fit_statistics.items()}
    parts.append(_table_html(pd.DataFrame([cells], index=[""]), "Fit statistics"))
    parts.append(_table_html(random_effects, "Random effects"))
    parts.append(_table_html(coefficients, "Fixed effects"))
    parts += [f"<p><i>{html.escape(n)}</i></p>" for n in notes if n]
    parts.append("</div>")
    return "\n".join(parts)


class MixedFit:
    """The generics shared by the fitted LMM and GLMM (lme4's ``merMod`` methods).

    A subclass provides ``design``, ``theta``, ``fixef()``, ``vcov()``, ``VarCorr()``,
    ``cond_var()``, ``_modes()`` (the (J, q) conditional modes b̃), ``summary()``, ``loglik``,
    ``aic``, ``bic``, ``nobs``, ``ngroups``, ``predict()`` and ``_repr_fields()``.
    """

    __slots__ = ()

    # ------------------------------------------------------------- lme4's function names
    def logLik(self) -> float:  # noqa: N802 (lme4's name)
        """lme4's ``logLik(fit)`` (the restricted log-likelihood for a REML fit)."""
        return float(self.loglik)

    def AIC(self) -> float:  # noqa: N802
        """−2 logLik + 2 npar."""
        return float(self.aic)

    def BIC(self) -> float:  # noqa: N802
        """−2 logLik + log(nobs) npar."""
        return float(self.bic)

    # ------------------------------------------------------------- random effects
    def ranef(self, cond_var: bool = True) -> pd.DataFrame:
        """Conditional modes b̃_j per group (lme4's ``ranef``) with, when ``cond_var``, their
        conditional SDs ``condsd_<name>``, variances ``condvar_<name>`` and covariances
        ``condcov_<a>:<b>`` (``ranef(fit, condVar = TRUE)``)."""
        names = list(self.design.z_names)
        idx = pd.Index(self.design.group_levels, name=self.design.group)
        df = pd.DataFrame(self._modes(), index=idx, columns=names)
        if cond_var:
            V = self.cond_var()
            for i, n in enumerate(names):
                df[f"condsd_{n}"] = np.sqrt(V[:, i, i])
            for i, n in enumerate(names):
                df[f"condvar_{n}"] = V[:, i, i]
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    df[f"condcov_{names[i]}:{names[j]}"] = V[:, i, j]
        return df

    def coef(self) -> pd.DataFrame:
        """Per-group coefficients: β̂ plus that group's conditional modes (lme4's ``coef``)."""
        fe = self.fixef()
        b = self._modes()
        idx = pd.Index(self.design.group_levels, name=self.design.group)
        out = pd.DataFrame(np.tile(fe.to_numpy(), (self.ngroups, 1)), index=idx, columns=fe.index)
        for k, n in enumerate(self.design.z_names):
            out[n] = (out[n] if n in out.columns else 0.0) + b[:, k]
        return out

    # ------------------------------------------------------------- inference
    def confint(self, method: str = "profile", level: float = 0.95, **kwargs) -> pd.DataFrame:
        """lme4's ``confint(fit, method = ...)``: :func:`twolevel.confint` on this fit."""
        from twolevel.models.inference.intervals import confint

        return confint(self, method=method, level=level, **kwargs)

    def simulate(self, nsim: int = 1, rng=None, *, seed=None, use_u: bool = False,
                 newdata=None, allow_new_levels: bool = False) -> pd.DataFrame:
        """lme4's ``simulate(fit, nsim, seed, use.u)``: :func:`twolevel.simulate` on this fit."""
        from twolevel.models.inference.simulate import simulate

        return simulate(self, nsim, rng, seed=seed, use_u=use_u, newdata=newdata,
                        allow_new_levels=allow_new_levels)

    # ------------------------------------------------------------- display
    def __repr__(self) -> str:
        return short_repr(type(self).__name__, self._repr_fields(), self.design.formula)

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()


class BayesSummary(str):
    """``BayesFit.summary()``: the printed text (the ``str`` itself) with its parts as data —
    ``table`` (the posterior table, ArviZ ``az.summary``'s columns: mean, sd, quantiles, ESS,
    R̂), ``gate`` (the diagnostics as a one-row DataFrame with ``passed``), ``priors`` (the
    :class:`~twolevel.models.bayes.priors.ModelPriors`) and ``header`` (the lines above)."""

    table: pd.DataFrame
    gate: pd.DataFrame
    priors: object
    header: tuple[str, ...]

    def __new__(cls, text: str, *, table, gate, priors, header=()) -> BayesSummary:
        obj = super().__new__(cls, text)
        obj.table, obj.gate, obj.priors, obj.header = table, gate, priors, tuple(header)
        return obj

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        parts = ["<div class='twolevel-summary'>"]
        parts += [f"<div><code>{html.escape(h)}</code></div>" for h in self.header]
        parts.append("<p><b>Priors</b></p><pre>" + html.escape(str(self.priors)) + "</pre>")
        parts.append("<p><b>Diagnostics gate</b></p>" + self.gate.to_html(index=False, border=0))
        parts.append("<p><b>Posterior</b></p>"
                     + self.table.to_html(float_format=lambda v: f"{v:.4g}", border=0))
        parts.append("</div>")
        return "\n".join(parts)
