"""Statistics stage of a pseudo-likelihood fit: weighted per-school cross-products.

For school j with conditional level-1 weights a_ij and the stacked row v_ij = (z_ij, x_ij, y_ij),

    M_j = Σ_i a_ij v_ij v_ijᵀ        ((q+p+1) × (q+p+1)),    n*_j = Σ_i a_ij,

which hold S_zz, S_zx, S_zy, S_xx, S_xy and S_yy of ``docs/survey.md`` §2.3. With the school
weights w_j these are everything the pseudo-likelihood, its profile and the sandwich need. The
function takes group codes and row weights only, so it can be run per innermost group, by a
database (``GROUP BY school`` of ``SUM(a*v_k*v_l)``) or on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from twolevel.models.survey.kernels import weighted_checked_sums, weighted_group_sums

__all__ = ["WeightedCrossprods", "weighted_group_crossprods", "checked_weighted_crossprods"]


@dataclass(frozen=True)
class WeightedCrossprods:
    """Per-school a-weighted cross-products and school weights.

    Fields
    ------
    M : (J, m, m) with m = q + p + 1: Σ_i a_ij v v ᵀ, v = (z, x, y); blocks ``[:q, :q]`` = S_zz,
        ``[:q, q:q+p]`` = S_zx, ``[:q, -1]`` = S_zy, ``[q:q+p, q:q+p]`` = S_xx, ``[q:q+p, -1]``
        = S_xy, ``[-1, -1]`` = S_yy.
    n_star : (J,) Σ_i a_ij.  w : (J,) school weights w_j.  n : (J,) row counts.
    q, p : numbers of random and fixed effects.
    """

    M: np.ndarray
    n_star: np.ndarray
    w: np.ndarray
    n: np.ndarray
    q: int
    p: int

    @property
    def n_groups(self) -> int:
        """J."""
        return int(self.M.shape[0])

    @property
    def n_weighted(self) -> float:
        """N_w = Σ_j w_j n*_j = Σ_ij w_ij (the σ² denominator)."""
        return float(self.w @ self.n_star)

    @cached_property
    def columns(self) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]],
                               list[list[np.ndarray]]]:
        """Contiguous length-J vectors (computed once) for component-wise evaluation:
        S_zz[a][b], P[a][k] = [S_zx S_zy][a, k] and Q[k][l] = the (x, y) block."""
        q, p = self.q, self.p
        M = self.M
        szz = [[np.ascontiguousarray(M[:, a, b]) for b in range(q)] for a in range(q)]
        pp = [[np.ascontiguousarray(M[:, a, q + k]) for k in range(p + 1)] for a in range(q)]
        qq = [[np.ascontiguousarray(M[:, q + k, q + ll]) for ll in range(p + 1)]
              for k in range(p + 1)]
        return szz, pp, qq

    def with_response(self, y_block: np.ndarray) -> WeightedCrossprods:
        """A copy with the response rows/columns replaced (J, m) (a plausible value shares
        S_zz, S_zx, S_xx with the others)."""
        M = self.M.copy()
        M[:, -1, :] = y_block
        M[:, :, -1] = y_block
        return WeightedCrossprods(M=M, n_star=self.n_star, w=self.w, n=self.n, q=self.q, p=self.p)



def _distinct_columns(Z: np.ndarray, X: np.ndarray, y: np.ndarray
                      ) -> tuple[list[np.ndarray], list[int]]:
    """The distinct columns of v = (z, x, y) (the intercept and a variable in both X and Z
    appear twice) and, per column of v, its index in them; −1 is the all-ones column, whose
    products are the other column itself (or Σa)."""
    cols = [Z[:, k] for k in range(Z.shape[1])] + [X[:, k] for k in range(X.shape[1])] + [y]
    distinct: list[np.ndarray] = []

    def col_id(v: np.ndarray) -> int:
        if v.shape[0] and v[0] == 1.0 and np.all(v == 1.0):
            return -1
        for k, u in enumerate(distinct):
            same_view = (u.shape == v.shape and u.strides == v.strides
                         and u.__array_interface__["data"][0] == v.__array_interface__["data"][0])
            if same_view or np.array_equal(u, v):
                return k
        distinct.append(v)
        return len(distinct) - 1

    return distinct, [col_id(c) for c in cols]


def _expand(S: np.ndarray, ids: list[int]) -> np.ndarray:
    """M (J, m, m) from the sums S (J, d+1, d+1) of the distinct columns (index 0: ones)."""
    m = len(ids)
    M = np.empty((S.shape[0], m, m))
    for k in range(m):
        for ll in range(k, m):
            M[:, k, ll] = M[:, ll, k] = S[:, ids[k] + 1, ids[ll] + 1]
    return M


def weighted_group_crossprods(Z: np.ndarray, X: np.ndarray, y: np.ndarray, codes: np.ndarray,
                              a: np.ndarray, w_group: np.ndarray) -> WeightedCrossprods:
    """Σ_i a_ij v v ᵀ per group, v = (z, x, y), in one compiled pass over the rows (columns
    shared by Z and X, and the intercept, are summed once).

    Parameters
    ----------
    Z : (n, q), X : (n, p), y : (n,) the model matrices of the rows.
    codes : (n,) group code 0..J−1 of each row.  a : (n,) row weights (conditional a_ij).
    w_group : (J,) level-2 weight of each group.

    Returns
    -------
    WeightedCrossprods

    Examples
    --------
    >>> import numpy as np
    >>> cp = weighted_group_crossprods(np.ones((3, 1)), np.ones((3, 1)), np.arange(3.0),
    ...                                np.array([0, 0, 1]), np.array([1.0, 2.0, 1.0]),
    ...                                np.array([1.0, 3.0]))
    >>> cp.M[0, -1, -1], cp.n_star.tolist(), cp.n_weighted
    (np.float64(2.0), [3.0, 1.0], 6.0)
    """
    J = int(w_group.shape[0])
    distinct, ids = _distinct_columns(Z, X, y)
    D = np.empty((len(distinct), codes.shape[0]))
    for k, u in enumerate(distinct):
        D[k] = u
    S = weighted_group_sums(D, np.ascontiguousarray(codes, dtype=np.int64),
                            np.ascontiguousarray(a, dtype=float), J)
    n_star = np.ascontiguousarray(S[:, 0, 0])
    M = _expand(S, ids)
    return WeightedCrossprods(
        M=M, n_star=n_star, w=np.asarray(w_group, dtype=float),
        n=np.bincount(codes, minlength=J), q=int(Z.shape[1]), p=int(X.shape[1]),
    )


def checked_weighted_crossprods(Z: np.ndarray, X: np.ndarray, y: np.ndarray, codes: np.ndarray,
                                n_groups: int, w1: np.ndarray, w2: np.ndarray,
                                conditional: bool, scaling: str, rtol: float
                                ) -> tuple[WeightedCrossprods, np.ndarray] | None:
    """The weighted statistics straight from the raw weight columns, in one compiled pass that
    also checks the weights (:func:`~twolevel.models.survey.kernels.weighted_checked_sums`):
    the school weight w_j (the school's level-2 value), a_ij = w1/w_j (or w1 when
    ``conditional``), then the level-1 ``scaling`` as a factor per school (``size``:
    n_j/Σa, ``effective``: Σa/Σa²), applied to the sums.

    Parameters
    ----------
    Z, X, y : model matrices.  codes : (n,) school codes 0..J−1, every school present.
    n_groups : J.  w1, w2 : (n,) the level-1 and level-2 weight columns as floats.
    conditional, scaling : as :func:`~twolevel.models.survey.weights.survey_weights`.
    rtol : the tolerance for a level-2 weight within a school.

    Returns
    -------
    (WeightedCrossprods, a) or None
        ``None`` when a weight is missing, infinite, negative or zero, or a level-2 weight
        varies within a school: the caller then runs the row-wise checks, which name the
        problem (or drop the rows and schools with weight 0).

    Examples
    --------
    >>> import numpy as np
    >>> cp, a = checked_weighted_crossprods(
    ...     np.ones((3, 1)), np.ones((3, 1)), np.arange(3.0), np.array([0, 0, 1]), 2,
    ...     np.array([2.0, 4.0, 3.0]), np.array([2.0, 2.0, 3.0]), False, "none", 1e-8)
    >>> a.tolist(), cp.w.tolist(), cp.n_weighted
    ([1.0, 2.0, 1.0], [2.0, 3.0], 9.0)
    """
    distinct, ids = _distinct_columns(Z, X, y)
    cols = tuple(np.ascontiguousarray(u, dtype=float) for u in distinct)
    if not cols:  # the kernel needs one column; a copy of the ones costs nothing in the sums
        cols = (np.ones(codes.shape[0]),)
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    S, ssq, w, a, flags = weighted_checked_sums(
        cols, codes, np.ascontiguousarray(w1, dtype=float), np.ascontiguousarray(w2, dtype=float),
        n_groups, bool(conditional), float(rtol))
    if flags:
        return None
    n = np.bincount(codes, minlength=n_groups)
    if scaling != "none":
        s1 = S[:, 0, 0]
        f = n / s1 if scaling == "size" else s1 / ssq
        S = S * f[:, None, None]
        a = a * f[codes]
    return WeightedCrossprods(M=_expand(S, ids), n_star=np.ascontiguousarray(S[:, 0, 0]), w=w,
                              n=n, q=int(Z.shape[1]), p=int(X.shape[1])), a
