"""The collapsed likelihood of a nested design with several grouping factors: every level's
effects integrated out by block elimination (no PyMC here).

Model (levels innermost first: classes ⊂ schools, occasions ⊂ children ⊂ schools)::

    y = Xβ + Σ_k Z_k b_k + ε,   b_k,g ~ N(0, Σ_k = L_k L_kᵀ) per group g of level k,   ε ~ N(0, σ²I)

With Λ_k = L_k/σ, spherical effects w (b_k = Λ_k w_k, w ~ N(0, σ²I)), r = y − Xβ,
H = I + ΛᵀZᵀZΛ and g = ΛᵀZᵀr, the marginal density is (Woodbury; ``several-grouping-factors.md``
§5.2)

    −2 log p(y | β, σ, L) = n log 2πσ² + log|H| + (rᵀr − gᵀH⁻¹g)/σ².

H is block-sparse in the order (level-1 groups, level-2 groups, …): a level-1 group touches only
its ancestors. The block Cholesky H = 𝓛𝓛ᵀ in that order (:func:`eliminate`) works on the
per-innermost-group cross-products A = ZᵀZ, B = ZᵀX, c = Zᵀy of [Z_1 … Z_K]
(:class:`NestedCrossprods`, from :func:`twolevel.models.design.multi_stats.nested_stats`):

1. level-1 group: G = ΛᵀAΛ (columns [Z_1 … Z_K]) with the r column g = Λᵀd, d = c − Bβ;
   G_11 + I = L_gL_gᵀ; [Rᵀ | v] = L_g⁻¹[G_1,rest | g_1]; the Schur complement
   F = G_rest,rest − RRᵀ with r column g_rest − Rv is summed into the parent group;
2. every next level: the summed F plus I on its own block, eliminated in the same way;
3. log|H| = Σ 2 log diag L over all groups, gᵀH⁻¹g = Σ ‖v‖² over all groups, and
   rᵀr = yᵀy − 2βᵀXᵀy + βᵀXᵀXβ.

Cost O(Σ_k groups_k · q³) per evaluation, independent of n. Every step is written on "unrolled"
small matrices (lists of lists whose entries are arrays over groups), so the same code runs on
NumPy arrays (vectorised over posterior draws and groups; this module) and on PyTensor tensors
(the sampled model, :mod:`twolevel.models.bayes.pymc_multi`, differentiated by PyTensor).

The effects come back in reverse elimination order (:func:`draw_nested_effects`): with
𝓛ᵀw = v + σe, e ~ N(0, I), the top level is w_K = L⁻ᵀ(v + σe) and each lower group
w_k = L⁻ᵀ(v + σe − R_ancᵀ w_anc), w_anc its ancestors' effects; b_k = Λ_k w_k. That is one exact
draw of (b_1, …, b_K) | y, β, σ, L.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from twolevel.data.errors import TwolevelError
from twolevel.models.design.multi import MultiDesign
from twolevel.models.design.multi_stats import nested_chain, nested_stats

__all__ = ["NestedCrossprods", "draw_nested_effects", "eliminate", "marginal_loglik",
           "nested_crossprods", "residual_ss"]

_LOG2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class NestedCrossprods:
    """Per-innermost-group cross-products of a nested design, and how the levels nest.

    Fields
    ------
    A : (G_1, q, q) ZᵀZ of each innermost group, columns [Z_1 … Z_K] (q = Σ q_k).
    B : (G_1, q, p) ZᵀX.  c : (G_1, q) Zᵀy.
    XtX : (p, p).  Xty : (p,).  yty : float.  n : rows.
    q_levels : q_k per level, innermost first.  n_levels : groups per level.
    parents : per level k < K, the level-(k+1) group of every level-k group.
    """

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    n: int
    q_levels: tuple[int, ...]
    n_levels: tuple[int, ...]
    parents: tuple[np.ndarray, ...]

    @property
    def offsets(self) -> tuple[int, ...]:
        """Column of each level's first effect in [Z_1 … Z_K]."""
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.q_levels)[:-1]]))

    def ancestors(self, k: int) -> list[np.ndarray]:
        """For each level j > k, the level-j group of every level-k group."""
        out, cur = [], np.arange(self.n_levels[k])
        for j in range(k, len(self.q_levels) - 1):
            cur = self.parents[j][cur]
            out.append(cur)
        return out


