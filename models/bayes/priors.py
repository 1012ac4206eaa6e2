"""Priors of the Bayesian two-level model, as plain values (no PyMC here).

A :class:`Prior` names a distribution and its parameters, like bambi's ``Prior``; it prints as
``Normal(mu: 0.0, sigma: 1.0)``. :class:`ModelPriors` holds one prior per block of parameters and
:func:`default_priors` scales them to the data (weakly informative, bambi/rstanarm style):

* ``beta`` (fixed effects): Normal(mu, sigma) per coefficient. The intercept has
  ``mu = mean(y)``, ``sigma = 2.5 · sd(y)``; a slope of column ``x_k`` has ``mu = 0``,
  ``sigma = 2.5 · sd(y) / sd(x_k)``.
* ``sd`` (random-effect standard deviations, the ``sd_dist`` of the LKJ prior): Gamma(α = 2,
  β = 2 / s_k) per effect, with scale s_k = sd(y) for the intercept and sd(y) / sd(z_k) for a
  slope on ``z_k`` (prior mean s_k, mode s_k / 2). This is the boundary-avoiding prior of Chung,
  Rabe-Hesketh, Dorie, Gelman and Liu (2013): weak over the plausible range, but its density
  goes to 0 linearly at SD = 0, so the posterior has no long tail towards 0 on the log scale that
  NUTS samples. With a HalfNormal(s_k) prior, the SD of the lecture's slope mixed slowly whenever
  a chain wandered towards 0 (about one seed in ten failed the diagnostic gate at 4 × 1000 draws,
  min ESS 334 at the default seed); with Gamma(2, 2/s_k) eleven seeds gave min ESS 1224–3148.
  ``default_priors(design).replace(sd=Prior("HalfNormal", sigma=...))`` restores a prior with
  mass at 0 where an SD of exactly 0 must stay plausible.
* ``corr``: LKJ(η) on the correlation matrix of the random effects, η = 2 (mild shrinkage to 0).
* ``sigma`` (residual SD): HalfStudentT(nu = 4, sigma = sd(y)).

Binary and count outcomes (:func:`default_glmm_priors`; no ``sigma``), on the link scale:

* ``beta``: the intercept Normal(g(ȳ), 2.5) with g the link and ȳ the overall proportion (clipped
  to [0.01, 0.99]) or, for counts, the overall rate Σy / Σ exp(offset); a slope of column ``x_k``
  Normal(0, 2.5 / sd(x_k)) (rstanarm's autoscaled defaults: a change of 2.5 on the log-odds or
  log-rate scale per SD of the predictor is large).
* ``sd``: Gamma(2, 2 / s_k) with s_k = 1 for the intercept and 1 / sd(z_k) for a slope on z_k:
  prior mean 1 on the link scale (school odds or rates varying by a factor of e between schools
  one SD apart), the same boundary-avoiding family as above.
* ``corr``: LKJ(2).

Every block can be replaced: ``default_priors(design).replace(sigma=Prior("HalfNormal",
sigma=20.0))``. Vector parameters (one value per coefficient or per effect) may be given as a
scalar (recycled) or as a sequence of the right length; :func:`check_priors` says what is wrong.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from twolevel.data.errors import TwolevelError
from twolevel.models.design import Design

__all__ = ["Prior", "ModelPriors", "default_priors", "default_glmm_priors", "check_priors",
           "SUPPORTED"]

# Distribution name -> parameters it needs (and, for positive-only parameters, `positive`).
SUPPORTED: dict[str, tuple[str, ...]] = {
    "Normal": ("mu", "sigma"),
    "StudentT": ("nu", "mu", "sigma"),
    "HalfNormal": ("sigma",),
    "HalfStudentT": ("nu", "sigma"),
    "HalfCauchy": ("beta",),
    "Exponential": ("lam",),
    "Gamma": ("alpha", "beta"),
    "LKJ": ("eta",),
}
_LOCATION = {"Normal", "StudentT"}  # for `beta`
# for `sd`, `sigma`
_POSITIVE = {"HalfNormal", "HalfStudentT", "HalfCauchy", "Exponential", "Gamma"}


def _fmt(v: object) -> str:
    arr = np.asarray(v, dtype=float)
    if arr.ndim == 0:
        return repr(round(float(arr), 4))
    return "[" + ", ".join(repr(round(float(x), 4)) for x in arr) + "]"


@dataclass(frozen=True)
class Prior:
    """A named distribution with its parameters, e.g. ``Prior("Normal", mu=0.0, sigma=1.0)``.

    Parameters may be scalars or sequences (one value per coefficient / effect).

    Examples
    --------
    >>> import twolevel as tl
    >>> print(tl.Prior("Normal", mu=0.0, sigma=10.0))
    Normal(mu: 0.0, sigma: 10.0)
    """

    dist: str
    params: dict[str, object] = field(default_factory=dict)

    def __init__(self, dist: str, **params: object) -> None:
        object.__setattr__(self, "dist", dist)
        object.__setattr__(
            self,
            "params",
            {
                k: (float(v) if np.ndim(v) == 0 else tuple(float(x) for x in v))
                for k, v in params.items()
            },
        )

    def __str__(self) -> str:
        inner = ", ".join(f"{k}: {_fmt(v)}" for k, v in self.params.items())
        return f"{self.dist}({inner})"

    def param(self, name: str, size: int | None = None) -> np.ndarray:
        """Parameter ``name`` as an array, broadcast to ``size`` entries when given."""
        v = np.asarray(self.params[name], dtype=float)
        if size is None:
            return v
        return np.broadcast_to(v, (size,)).copy() if v.ndim == 0 else v


@dataclass(frozen=True)
class ModelPriors:
    """The priors of one two-level model (see the module docstring for the defaults).

    Fields
    ------
    beta : prior of the fixed effects (Normal or StudentT), one entry per column of X.
    sd : prior of the random-effect SDs (positive family), one entry per random effect.
    corr : LKJ prior of the random-effect correlation matrix (``Prior("LKJ", eta=2.0)``).
    sigma : prior of the residual SD (positive family, scalar parameters); None for binary and
        count outcomes, which have no residual SD.
    fixed_names, effect_names : the names the vector entries refer to (for printing).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> p = tl.default_priors(tl.make_design("g1rscore ~ famsesc + (1 | schid)", d))
    >>> p.fixed_names
    ('(Intercept)', 'famsesc')
    """

    beta: Prior
    sd: Prior
    corr: Prior
    sigma: Prior | None
    fixed_names: tuple[str, ...] = ()
    effect_names: tuple[str, ...] = ()

    def replace(self, **changes: Prior) -> ModelPriors:
        """A copy with some blocks replaced (checked by :func:`check_priors` when used)."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        lines = [
            f"beta  [{', '.join(self.fixed_names)}] ~ {self.beta}",
            f"sd    [{', '.join(self.effect_names)}] ~ {self.sd}",
            f"corr  ~ {self.corr}",
        ]
        if self.sigma is not None:
            lines.append(f"sigma ~ {self.sigma}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, str]:
        """The priors as printable strings, keyed by parameter block."""
        return {k: str(getattr(self, k)) for k in ("beta", "sd", "corr", "sigma")
                if getattr(self, k) is not None}


def _sd(x: np.ndarray) -> float:
    s = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return s if s > 0 and np.isfinite(s) else 1.0


def default_priors(design: Design) -> ModelPriors:
    """Weakly informative priors scaled to the data of ``design`` (module docstring).

    Scales: ``s_y = sd(y)``; for a non-constant column ``x_k`` of X (or ``z_k`` of Z) the slope
    scale is ``s_y / sd(x_k)``; constant columns (the intercept) use ``s_y`` and, in ``beta``,
    are centred at ``mean(y)``.

    Parameters
    ----------
    design : Design
        From :func:`make_design`.

    Returns
    -------
    ModelPriors
        ``beta``, ``sd``, ``corr`` and ``sigma`` priors; change one with ``.replace(...)``.

    Examples
    --------
    >>> import twolevel as tl
    >>> des = tl.make_design("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> print(tl.default_priors(des).corr)
    LKJ(eta: 2.0)
    """
    moments = getattr(design, "column_moments", None)
    if moments is not None:  # statistics-only design (engine duckdb/dask)
        return _default_priors_from_moments(design, moments)
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
    sd_scale = []
    for k in range(design.q):
        col = design.Z[:, k]
        sd_scale.append(s_y if np.ptp(col) == 0 else s_y / _sd(col))
    return ModelPriors(
        beta=Prior("Normal", mu=mu, sigma=sig),
        sd=Prior("Gamma", alpha=2.0, beta=[2.0 / v for v in sd_scale]),
        corr=Prior("LKJ", eta=2.0),
        sigma=Prior("HalfStudentT", nu=4.0, sigma=s_y),
        fixed_names=design.x_names,
        effect_names=design.z_names,
    )


def link_scale_intercept(y: np.ndarray, w: np.ndarray, offset: np.ndarray, family: str,
                         link: str) -> float:
    """The prior centre of a GLMM's intercept: g(ȳ) with ȳ = Σw·y / Σw clipped to [0.01, 0.99]
    (binomial; y a proportion, w the trials) or log(Σy / Σ exp(offset)) (Poisson)."""
    from scipy import special, stats

    if family == "poisson":
        return float(np.log(max(float(np.sum(w * y)), 0.5) / float(np.sum(w * np.exp(offset)))))
    ybar = float(np.clip(np.sum(w * y) / np.sum(w), 0.01, 0.99))
    if link == "probit":
        return float(stats.norm.ppf(ybar))
    if link == "cloglog":
        return float(np.log(-np.log1p(-ybar)))
    return float(special.logit(ybar))


def default_glmm_priors(design: Design, y: np.ndarray, w: np.ndarray, offset: np.ndarray,
                        family: str, link: str) -> ModelPriors:
    """Weakly informative link-scale priors for a binary or count outcome (module docstring):
    ``y`` the response (proportions for binomial), ``w`` trials × prior weights, ``offset``."""
    mu, sig = [], []
    for k in range(design.p):
        col = design.X[:, k]
        if np.ptp(col) == 0:
            const = float(col[0]) if col[0] != 0 else 1.0
            mu.append(link_scale_intercept(y, w, offset, family, link) / const
                      if col[0] != 0 else 0.0)
            sig.append(2.5 / abs(const))
        else:
            mu.append(0.0)
            sig.append(2.5 / _sd(col))
    scale = [1.0 if np.ptp(design.Z[:, k]) == 0 else 1.0 / _sd(design.Z[:, k])
             for k in range(design.q)]
    return ModelPriors(
        beta=Prior("Normal", mu=mu, sigma=sig),
        sd=Prior("Gamma", alpha=2.0, beta=[2.0 / v for v in scale]),
        corr=Prior("LKJ", eta=2.0),
        sigma=None,
        fixed_names=design.x_names,
        effect_names=design.z_names,
    )


def _default_priors_from_moments(design, mom: dict) -> ModelPriors:
    """:func:`default_priors` from each column's (mean, sd) over the rows used (no rows held):
    a column with sd 0 is constant at its mean."""
    ybar, s_y = mom["(response)"]
    s_y = s_y if s_y > 0 and np.isfinite(s_y) else 1.0
    mu, sig = [], []
    for name in design.x_names:
        mean, sd = mom[f"x:{name}"]
        if sd == 0:
            mu.append(ybar if mean != 0 else 0.0)
            sig.append(2.5 * s_y / max(abs(mean), 1e-12))
        else:
            mu.append(0.0)
            sig.append(2.5 * s_y / sd)
    sd_scale = [s_y if mom[f"z:{n}"][1] == 0 else s_y / mom[f"z:{n}"][1] for n in design.z_names]
    return ModelPriors(
        beta=Prior("Normal", mu=mu, sigma=sig),
        sd=Prior("Gamma", alpha=2.0, beta=[2.0 / v for v in sd_scale]),
        corr=Prior("LKJ", eta=2.0),
        sigma=Prior("HalfStudentT", nu=4.0, sigma=s_y),
        fixed_names=design.x_names,
        effect_names=design.z_names,
    )


def _check_block(name: str, prior: Prior, families: set[str], size: int | None) -> None:
    if not isinstance(prior, Prior):
        raise TwolevelError(f"prior '{name}' must be a twolevel.models.bayes.priors.Prior, "
                            f"got {type(prior).__name__}")
    if prior.dist not in families:
        raise TwolevelError(
            f"prior '{name}' is {prior.dist}, which twolevel cannot use there; "
            f"choose one of: {', '.join(sorted(families))}"
        )
    needed = SUPPORTED[prior.dist]
    missing = [p for p in needed if p not in prior.params]
    extra = [p for p in prior.params if p not in needed]
    if missing or extra:
        raise TwolevelError(
            f"prior '{name}' = {prior} must have exactly the parameters {', '.join(needed)} "
            f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'})"
        )
    for p, v in prior.params.items():
        arr = np.asarray(v, dtype=float)
        if arr.ndim == 1 and size is not None and arr.shape[0] != size:
            raise TwolevelError(
                f"prior '{name}' parameter '{p}' has {arr.shape[0]} values but the model has "
                f"{size} {'coefficients' if name == 'beta' else 'entries'} for it; give one value "
                f"or {size}"
            )
        if arr.ndim == 1 and size is None:
            raise TwolevelError(f"prior '{name}' parameter '{p}' must be a single number")
        if not np.all(np.isfinite(arr)):
            raise TwolevelError(f"prior '{name}' parameter '{p}' must be finite, got {_fmt(arr)}")
        if p != "mu" and np.any(arr <= 0):
            raise TwolevelError(f"prior '{name}' parameter '{p}' must be positive, got {_fmt(arr)}")


def check_priors(priors: ModelPriors, design: Design) -> None:
    """Raise :class:`TwolevelError` naming the block and parameter when a prior does not fit
    ``design`` (wrong family, missing parameter, wrong length, non-positive scale)."""
    _check_block("beta", priors.beta, _LOCATION, design.p)
    _check_block("sd", priors.sd, _POSITIVE, design.q)
    _check_block("corr", priors.corr, {"LKJ"}, None)
    if priors.sigma is not None:
        _check_block("sigma", priors.sigma, _POSITIVE, None)
