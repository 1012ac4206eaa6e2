"""Priors of the Bayesian model with several nested grouping factors (no PyMC here).

The blocks are those of :mod:`twolevel.models.bayes.priors`, with one ``sd`` prior and one
covariance structure per grouping factor (brms' parametrisation of ``(… | school/class)``: each
factor its own SDs and LKJ correlation, the factors a priori independent):

* ``beta``: Normal per coefficient, as :func:`twolevel.models.bayes.priors.default_priors`
  (intercept centred at mean(y) with SD 2.5·sd(y); a slope on x_k: Normal(0, 2.5·sd(y)/sd(x_k))).
* ``sd[factor]``: Gamma(2, 2/s_k) per effect of the factor, s_k = sd(y) for an intercept and
  sd(y)/sd(z_k) for a slope on z_k (the boundary-avoiding prior of the two-level model).
* ``corr``: LKJ(η = 2) on the correlation matrix of every factor with a correlated block of two
  or more effects (``(1 + x | school)``); a factor whose terms all have one effect
  (``(1 | school)``, ``(1 + x || school)``) has independent effects.
* ``sigma``: HalfStudentT(ν = 4, sd(y)).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.bayes.priors import _LOCATION, _POSITIVE, Prior, _check_block, _sd
from twolevel.models.design.multi import MultiDesign

__all__ = ["MultiPriors", "check_multi_priors", "default_multi_priors", "factor_structures"]


def factor_structures(design: MultiDesign) -> tuple[str, ...]:
    """Per factor ``"lkj"`` (one correlated term with all of the factor's effects) or
    ``"diag"`` (every term on the factor has one effect).

    Raises
    ------
    FormulaError
        A factor whose effects are split into several correlated blocks.
    """
    out = []
    for k, f in enumerate(design.factors):
        terms = [t for t in design.terms if t.factor == k]
        if len(terms) == 1 and len(terms[0].columns) >= 2:
            out.append("lkj")
        elif all(len(t.columns) == 1 for t in terms):
            out.append("diag")
        else:
            blocks = " + ".join("(" + " + ".join(t.names) + f" | {f.name})" for t in terms)
            raise FormulaError(
                f"formula '{design.formula}' splits the random effects of '{f.name}' into blocks "
                f"{blocks}; the Bayesian fit takes, per grouping factor, either one correlated "
                "block '(1 + x | g)' or only independent effects '(1 + x || g)'"
            )
    return tuple(out)


@dataclass(frozen=True)
class MultiPriors:
    """The priors of a model with several grouping factors (module docstring for the defaults).

    Fields
    ------
    beta : prior of the fixed effects (Normal or StudentT).
    sd : one prior per grouping factor (in ``factor_names`` order), a positive family with one
        entry per effect of the factor.
    corr : LKJ prior of each correlated factor's correlation matrix.
    sigma : residual SD prior.
    fixed_names, factor_names, effect_names : what the entries refer to.

    Examples
    --------
    >>> p = default_multi_priors(design)            # doctest: +SKIP
    >>> p.replace(corr=Prior("LKJ", eta=1.0))       # doctest: +SKIP
    """

    beta: Prior
    sd: tuple[Prior, ...]
    corr: Prior
    sigma: Prior
    fixed_names: tuple[str, ...] = ()
    factor_names: tuple[str, ...] = ()
    effect_names: tuple[tuple[str, ...], ...] = ()

    def replace(self, **changes) -> MultiPriors:
        """A copy with some blocks replaced (checked by :func:`check_multi_priors` when used)."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        lines = [f"beta  [{', '.join(self.fixed_names)}] ~ {self.beta}"]
        for f, e, p in zip(self.factor_names, self.effect_names, self.sd, strict=True):
            lines.append(f"sd    {f} [{', '.join(e)}] ~ {p}")
        lines += [f"corr  ~ {self.corr}", f"sigma ~ {self.sigma}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, str]:
        """The priors as printable strings."""
        out = {"beta": str(self.beta), "corr": str(self.corr), "sigma": str(self.sigma)}
        for f, p in zip(self.factor_names, self.sd, strict=True):
            out[f"sd[{f}]"] = str(p)
        return out


def default_multi_priors(design: MultiDesign) -> MultiPriors:
    """Weakly informative priors scaled to the data (module docstring).

    Parameters
    ----------
    design : MultiDesign

    Returns
    -------
    MultiPriors

    Examples
    --------
    >>> print(default_multi_priors(design).corr)    # doctest: +SKIP
    LKJ(eta: 2.0)
    """
    y = design.y
    s_y = _sd(y)
    mu, sig = [], []
    for k in range(design.p):
        col = design.X[:, k]
        if np.ptp(col) == 0:
            mu.append(float(np.mean(y)) if col[0] != 0 else 0.0)
            sig.append(2.5 * s_y / max(abs(float(col[0])), 1e-12))
        else:
            mu.append(0.0)
            sig.append(2.5 * s_y / _sd(col))
    sds = []
    for f in design.factors:
        scale = [s_y if np.ptp(f.Z[:, j]) == 0 else s_y / _sd(f.Z[:, j]) for j in range(f.q)]
        sds.append(Prior("Gamma", alpha=2.0, beta=[2.0 / v for v in scale]))
    return MultiPriors(
        beta=Prior("Normal", mu=mu, sigma=sig), sd=tuple(sds), corr=Prior("LKJ", eta=2.0),
        sigma=Prior("HalfStudentT", nu=4.0, sigma=s_y), fixed_names=design.x_names,
        factor_names=tuple(f.name for f in design.factors),
        effect_names=tuple(f.z_names for f in design.factors))


def check_multi_priors(priors: MultiPriors, design: MultiDesign) -> None:
    """Raise :class:`TwolevelError` naming the block when a prior does not fit ``design``."""
    if not isinstance(priors, MultiPriors):
        raise TwolevelError(
            f"priors for '{design.formula}' (several grouping factors) must be a MultiPriors "
            f"(twolevel.models.bayes.multi_priors.default_multi_priors), got "
            f"{type(priors).__name__}")
    if len(priors.sd) != len(design.factors):
        raise TwolevelError(
            f"priors have {len(priors.sd)} 'sd' prior(s) but '{design.formula}' has "
            f"{len(design.factors)} grouping factors "
            f"({', '.join(f.name for f in design.factors)}); give one per factor")
    _check_block("beta", priors.beta, _LOCATION, design.p)
    for f, p in zip(design.factors, priors.sd, strict=True):
        _check_block(f"sd[{f.name}]", p, _POSITIVE, f.q)
    _check_block("corr", priors.corr, {"LKJ"}, None)
    _check_block("sigma", priors.sigma, _POSITIVE, None)
