"""Sampler settings and the diagnostic gate of a NUTS fit (:class:`SamplerSettings`,
:class:`Diagnostics`, :func:`diagnose`); :mod:`twolevel.models.bayes.fit` uses and re-exports
them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from twolevel.models.bayes.diagnostics import rhat_ess

GATE = {"max_rhat": 1.01, "min_ess": 400.0, "min_bfmi": 0.3}

# The integrated GLMM sampler's defaults (school effects integrated out by quadrature; NUTS on
# p + q(q+1)/2 hyperparameters, 5 at the lecture design, as (β, log SDs, atanh of the partial
# correlations)). Tuning: at the lecture design 300 steps gave 4 × 1,000 draws with min ESS
# 1,419 (tail, slope SD), 400 steps per 400 draws ESS 0.48 per draw, against 0.45 per draw after
# 1,000 steps; 500 keeps a margin. Target acceptance: 0.9 took 6.7 leapfrog steps per draw and
# gave 15.0 min-ESS/s, 0.8 took 5.6 and gave 19.8 with the same ESS, no divergence either way
# (benchmarks/bayes_glmm.py, idle machine, 2026-12-07); diagonal adaptation at 0.8 gave 15.6.
INTEGRATED_TUNE = 500
INTEGRATED_TARGET_ACCEPT = 0.8



@dataclass(frozen=True)
class SamplerSettings:
    """NUTS settings: ``chains`` × ``draws`` after ``tune`` adaptation steps, on ``cores`` threads;
    ``seed`` makes the run reproducible (also the draws of the school effects). ``target_accept``
    is 0.9 (PyMC's default is 0.8): the longer trajectories decorrelate the skewed posterior of the
    slope SD, about 25% more ESS for about 25% more sampling time on the lecture model, so more
    ESS per second of a whole fit, and fewer low-ESS seeds on HSB. ``adaptation`` is
    nutpie's mass-matrix adaptation: ``"low_rank"`` (default: the diagonal plus a low-rank
    correction learned from the draws and gradients, which captures the correlation of the SDs
    with the LKJ factor; about 30% more ESS per gradient on the lecture model than ``"diag"``),
    ``"diag"`` or ``"draw_diag"``.

    These are the defaults of the normal-outcome (collapsed) model. Binary and count outcomes
    sample every school effect and take :meth:`for_family`'s defaults instead.

    Examples
    --------
    >>> import twolevel as tl
    >>> tl.SamplerSettings(chains=2, draws=500).chains
    2
    >>> tl.SamplerSettings.for_family("binomial").adaptation
    'diag'
    >>> tl.SamplerSettings.for_family("binomial", sampler="integrated").tune
    500
    """

    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    seed: int = 20250121
    target_accept: float = 0.9
    cores: int = 2
    adaptation: str = "low_rank"

    @classmethod
    def for_family(cls, family: str = "gaussian", sampler: str = "full",
                   **overrides) -> SamplerSettings:
        """The default settings for ``family`` (and, for binary and count outcomes, the
        ``sampler``) with ``overrides``. ``"gaussian"``: the class defaults.
        ``"binomial"``/``"poisson"`` with ``sampler="integrated"`` (the school effects integrated
        out): the class defaults with ``tune=INTEGRATED_TUNE`` (500) and
        ``target_accept=INTEGRATED_TARGET_ACCEPT`` (0.8), measured as the comment above them
        says. With ``sampler="full"`` (non-centred school effects sampled, J·q more
        parameters): ``adaptation="diag"``, ``target_accept=0.8``, ``draws=2000``. Measured at
        the lecture design (742 schools, Bernoulli, random slope, 4 chains, 2 cores): nutpie's
        low-rank adaptation there gave 1,016 divergent transitions in 890 s; the diagonal one
        none, in 158 s at 0.9 with max R-hat 1.0104 over the 1,490 school effects at 1,000 draws,
        and in 135 s at 0.8 with 2,000 draws, max R-hat 1.0035 and min ESS 1,078 (the gate's R-hat
        ≤ 1.01 over every school effect needs the longer chains)."""
        if family == "gaussian":
            base = {}
        elif sampler == "integrated":
            base = {"tune": INTEGRATED_TUNE, "target_accept": INTEGRATED_TARGET_ACCEPT}
        else:
            base = {"adaptation": "diag", "target_accept": 0.8, "draws": 2000}
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass(frozen=True)
class Diagnostics:
    """The diagnostic gate of a NUTS run, over **every** parameter including each school effect.

    divergences : post-warmup divergent transitions.  max_rhat : largest rank-normalised split
    R̂.  min_ess_bulk / min_ess_tail : smallest bulk / tail ESS.  bfmi : per chain.
    worst_rhat / worst_ess : the parameter that attains the extreme.  problems : plain-words
    failures of the gate (R̂ > 1.01, ESS < 400, any divergence, BFMI < 0.3); empty when it passes.
    """

    divergences: int
    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    bfmi: tuple[float, ...]
    worst_rhat: str
    worst_ess: str
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_frame(self) -> pd.DataFrame:
        """One row: the numbers and whether the gate passed."""
        return pd.DataFrame([{
            "divergences": self.divergences, "max_rhat": self.max_rhat,
            "min_ess_bulk": self.min_ess_bulk, "min_ess_tail": self.min_ess_tail,
            "min_bfmi": min(self.bfmi) if self.bfmi else np.nan,
            "worst_rhat": self.worst_rhat, "worst_ess": self.worst_ess,
            "passed": self.passed,
        }])


def _flat_params(post: xr.Dataset, names: Sequence[str] = ("beta", "sigma", "sd", "corr",
                                                          "b_school")) -> dict[str, np.ndarray]:
    """Every scalar parameter of the posterior's variables ``names`` (those present) as
    (chain, draw) arrays named like ``beta[(Intercept)]``, ``corr[famsesc,(Intercept)]`` (a
    correlation, ``corr`` or ``corr_<factor>``: below the diagonal only, the diagonal is 1),
    ``b_school[1001,famsesc]``."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name not in post:
            continue
        da = post[name]
        other = [d for d in da.dims if d not in ("chain", "draw")]
        arr = da.transpose("chain", "draw", *other).to_numpy()
        if not other:
            out[name] = arr
            continue
        labels = [[str(v) for v in da[d].to_numpy()] for d in other]
        for idx in np.ndindex(*arr.shape[2:]):
            if (name == "corr" or name.startswith("corr_")) and idx[0] <= idx[1]:
                continue
            lab = ",".join(labels[k][i] for k, i in enumerate(idx))
            out[f"{name}[{lab}]"] = arr[(slice(None), slice(None), *idx)]
    return out


