"""Several nested grouping factors in C (``cnested.c``, compiled with the package): the
per-innermost-group cross-products and the block elimination of the profiled criterion.

The NumPy code stays the reference (``tests/test_nested_kernels.py`` compares the two on random
θ): :func:`twolevel.models.design.multi_stats._group_crossprods` (one ``bincount`` per entry) and
the ``modes=True`` path of :func:`twolevel.models.lmm.nested.nested_state` (NumPy's batched
Cholesky). Without the compiled library (or with ``TWOLEVEL_KERNELS=numba``) the criterion runs
on the numba loop of :mod:`twolevel.models.lmm.nested_kernels` and the statistics on
``bincount``; :func:`compiled` says which.

Why C: a Chem97 fit evaluates the criterion ~45 times over 2,410 schools and a 10⁶-student fit
~30 times over 50,000 classes; one call per evaluation that scales each class block, eliminates
it into its school and each school into the fixed-effects block, with no (n, d, d) temporaries,
takes microseconds to a few milliseconds.
"""

from __future__ import annotations

import ctypes

import numpy as np

from twolevel.models import native

__all__ = ["DMAX", "MODULE", "NestedKernel", "ScaledGram", "compiled", "group_crossprods"]

MODULE = "twolevel.models.lmm._cnested"
DMAX = 64  # cnested.c's fixed work arrays: d = Σq_k + p + 1 ≤ DMAX
OK, NOT_PD = 0, 1
_TYPED: set[int] = set()


def _lib() -> ctypes.CDLL:
    lib = native.require(MODULE).cdll
    if id(lib) not in _TYPED:
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.twolevel_group_crossprods.restype = None
        lib.twolevel_group_crossprods.argtypes = [vp, vp, vp, i64, i64, i64, vp, vp]
        lib.twolevel_nested_parts_packed.restype = i64
        lib.twolevel_nested_parts_packed.argtypes = [vp]
        lib.twolevel_crossed_schur.restype = None
        lib.twolevel_crossed_schur.argtypes = [vp, vp, i64, i64, vp, vp, vp, i64, vp, vp]
        lib.twolevel_sub_scaled_gram.restype = None
        lib.twolevel_sub_scaled_gram.argtypes = [vp, vp, vp, i64, vp, i64, vp]
        for fn in (lib.twolevel_nested_eliminate, lib.twolevel_nested_parts):
            fn.restype = i64
            fn.argtypes = [vp, vp, i64, i64, vp, vp, vp, i64, vp, vp, vp]
        _TYPED.add(id(lib))
    return lib


def compiled(d: int) -> bool:
    """True when the compiled kernels run for blocks of size ``d`` (the library is present,
    ``TWOLEVEL_KERNELS`` is not ``numba``, and d ≤ :data:`DMAX`); otherwise the first call says
    once that numba runs instead."""
    if d <= DMAX and native.kernel_route(MODULE) == "c":
        _lib()
        return True
    if d <= DMAX:
        native.warn_numba(MODULE, "lmer with several grouping factors")
    return False


