"""NUTS on the compiled collapsed model: nutpie's Rust sampler calling numba C callbacks.

nutpie (0.16) runs its chains in Rust threads. Given a PyMC model it compiles PyTensor's numba
code into a ``numba.cfunc`` that cannot be cached (it closes over the model's data), ~10 s every
process; its Python-callback route (``nutpie.compiled_pyfunc.from_pyfunc``) takes the GIL for
every gradient, so two cores sample no faster than one. Here nutpie gets the C callbacks of
:mod:`twolevel.models.bayes.kernels` — generic machine code compiled once per installation and
loaded from numba's cache — with the model's data as their ``user_data`` pointer, through
nutpie's own ``CompiledPyMCModel`` (the class ``nutpie.compile_pymc_model`` returns). The gradient
then runs without the GIL in nutpie's threads, and no PyMC or PyTensor is imported.

The draws come out as from ``nutpie.sample(nutpie.compile_pymc_model(model))`` on the collapsed
PyMC model: the same variables (``beta``, ``sigma``, ``chol_cov``, ``sd``, ``corr``), dimensions,
``sample_stats`` and ``warmup_*`` groups; initial points are PyMC's support point jittered by
U(−1, 1) in the unconstrained space, as nutpie does.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.bayes import kernels
from twolevel.models.bayes.priors import ModelPriors, check_priors, default_priors
from twolevel.models.design import Design, GroupCrossprods

__all__ = ["ADAPTATIONS", "compile_collapsed", "compile_kernels", "effect_structure",
           "expand_names", "pack_data", "sample_collapsed", "start_kernel_compile",
           "support_point", "wait_kernel_compile"]

ADAPTATIONS = ("low_rank", "diag", "draw_diag")
LOG2PI = math.log(2.0 * math.pi)


def effect_structure(design: Design) -> str:
    """``"lkj"`` for one correlated term with all random effects (``(1 + x | g)``), ``"diag"`` when
    every term has a single effect (``(1 | g)``, ``(1 + x || g)``); anything else cannot be built."""
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
    if priors.beta.dist not in kernels.LOCATION_CODES or priors.sigma.dist not in kernels.POSITIVE_CODES \
            or priors.sd.dist not in kernels.POSITIVE_CODES:
        raise TwolevelError(f"priors {priors.to_dict()} have no compiled kernel; use the families "
                            "of twolevel.models.bayes.priors.SUPPORTED")
    pb, cb = _location_params(priors.beta, p)
    ps, cs = _positive_params(priors.sigma, 1)
    pd_, cd = _positive_params(priors.sd, q)
    eta = float(priors.corr.param("eta")) if structure == "lkj" else 1.0
    const = -0.5 * n * LOG2PI + cb + cs + cd
    if structure == "lkj":
        const += lkj_normalizing_constant(eta, q)
    head = np.array([q, p, J, n, kernels.LKJ if structure == "lkj" else kernels.DIAG, eta,
                     kernels.LOCATION_CODES[priors.beta.dist], kernels.POSITIVE_CODES[priors.sigma.dist],
                     kernels.POSITIVE_CODES[priors.sd.dist], const], float)
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
    the free value variables, then σ, the packed factor ``chol_cov`` (LKJ), ``sd``, ``corr`` (LKJ)."""
    if structure == "lkj":
        m = q * (q + 1) // 2
        return (["beta", "sigma_log__", "chol_cov_cholesky-cov-packed__", "sigma", "chol_cov",
                 "sd", "corr"], [(p,), (), (m,), (), (m,), (q,), (q, q)])
    return (["beta", "sigma_log__", "sd_log__", "sigma", "sd"], [(p,), (), (q,), (), (q,)])


def _kernels_cached(q: int) -> bool:
    """Whether numba's cache holds the C callback for q effects, newer than kernels.py (False
    only when it surely does not: then compiling elsewhere first is worth it)."""
    try:
        from numba.core.caching import FunctionCache

        fn = kernels._logp_c_q2 if q == 2 else kernels._logp_c_general
        index = FunctionCache(fn)._cache_file._index_path
        return os.path.getmtime(index) >= os.path.getmtime(kernels.__file__)
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - numba's internals moved: compile here as usual
        return True


_PENDING: dict[bool, subprocess.Popen] = {}


