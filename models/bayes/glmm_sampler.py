"""NUTS on the compiled non-centred GLMM: nutpie's Rust sampler calling ``twolevel_logp_glmm`` of
``ckernels.c`` (the C log density and gradient of :mod:`twolevel.models.bayes.pymc_glmm`'s model
with every school effect non-centred, logit-link binomial/Bernoulli or log-link Poisson).

The PyMC model stays the specification: a test checks the C density and gradient equal
``model.compile_logp`` / ``compile_dlogp`` to 1e-10 at random points, and that the DataTree has the
PyMC route's variables and dims. Why: through PyTensor the gradient at the lecture design (11,091
rows, 742 schools, random slope) cost ~450 µs per evaluation plus ~8 s of compilation per process;
the C loop is one pass over the rows per evaluation, without the GIL, in nutpie's threads, and
nothing is compiled per process (the library is built once per installation,
:mod:`twolevel.models.bayes.ckernels`).

Other links (probit, cloglog), centred effects and prior families without a compiled density go
through the PyMC model (:func:`compiled_glmm_supported` says which).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import gammaln

from twolevel.models.bayes import ckernels, nutpie_bridge
from twolevel.models.bayes import kernel_layout as layout
from twolevel.models.bayes.glmm_loglik import binomial_trials
from twolevel.models.bayes.sampler import (
    LOG2PI,
    CompiledModel,
    _location_params,
    _positive_params,
    _positive_support,
    check_adaptation,
    effect_structure,
    lkj_normalizing_constant,
    nutpie_lib,
    nuts_settings,
    run_nuts,
    trace_to_datatree,
)
from twolevel.models.design import Design

__all__ = ["GLMM_FAMILY_CODES", "GlmmModel", "compile_glmm", "compiled_glmm_supported",
           "glmm_expand", "pack_glmm", "sample_glmm"]

GLMM_FAMILY_CODES = {("binomial", "logit"): 0, ("poisson", "log"): 1}
G_HEADER = 10


def compiled_glmm_supported(family: str, link: str, n_centered: int, priors) -> bool:
    """Whether the C kernel computes this model: non-centred effects, logit binomial or log
    Poisson, β prior Normal/StudentT, SD prior of :data:`kernel_layout.POSITIVE_CODES`, and the
    C route available (:func:`twolevel.models.bayes.ckernels.kernel_route`) with a nutpie the
    sampler bridge knows (:func:`twolevel.models.bayes.nutpie_bridge.private_route`)."""
    return ((family, link) in GLMM_FAMILY_CODES and n_centered == 0
            and priors.beta.dist in layout.LOCATION_CODES
            and priors.sd.dist in layout.POSITIVE_CODES and ckernels.kernel_route() == "c"
            and nutpie_bridge.private_route())


def pack_glmm(design: Design, y: np.ndarray, w: np.ndarray, offset: np.ndarray, family: str,
              link: str, priors, structure: str) -> np.ndarray:
    """The flat float64 vector ``twolevel_logp_glmm`` reads (``ckernels.c``): header (q, p, J, n,
    structure, η, β and SD prior codes, constant, family), β prior (p × 3), SD prior (q × 2), X,
    Z, school index, successes or counts, trials, offset. The constant holds the rows' log C(n, s)
    or −log y!, −½ Jq log 2π of the standard-normal school effects, the priors' normalising
    constants and the LKJ normalising constant."""
    q, p, J, n = design.q, design.p, design.n_groups, design.n
    if family == "binomial":
        s, trials = binomial_trials(y, w)
        row_const = gammaln(trials + 1.0) - gammaln(s + 1.0) - gammaln(trials - s + 1.0)
    else:
        s, trials = np.round(np.asarray(y, dtype=float)), np.ones(n)
        row_const = -gammaln(s + 1.0)
    pb, cb = _location_params(priors.beta, p)
    pd_, cd = _positive_params(priors.sd, q)
    eta = float(priors.corr.param("eta")) if structure == "lkj" else 1.0
    const = float(math.fsum(row_const)) - 0.5 * J * q * LOG2PI + cb + cd
    if structure == "lkj":
        const += lkj_normalizing_constant(eta, q)
    head = np.array([q, p, J, n, layout.LKJ if structure == "lkj" else layout.DIAG, eta,
                     layout.LOCATION_CODES[priors.beta.dist],
                     layout.POSITIVE_CODES[priors.sd.dist], const,
                     GLMM_FAMILY_CODES[(family, link)]], float)
    return np.ascontiguousarray(np.concatenate([
        head, pb.ravel(), pd_.ravel(), np.asarray(design.X, float).ravel(),
        np.asarray(design.Z, float).ravel(), np.asarray(design.group_index, float),
        np.asarray(s, float), np.asarray(trials, float), np.asarray(offset, float)]))


def glmm_expand(x: np.ndarray, q: int, p: int, J: int, structure: str) -> dict[str, np.ndarray]:
    """The PyMC model's variables from unconstrained draws x (..., n_dim): ``beta``; LKJ: the
    packed factor ``chol_cov`` (exp on the diagonal), ``sd`` (row norms of L), ``corr``;
    independent effects: ``sd`` = exp; ``z`` (J × q) and ``b_school`` = z Lᵀ."""
    x = np.asarray(x, dtype=float)
    lead = x.shape[:-1]
    out = {"beta": x[..., :p].copy()}
    L = np.zeros((*lead, q, q))
    if structure == "lkj":
        rows, cols = np.tril_indices(q)
        k = rows.size
        packed = x[..., p:p + k].copy()
        diag = rows == cols
        packed[..., diag] = np.exp(packed[..., diag])
        L[..., rows, cols] = packed
        sd = np.sqrt(np.einsum("...ij,...ij->...i", L, L))
        Ls = L / sd[..., :, None]
        out.update(chol_cov=packed, sd=sd, corr=np.einsum("...ik,...jk->...ij", Ls, Ls))
    else:
        k = q
        sd = np.exp(x[..., p:p + q])
        out["sd"] = sd
        idx = np.arange(q)
        L[..., idx, idx] = sd
    z = x[..., p + k:p + k + J * q].reshape(*lead, J, q)
    out["z"] = z
    out["b_school"] = np.einsum("...jl,...kl->...jk", z, L)
    return out


@dataclass(frozen=True)
class GlmmModel(CompiledModel):
    """The non-centred GLMM as nutpie's Rust sampler takes it
    (:class:`~twolevel.models.bayes.sampler.CompiledModel`), with q effects, p fixed effects, J
    schools and the effects' ``structure``."""

    q: int
    p: int
    J: int
    structure: str

    def expand(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The model's variables from unconstrained draws (:func:`glmm_expand`)."""
        return glmm_expand(x, self.q, self.p, self.J, self.structure)

    def callbacks(self) -> tuple[int, int, object]:
        """nutpie's (logp, expand) addresses: ``twolevel_logp_glmm``, ``twolevel_copy``."""
        return (*ckernels.glmm_callback_addresses(), ckernels.load())


def compile_glmm(design: Design, y, w, offset, family: str, link: str, priors) -> GlmmModel:
    """The :class:`GlmmModel` of a design (nothing is compiled here)."""
    structure = effect_structure(design)
    q, p, J = design.q, design.p, design.n_groups
    data = pack_glmm(design, y, w, offset, family, link, priors, structure)
    data.flags.writeable = False
    m = q * (q + 1) // 2 if structure == "lkj" else q
    n_dim = p + m + J * q
    x0 = np.zeros(n_dim)
    x0[:p] = priors.beta.param("mu", p)
    if structure != "lkj":
        x0[p:p + q] = np.log(_positive_support(priors.sd, q))
    effects = list(design.z_names)
    schools = [str(s) for s in design.group_levels]
    cov_name = "chol_cov_cholesky-cov-packed__" if structure == "lkj" else "sd_log__"
    unc = ([f"beta_{i}" for i in range(p)] + [f"{cov_name}_{i}" for i in range(m)]
           + [f"z_{i}" for i in range(J * q)])
    coords = {"fixed": pd.Index(list(design.x_names)), "effect": pd.Index(effects),
              "effect_b": pd.Index(effects), "school": pd.Index(schools),
              "effect_nc": pd.Index(effects), "unconstrained_parameter": pd.Index(unc)}
    dims = {"beta": ("fixed",), "sd": ("effect",), "z": ("school", "effect_nc"),
            "b_school": ("school", "effect")}
    if structure == "lkj":
        dims["corr"] = ("effect", "effect_b")
    return GlmmModel(data=data, n_dim=n_dim, q=q, p=p, J=J, structure=structure, x0=x0,
                     dims=dims, coords=coords)


def sample_glmm(design: Design, y, w, offset, family: str, link: str, priors, *, draws: int,
                tune: int, chains: int, cores: int, seed: int, target_accept: float,
                progress: bool, adaptation: str = "diag") -> xr.DataTree:
    """NUTS (nutpie's Rust sampler) on the compiled non-centred GLMM; the DataTree
    (``posterior``, ``sample_stats``, ``warmup_*``) as ``nutpie.sample`` gives for the PyMC
    model."""
    from importlib.metadata import version

    check_adaptation(adaptation)
    lib = nutpie_lib()
    settings = nuts_settings(lib, adaptation=adaptation, seed=seed, draws=draws, tune=tune,
                             chains=chains, target_accept=target_accept)
    model = compile_glmm(design, y, w, offset, family, link, priors)
    draw_batches, stat_batches = run_nuts(model, settings, cores, progress, lib)
    raw = settings.as_dict()
    attrs = {"inference_library": "nutpie", "inference_library_version": version("nutpie"),
             "inference_library_settings": json.dumps(raw)}
    return trace_to_datatree(draw_batches, stat_batches, model, raw["settings"], attrs)
