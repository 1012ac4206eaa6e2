"""Bayesian fits of plausible values and imputed data sets: one fit per set, draws stacked
(brms's ``brm_multiple``, rms's ``stackMI``).

Each set is fitted by :func:`twolevel.models.bayes.fit.fit_bayes` with the same priors and
sampler settings (the seed advanced per set); the stacked posterior concatenates the sets'
chains, so posterior means are the average of the per-set means and the spread includes the
between-set variation (the Bayesian analogue of Rubin's total variance). Convergence is judged
per set: chains of different plausible values legitimately disagree, so an R̂ across sets means
nothing. Sampling weights are not supported here (their Bayesian treatment is unsettled; see
``docs/survey.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError
from twolevel.models.survey.pv import pv_formulas

__all__ = ["StackedBayesFit", "fit_bayes_sets"]


@dataclass(frozen=True, repr=False)
class StackedBayesFit:
    """Per-set Bayesian fits and their stacked draws.

    Fields
    ------
    fits : the per-set ``BayesFit`` objects.  labels : one label per set.
    """

    fits: tuple
    labels: tuple[str, ...]

    @property
    def m(self) -> int:
        """Number of sets."""
        return len(self.fits)

    @property
    def posterior(self):
        """The sets' posteriors concatenated along ``chain`` (chains renumbered)."""
        import xarray as xr

        parts, offset = [], 0
        for f in self.fits:
            post = f.posterior
            n = post.sizes["chain"]
            parts.append(post.assign_coords(chain=np.arange(offset, offset + n)))
            offset += n
        return xr.concat(parts, dim="chain")

    @property
    def diagnostics(self) -> list:
        """Each set's diagnostics (its gate)."""
        return [f.diagnostics for f in self.fits]

    def to_frame(self, prob: float = 0.95) -> pd.DataFrame:
        """mean, sd and quantiles of the stacked draws, the SD of the per-set means
        (``between_sd``) and the largest per-set R̂ (``max_rhat_within_set``)."""
        frames = [f.to_frame(prob) for f in self.fits]
        names = list(frames[0].index)
        post = self.posterior
        rows = {}
        for k, nm in enumerate(post["fixed"].to_numpy()):
            rows[f"fixef:{nm}"] = post["beta"].isel(fixed=k).to_numpy().ravel()
        for k, nm in enumerate(post["effect"].to_numpy()):
            rows[f"sd:{nm}"] = post["sd"].isel(effect=k).to_numpy().ravel()
        if "corr" in post:
            eff = [str(e) for e in post["effect"].to_numpy()]
            for a in range(len(eff)):
                for b in range(a):
                    rows[f"corr:{eff[b]}:{eff[a]}"] = post["corr"].isel(
                        effect=a, effect_b=b).to_numpy().ravel()
        if "sigma" in post:
            rows["sigma"] = post["sigma"].to_numpy().ravel()
        lo, hi = (1 - prob) / 2, (1 + prob) / 2
        out = pd.DataFrame({
            "mean": [rows[n].mean() for n in names],
            "sd": [rows[n].std(ddof=1) for n in names],
            f"q{100 * lo:g}": [np.quantile(rows[n], lo) for n in names],
            f"q{100 * hi:g}": [np.quantile(rows[n], hi) for n in names],
            "between_sd": [np.std([fr.loc[n, "mean"] for fr in frames], ddof=1) for n in names],
            "max_rhat_within_set": [max(fr.loc[n, "r_hat"] for fr in frames) for n in names],
        }, index=pd.Index(names, name="parameter"))
        return out

    def __repr__(self) -> str:
        from twolevel.models.fit_base import short_repr

        return short_repr(type(self).__name__, [("sets", self.m)], self.fits[0].formula)

    def summary(self) -> str:
        """Number of sets, each set's gate, the stacked posterior table."""
        lines = [f"Bayesian fits of {self.m} sets, draws stacked (as brms's brm_multiple)",
                 f"Formula: {self.fits[0].formula}  (set 1 of {self.m})",
                 "Sets: " + ", ".join(self.labels),
                 "Diagnostics per set (R-hat across sets is not meaningful):"]
        for lab, d in zip(self.labels, self.diagnostics, strict=True):
            lines.append(f"  {lab}: {'passed' if d.passed else 'FAILED'}; divergences "
                         f"{d.divergences}, max R-hat {d.max_rhat:.4f}, min ESS bulk "
                         f"{d.min_ess_bulk:.0f}")
        lines += ["", self.to_frame().to_string(float_format=lambda v: f"{v:.4g}")]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def fit_bayes_sets(formula: str, data, pv=None, **kwargs) -> StackedBayesFit:
    """Fit ``formula`` by :func:`~twolevel.models.bayes.fit.fit_bayes` once per plausible value
    (``pv``: a list of response columns or {variable: [columns]}) or per data set (``data`` a
    list of frames), and stack the draws.

    Parameters
    ----------
    formula, data : as ``fit_bayes``; ``data`` may be a list of imputed frames.
    pv : plausible values (see :func:`~twolevel.models.survey.pv.pv_formulas`).
    **kwargs : passed to every ``fit_bayes`` call; ``settings.seed`` is advanced by the set
        number so that the sets' chains are independent.

    Returns
    -------
    StackedBayesFit

    Raises
    ------
    DataError
        Bad PV columns or lists (as ``lmer``), both ``pv`` and a list of frames, or sampling
        weights.

    Examples
    --------
    >>> # tl.fit_bayes("pv1math ~ escs + (1 | schoolid)", pisa, pv=["pv1math", "pv2math"])
    """
    from twolevel.models.bayes.fit import SamplerSettings, fit_bayes

    if kwargs.get("weights") is not None:
        raise DataError("Bayesian fits of plausible values take no sampling weights here; fit "
                        "the weighted model by pseudo-ML (tl.lmer(..., weights=..., pv=...))")
    if isinstance(data, (list, tuple)):
        if pv is not None:
            raise DataError("give either pv=[...] or a list of imputed data sets, not both")
        formulas, frames = [formula] * len(data), list(data)
        labels = [f"set {i + 1}" for i in range(len(data))]
    else:
        formulas = pv_formulas(formula, pv, data)
        frames = [data] * len(formulas)
        labels = (list(pv) if isinstance(pv, (list, tuple))
                  else [f"set {i + 1}" for i in range(len(formulas))])
    base = kwargs.pop("settings", None) or SamplerSettings()
    fits = []
    for m, (f, d) in enumerate(zip(formulas, frames, strict=True)):
        settings = dataclasses.replace(base, seed=base.seed + m)
        fits.append(fit_bayes(f, d, settings=settings, **kwargs))
    return StackedBayesFit(fits=tuple(fits), labels=tuple(labels))