def nested_crossprods(design: MultiDesign) -> NestedCrossprods:
    """The :class:`NestedCrossprods` of a nested design (one pass over the rows,
    :func:`twolevel.models.design.multi_stats.nested_stats`).

    Raises
    ------
    TwolevelError
        When the grouping factors are not nested in one another (crossed or partially crossed).
    """
    if not nested_chain(design):
        names = ", ".join(f"'{f.name}'" for f in design.factors)
        raise TwolevelError(
            f"the grouping factors {names} of '{design.formula}' are not nested in one another "
            "(crossed or partially crossed); fit_bayes integrates out nested factors only: write "
            "the nesting as '(1 | school/class)' if each class belongs to one school, or fit the "
            "crossed model with twolevel.lmer"
        )
    st = nested_stats(design)
    q = int(sum(st.q))
    p = st.p
    C = st.C
    return NestedCrossprods(
        A=np.ascontiguousarray(C[:, :q, :q]), B=np.ascontiguousarray(C[:, :q, q:q + p]),
        c=np.ascontiguousarray(C[:, :q, -1]), XtX=C[:, q:q + p, q:q + p].sum(0),
        Xty=C[:, q:q + p, -1].sum(0), yty=float(C[:, -1, -1].sum()), n=st.n,
        q_levels=tuple(int(v) for v in st.q),
        n_levels=tuple(f.n_levels for f in design.factors), parents=st.parents)


# ----------------------------------------------------------------------------- array helpers


class _NumpyOps:
    """NumPy back end of the unrolled algebra: entries are (S, G) arrays (S draws), factors
    (S, 1) arrays; sums to parents by a sparse one-hot product."""

    def __init__(self):
        self._P: dict[int, sp.csr_matrix] = {}

    sqrt, log = staticmethod(np.sqrt), staticmethod(np.log)

    def segsum(self, x, parent: np.ndarray, n_parent: int):
        key = id(parent)
        P = self._P.get(key)
        if P is None or P.shape != (n_parent, parent.shape[0]):
            P = sp.csr_matrix((np.ones(parent.shape[0]), (parent, np.arange(parent.shape[0]))),
                              shape=(n_parent, parent.shape[0]))
            self._P[key] = P
        x = np.asarray(x)
        if x.ndim == 1:
            return P @ x
        return np.asarray(P @ x.T).T

    @staticmethod
    def total(x):
        return np.sum(x, axis=-1)


def _mat_vec_entries(cp, beta, ops, q: int):
    """d = c − Bβ as q entries over groups: NumPy (S, G) arrays for beta (S, p), or tensors."""
    c, B = _get(cp, "c"), _get(cp, "B")
    if ops.__class__ is _NumpyOps:
        d = c[None] - np.einsum("gap,sp->sga", B, beta)
        return [d[:, :, a] for a in range(q)]
    return [c[:, a] - ops.dot(B[:, a, :], beta) for a in range(q)]


def _get(cp, name: str):
    return cp[name] if isinstance(cp, dict) else getattr(cp, name)


def residual_ss(cp, beta, ops=None):
    """rᵀr = yᵀy − 2βᵀXᵀy + βᵀXᵀXβ (per draw for NumPy beta (S, p))."""
    if ops is None or ops.__class__ is _NumpyOps:
        beta = np.atleast_2d(beta)
        return (cp.yty - 2.0 * beta @ cp.Xty
                + np.einsum("sk,kl,sl->s", beta, cp.XtX, beta))
    return (_get(cp, "yty") - 2.0 * ops.dot(_get(cp, "Xty"), beta)
            + ops.dot(beta, ops.dot(_get(cp, "XtX"), beta)))


def _chol(M, ops):
    """Unrolled lower Cholesky factor of a small SPD matrix whose entries are arrays."""
    q = len(M)
    R = [[None] * q for _ in range(q)]
    for k in range(q):
        s = M[k][k]
        for m in range(k):
            s = s - R[k][m] * R[k][m]
        R[k][k] = ops.sqrt(s)
        for i in range(k + 1, q):
            s = M[i][k]
            for m in range(k):
                s = s - R[i][m] * R[k][m]
            R[i][k] = s / R[k][k]
    return R


