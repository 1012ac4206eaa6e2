"""The REML/ML criterion's loops over groups in C (``creml.c``, compiled with the package), with
numba's kernels (:mod:`twolevel.models.lmm.kernels`) as the fallback and the reference.

Why C beside numba: a REML fit of the lecture model takes a few milliseconds once numba's kernels
are loaded, but loading them (importing numba, reading its cache, type dispatch) took 1.2–1.9 s
in every fresh process — most of ``twolevel fit``'s time. ``creml.c`` is the same maths, layout
and operation order (up to the order of one vectorised sum), loaded with :mod:`ctypes` in
microseconds (:mod:`twolevel.models.native`). The functions here have the numba kernels'
signatures and results; :func:`kernels` says which set a fit uses (``TWOLEVEL_KERNELS``).
"""

from __future__ import annotations

import ctypes

import numpy as np

from twolevel.models import native

__all__ = ["MODULE", "QMAX", "kernels", "pls_parts_batch_kernel", "pls_parts_kernel",
           "theta_grad_kernel"]

MODULE = "twolevel.models.lmm._creml"
QMAX, MMAX = 32, 128  # creml.c's fixed work arrays
X_NOT_PD = 1
_TYPED: set[int] = set()


def _lib() -> ctypes.CDLL:
    lib = native.require(MODULE).cdll
    if id(lib) not in _TYPED:
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.twolevel_pls_parts.restype = i64
        lib.twolevel_pls_parts.argtypes = [vp, vp, vp, vp, i64, i64, i64, vp, vp]
        lib.twolevel_theta_grad.restype = None
        lib.twolevel_theta_grad.argtypes = [vp, vp, vp, vp, i64, i64, i64, i64, vp, vp, vp]
        _TYPED.add(id(lib))
    return lib


def kernels():
    """The module whose ``pls_parts_kernel``, ``pls_parts_batch_kernel`` and
    ``theta_grad_kernel`` a fit calls: this one when the compiled library is present (and
    ``TWOLEVEL_KERNELS`` is not ``numba``), else :mod:`twolevel.models.lmm.kernels` (numba; the
    first fit says so once)."""
    import sys

    if native.kernel_route(MODULE) == "c":
        _lib()
        return sys.modules[__name__]
    native.warn_numba(MODULE, "lmer")
    from twolevel.models.lmm import kernels as numba_kernels

    return numba_kernels


def _c(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def pls_parts_kernel(T, A, BC, aug0):
    """(r², log|L|², log|R_X|², status) at T (numba's ``pls_parts_kernel``)."""
    T, A, BC, aug0 = _c(T), _c(A), _c(BC), _c(aug0)
    J, q, m = BC.shape
    if q > QMAX or m > MMAX:
        from twolevel.models.lmm import kernels as numba_kernels

        return numba_kernels.pls_parts_kernel(T, A, BC, aug0)
    aug, out = np.empty((m, m)), np.empty(3)
    status = _lib().twolevel_pls_parts(T.ctypes.data, A.ctypes.data, BC.ctypes.data,
                                       aug0.ctypes.data, J, q, m, aug.ctypes.data,
                                       out.ctypes.data)
    return float(out[0]), float(out[1]), float(out[2]), int(status)


def pls_parts_batch_kernel(Ts, A, BC, aug0):
    """:func:`pls_parts_kernel` at each of the K factors ``Ts`` (K, q, q): four (K,) arrays."""
    K = Ts.shape[0]
    r2, ldl2, ldrx2 = np.empty(K), np.empty(K), np.empty(K)
    status = np.empty(K, dtype=np.int64)
    A, BC, aug0 = _c(A), _c(BC), _c(aug0)
    for k in range(K):
        r2[k], ldl2[k], ldrx2[k], status[k] = pls_parts_kernel(Ts[k], A, BC, aug0)
    return r2, ldl2, ldrx2, status


def theta_grad_kernel(T, A, BC, beta, with_w):
    """(dld, dr2, S): the per-group sums of the analytic gradient (numba's
    ``theta_grad_kernel``)."""
    T, A, BC, beta = _c(T), _c(A), _c(BC), _c(beta)
    J, q, m = BC.shape
    if q > QMAX:
        from twolevel.models.lmm import kernels as numba_kernels

        return numba_kernels.theta_grad_kernel(T, A, BC, beta, with_w)
    p = m - 1
    dld, dr2, S = np.zeros((q, q)), np.zeros((q, q)), np.zeros((q, q, p, p))
    _lib().twolevel_theta_grad(T.ctypes.data, A.ctypes.data, BC.ctypes.data, beta.ctypes.data,
                               J, q, m, int(bool(with_w)), dld.ctypes.data, dr2.ctypes.data,
                               S.ctypes.data)
    return dld, dr2, S
