"""glmer's PIRLS loop, cross-products and adaptive Gauss–Hermite sum in C (``cpirls.c``), with
numba's kernels (:mod:`twolevel.models.glmm.kernels`) as the fallback and the reference.

Why C: a PIRLS sweep computes, for every row, μ(η), the working weight, the working response
and the unit deviance (an ``exp`` and a ``log`` a row). numba does that one row at a time;
``cpirls.c`` computes blocks of rows in a loop the compiler vectorises (``-O3``, glibc's libmvec
for ``exp``/``log`` when the build found it, no ``-ffast-math``) and then adds them into each
group's cross-products. The maths, layout and loop are numba's; the objective agrees to about
1e-12 relative (a test), not bitwise, because the vector ``exp``/``log`` round differently.

The library is compiled with the package (``setup.py``; on x86-64 a baseline, an AVX2 and an
AVX-512 build, the widest this processor runs loaded by :mod:`twolevel.models.native`);
``TWOLEVEL_KERNELS=numba`` forces numba, and the default falls back to numba (saying so once)
when the package has no compiled library. The C calls release the GIL, so evaluations at
several parameter values run on several threads
(:meth:`twolevel.models.glmm.laplace.GlmmProblem.map`).
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from twolevel.data.errors import TwolevelError
from twolevel.models import native

__all__ = ["CPirls", "MODULE", "for_problem", "kernel_route", "load", "threads_for",
           "x_columns_in_z"]

MODULE = "twolevel.models.glmm._cpirls"
_TYPED: set[int] = set()

F_JOINT, F_WANT_RX, F_REFRESH, F_PRE, F_NO_ETA = 1, 2, 4, 8, 16


def kernel_route() -> str:
    """``"c"`` or ``"numba"`` (see :func:`twolevel.models.native.kernel_route`)."""
    return native.kernel_route(MODULE)


def for_problem(y, w, X, Z, g, fam: int, J: int) -> CPirls | None:
    """The C kernels for one model, or None for numba's: ``TWOLEVEL_KERNELS=numba``, or (by
    default) no compiled library in the package, said once
    (:func:`twolevel.models.native.warn_numba`). With ``TWOLEVEL_KERNELS=c`` a missing library
    is an error saying what to do."""
    if kernel_route() != "c":
        native.warn_numba(MODULE, "glmer")
        return None
    try:
        return CPirls(y, w, X, Z, g, fam, J)
    except TwolevelError:
        if os.environ.get("TWOLEVEL_KERNELS", "auto").strip().lower() == "c":
            raise
        return None


def load() -> ctypes.CDLL:
    """The compiled library (the variant :func:`twolevel.models.native.load` chose), its
    functions typed; a :class:`TwolevelError` saying what to do when the package has none."""
    lib = native.require(MODULE).cdll
    if id(lib) in _TYPED:
        return lib
    vp, i64, dbl = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    lib.twolevel_pirls.restype = i64
    lib.twolevel_pirls.argtypes = [vp, i64, vp, vp, vp, dbl, i64, dbl] + [vp] * 10 + [i64, vp, vp]
    lib.twolevel_work_size.restype = i64
    lib.twolevel_work_size.argtypes = [vp, i64]
    lib.twolevel_max_threads.restype = i64
    lib.twolevel_max_threads.argtypes = []
    lib.twolevel_offset.restype = None
    lib.twolevel_offset.argtypes = [vp] * 7 + [i64]
    lib.twolevel_crossprods.restype = None
    lib.twolevel_crossprods.argtypes = [vp] * 8
    lib.twolevel_agq.restype = None
    lib.twolevel_agq.argtypes = [vp, dbl, vp, vp, vp, i64, vp, vp, vp, vp]
    _TYPED.add(id(lib))
    return lib


MIN_ROWS_PER_THREAD = 2048


def threads_for(n: int, available: int) -> int:
    """Threads for a sweep over n rows: OpenMP's count (``OMP_NUM_THREADS``, else the cores),
    but at least :data:`MIN_ROWS_PER_THREAD` rows a thread (below that, starting the threads
    costs more than it saves)."""
    return max(1, min(int(available), n // MIN_ROWS_PER_THREAD))


def x_columns_in_z(X: np.ndarray, Z: np.ndarray) -> np.ndarray | None:
    """For each column of X, the index of an equal column of Z (as in ``y ~ 1 + x +
    (1 + x | g)``), or None when some column of X is not among Z's."""
    idx = []
    for c in range(X.shape[1]):
        hit = [a for a in range(Z.shape[1]) if np.array_equal(X[:, c], Z[:, a])]
        if not hit:
            return None
        idx.append(hit[0])
    return np.asarray(idx, dtype=np.int64)


