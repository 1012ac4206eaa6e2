"""NUTS on the compiled collapsed model: nutpie's Rust sampler calling compiled C callbacks.

nutpie (0.16) runs its chains in Rust threads. Given a PyMC model it compiles PyTensor's numba
code into a ``numba.cfunc`` that cannot be cached (it closes over the model's data), ~10 s every
process; its Python-callback route (``nutpie.compiled_pyfunc.from_pyfunc``) takes the GIL for
every gradient, so two cores sample no faster than one. Here nutpie gets generic machine code
compiled with the package, with the model's data as its ``user_data`` pointer
(:func:`callbacks`): the C library of :mod:`twolevel.models.bayes.ckernels` when the package has
it, else the numba cfuncs of :mod:`twolevel.models.bayes.kernels` loaded from numba's cache
(the same maths, bitwise the same numbers on this machine) — through nutpie's own
``CompiledPyMCModel`` (the class ``nutpie.compile_pymc_model`` returns). The gradient then runs
without the GIL in nutpie's threads, and no PyMC or PyTensor (nor, on the C route, numba) is
imported.

The draws come out as from ``nutpie.sample(nutpie.compile_pymc_model(model))`` on the collapsed
PyMC model: the same variables (``beta``, ``sigma``, ``chol_cov``, ``sd``, ``corr``), dimensions,
``sample_stats`` and ``warmup_*`` groups; initial points are PyMC's support point jittered by
U(−1, 1) in the unconstrained space, as nutpie does.

Two things differ from ``nutpie.sample`` in how, not in what (both measured on the lecture model,
4 × 2,000 iterations, 2 cores; tests check them against nutpie's own route):

* **The driver** (:func:`run_nuts`, in :mod:`twolevel.models.bayes.nutpie_bridge` with every
  other use of nutpie's internals, and only on the nutpie versions it knows; otherwise nutpie's
  public API on the collapsed PyMC model) talks to nutpie's Rust extension ``nutpie._lib`` directly,
  with the calls ``nutpie.sample`` makes (settings, ``PyMcModel``, ``PySampler.from_pymc``, the
  Arrow trace), and converts the trace itself (:func:`trace_to_datatree`). Importing nutpie's
  Python package imports ArviZ and matplotlib: 1.2 s per process, plus 0.4 s of interpreter
  teardown, a quarter of a whole warm fit. The draws are bitwise those of ``nutpie.sample``.
* **The expand callback** only copies x; σ, the packed factor, the SDs and the correlations are
  computed afterwards for all draws at once in NumPy (:func:`expand_draws`). The compiled expand
  callback cost 1.6 s of numba compilation on a fresh installation, for a few µs per draw.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models import native
from twolevel.models.bayes import ckernels, nutpie_bridge
from twolevel.models.bayes import kernel_layout as layout
from twolevel.models.bayes.nutpie_bridge import nutpie_lib, nuts_settings, run_nuts
from twolevel.models.bayes.priors import ModelPriors, check_priors, default_priors
from twolevel.models.design import Design, GroupCrossprods

__all__ = ["ADAPTATIONS", "CollapsedModel", "CompiledModel", "check_adaptation",
           "compile_collapsed", "callbacks", "compile_kernels", "kernel_description",
           "effect_structure", "expand_draws", "expand_names", "nutpie_lib", "pack_data",
           "run_nuts", "sample_collapsed", "support_point", "trace_to_datatree"]

ADAPTATIONS = ("low_rank", "diag", "draw_diag")
LOG2PI = math.log(2.0 * math.pi)


def effect_structure(design: Design) -> str:
    """``"lkj"`` for one correlated term with all random effects (``(1 + x | g)``), ``"diag"``
    when every term has a single effect (``(1 | g)``, ``(1 + x || g)``); anything else cannot be
    built."""
    terms = design.terms
    if len(terms) == 1 and len(terms[0].columns) >= 2:
        return "lkj"
    if all(len(t.columns) == 1 for t in terms):
        return "diag"
    blocks = " + ".join("(" + " + ".join(t.names) + f" | {t.group})" for t in terms)
    raise FormulaError(
        f"formula '{design.formula}' splits the random effects into blocks {blocks}; the Bayesian "
        "builders take either one correlated block '(1 + x | g)' or only independent effects "
        "'(1 + x || g)': write the random part in one of these forms"
    )


# ----------------------------------------------------------------------------- the packed data


def _location_params(prior, p: int) -> tuple[np.ndarray, float]:
    """(p, 3) parameters (μ, s, ν) of the β prior and its summed normalising constant:
    Normal: −log s − ½ log 2π;  StudentT: lgamma((ν+1)/2) − lgamma(ν/2) − ½ log(νπs²)."""
    mu, s = prior.param("mu", p), prior.param("sigma", p)
    nu = prior.param("nu", p) if prior.dist == "StudentT" else np.ones(p)
    const = 0.0
    for k in range(p):
        if prior.dist == "Normal":
            const += -math.log(s[k]) - 0.5 * LOG2PI
        else:
            const += (math.lgamma((nu[k] + 1) / 2) - math.lgamma(nu[k] / 2)
                      - 0.5 * math.log(nu[k] * math.pi * s[k] ** 2))
    return np.stack([mu, s, nu], axis=1), const


def _positive_params(prior, size: int) -> tuple[np.ndarray, float]:
    """(size, 2) parameters (a, b) of a positive prior and its summed normalising constant:
    HalfNormal(σ=a): ½ log(2/π) − log a;  HalfStudentT(σ=a, ν=b): log 2 + lgamma((ν+1)/2) −
    lgamma(ν/2) − ½ log(νπa²);  HalfCauchy(β=a): log(2/π) − log a;  Exponential(λ=a): log a;
    Gamma(α=a, β=b): α log β − lgamma(α)."""
    d = prior.dist
    if d == "HalfNormal":
        a, b = prior.param("sigma", size), np.zeros(size)
    elif d == "HalfStudentT":
        a, b = prior.param("sigma", size), prior.param("nu", size)
    elif d == "HalfCauchy":
        a, b = prior.param("beta", size), np.zeros(size)
    elif d == "Exponential":
        a, b = prior.param("lam", size), np.zeros(size)
    else:  # Gamma
        a, b = prior.param("alpha", size), prior.param("beta", size)
    const = 0.0
    for k in range(size):
        if d == "HalfNormal":
            const += 0.5 * math.log(2 / math.pi) - math.log(a[k])
        elif d == "HalfStudentT":
            const += (math.log(2.0) + math.lgamma((b[k] + 1) / 2) - math.lgamma(b[k] / 2)
                      - 0.5 * math.log(b[k] * math.pi * a[k] ** 2))
        elif d == "HalfCauchy":
            const += math.log(2 / math.pi) - math.log(a[k])
        elif d == "Exponential":
            const += math.log(a[k])
        else:
            const += a[k] * math.log(b[k]) - math.lgamma(a[k])
    return np.stack([a, b], axis=1), const


def lkj_normalizing_constant(eta: float, n: int) -> float:
    """log normalising constant of LKJ(η) on n × n correlation matrices (PyMC's):
    (n−1) lgamma(η + (n−1)/2) − Σ_{k=1}^{n−1} [ k/2 log π + lgamma(η + (n−1−k)/2) ]."""
    return (n - 1) * math.lgamma(eta + 0.5 * (n - 1)) - sum(
        0.5 * k * math.log(math.pi) + math.lgamma(eta + 0.5 * (n - 1 - k)) for k in range(1, n))


def pack_data(cp, n: int, priors, structure: str) -> np.ndarray:
    """The flat float64 vector the kernels read: header (q, p, J, n, structure, η, prior family
    codes, constant), β prior (p × 3), σ prior (2), sd prior (q × 2), then A (J×q×q), B (J×q×p),
    c (J×q), XᵀX (p×p), Xᵀy (p), yᵀy. ``cp`` is a :class:`GroupCrossprods`."""
    A, B, c = np.asarray(cp.A, float), np.asarray(cp.B, float), np.asarray(cp.c, float)
    J, q, p = B.shape
    loc, pos = layout.LOCATION_CODES, layout.POSITIVE_CODES
    if priors.beta.dist not in loc or priors.sigma.dist not in pos or priors.sd.dist not in pos:
        raise TwolevelError(f"priors {priors.to_dict()} have no compiled kernel; use the families "
                            "of twolevel.models.bayes.priors.SUPPORTED")
    pb, cb = _location_params(priors.beta, p)
    ps, cs = _positive_params(priors.sigma, 1)
    pd_, cd = _positive_params(priors.sd, q)
    eta = float(priors.corr.param("eta")) if structure == "lkj" else 1.0
    const = -0.5 * n * LOG2PI + cb + cs + cd
    if structure == "lkj":
        const += lkj_normalizing_constant(eta, q)
    head = np.array([q, p, J, n, layout.LKJ if structure == "lkj" else layout.DIAG, eta,
                     loc[priors.beta.dist], pos[priors.sigma.dist], pos[priors.sd.dist], const],
                    float)
    return np.ascontiguousarray(np.concatenate([
        head, pb.ravel(), ps.ravel(), pd_.ravel(), A.ravel(), B.ravel(), c.ravel(),
        np.asarray(cp.XtX, float).ravel(), np.asarray(cp.Xty, float).ravel(),
        [float(cp.yty)]]))


def n_unconstrained(q: int, p: int, structure: str) -> int:
    """Length of x: p + 1 + q(q+1)/2 (LKJ) or p + 1 + q (independent effects)."""
    return p + 1 + (q * (q + 1) // 2 if structure == "lkj" else q)


def _positive_support(prior, size: int) -> np.ndarray:
    """PyMC's support point (initial value) of a positive prior: HalfNormal σ, HalfStudentT σ,
    HalfCauchy β, Exponential 1/λ, Gamma α/β."""
    d = prior.dist
    if d in ("HalfNormal", "HalfStudentT"):
        return prior.param("sigma", size)
    if d == "HalfCauchy":
        return prior.param("beta", size)
    if d == "Exponential":
        return 1.0 / prior.param("lam", size)
    return prior.param("alpha", size) / prior.param("beta", size)


def support_point(priors, q: int, p: int, structure: str) -> np.ndarray:
    """PyMC's initial point of the model in x (before nutpie's U(−1, 1) jitter): β at its prior
    location, log σ at log of σ's support point, the LKJ factor at the identity (all zeros in x)
    or log sd at the sd prior's support point."""
    x = np.zeros(n_unconstrained(q, p, structure))
    x[:p] = priors.beta.param("mu", p)
    x[p] = math.log(float(_positive_support(priors.sigma, 1)[0]))
    if structure != "lkj":
        x[p + 1:] = np.log(_positive_support(priors.sd, q))
    return x


