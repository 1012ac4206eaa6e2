"""The collapsed model's log density and gradient as C callbacks (``ckernels.c``), compiled with
the package; numba's kernels (:mod:`twolevel.models.bayes.kernels`) are the fallback and the
reference.

Why C beside numba: numba compiles the callback on first use in about 2.5 s of CPU (type
inference and LLVM lowering), and again whenever its cache is empty, which made a cold first
fit ~1.9× a warm one. ``ckernels.c`` is the same maths, data layout and operation order as
the numba kernels (a test checks them equal to 1e-12 and the PyMC model to 1e-10); ``setup.py``
builds it when the wheel or the editable install is built, into a shared library beside this
module that a fit loads with :mod:`ctypes` in microseconds (:mod:`twolevel.models.native`: on
x86-64 the widest of a baseline, an AVX2 and an AVX-512 build this processor runs) and hands to
nutpie as function addresses, without importing numba.

Which route a fit takes (:func:`kernel_route`): ``TWOLEVEL_KERNELS=c`` or ``numba`` forces one;
by default (``auto``) C when the package has the compiled library, numba otherwise (said once,
:func:`twolevel.models.native.warn_numba`).
"""

from __future__ import annotations

import ctypes

import numpy as np

from twolevel.models import native

__all__ = ["MODULE", "c_logp_and_grad", "callback_addresses", "glmm_callback_addresses",
           "kernel_route", "load"]

MODULE = "twolevel.models.bayes._ckernels"
_TYPED: set[int] = set()


def kernel_route() -> str:
    """``"c"`` or ``"numba"`` (see :func:`twolevel.models.native.kernel_route`)."""
    return native.kernel_route(MODULE)


def load() -> ctypes.CDLL:
    """The compiled library (the variant :func:`twolevel.models.native.load` chose), its
    functions typed; a :class:`TwolevelError` saying what to do when the package has none."""
    lib = native.require(MODULE).cdll
    if id(lib) in _TYPED:
        return lib
    dbl = ctypes.POINTER(ctypes.c_double)
    for name in ("twolevel_logp_q2", "twolevel_logp_general", "twolevel_logp_glmm"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_uint64, dbl, dbl, dbl, ctypes.c_void_p]
    _TYPED.add(id(lib))
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