class _GlmmData(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int64), ("J", ctypes.c_int64), ("q", ctypes.c_int64),
                ("p", ctypes.c_int64), ("fam", ctypes.c_int64), ("y", ctypes.c_void_p),
                ("w", ctypes.c_void_p), ("X", ctypes.c_void_p), ("Z", ctypes.c_void_p),
                ("g", ctypes.c_void_p), ("sorted", ctypes.c_int64), ("ly", ctypes.c_void_p)]


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class CPirls:
    """One model's arrays for the C kernels, with the same calls and results as numba's
    ``pirls_kernel``, ``start_crossprods`` and ``agq_kernel``; ``threads``: the threads a sweep
    uses (default :func:`threads_for`)."""

    def __init__(self, y, w, X, Z, g, fam: int, J: int, threads: int | None = None):
        self.lib = load()
        self._keep = [np.ascontiguousarray(a, dtype=float) for a in (y, w, X, Z)]
        self._keep.append(np.ascontiguousarray(g, dtype=np.int64))
        y, w, X, Z, g = self._keep
        if Z.shape[1] > 16 or X.shape[1] > 64:
            raise TwolevelError(f"the C PIRLS kernel takes at most 16 random effects and 64 "
                                f"fixed effects, not {Z.shape[1]} and {X.shape[1]}; set "
                                "TWOLEVEL_KERNELS=numba")
        self.n, self.J, self.q, self.p = y.shape[0], int(J), Z.shape[1], X.shape[1]
        if fam == 0 and np.all((y == 0.0) | (y == 1.0)):
            # logit, 0/1 responses: one log a row; unit weights too: one for eight (cpirls.c)
            fam = 5 if np.all(w == 1.0) else 4
        self.sorted = bool(np.all(g[1:] >= g[:-1]))  # rows sorted by group (cpirls.c sweep)
        ly = None
        if fam == 3:  # poisson: log y once, so a row's deviance needs no log (cpirls.c)
            ly = np.log(np.where(y > 0, y, 1.0))
            self._keep.append(ly)
        self.data = _GlmmData(self.n, self.J, self.q, self.p, int(fam), _ptr(y), _ptr(w),
                              _ptr(X), _ptr(Z), _ptr(g), int(self.sorted),
                              None if ly is None else _ptr(ly))
        self.ref = ctypes.addressof(self.data)
        self.threads = (threads_for(self.n, int(self.lib.twolevel_max_threads()))
                        if threads is None else max(1, int(threads)))
        self.x_in_z = x_columns_in_z(X, Z)
        self._work_size = int(self.lib.twolevel_work_size(self.ref, self.threads))
        self._local = threading.local()
        self._ptrs: dict[int, tuple[np.ndarray, int]] = {}

    def _pointer(self, a: np.ndarray) -> int:
        """The address of ``a``'s data, remembered (with ``a``, so that its id is not reused)
        for arrays passed again and again: the warm start's cross-products, this thread's
        buffers."""
        hit = self._ptrs.get(id(a))
        if hit is not None and hit[0] is a:
            return hit[1]
        if len(self._ptrs) > 64:
            self._ptrs.clear()
        ptr = a.ctypes.data
        self._ptrs[id(a)] = (a, ptr)
        return ptr

    def work(self) -> np.ndarray:
        """This thread's work space for :meth:`pirls` (allocated once per thread)."""
        w = getattr(self._local, "work", None)
        if w is None:
            w = self._local.work = np.empty(self._work_size)
        return w

    def buffers(self) -> dict[str, np.ndarray]:
        """This thread's output arrays for value-only evaluations (``u``, ``Lfac``, ``RX``,
        ``off``, ``cz``), reused from call to call."""
        b = getattr(self._local, "buffers", None)
        if b is None:
            b = self._local.buffers = {"u": np.empty((self.J, self.q)),
                                       "Lfac": np.empty((self.J, self.q, self.q)),
                                       "RX": np.empty((self.p, self.p)),
                                       "off": np.empty(self.n), "cz": np.empty((self.J, self.q))}
        return b

    def pirls(self, joint, want_rx, refresh, T, offset, eta, tol, maxit, csat, u, beta, Lfac,
              RX, pre, A0, cz0, B0, XtWX0, XtWz0, keep_eta=True, shift=None):
        """numba's ``pirls_kernel`` (same arguments after the data, same outputs); ``eta``,
        ``u``, ``beta``, ``Lfac``, ``RX`` are filled in place and must be C-contiguous
        float64. ``keep_eta=False`` (with ``pre``) leaves ``eta`` untouched: a value-only
        evaluation that saves writing n numbers a sweep. ``shift`` (u-only mode, when
        :attr:`x_in_z`): ``offset`` is the model's offset alone and β sits on Z's columns
        (:meth:`shift`), so no pass making o + Xβ is needed."""
        flags = (F_JOINT * bool(joint) | F_WANT_RX * bool(want_rx) | F_REFRESH * bool(refresh)
                 | F_PRE * bool(pre) | F_NO_ETA * (not keep_eta))
        T = np.ascontiguousarray(T, dtype=float)
        offset = np.ascontiguousarray(offset, dtype=float)
        starts = [np.ascontiguousarray(a, dtype=float) for a in (A0, cz0, B0, XtWX0, XtWz0)]
        out = np.empty(6)
        # addresses remembered for the arrays passed again and again (the warm start's
        # cross-products; in value-only evaluations, this thread's buffers), not for fresh ones
        p = self._pointer if not keep_eta else _ptr
        ps = self._pointer if pre else _ptr
        status = self.lib.twolevel_pirls(
            self.ref, flags, _ptr(T), p(offset), p(eta), float(tol), int(maxit),
            float(csat), p(u), _ptr(beta), p(Lfac), p(RX), ps(starts[0]), _ptr(starts[1]),
            ps(starts[2]), ps(starts[3]), ps(starts[4]),
            None if shift is None else _ptr(np.ascontiguousarray(shift, dtype=float)),
            self.threads,
            self._pointer(self.work()), _ptr(out))
        return (int(status), int(out[0]), out[1], out[2], out[3], out[4], out[5])

    def shift(self, beta) -> np.ndarray:
        """β placed on Z's columns (:attr:`x_in_z`): z_iᵀshift = x_iᵀβ."""
        s = np.zeros(self.q)
        np.add.at(s, self.x_in_z, np.asarray(beta, dtype=float))
        return s

    def offset(self, o, beta, c0, B0, out=None, rows=True, reuse=False):
        """The stage-2 start with Xβ moved into the offset: (o + Xβ, c0_j − B0_jβ), without a
        BLAS call (whose threads would spin on the kernels' cores); o + Xβ into ``out`` when
        given, and not made at all (None) when ``rows`` is False; ``reuse``: c0 − B0β into this
        thread's buffer (overwritten by its next call)."""
        o = np.ascontiguousarray(o, dtype=float)
        beta = np.ascontiguousarray(beta, dtype=float)
        if rows:
            out = np.empty(self.n) if out is None else out
        else:
            out = None
        cz = self.buffers()["cz"] if reuse else np.empty((self.J, self.q))
        self.lib.twolevel_offset(self.ref, _ptr(o), _ptr(beta),
                                 None if out is None else _ptr(out), _ptr(c0), _ptr(B0),
                                 _ptr(cz), self.threads)
        return out, cz

    def crossprods(self, offset, eta):
        """numba's ``start_crossprods``: (A, c, B, XᵀWX, XᵀWž) at η."""
        J, q, p = self.J, self.q, self.p
        res = (np.zeros((J, q, q)), np.zeros((J, q)), np.zeros((J, q, p)), np.zeros((p, p)),
               np.zeros(p))
        offset = np.ascontiguousarray(offset, dtype=float)
        eta = np.ascontiguousarray(eta, dtype=float)
        self.lib.twolevel_crossprods(self.ref, _ptr(offset), _ptr(eta), *(_ptr(a) for a in res))
        return res

    def agq(self, t11, offset, u, Lfac, nodes, weights):
        """numba's ``agq_kernel``: (Σ_j devc0_j, −2 Σ_j log mult_j)."""
        offset = np.ascontiguousarray(offset, dtype=float)
        u = np.ascontiguousarray(u, dtype=float)
        Lfac = np.ascontiguousarray(Lfac, dtype=float)
        nodes = np.ascontiguousarray(nodes, dtype=float)
        weights = np.ascontiguousarray(weights, dtype=float)
        out, work = np.empty(2), np.empty(3 * self.J)
        self.lib.twolevel_agq(self.ref, float(t11), _ptr(offset), _ptr(u), _ptr(Lfac),
                              nodes.shape[0], _ptr(nodes), _ptr(weights), _ptr(work), _ptr(out))
        return out[0], out[1]