def _forward(R, u):
    """x = R⁻¹u (R lower, unrolled)."""
    x = []
    for k in range(len(u)):
        s = u[k]
        for m in range(k):
            s = s - R[k][m] * x[m]
        x.append(s / R[k][k])
    return x


def _backward_t(R, w):
    """x = R⁻ᵀw (R lower, unrolled)."""
    q = len(w)
    x = [None] * q
    for k in range(q - 1, -1, -1):
        s = w[k]
        for m in range(k + 1, q):
            s = s - R[m][k] * x[m]
        x[k] = s / R[k][k]
    return x


@dataclass
class EliminationStep:
    """One level's factors: L (q_k × q_k unrolled), Rt (q_k × columns of the levels above,
    unrolled; Rᵀ = L⁻¹G_1,rest), v (q_k entries) and log|L|² per group."""

    L: list
    Rt: list
    v: list
    logdet: object


def eliminate(cp, beta, Lam, ops, keep: bool = False):
    """Block elimination of H = I + ΛᵀZᵀZΛ with the r column (module docstring).

    Parameters
    ----------
    cp : NestedCrossprods (NumPy) or a dict of tensors with ``A``, ``B``, ``c`` (PyTensor).
    beta : (S, p) NumPy draws, or a tensor (p,).
    Lam : per level a q_k × q_k unrolled lower-triangular Λ_k = L_k/σ (entries (S, 1) arrays or
        scalar tensors; None for structural zeros).
    ops : :class:`_NumpyOps` or the PyTensor back end of :mod:`twolevel.models.bayes.pymc_multi`.
    keep : also return every level's :class:`EliminationStep` (for the effects).

    Returns
    -------
    (logdet, quad[, steps])
        log|H| and gᵀH⁻¹g, summed over all groups (per draw for NumPy).
    """
    qs = [len(Lk) for Lk in Lam]
    K = len(qs)
    off = np.concatenate([[0], np.cumsum(qs)]).astype(int)
    A = _get(cp, "A")
    d = _mat_vec_entries(cp, beta, ops, int(sum(qs)))
    # which level owns each column, and the column's position within it
    owner = [k for k in range(K) for _ in range(qs[k])]
    pos = [a - off[owner[a]] for a in range(off[-1])]

    def lam_cols(a):  # (row index, Λ entry) of column a of the block-diagonal Λ
        k, j = owner[a], pos[a]
        return [(off[k] + i, Lam[k][i][j]) for i in range(j, qs[k]) if Lam[k][i][j] is not None]

    cols = [lam_cols(a) for a in range(off[-1])]
    nz = len(cols)
    G = [[None] * nz for _ in range(nz)]
    for a in range(nz):
        for b in range(a, nz):
            s = 0.0
            for i, li in cols[a]:
                for j, lj in cols[b]:
                    s = s + li * lj * A[:, i, j]
            G[a][b] = G[b][a] = s
    g = [sum(li * d[i] for i, li in cols[a]) for a in range(nz)]
    logdet, quad = 0.0, 0.0
    steps = []
    for k in range(K):
        q = qs[k]
        M = [[G[i][j] + (1.0 if i == j else 0.0) for j in range(q)] for i in range(q)]
        L = _chol(M, ops)
        rest = len(G) - q
        Rt = [[None] * rest for _ in range(q)]
        for jj in range(rest):
            col = _forward(L, [G[i][q + jj] for i in range(q)])
            for i in range(q):
                Rt[i][jj] = col[i]
        v = _forward(L, g[:q])
        ld = sum(2.0 * ops.log(L[i][i]) for i in range(q))
        qv = sum(vi * vi for vi in v)
        if keep:
            steps.append(EliminationStep(L=L, Rt=Rt, v=v, logdet=ld))
        if k == K - 1:
            logdet = logdet + ops.total(ld)
            quad = quad + ops.total(qv)
            break
        par = cp.parents[k] if not isinstance(cp, dict) else cp["parents"][k]
        n_par = cp.n_levels[k + 1] if not isinstance(cp, dict) else cp["n_levels"][k + 1]
        logdet = logdet + ops.total(ld)
        quad = quad + ops.total(qv)
        Fn = [[None] * rest for _ in range(rest)]
        for a in range(rest):
            for b in range(a, rest):
                s = G[q + a][q + b] - sum(Rt[i][a] * Rt[i][b] for i in range(q))
                Fn[a][b] = Fn[b][a] = ops.segsum(s, par, n_par)
        gn = [ops.segsum(g[q + a] - sum(Rt[i][a] * v[i] for i in range(q)), par, n_par)
              for a in range(rest)]
        G, g = Fn, gn
    if keep:
        return logdet, quad, steps
    return logdet, quad


