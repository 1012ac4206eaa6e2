"""The one place that touches nutpie's internals, with a supported-version check and a public
fallback.

twolevel samples its compiled models (:mod:`twolevel.models.bayes.sampler`,
:mod:`twolevel.models.bayes.glmm_sampler`) by driving nutpie's Rust extension ``nutpie._lib``
directly: :func:`nutpie_lib` loads it without importing nutpie's Python package (1.2 s of ArviZ
and matplotlib imports), :func:`nuts_settings` and :func:`run_nuts` make the calls
``nutpie.sample`` makes, and :func:`make_functions` borrows nutpie's private PyTensor-to-Numba
helpers for the cached PyMC route (:func:`twolevel.models.bayes.pymc_model.compile_nuts`). These
are private APIs, positional and unversioned, so they are used only on the nutpie versions this
module was checked against (:data:`SUPPORTED`).

On any other version (or with ``TWOLEVEL_NUTPIE_ROUTE=public``) :func:`private_route` is False
and the fits take nutpie's public route — ``nutpie.compile_pymc_model`` on the PyMC model (the
collapsed model for the default likelihood) and ``nutpie.sample`` — which gives the same
posterior (a test runs it through the diagnostic gate on the lecture data), at the cost of
~10 s of Numba compilation per process; :func:`warn_public` says so once.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import warnings

from twolevel.data.errors import TwolevelError

__all__ = ["ROUTE_ENV", "SUPPORTED", "make_functions", "nutpie_lib", "nutpie_version",
           "nuts_settings", "private_route", "run_nuts", "warn_public"]

# nutpie releases whose private extension (nutpie._lib) and compile_pymc helpers this module
# was written and tested against (a version prefix each)
SUPPORTED = ("0.16.",)
ROUTE_ENV = "TWOLEVEL_NUTPIE_ROUTE"
_WARNED: set[str] = set()


def nutpie_version() -> str | None:
    """The installed nutpie's version (package metadata; nutpie is not imported), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nutpie")
    except PackageNotFoundError:
        return None


def private_route() -> bool:
    """Whether the fits may drive nutpie's internals: the installed version is one of
    :data:`SUPPORTED` and ``TWOLEVEL_NUTPIE_ROUTE`` is not ``public``."""
    if os.environ.get(ROUTE_ENV, "").strip().lower() == "public":
        return False
    v = nutpie_version()
    return v is not None and v.startswith(SUPPORTED)


def warn_public(what: str) -> None:
    """Once per process: ``what`` runs on nutpie's public route, and why."""
    if what in _WARNED:
        return
    _WARNED.add(what)
    v = nutpie_version()
    why = (f"{ROUTE_ENV}=public" if os.environ.get(ROUTE_ENV, "").strip().lower() == "public"
           else f"nutpie {v} is not a version twolevel's sampler bridge knows "
                f"({', '.join(s + 'x' for s in SUPPORTED)})")
    warnings.warn(f"twolevel: {what} samples through nutpie's public API (the PyMC model "
                  f"compiled by Numba, ~10 s more per process): {why}; install "
                  f"'nutpie>={SUPPORTED[0]}0,<0.17' for the compiled route", RuntimeWarning,
                  stacklevel=3)


def nutpie_lib():
    """nutpie's Rust extension ``nutpie._lib``, loaded without executing nutpie's Python package
    (whose ``__init__`` imports ArviZ and matplotlib: module docstring). The same module object
    as ``nutpie._lib`` if nutpie was, or is later, imported."""
    mod = sys.modules.get("nutpie._lib")
    if mod is not None:
        return mod
    spec = importlib.util.find_spec("nutpie")
    if spec is None or not spec.submodule_search_locations:
        raise TwolevelError("nutpie is not installed; install it (pip install nutpie) to sample")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(list(spec.submodule_search_locations)[0], "_lib" + suffix)
        if os.path.exists(path):
            break
    else:  # an unusual layout: import the package as usual
        import nutpie

        return nutpie._lib
    lspec = importlib.util.spec_from_file_location("nutpie._lib", path)
    mod = importlib.util.module_from_spec(lspec)
    sys.modules["nutpie._lib"] = mod
    try:
        lspec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop("nutpie._lib", None)
        raise
    return mod


def nuts_settings(lib, *, adaptation: str, seed: int, draws: int, tune: int, chains: int,
                  target_accept: float):
    """nutpie's NUTS settings object as ``nutpie.sample(adaptation=, seed=, draws=, tune=,
    chains=, target_accept=)`` makes it."""
    if adaptation == "low_rank":
        settings = lib.PyNutsSettings.LowRank(seed)
    else:
        settings = lib.PyNutsSettings.Diag(seed)
        if adaptation == "draw_diag":
            settings.use_grad_based_mass_matrix = False
    settings.update({"target_accept": float(target_accept), "num_tune": int(tune),
                     "num_draws": int(draws), "num_chains": int(chains)})
    return settings


def run_nuts(model, settings, cores: int, progress: bool, lib=None):
    """Run nutpie's Rust NUTS on the compiled callbacks (the calls of ``nutpie.sample`` and
    ``CompiledPyMCModel._make_sampler``); returns the raw Arrow trace
    ``(draw_batches, stat_batches)``, with ``x`` the unconstrained draws."""
    lib = lib or nutpie_lib()
    logp_addr, copy_addr, owner = model.callbacks()
    keep = (model, owner)  # alive while the sampler runs
    # the data the callbacks read: a model may sample other coordinates than its data's
    ptr = getattr(model, "sampling_data", model.data).ctypes.data
    logp_fn = lib.LogpFunc(logp_addr, ptr, keep)
    n_expanded = getattr(model, "n_expanded", model.n_dim)  # the draw and what expand adds
    expand_fn = lib.ExpandFunc(model.n_dim, n_expanded, copy_addr, ptr, keep)
    sizes = {k: len(v) for k, v in model.coords.items()}
    variables = lib.PyVariable.new_variables(["x"], ["float64"], [(n_expanded,)], sizes,
                                             {"x": ("unconstrained_parameter",)})
    pm_model = lib.PyMcModel(logp_fn, expand_fn, variables, model.n_dim, sizes,
                             dict(model.coords), model.initial_point, None)
    progress_type = lib.ProgressType.indicatif(100) if progress else lib.ProgressType.none()
    sampler = lib.PySampler.from_pymc(settings, cores, pm_model, progress_type, None, 100,
                                      lib.PyStorage.arrow())
    try:
        sampler.wait(None)
    except BaseException:
        sampler.abort()
        raise
    return sampler.take_results().get_arrow_trace()


def make_functions(model, initial_point_fn):
    """nutpie's private helpers behind ``compile_pymc_model``: the model's PyTensor functions in
    NUMBA mode and their dims/coords, ``(n_dim, logp_fn, expand_fn, init_fn, shape_info,
    reparam, dims, coords)``."""
    from nutpie.compile_pymc import _make_functions, _prepare_dims_and_coords

    n_dim, _, logp_pt, expand_pt, init_fn, shape_info, reparam = _make_functions(
        model, mode="NUMBA", compute_grad=True, join_expanded=False,
        pymc_initial_point_fn=initial_point_fn,
    )
    dims, coords = _prepare_dims_and_coords(model, shape_info, reparam)
    return n_dim, logp_pt, expand_pt, init_fn, shape_info, reparam, dims, coords
