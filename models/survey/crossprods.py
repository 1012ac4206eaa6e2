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

from twolevel.models.survey.kernels import weighted_group_sums

__all__ = ["WeightedCrossprods", "weighted_group_crossprods"]


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
    cols = [Z[:, k] for k in range(Z.shape[1])] + [X[:, k] for k in range(X.shape[1])] + [y]
    m = len(cols)
    # distinct columns once (the intercept and a variable in both X and Z appear twice);
    # -1 is the all-ones column, whose products are the column itself (or Σa)
    distinct: list[np.ndarray] = []

    def col_id(v: np.ndarray) -> int:
        if v.shape[0] and v[0] == 1.0 and np.all(v == 1.0):
            return -1
        for k, u in enumerate(distinct):
            if u is v or np.array_equal(u, v):
                return k
        distinct.append(v)
        return len(distinct) - 1

    ids = [col_id(c) for c in cols]
    D = np.empty((len(distinct), codes.shape[0]))
    for k, u in enumerate(distinct):
        D[k] = u
    S = weighted_group_sums(D, np.ascontiguousarray(codes, dtype=np.int64),
                            np.ascontiguousarray(a, dtype=float), J)
    n_star = np.ascontiguousarray(S[:, 0, 0])
    M = np.empty((J, m, m))
    for k in range(m):
        for ll in range(k, m):
            M[:, k, ll] = M[:, ll, k] = S[:, ids[k] + 1, ids[ll] + 1]
    return WeightedCrossprods(
        M=M, n_star=n_star, w=np.asarray(w_group, dtype=float),
        n=np.bincount(codes, minlength=J), q=int(Z.shape[1]), p=int(X.shape[1]),
    )
