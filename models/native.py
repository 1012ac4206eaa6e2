"""Finding and loading twolevel's compiled C kernels: shared libraries built with the package.

``setup.py`` lists the kernels (one line each) and setuptools compiles them when the wheel, or
the editable install (``make setup``), is built: each C file ``<pkg>/<name>.c`` becomes a shared
library ``<pkg>/_<name><extension suffix>`` (e.g. ``_cpirls.cpython-312-x86_64-linux-gnu.so``)
beside the Python module that calls it through :mod:`ctypes`. Nothing is compiled, and nothing
is written, at import or fit time; a library is located from the package's own folder (never a
cache folder or ``PATH``) and loaded in microseconds.

Which build of a kernel (:func:`load`): on x86-64, ``setup.py`` builds a baseline library and
``_avx2`` (AVX2 + FMA) and ``_avx512`` (AVX-512) variants; the widest one that this processor and
operating system support is loaded (the check is ``__builtin_cpu_supports`` in ``models/cpu.c``),
so one wheel runs at full width on every x86-64 machine. ``TWOLEVEL_KERNEL_BASELINE=1`` forces the
baseline (tests compare the two). Other architectures (aarch64) have the baseline only.

Which route a caller takes (:func:`kernel_route`): ``TWOLEVEL_KERNELS=c`` or ``numba`` forces
one; by default (``auto``) the compiled library when it is there, else numba's kernels (the
reference in the tests), and the first fit on numba says so once (:func:`warn_numba`).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.machinery
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from twolevel.data.errors import TwolevelError

__all__ = ["BASELINE_ENV", "OMP_WAIT_ENV", "ROUTES", "Library", "NumbaKernelWarning", "VARIANTS",
           "kernel_route", "load", "openmp_waits_passively", "reason", "require", "vector_path",
           "warn_numba", "x86_level"]

ROUTES = ("auto", "c", "numba")
BASELINE_ENV = "TWOLEVEL_KERNEL_BASELINE"
# x86-64 variants (setup.py's VARIANTS), widest first, with the level models/cpu.c reports
VARIANTS = {"_avx512": 2, "_avx2": 1}
CPU_MODULE = "twolevel.models._cpu"
WHAT_TO_DO = ("install a twolevel wheel built for this platform, or put a C compiler on PATH and "
              "reinstall from source (in a checkout: make setup)")


class NumbaKernelWarning(RuntimeWarning):
    """A fit runs on numba's kernels because the compiled ones are missing (said once)."""


@dataclass(frozen=True)
class Library:
    """One loaded kernel library: ``module`` (its dotted name), ``path``, ``variant``
    (``"avx512"``, ``"avx2"`` or ``"baseline"``) and ``cdll`` (the :class:`ctypes.CDLL`)."""

    module: str
    path: Path
    variant: str
    cdll: ctypes.CDLL


_LOADED: dict[tuple[str, bool], Library | None] = {}
_REASONS: dict[str, str] = {}
_WARNED: set[str] = set()


def baseline_forced() -> bool:
    """``TWOLEVEL_KERNEL_BASELINE`` set to anything but ``""``/``0``: load baseline builds only."""
    return os.environ.get(BASELINE_ENV, "").strip() not in {"", "0"}


def _files(module: str, suffix: str) -> tuple[Path | None, Path | None]:
    """(the library file of ``module + suffix``, its C source) in the package's folders; either
    None when absent."""
    pkg_name, _, stem = module.rpartition(".")
    pkg = importlib.import_module(pkg_name)
    for folder in map(Path, getattr(pkg, "__path__", [])):
        source = folder / (stem.lstrip("_") + ".c")
        for ext in importlib.machinery.EXTENSION_SUFFIXES:
            lib = folder / f"{stem}{suffix}{ext}"
            if lib.is_file():
                return lib, source if source.is_file() else None
    return None, None


def x86_level() -> int:
    """2 (AVX-512), 1 (AVX2 + FMA) or 0 (baseline; also off x86-64 and without the compiled
    ``models/cpu.c``)."""
    key = (CPU_MODULE, False)
    if key not in _LOADED:
        path, _ = _files(CPU_MODULE, "")
        try:
            _LOADED[key] = None if path is None else Library(CPU_MODULE, path, "baseline",
                                                             ctypes.CDLL(str(path)))
        except OSError:
            _LOADED[key] = None
    lib = _LOADED[key]
    return 0 if lib is None else int(lib.cdll.twolevel_x86_level())