def expand_names(q: int, p: int, structure: str) -> tuple[list[str], list[tuple[int, ...]]]:
    """Names and shapes of the expanded draw (nutpie's trace order, as PyMC's model has them):
    the free value variables, then σ, the packed factor ``chol_cov`` (LKJ), ``sd``, ``corr``
    (LKJ)."""
    if structure == "lkj":
        m = q * (q + 1) // 2
        return (["beta", "sigma_log__", "chol_cov_cholesky-cov-packed__", "sigma", "chol_cov",
                 "sd", "corr"], [(p,), (), (m,), (), (m,), (q,), (q, q)])
    return (["beta", "sigma_log__", "sd_log__", "sigma", "sd"], [(p,), (), (q,), (), (q,)])


def expand_draws(x: np.ndarray, q: int, p: int, structure: str) -> dict[str, np.ndarray]:
    """The model's variables from unconstrained draws x (..., n_dim), as PyMC's model computes
    them (:func:`expand_names`): ``beta`` = x[:p], ``sigma`` = exp x[p]; LKJ: the packed factor
    ``chol_cov`` (rows of L with exp on the diagonal), ``sd`` = the row norms of L and
    ``corr`` = (L/sd)(L/sd)ᵀ; independent effects: ``sd`` = exp x[p+1:]."""
    x = np.asarray(x, dtype=float)
    lead = x.shape[:-1]
    out = {"beta": x[..., :p].copy(), "sigma": np.exp(x[..., p])}
    if structure != "lkj":
        out["sd"] = np.exp(x[..., p + 1:p + 1 + q])
        return out
    rows, cols = np.tril_indices(q)
    packed = x[..., p + 1:p + 1 + rows.size].copy()
    diag = rows == cols
    packed[..., diag] = np.exp(packed[..., diag])
    L = np.zeros((*lead, q, q))
    L[..., rows, cols] = packed
    sd = np.sqrt(np.einsum("...ij,...ij->...i", L, L))
    Ls = L / sd[..., :, None]
    out.update(chol_cov=packed, sd=sd, corr=np.einsum("...ik,...jk->...ij", Ls, Ls))
    return out


