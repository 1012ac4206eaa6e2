"""The collapsed model's log density and gradient as C callbacks (``ckernels.c``), built by the
system C compiler once per installation; numba's kernels (:mod:`twolevel.models.bayes.kernels`)
are the fallback and the reference.

Why C beside numba: numba compiles the callback on first use in about 2.5 s of CPU (type
inference and LLVM lowering), and again whenever its cache is empty, which made a cold first
fit ~1.9× a warm one. ``ckernels.c`` is the same maths, data layout and operation order as
the numba kernels (a test checks them equal to 1e-12 and the PyMC model to 1e-10); ``cc -O2``
builds it in a fraction of a second, once, into a shared library that a fit loads with
:mod:`ctypes` in microseconds and hands to nutpie as function addresses, without importing
numba.

Where the library lives: ``$TWOLEVEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/twolevel``, else
``~/.cache/twolevel``; its name carries a hash of the source, the flags and the compiler, so an
edited kernel or another compiler builds anew. The build writes a temporary file and renames it,
so processes building at the same time never load a half-written library.

Which route a fit takes (:func:`kernel_route`): ``TWOLEVEL_KERNELS=c`` or ``numba`` forces one;
by default (``auto``) C when the library is built or a C compiler (``$CC``, ``cc``, ``gcc``,
``clang``) is on the PATH, numba otherwise (and when a build fails: the compiler's message is
kept in :data:`BUILD_ERRORS`).
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

from twolevel.models import cbuild

__all__ = ["BUILD_ERRORS", "SOURCE", "CFLAGS", "build", "build_command", "c_logp_and_grad",
           "cache_dir", "callback_addresses", "compiler", "glmm_callback_addresses",
           "kernel_route", "library_path", "load", "start_build", "finish_build"]

SOURCE = Path(__file__).with_name("ckernels.c")
CFLAGS = ("-O2", "-fPIC", "-shared", "-fno-fast-math")
ROUTES = cbuild.ROUTES
BUILD_ERRORS: list[str] = []
_LIB: dict[str, ctypes.CDLL] = {}


SPEC = cbuild.CSource(SOURCE, CFLAGS)
cache_dir = cbuild.cache_dir
compiler = cbuild.compiler


def library_path(cc: str | None = None) -> Path:
    """The shared library's path: ``ckernels-<hash of source, flags, compiler>-<machine>.so``."""
    return SPEC.library_path(cc)


def build_command(cc: str, out: Path) -> list[str]:
    """``cc -O2 -fPIC -shared -fno-fast-math ckernels.c -o out -lm``."""
    return SPEC.build_command(cc, out)


def start_build() -> tuple[subprocess.Popen, Path, Path] | None:
    """Start the compiler in the background when the library is not built yet (see
    :meth:`twolevel.models.cbuild.CSource.start_build`)."""
    return SPEC.start_build()


def finish_build(pending: tuple[subprocess.Popen, Path, Path], timeout: float = 300.0) -> bool:
    """Wait for :func:`start_build`'s compiler; move the library into place. False (with the
    compiler's message in :data:`BUILD_ERRORS`) when it failed."""
    return SPEC.finish_build(pending, BUILD_ERRORS, timeout)


def build() -> Path | None:
    """Build the library now if needed (``make setup`` does, once per installation); its path, or
    None when no compiler is found or the build failed (see :data:`BUILD_ERRORS`)."""
    return SPEC.build(BUILD_ERRORS)


def kernel_route() -> str:
    """``"c"`` or ``"numba"``: ``$TWOLEVEL_KERNELS`` (``auto``, ``c``, ``numba``; default auto:
    C when a compiler is found and no build of this process has failed)."""
    return cbuild.kernel_route(BUILD_ERRORS)


def load() -> ctypes.CDLL:
    """The built library (built now if needed); a :class:`TwolevelError` saying what to do when
    there is no compiler or the build failed."""
    if "lib" in _LIB:
        return _LIB["lib"]
    lib = cbuild.open_library(build(), BUILD_ERRORS, SOURCE)
    dbl = ctypes.POINTER(ctypes.c_double)
    for name in ("twolevel_logp_q2", "twolevel_logp_general", "twolevel_logp_glmm"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_uint64, dbl, dbl, dbl, ctypes.c_void_p]
    _LIB["lib"] = lib
    return lib


def callback_addresses(q: int) -> tuple[int, int]:
    """(logp, expand) function addresses for nutpie: ``twolevel_logp_q2`` for q = 2, else
    ``twolevel_logp_general``; ``twolevel_copy``."""
    lib = load()
    logp = lib.twolevel_logp_q2 if q == 2 else lib.twolevel_logp_general
    addr = ctypes.cast(logp, ctypes.c_void_p).value
    return addr, ctypes.cast(lib.twolevel_copy, ctypes.c_void_p).value


def glmm_callback_addresses() -> tuple[int, int]:
    """(logp, expand) function addresses of the non-centred GLMM for nutpie:
    ``twolevel_logp_glmm``, ``twolevel_copy``."""
    lib = load()
    return (ctypes.cast(lib.twolevel_logp_glmm, ctypes.c_void_p).value,
            ctypes.cast(lib.twolevel_copy, ctypes.c_void_p).value)


def c_logp_and_grad(x: np.ndarray, data: np.ndarray, model: str = "collapsed"
                    ) -> tuple[float, np.ndarray, int]:
    """(log density, gradient, status) at x from the C callback of ``model`` ("collapsed" or
    "glmm"), called from Python (tests)."""
    lib = load()
    x = np.ascontiguousarray(x, dtype=np.float64)
    data = np.ascontiguousarray(data, dtype=np.float64)
    grad = np.empty_like(x)
    lp = ctypes.c_double()
    if model == "glmm":
        fn = lib.twolevel_logp_glmm
    else:
        fn = lib.twolevel_logp_q2 if int(data[0]) == 2 else lib.twolevel_logp_general
    dbl = ctypes.POINTER(ctypes.c_double)
    status = fn(x.size, x.ctypes.data_as(dbl), grad.ctypes.data_as(dbl), ctypes.byref(lp),
                data.ctypes.data_as(ctypes.c_void_p))
    return lp.value, grad, int(status)