OMP_WAIT_ENV = "OMP_WAIT_POLICY"


def openmp_waits_passively() -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for this process unless the user set a policy, before the
    first kernel loads OpenMP's runtime (which reads it once); returns the policy in force.

    OpenMP threads that wait at a barrier then sleep instead of spinning. GCC's runtime spins by
    default, which is fastest on an idle machine and ruinous on a busy one: on this project's
    2-core machine a glmer fit of the lecture's binary outcome took 0.20 s idle with spinning and
    0.23 s passive, but with the other core busy (a test worker, a second fit, a Dask worker)
    8–15 s with spinning against 0.35 s passive (the waiting thread spins on the core the
    straggler needs). ``OMP_WAIT_POLICY=active`` keeps spinning for a dedicated machine."""
    return os.environ.setdefault(OMP_WAIT_ENV, "PASSIVE")


def load(module: str) -> Library | None:
    """The compiled library of ``module`` (e.g. ``"twolevel.models.glmm._cpirls"``): the widest
    variant this processor runs (the baseline under ``TWOLEVEL_KERNEL_BASELINE=1``), loaded once
    per process; None when there is none (:func:`reason` says why)."""
    base = baseline_forced()
    key = (module, base)
    if key in _LOADED:
        return _LOADED[key]
    openmp_waits_passively()
    level = 0 if base else x86_level()
    lib = None
    for suffix in [s for s, lv in VARIANTS.items() if lv <= level] + [""]:
        path, source = _files(module, suffix)
        if path is None:
            continue
        if source is not None and source.stat().st_mtime > path.stat().st_mtime:
            _REASONS[module] = (f"{path.name} is older than {source.name} (edited since the "
                                "build); rebuild with make setup (pip install -e .)")
            break
        try:
            lib = Library(module, path, suffix.lstrip("_") or "baseline", ctypes.CDLL(str(path)))
        except OSError as e:
            _REASONS[module] = f"{path.name} does not load: {e}"
        break
    else:
        _REASONS[module] = (f"no compiled {module.rpartition('.')[2]} library in the installed "
                            "package (an sdist installed without a C compiler?)")
    _LOADED[key] = lib
    return lib


def reason(module: str) -> str:
    """Why :func:`load` found no library for ``module`` ("" when it did)."""
    return "" if load(module) is not None else _REASONS.get(module, "")


def require(module: str) -> Library:
    """:func:`load`, or a :class:`TwolevelError` saying why there is no library and what to do."""
    lib = load(module)
    if lib is None:
        raise TwolevelError(f"no compiled C kernels ({module}): {reason(module)}; {WHAT_TO_DO}, "
                            "or set TWOLEVEL_KERNELS=numba")
    return lib


def kernel_route(module: str) -> str:
    """``"c"`` or ``"numba"``: ``$TWOLEVEL_KERNELS`` (``auto``, ``c``, ``numba``; default auto:
    C when the compiled library of ``module`` is present)."""
    route = os.environ.get("TWOLEVEL_KERNELS", "auto").strip().lower() or "auto"
    if route not in ROUTES:
        raise TwolevelError(f"TWOLEVEL_KERNELS={route!r} is not a kernel route; use one of "
                            f"{', '.join(ROUTES)}")
    if route == "auto":
        return "c" if load(module) is not None else "numba"
    return route


def vector_path(module: str) -> str:
    """The variant :func:`load` chose for ``module`` (``"avx512"``, ``"avx2"``, ``"baseline"``),
    or ``"none"``."""
    lib = load(module)
    return "none" if lib is None else lib.variant


def warn_numba(module: str, what: str) -> None:
    """Once per process and module: a :class:`NumbaKernelWarning` that ``what`` (e.g. "glmer")
    runs on numba's kernels because the compiled library is missing, with the reason and what to
    do. Silent when ``TWOLEVEL_KERNELS=numba`` chose numba on purpose."""
    if module in _WARNED or load(module) is not None:
        return
    if os.environ.get("TWOLEVEL_KERNELS", "auto").strip().lower() == "numba":
        return
    _WARNED.add(module)
    warnings.warn(f"twolevel: {what} runs on numba's kernels (slower, compiled on first use): "
                  f"{reason(module)}; {WHAT_TO_DO}", NumbaKernelWarning, stacklevel=3)