# the sample_stats nutpie.sample leaves out unless a setting asks for them (nutpie 0.16)
_STAT_SKIPS = {
    "store_gradient": ("gradient",),
    "store_unconstrained": ("unconstrained_draw",),
    "adapt_options.mass_matrix_options.store_mass_matrix": (
        "mass_matrix_inv", "mass_matrix_eigvals", "mass_matrix_stds"),
    "store_divergences": ("divergence_start", "divergence_end", "divergence_momentum",
                          "divergence_start_gradient"),
    "store_transformed": ("transformed_position", "transformed_gradient", "transformation_mu"),
}


def _skipped_stats(settings: dict) -> set[str]:
    out: set[str] = set()
    for key, names in _STAT_SKIPS.items():
        node = settings
        for part in key.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if not node:
            out.update(names)
    return out


def _column(batch, name: str) -> tuple[np.ndarray, tuple[str, ...], tuple[int, ...]]:
    """One Arrow column as (rows, *shape) NumPy values, nulls as NaN / None / 0 (nutpie's
    ``_add_arrow_data``), with its ``dims`` and ``shape`` metadata."""
    import pyarrow

    field = batch.schema.field(name)
    meta = field.metadata or {}
    dims = tuple(meta[b"dims"].decode().split(",")) if meta.get(b"dims") else ()
    shape = tuple(int(v) for v in meta[b"shape"].decode().split(",")) if meta.get(b"shape") \
        else ()
    col = pyarrow.array(batch.column(name))
    null = col.is_null().to_numpy(zero_copy_only=False)
    if hasattr(col, "flatten"):
        col = col.flatten()
    dtype = col.type.to_pandas_dtype()
    n = batch.num_rows
    if dtype in (np.float64, np.float32):
        out = np.full((n, *shape), np.nan, dtype=dtype)
    elif np.dtype(dtype) == np.dtype("O"):
        out = np.full((n, *shape), None, dtype=object)
    else:
        out = np.zeros((n, *shape), dtype=dtype)
    values = col.to_numpy(zero_copy_only=False)
    if not null.any():
        out[:] = values.reshape((n, *shape))
    else:
        if values.shape[0] == n:
            values = values[~null]
        out[~null] = values.reshape((int((~null).sum()), *shape))
    return out, dims, shape


