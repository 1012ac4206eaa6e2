"""Statistics stage: the per-group cross-products of §7.1 of the lme4 algorithm notes.

Everything the (RE)ML criterion, Satterthwaite, Kenward–Roger, the BLUPs and the collapsed Bayesian
likelihood need is a sum over the rows of each group: ``A_j = Z_jᵀZ_j``, ``B_j = Z_jᵀX_j``,
``c_j = Z_jᵀy_j`` and the global ``XᵀX``, ``Xᵀy``, ``yᵀy``. :func:`group_crossprods` computes them
from an in-memory :class:`~twolevel.models.design.matrices.Design` in one pass; they could equally
be aggregated by a database or a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from twolevel.models.design.matrices import Design

__all__ = ["GroupCrossprods", "group_crossprods"]


@dataclass(frozen=True)
class GroupCrossprods:
    """Per-group cross-products, one pass over the data (§7.1 of the lme4 notes).

    ``A[j] = Z_jᵀZ_j`` (J, q, q), ``B[j] = Z_jᵀX_j`` (J, q, p), ``c[j] = Z_jᵀy_j`` (J, q); global
    ``XtX = XᵀX``, ``Xty = Xᵀy``, ``yty = yᵀy``; ``n`` rows and ``p`` fixed effects. These are all
    the (RE)ML criterion needs, so they can also be aggregated elsewhere (a database, a cluster).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> cp = tl.group_crossprods(tl.make_design("g1rscore ~ famsesc + (1 | schid)", d))
    >>> cp.XtX.shape
    (2, 2)
    """

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    n: int
    p: int

    @property
    def n_groups(self) -> int:
        """Number of groups J."""
        return int(self.A.shape[0])

    @cached_property
    def columns(self) -> tuple[dict[tuple[int, int], np.ndarray], tuple[np.ndarray, ...]]:
        """Contiguous copies for component-wise PLS (computed once): ``A[:, a, b]`` for a ≤ b as
        length-J vectors keyed (a, b), and for each a the (J, p+1) block ``[B_j c_j][a, :]``."""
        q = self.A.shape[1]
        a_cols = {(a, b): np.ascontiguousarray(self.A[:, a, b]) for a in range(q)
                  for b in range(a, q)}
        bc = tuple(np.ascontiguousarray(np.concatenate([self.B[:, a, :], self.c[:, a, None]],
                                                       axis=1)) for a in range(q))
        return a_cols, bc

    @cached_property
    def shifted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The blocks ``[B_j c_j]`` (J, q, p+1) and ``[[XᵀX, Xᵀy], [yᵀX, yᵀy]]`` (p+1, p+1) for the
        response y − Xγ, with γ the OLS coefficients, and γ (computed once).

        r²(θ) and both log-determinants are the same for y and y − Xγ (β̂ absorbs Xγ), but the
        down-dating that yields r² then cancels far less (‖y − Xγ‖² instead of ‖y‖²), so the
        criterion has ~10× less rounding noise, which numDeriv's Hessian (Satterthwaite) feels."""
        p = self.p
        try:
            gamma = np.linalg.solve(self.XtX, self.Xty) if p else np.zeros(0)
        except np.linalg.LinAlgError:
            gamma = np.zeros(p)
        if not np.all(np.isfinite(gamma)):
            gamma = np.zeros(p)
        J, q = self.c.shape
        BC = np.empty((J, q, p + 1))
        BC[:, :, :p] = self.B
        BC[:, :, p] = self.c - np.einsum("jak,k->ja", self.B, gamma)
        aug = np.empty((p + 1, p + 1))
        aug[:p, :p] = self.XtX
        aug[:p, p] = aug[p, :p] = self.Xty - self.XtX @ gamma
        aug[p, p] = float(self.yty - 2.0 * gamma @ self.Xty + gamma @ self.XtX @ gamma)
        return BC, aug, gamma


def group_crossprods(design: Design) -> GroupCrossprods:
    """Compute :class:`GroupCrossprods` with O(n·(q² + qp)) work and O(n) extra memory.

    Each distinct product of two columns is summed by group once (``np.bincount``): columns that
    Z and X share (the intercept, a variable with both a fixed and a random slope) are detected
    and their products reused, and a product with the all-ones column is the column itself (or
    the group sizes).

    Parameters
    ----------
    design : Design
        From :func:`make_design`.

    Returns
    -------
    GroupCrossprods
        Per-group ZᵀZ, ZᵀX, Zᵀy and the totals XᵀX, Xᵀy, yᵀy.

    Examples
    --------
    >>> import twolevel as tl
    >>> des = tl.make_design("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> tl.group_crossprods(des).A.shape
    (742, 1, 1)
    """
    g, J = design.group_index, design.n_groups
    Z, X, y = design.Z, design.X, design.y
    q, p = design.q, design.p

    # distinct columns: ids into `cols`; -1 is the all-ones column
    cols: list[np.ndarray] = []

    def col_id(v: np.ndarray) -> int:
        if v.shape[0] and v[0] == 1.0 and np.all(v == 1.0):
            return -1
        for k, w in enumerate(cols):
            same_view = (w.shape == v.shape and w.strides == v.strides
                         and w.__array_interface__["data"][0] == v.__array_interface__["data"][0])
            if same_view or np.array_equal(w, v):
                return k
        cols.append(np.ascontiguousarray(v))
        return len(cols) - 1

    zid = [col_id(Z[:, a]) for a in range(q)]
    xid = [col_id(X[:, b]) for b in range(p)]
    yid = col_id(y)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def gsum(i: int, k: int) -> np.ndarray:
        key = (min(i, k), max(i, k))
        if key not in cache:
            a, b = key
            if a == -1 and b == -1:
                w = None
            elif a == -1:
                w = cols[b]
            else:
                w = cols[a] * cols[b]
            cache[key] = np.bincount(g, weights=w, minlength=J).astype(float, copy=False)
        return cache[key]

    A = np.empty((J, q, q))
    for a in range(q):
        for b in range(a, q):
            A[:, a, b] = A[:, b, a] = gsum(zid[a], zid[b])
    B = np.empty((J, q, p))
    for a in range(q):
        for b in range(p):
            B[:, a, b] = gsum(zid[a], xid[b])
    c = np.empty((J, q))
    for a in range(q):
        c[:, a] = gsum(zid[a], yid)
    # einsum, not BLAS: OpenBLAS threads long dot products, which stalls on a busy machine
    return GroupCrossprods(
        A=A, B=B, c=c, XtX=np.einsum("ij,ik->jk", X, X), Xty=np.einsum("ij,i->j", X, y),
        yty=float(np.einsum("i,i->", y, y)), n=design.n, p=p,
    )
