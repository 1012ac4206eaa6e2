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
           "sample_collapsed", "start_kernel_compile", "wait_kernel_compile"]

ADAPTATIONS = ("low_rank", "diag", "draw_diag")


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
    data = kernels.pack_data(cp, design.n, priors, structure)
    data.flags.writeable = False
    n_dim = kernels.n_unconstrained(q, p, structure)
    names, shapes = kernels.expand_names(q, p, structure)
    slices, start = [], 0
    for s in shapes:
        size = int(np.prod(s, dtype=int))
        slices.append(slice(start, start + size))
        start += size
    x0 = kernels.support_point(priors, q, p, structure)

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