def _group(arrays: dict[str, list[np.ndarray]], dims: dict[str, tuple[str, ...]],
           coords: dict, length: int) -> xr.Dataset:
    """Stack the chains' arrays (padded to ``length`` draws) into a (chain, draw, …) Dataset with
    ArviZ's default dim names ``<var>_dim_k`` where no dims are given, integer coordinates."""
    data_vars, all_coords = {}, {}
    for name, chains in arrays.items():
        first = chains[0]
        fill = np.nan if first.dtype.kind == "f" else (None if first.dtype == object else 0)
        full = np.full((len(chains), length, *first.shape[1:]), fill, dtype=first.dtype)
        for c, a in enumerate(chains):
            full[c, :a.shape[0]] = a
        vd = dims.get(name) or tuple(f"{name}_dim_{k}" for k in range(first.ndim - 1))
        data_vars[name] = (("chain", "draw", *vd), full)
        for d, size in zip(vd, first.shape[1:], strict=True):
            if d not in all_coords:
                all_coords[d] = coords[d] if d in coords else np.arange(size)
    all_coords["chain"] = np.arange(len(next(iter(arrays.values()))))
    all_coords["draw"] = np.arange(length)
    return xr.Dataset(data_vars, coords=all_coords)


def trace_to_datatree(draw_batches, stat_batches, model, settings: dict,
                      attrs: dict | None = None) -> xr.DataTree:
    """nutpie's Arrow trace (one draw and one stats batch per chain; ``x`` the unconstrained
    draws) → the DataTree ``nutpie.sample`` returns for the PyMC model: ``posterior`` and
    ``warmup_posterior`` with the variables of ``model.expand`` (:class:`CollapsedModel`,
    :class:`~twolevel.models.bayes.glmm_sampler.GlmmModel`), ``sample_stats`` and
    ``warmup_sample_stats`` (split by nutpie's ``tuning`` flag)."""
    skip = _skipped_stats(settings)
    post: dict = {"post": {}, "tune": {}}
    stats: dict = {"post": {}, "tune": {}}
    stat_dims: dict[str, tuple[str, ...]] = {}
    n_tune, n_post = [], []
    for draws, st in zip(draw_batches, stat_batches, strict=True):
        tuning = _column(st, "tuning")[0].astype(bool)
        k = int(tuning.sum())
        n_tune.append(k)
        n_post.append(st.num_rows - k)
        x = _column(draws, "x")[0]
        for part, sl in (("tune", slice(0, k)), ("post", slice(k, None))):
            for name, v in model.expand(x[sl]).items():
                post[part].setdefault(name, []).append(v)
        for name in st.schema.names:
            if name in skip or name in ("chain", "draw"):  # those are the coordinates
                continue
            v, d, _ = _column(st, name)
            if d:
                stat_dims[name] = d
            stats["tune"].setdefault(name, []).append(v[:k])
            stats["post"].setdefault(name, []).append(v[k:])
    groups = {
        "posterior": _group(post["post"], model.dims, model.coords, max(n_post)),
        "sample_stats": _group(stats["post"], stat_dims, model.coords, max(n_post)),
        "warmup_posterior": _group(post["tune"], model.dims, model.coords, max(n_tune)),
        "warmup_sample_stats": _group(stats["tune"], stat_dims, model.coords, max(n_tune)),
    }
    groups["sample_stats"].attrs.update(attrs or {})
    return xr.DataTree.from_dict(groups)


