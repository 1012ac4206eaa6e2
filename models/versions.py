"""What this installation runs on: twolevel's version, which kernels each engine uses (compiled C,
numba or PyTensor), the vector path and thread count of the compiled kernels, and the versions of
the scientific dependencies — as ``pandas.show_versions()`` and ``arviz.show_versions()`` print.

:func:`kernel_report` only looks: it loads the compiled libraries that are present (ctypes, no
compiler, no file written) and reads installed packages' metadata, without importing numba,
PyMC or nutpie.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

__all__ = ["DEPENDENCIES", "kernel_report", "show_versions"]

DEPENDENCIES = ("numpy", "scipy", "pandas", "formulae", "nlopt", "numba", "llvmlite", "pymc",
                "pytensor", "arviz", "xarray", "nutpie", "matplotlib", "duckdb", "dask",
                "distributed", "pyarrow")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _route(module: str) -> str:
    """"compiled" or "numba" for one kernel library (``TWOLEVEL_KERNELS`` respected), with the
    reason when the compiled one is missing."""
    from twolevel.models import native

    try:
        route = native.kernel_route(module)
    except Exception as e:  # noqa: BLE001 - a bad TWOLEVEL_KERNELS: report it, do not fail
        return f"unknown ({e})"
    if route == "c" and native.load(module) is not None:
        return "compiled"
    why = native.reason(module)
    return "numba" + (f" ({why})" if why else " (TWOLEVEL_KERNELS=numba)")


def kernel_report() -> dict[str, object]:
    """The installation as a dict: ``twolevel``, ``python``, ``platform``, ``kernels`` (engine →
    route: ``glmer``, ``bayes_collapsed``, ``bayes_glmm``, ``bayes_other``, ``reml``),
    ``vector_path`` (the x86-64 variant loaded: ``avx512``, ``avx2``, ``baseline``; ``none``
    without compiled kernels), ``baseline_forced``, ``threads`` (OpenMP threads of glmer's
    kernels; 1 without OpenMP), ``omp_wait_policy`` (``PASSIVE`` unless the user set one:
    :func:`~twolevel.models.native.openmp_waits_passively`) and ``dependencies`` (name →
    version or None)."""
    from twolevel import __version__
    from twolevel.models import native
    from twolevel.models.bayes import ckernels
    from twolevel.models.glmm import cpirls
    from twolevel.models.lmm import creml

    bayes = _route(ckernels.MODULE)
    kernels = {"glmer": _route(cpirls.MODULE), "bayes_collapsed": bayes,
               "bayes_glmm": bayes, "bayes_other": "PyTensor (PyMC model through nutpie)",
               "reml": _route(creml.MODULE)}
    threads = 1
    lib = native.load(cpirls.MODULE)
    if lib is not None:
        threads = int(cpirls.load().twolevel_max_threads())
    return {
        "twolevel": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "kernels": kernels,
        "vector_path": native.vector_path(cpirls.MODULE),
        "baseline_forced": native.baseline_forced(),
        "threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get(native.OMP_WAIT_ENV),
        "dependencies": {name: _version(name) for name in DEPENDENCIES},
    }


def show_versions(file=None) -> None:
    """Print :func:`kernel_report` (to ``file``, default stdout).

    Parameters
    ----------
    file : text stream, optional
        Where to print; ``sys.stdout`` when None.

    Returns
    -------
    None

    Examples
    --------
    >>> import twolevel as tl
    >>> tl.show_versions()  # doctest: +SKIP
    twolevel      0.1.0
    glmer         compiled
    ...
    """
    r = kernel_report()
    out = file or sys.stdout
    lines = [("twolevel", r["twolevel"]), ("python", r["python"]), ("platform", r["platform"])]
    lines += [(f"kernels.{k}", v) for k, v in r["kernels"].items()]
    lines += [("vector path", r["vector_path"] + (" (TWOLEVEL_KERNEL_BASELINE)"
                                                  if r["baseline_forced"] else "")),
              ("threads", r["threads"]), ("OpenMP wait policy", r["omp_wait_policy"])]
    lines += [(k, v if v is not None else "not installed") for k, v in r["dependencies"].items()]
    for k, v in lines:
        print(f"{k:<24}{v}", file=out)