def start_kernel_compile(q: int) -> None:
    """On a fresh installation (numba's cache lacks the kernels for q effects), compile them into
    the cache in a helper process (a plain ``python -c``, never a fork) while this process goes on
    importing and preparing; :func:`wait_kernel_compile` waits for it. Nothing happens when the
    cache is warm or a helper for the same kernels is running. :mod:`twolevel.models.bayes.fit`
    starts one for q = 2 when it is imported."""
    key = q == 2
    if key in _PENDING or _kernels_cached(q):
        return
    code = (f"from twolevel.models.bayes import kernels; kernels.logp_cfunc({int(q)}); "
            "kernels.expand_cfunc()")
    try:
        _PENDING[key] = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        pass


def wait_kernel_compile(q: int, timeout: float = 600.0) -> None:
    """Wait for the helper of :func:`start_kernel_compile` (if any); whatever it left undone is
    compiled in this process on first use."""
    proc = _PENDING.pop(q == 2, None)
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def compile_collapsed(design: Design, cp: GroupCrossprods, priors: ModelPriors | None = None):
    """nutpie's ``CompiledPyMCModel`` for the collapsed model of ``design`` with the callbacks of
    :mod:`twolevel.models.bayes.kernels` (nothing is compiled here). Returns
    ``(compiled, priors, structure)``."""
    from nutpie.compile_pymc import CompiledPyMCModel

    structure = effect_structure(design)
    priors = priors if priors is not None else default_priors(design)
    check_priors(priors, design)
    q, p = design.q, design.p
    data = pack_data(cp, design.n, priors, structure)
    data.flags.writeable = False
    n_dim = n_unconstrained(q, p, structure)
    names, shapes = expand_names(q, p, structure)
    slices, start = [], 0
    for s in shapes:
        size = int(np.prod(s, dtype=int))
        slices.append(slice(start, start + size))
        start += size
    x0 = support_point(priors, q, p, structure)

    def initial_point(seed):
        """PyMC's support point plus U(−1, 1) jitter (a new start for every chain and retry)."""
        return x0 + np.random.default_rng(seed).uniform(-1.0, 1.0, n_dim)

    effects = list(design.z_names)
    coords = {"fixed": pd.Index(list(design.x_names)), "effect": pd.Index(effects),
              "effect_b": pd.Index(effects)}
    unc = []
    for name, shape in zip(names[:3], shapes[:3], strict=True):
        unc += [name] if shape == () else [f"{name}_{i}" for i in range(shape[0])]
    coords["unconstrained_parameter"] = pd.Index(unc)
    dims = {"beta": ("fixed",), "sd": ("effect",)}
    if structure == "lkj":
        dims["corr"] = ("effect", "effect_b")
    else:
        dims["sd_log__"] = ("effect",)
    compiled = CompiledPyMCModel(
        _n_dim=n_dim, dims=dims, _coords=coords,
        _shapes={n: tuple(s) for n, s in zip(names, shapes, strict=True)},
        compiled_logp_func=kernels.logp_cfunc(q), compiled_expand_func=kernels.expand_cfunc(),
        initial_point_func=initial_point, shared_data={}, shared_var_keys={}, user_data=data,
        n_expanded=start, shape_info=(names, slices, shapes), logp_func=None, expand_func=None,
        reparameterized_names=[n for n in names[1:3]],
    )
    return compiled, priors, structure


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
    """NUTS (nutpie) on the compiled collapsed model with nutpie's mass-matrix ``adaptation``;
    returns ``(datatree, priors)``: nutpie's DataTree (``posterior``, ``sample_stats``,
    ``warmup_*``) and the priors used."""
    if adaptation not in ADAPTATIONS:
        raise TwolevelError(f"adaptation {adaptation!r} is not one of nutpie's "
                            f"{', '.join(ADAPTATIONS)}; use one of those")
    start_kernel_compile(design.q)
    import nutpie  # (imports ArviZ: ~1.5 s, while a cold cache is being filled)

    wait_kernel_compile(design.q)
    compiled, priors, _ = compile_collapsed(design, cp, priors)
    dt = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
                       target_accept=target_accept, progress_bar=progress, adaptation=adaptation)
    return dt, priors


def compile_kernels() -> None:
    """Compile (or load) every numba kernel of the Bayesian side into numba's cache: the C
    callbacks for q = 2 and for any q, and the PSIS-LOO kernel. ``make setup`` runs this once per
    installation, so a user's first fit and first LOO load machine code instead of compiling."""
    from twolevel.models.bayes import loo

    kernels.logp_cfunc(2)
    kernels.logp_cfunc(3)
    kernels.expand_cfunc()
    loo.psis_log_weights(np.random.default_rng(0).normal(size=(100, 2)), 1.0)