def group_crossprods(codes: np.ndarray, columns: list[np.ndarray], n_groups: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """(G, d, d) Σ_{i ∈ g} w_i w_iᵀ with w_i the i-th entries of ``columns`` (times the row
    weight when ``weights`` is given), one pass over the rows in C; the same sums, in the same
    order, as one ``numpy.bincount`` per entry.

    Parameters
    ----------
    codes : (n,) group index of every row, 0 ≤ code < ``n_groups``.
    columns : d arrays of n floats (the columns of [Z X y]).
    n_groups : G.  weights : optional (n,) row weights.

    Returns
    -------
    numpy.ndarray
        (G, d, d) symmetric cross-products.

    Examples
    --------
    >>> group_crossprods(np.array([0, 1, 0]), [np.ones(3), np.arange(3.0)], 2)[0]  # doctest: +SKIP
    array([[2., 2.],
           [2., 4.]])
    """
    cols = [np.ascontiguousarray(c, dtype=np.float64) for c in columns]
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    d, n = len(cols), codes.shape[0]
    ptrs = (ctypes.c_void_p * d)(*[c.ctypes.data for c in cols])
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    C, packed = np.empty((n_groups, d, d)), np.zeros(n_groups * d * (d + 1) // 2)
    _lib().twolevel_group_crossprods(ctypes.addressof(ptrs), None if w is None else w.ctypes.data,
                                     codes.ctypes.data, n, d, n_groups, packed.ctypes.data,
                                     C.ctypes.data)
    return C


class NestedKernel:
    """The compiled block elimination for one nested design's statistics, prepared once: the
    arrays made contiguous (``C`` (n_1, d, d), ``q`` and ``n_levels`` per level innermost first,
    the parents of levels 1..K−1 concatenated), their addresses, and the work and result
    buffers (reused by every call: one call at a time)."""

    def __init__(self, C: np.ndarray, q: np.ndarray, n_levels: np.ndarray, parents: np.ndarray):
        self.C, self.q, self.n_levels, self.parents = C, q, n_levels, parents
        d = C.shape[1]
        pm = d - int(q.sum())
        m, total = d, 0
        for k in range(1, q.shape[0]):
            m -= int(q[k - 1])
            total += int(n_levels[k]) * m * m
        self.work_size = total  # Σ_{k≥1} ℓ_k m_k², m_k = d − q_0 − … − q_{k−1}
        self._F, self._out, self._acc = np.empty((pm, pm)), np.zeros(3), np.empty(max(total, 1))
        self._args = (C.ctypes.data, d, q.shape[0], q.ctypes.data, n_levels.ctypes.data,
                      parents.ctypes.data)
        self._bufs = (self._acc.ctypes.data, self._F.ctypes.data, self._out.ctypes.data)
        lib = _lib()
        self._eliminate, self._parts = lib.twolevel_nested_eliminate, lib.twolevel_nested_parts
        self._packed_fn = lib.twolevel_nested_parts_packed
        self._packed: np.ndarray | None = None  # the packed arguments for one fixed T buffer
        self._T: np.ndarray | None = None

    @classmethod
    def from_stats(cls, C: np.ndarray, q: tuple[int, ...], n_levels: tuple[int, ...],
                   parents: tuple[np.ndarray, ...]) -> NestedKernel:
        """Contiguous int64/float64 copies of a :class:`NestedStats`' arrays."""
        par = (np.concatenate([np.asarray(p, dtype=np.int64) for p in parents]) if parents
               else np.zeros(1, dtype=np.int64))
        return cls(C=np.ascontiguousarray(C, dtype=np.float64),
                   q=np.asarray(q, dtype=np.int64), n_levels=np.asarray(n_levels, dtype=np.int64),
                   parents=np.ascontiguousarray(par))

    def _call(self, fn, T: np.ndarray, diagonal: bool) -> int:
        if T.dtype != np.float64 or not T.flags.c_contiguous:
            T = np.ascontiguousarray(T, dtype=np.float64)
        C, d, K, q, nl, par = self._args
        return int(fn(C, T.ctypes.data, d, K, q, nl, par, int(diagonal), *self._bufs))

    def eliminate(self, T: np.ndarray, diagonal: bool) -> tuple[float, np.ndarray]:
        """(log|L|², F): every level eliminated at the full d × d scaling T (block diagonal
        T_1 … T_K, I); F is the (p+1)² Schur complement on [X y] (a new array).

        Raises
        ------
        numpy.linalg.LinAlgError
            When a block is not positive definite.
        """
        if self._call(self._eliminate, T, diagonal) != OK:
            raise np.linalg.LinAlgError("not positive definite")
        return float(self._out[0]), self._F.copy()

    def parts_into(self, T: np.ndarray, diagonal: bool) -> tuple[float, float, float] | None:
        """:meth:`parts` for a caller that refills one T buffer (C-contiguous float64, kept
        alive by the caller) at every call: the arguments are packed once per buffer and the
        call converts one pointer."""
        if self._T is not T or self._packed is None or self._packed[7] != int(diagonal):
            C, d, K, q, nl, par = self._args
            self._packed = np.array([C, T.ctypes.data, d, K, q, nl, par, int(diagonal),
                                     *self._bufs], dtype=np.int64)
            self._packed_addr = self._packed.ctypes.data
            self._T = T
        if self._packed_fn(self._packed_addr) != OK:
            return None
        out = self._out
        return float(out[0]), float(out[1]), float(out[2])

    def parts(self, T: np.ndarray, diagonal: bool) -> tuple[float, float, float] | None:
        """(log|L|², log|L_X|², r²) at T, or None when a block (or F) is not positive definite."""
        if self._call(self._parts, T, diagonal) != OK:
            return None
        out = self._out
        return float(out[0]), float(out[1]), float(out[2])


class ScaledGram:
    """S −= A diag(w) Aᵀ on the lower triangle of S, in C, for one sparse matrix A (m × n), its
    columns' structure kept (int64 CSC, sorted) so that each call passes only w (``cnested.c``'s
    ``twolevel_sub_scaled_gram``); the reference is SciPy's ``A @ diags(w) @ A.T``."""

    def __init__(self, A):
        csc = A.tocsc()
        csc.sort_indices()
        self.m, self.n = csc.shape
        self.indptr = np.ascontiguousarray(csc.indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(csc.indices, dtype=np.int64)
        self.data = np.ascontiguousarray(csc.data, dtype=np.float64)
        self._fn = _lib().twolevel_sub_scaled_gram
        self._schur = _lib().twolevel_crossed_schur

    def subtract_from(self, S: np.ndarray, w: np.ndarray) -> None:
        """S −= A diag(w) Aᵀ in place on S's lower triangle (S: C-contiguous float64 m × m;
        the strict upper triangle is left as it was).

        Raises
        ------
        ValueError
            When S is not a C-contiguous float64 (m, m) array.
        """
        if S.shape != (self.m, self.m) or S.dtype != np.float64 or not S.flags.c_contiguous:
            raise ValueError("S must be a C-contiguous float64 (m, m) array")
        w = np.ascontiguousarray(w, dtype=np.float64)
        self._fn(self.indptr.ctypes.data, self.indices.ctypes.data, self.data.ctypes.data,
                 self.n, w.ctypes.data, self.m, S.ctypes.data)

    def schur(self, Arr: np.ndarray, t: np.ndarray, qr: int, w: np.ndarray) -> np.ndarray:
        """The lower triangle of D(Arr − A diag(w) Aᵀ)D + (I_qr ⊕ 0), D = diag(t), in one C pass
        (a new C-contiguous (m, m) array whose strict upper triangle is not set).

        Raises
        ------
        ValueError
            When Arr is not a C-contiguous float64 (m, m) array or t is not of length m.
        """
        m = self.m
        if Arr.shape != (m, m) or Arr.dtype != np.float64 or not Arr.flags.c_contiguous:
            raise ValueError("Arr must be a C-contiguous float64 (m, m) array")
        if t.shape != (m,):
            raise ValueError(f"t must have the {m} entries of the block's rows")
        t = np.ascontiguousarray(t, dtype=np.float64)
        w = np.ascontiguousarray(w, dtype=np.float64)
        S = np.empty((m, m))
        self._schur(Arr.ctypes.data, t.ctypes.data, m, int(qr), self.indptr.ctypes.data,
                    self.indices.ctypes.data, self.data.ctypes.data, self.n, w.ctypes.data,
                    S.ctypes.data)
        return S