def _lam_numpy(Ls: list[np.ndarray], sigma: np.ndarray) -> list[list]:
    """Unrolled Λ_k = L_k/σ from (S, q_k, q_k) factors: entries (S, 1) arrays (None above the
    diagonal)."""
    out = []
    for L in Ls:
        q = L.shape[1]
        out.append([[(L[:, i, j] / sigma)[:, None] if j <= i else None for j in range(q)]
                    for i in range(q)])
    return out


def marginal_loglik(cp: NestedCrossprods, beta: np.ndarray, Ls: list[np.ndarray],
                    sigma: np.ndarray) -> np.ndarray:
    """log p(y | β, σ, L_1 … L_K) with every level's effects integrated out, per draw:

    −½ [ n log 2πσ² + log|H| + (rᵀr − gᵀH⁻¹g)/σ² ]   (module docstring).

    Parameters
    ----------
    cp : NestedCrossprods
    beta : (S, p) fixed effects.  Ls : per level (S, q_k, q_k) lower factors of Σ_k.
    sigma : (S,) residual SD.

    Returns
    -------
    numpy.ndarray
        (S,) log densities.

    Examples
    --------
    >>> ll = marginal_loglik(cp, beta[None], [L3[None], L2[None]], np.array([s]))  # doctest: +SKIP
    """
    beta = np.atleast_2d(np.asarray(beta, float))
    sigma = np.atleast_1d(np.asarray(sigma, float))
    logdet, quad = eliminate(cp, beta, _lam_numpy(Ls, sigma), _NumpyOps())
    s2 = sigma ** 2
    return -0.5 * (cp.n * (_LOG2PI + np.log(s2)) + logdet
                   + (residual_ss(cp, beta) - quad) / s2)


_CHUNK = 100


def draw_nested_effects(cp: NestedCrossprods, beta: np.ndarray, Ls: list[np.ndarray],
                        sigma: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """One draw of every level's effects from their exact conditional posterior given each of S
    hyperparameter draws (reverse elimination order, module docstring).

    Parameters
    ----------
    cp : NestedCrossprods
    beta : (S, p).  Ls : per level (S, q_k, q_k).  sigma : (S,).
    rng : numpy Generator (standard normals e, per block of draws, level by level).

    Returns
    -------
    list of numpy.ndarray
        Per level (S, G_k, q_k): b_k = L_k w_k/σ.
    """
    S = beta.shape[0]
    K = len(Ls)
    ops = _NumpyOps()
    out = [np.empty((S, cp.n_levels[k], cp.q_levels[k])) for k in range(K)]
    anc = [cp.ancestors(k) for k in range(K)]
    for s0 in range(0, S, _CHUNK):
        sl = slice(s0, min(S, s0 + _CHUNK))
        sig = sigma[sl]
        ns = sl.stop - sl.start
        noise = [rng.standard_normal((ns, cp.n_levels[k], cp.q_levels[k])) for k in range(K)]
        _, _, steps = eliminate(cp, beta[sl], _lam_numpy([L[sl] for L in Ls], sig), ops,
                                keep=True)
        w_levels: list[list] = [None] * K
        for k in range(K - 1, -1, -1):
            st = steps[k]
            q = cp.q_levels[k]
            rhs = [st.v[i] + sig[:, None] * noise[k][:, :, i] for i in range(q)]
            col = 0
            for j in range(k + 1, K):  # the ancestors' effects at level j
                idx = anc[k][j - k - 1]
                for m in range(cp.q_levels[j]):
                    wj = w_levels[j][m][:, idx]
                    for i in range(q):
                        rhs[i] = rhs[i] - st.Rt[i][col + m] * wj
                col += cp.q_levels[j]
            w = _backward_t(st.L, rhs)
            w_levels[k] = w
            Lk = Ls[k][sl]
            for i in range(q):
                out[k][sl, :, i] = sum(Lk[:, i, j, None] * w[j] for j in range(i + 1)) \
                    / sig[:, None]
    return out