@dataclass(frozen=True)
class CompiledModel:
    """A model as nutpie's Rust sampler takes it: the packed ``data`` (the C callbacks'
    ``user_data``), the dimension of x, the support point ``x0`` (jittered by U(−1, 1) per chain,
    as nutpie does), and the dims and coordinates of its variables. Subclasses give
    ``expand(x)`` (the model's variables from draws) and ``callbacks()`` (nutpie's addresses)."""

    data: np.ndarray
    n_dim: int
    x0: np.ndarray
    dims: dict
    coords: dict

    def initial_point(self, seed) -> np.ndarray:
        """PyMC's support point plus U(−1, 1) jitter (a new start for every chain and retry)."""
        return self.x0 + np.random.default_rng(seed).uniform(-1.0, 1.0, self.n_dim)


@dataclass(frozen=True)
class CollapsedModel(CompiledModel):
    """The collapsed model (:class:`CompiledModel`) with q effects, p fixed effects and the
    effects' ``structure`` ("lkj" or "diag")."""

    q: int
    p: int
    structure: str

    def expand(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The model's variables from unconstrained draws (:func:`expand_draws`)."""
        return expand_draws(x, self.q, self.p, self.structure)

    def callbacks(self) -> tuple[int, int, object]:
        """nutpie's (logp, expand) addresses and their owner (:func:`callbacks`)."""
        return callbacks(self.q)


def compile_collapsed(design: Design, cp: GroupCrossprods, priors: ModelPriors | None = None):
    """The :class:`CollapsedModel` of ``design`` (nothing is compiled here). Returns
    ``(model, priors, structure)``."""
    structure = effect_structure(design)
    priors = priors if priors is not None else default_priors(design)
    check_priors(priors, design)
    q, p = design.q, design.p
    data = pack_data(cp, design.n, priors, structure)
    data.flags.writeable = False
    n_dim = n_unconstrained(q, p, structure)
    effects = list(design.z_names)
    coords = {"fixed": pd.Index(list(design.x_names)), "effect": pd.Index(effects),
              "effect_b": pd.Index(effects)}
    names, shapes = expand_names(q, p, structure)
    unc = []
    for name, shape in zip(names[:3], shapes[:3], strict=True):
        unc += [name] if shape == () else [f"{name}_{i}" for i in range(shape[0])]
    coords["unconstrained_parameter"] = pd.Index(unc)
    dims = {"beta": ("fixed",), "sd": ("effect",)}
    if structure == "lkj":
        dims["corr"] = ("effect", "effect_b")
    model = CollapsedModel(data=data, n_dim=n_dim, q=q, p=p, structure=structure,
                           x0=support_point(priors, q, p, structure), dims=dims, coords=coords)
    return model, priors, structure


def check_adaptation(adaptation: str) -> None:
    """A nutpie mass-matrix adaptation of :data:`ADAPTATIONS`, or an error naming them."""
    if adaptation not in ADAPTATIONS:
        raise TwolevelError(f"adaptation {adaptation!r} is not one of nutpie's "
                            f"{', '.join(ADAPTATIONS)}; use one of those")


def kernel_description() -> str:
    """Which compiled callbacks a collapsed fit runs on (recorded as the fit's ``sampler``)."""
    if not nutpie_bridge.private_route():
        return "nutpie public API, collapsed PyMC model compiled by PyTensor/Numba"
    if ckernels.kernel_route() == "c":
        return "nutpie, collapsed model compiled from C (twolevel.models.bayes.ckernels)"
    return "nutpie, collapsed model compiled by numba (twolevel.models.bayes.kernels)"


def callbacks(q: int) -> tuple[int, int, object]:
    """(logp address, expand address, the object that owns them) for nutpie: the C library of
    :mod:`twolevel.models.bayes.ckernels` on the C route, numba's cfuncs of
    :mod:`twolevel.models.bayes.kernels` on the numba route (and when the C build failed)."""
    if ckernels.kernel_route() == "c":
        logp, copy = ckernels.callback_addresses(q)
        return logp, copy, ckernels.load()
    native.warn_numba(ckernels.MODULE, "fit_bayes")
    from twolevel.models.bayes import kernels

    logp_c, copy_c = kernels.logp_cfunc(q), kernels.copy_cfunc()
    return logp_c.address, copy_c.address, (logp_c, copy_c)


def sample_collapsed(
    design: Design,
    cp: GroupCrossprods,
    priors: ModelPriors | None = None,
    *,
    draws: int,
    tune: int,
    chains: int,
    cores: int,
    seed: int,
    target_accept: float,
    progress: bool,
    adaptation: str = "low_rank",
):
    """NUTS (nutpie's Rust sampler, :func:`run_nuts`) on the compiled collapsed model with
    nutpie's mass-matrix ``adaptation``; returns ``(datatree, priors)``: the DataTree
    (``posterior``, ``sample_stats``, ``warmup_*``, as ``nutpie.sample``) and the priors used.

    On a nutpie version the bridge does not know (:func:`twolevel.models.bayes.nutpie_bridge.
    private_route` False): nutpie's public ``compile_pymc_model`` + ``sample`` on the collapsed
    PyMC model (the same density), said once."""
    check_adaptation(adaptation)
    if not nutpie_bridge.private_route():
        from twolevel.models.bayes.pymc_model import build_model, sample_nuts

        nutpie_bridge.warn_public("fit_bayes")
        built = build_model(design, priors, likelihood="collapsed", crossprods=cp)
        dt = sample_nuts(built, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
                         target_accept=target_accept, progress=progress,
                         adaptation=adaptation, gil_free=True)
        return dt, built.priors
    lib = nutpie_lib()
    settings = nuts_settings(lib, adaptation=adaptation, seed=seed, draws=draws, tune=tune,
                             chains=chains, target_accept=target_accept)
    model, priors, _ = compile_collapsed(design, cp, priors)
    draw_batches, stat_batches = run_nuts(model, settings, cores, progress, lib)
    from importlib.metadata import version

    raw = settings.as_dict()
    attrs = {"inference_library": "nutpie", "inference_library_version": version("nutpie"),
             "inference_library_settings": json.dumps(raw)}
    dt = trace_to_datatree(draw_batches, stat_batches, model, raw["settings"], attrs)
    return dt, priors


def compile_kernels() -> None:
    """Compile (or load) every numba kernel of the Bayesian side into numba's cache: the
    callbacks for q = 2 and for any q (the numba route: the reference in the tests, and the
    fallback where the package has no compiled C library), and the PSIS-LOO kernel. ``make
    setup`` runs this once per installation, so a first LOO loads machine code instead of
    compiling."""
    from twolevel.models.bayes import kernels, loo

    kernels.logp_cfunc(2)
    kernels.logp_cfunc(3)
    kernels.copy_cfunc()
    loo.psis_log_weights(np.random.default_rng(0).normal(size=(100, 2)), 1.0)