def diagnose(dt, params: dict[str, np.ndarray] | None = None) -> Diagnostics:
    """R̂, bulk/tail ESS (ArviZ's algorithms, vectorised: :mod:`twolevel.models.bayes.diagnostics`),
    divergences and BFMI of a posterior DataTree, and the gate. ``params``: the scalar
    parameters to check as (chain, draw) arrays by name (default :func:`_flat_params`)."""
    if params is None:
        params = _flat_params(dt["posterior"].to_dataset())
    names = list(params)
    arr = np.stack([params[n] for n in names], axis=-1)  # (chain, draw, K)
    rhat, ess_b, ess_t = rhat_ess(arr)
    stats = dt["sample_stats"]
    div = int(stats["diverging"].sum()) if "diverging" in stats else 0
    bfmi: tuple[float, ...] = ()
    if "energy" in stats:
        e = stats["energy"].transpose("chain", "draw").to_numpy()
        bfmi = tuple(float(np.mean(np.diff(c) ** 2) / np.var(c)) for c in e)
    i_r, i_e = int(np.nanargmax(rhat)), int(np.nanargmin(ess_b))
    d = Diagnostics(
        divergences=div, max_rhat=float(rhat[i_r]), min_ess_bulk=float(ess_b[i_e]),
        min_ess_tail=float(np.nanmin(ess_t)), bfmi=bfmi, worst_rhat=names[i_r],
        worst_ess=names[i_e], problems=(),
    )
    probs = []
    if d.divergences:
        probs.append(f"{d.divergences} divergent transitions after warm-up: the posterior has "
                     "regions NUTS cannot explore; do not report this fit (raise target_accept, "
                     "or use likelihood='collapsed')")
    if d.max_rhat > GATE["max_rhat"]:
        probs.append(f"R-hat {d.max_rhat:.3f} > {GATE['max_rhat']} for {d.worst_rhat}: the chains "
                     "disagree; run more tuning and draws")
    if d.min_ess_bulk < GATE["min_ess"] or d.min_ess_tail < GATE["min_ess"]:
        probs.append(f"effective sample size too small (bulk {d.min_ess_bulk:.0f}, tail "
                     f"{d.min_ess_tail:.0f} < {GATE['min_ess']:.0f}; worst: {d.worst_ess}): "
                     "run more draws")
    if bfmi and min(bfmi) < GATE["min_bfmi"]:
        probs.append(f"BFMI {min(bfmi):.2f} < {GATE['min_bfmi']} in some chain: the energy "
                     "distribution is poorly explored")
    return Diagnostics(**{**d.__dict__, "problems": tuple(probs)})
