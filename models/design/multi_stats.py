"""Statistics stage for several grouping factors: everything the engines need from the rows, in
one pass, independent of θ.

*Nested* factors (each factor nested in the next, innermost first: occasions ⊂ children ⊂
schools, classes ⊂ schools) need only the cross-products per **innermost group**

    C_c = Σ_{i ∈ c} w_iᵀ w_i,   w_i = [z_{1,i} | z_{2,i} | … | z_{K,i} | x_i | y_i]

and, per level, the parent of every group (:class:`NestedStats`). Every entry is a sum over the
rows of the group (one GROUP BY), so a row weight multiplies each row's contribution.

*Crossed* factors (``(1 | a) + (1 | b)``, partially crossed, or a mix) keep the factor with the
most levels as per-level blocks and the rest as one dense block (:class:`CrossedStats`): the
per-level cross-products of the first factor, the sparse cross-products of the rest with it (one
entry per occupied cell), and the dense cross-products of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from twolevel.models.design.multi import MultiDesign, is_nested_in

__all__ = ["CrossedStats", "NestedStats", "crossed_stats", "nested_chain", "nested_stats"]


def nested_chain(design: MultiDesign) -> bool:
    """True when the factors, most levels first, form a chain in which each is nested in the
    next (lme4's ``isNested`` pairwise along the chain)."""
    fs = design.factors
    return all(is_nested_in(fs[k].codes, fs[k + 1].codes, fs[k].n_levels)
               for k in range(len(fs) - 1))


def _group_crossprods(codes: np.ndarray, W: np.ndarray, n_groups: int) -> np.ndarray:
    """(G, d, d) Σ_{i in g} w_iᵀw_i by one bincount per entry of the upper triangle (a row
    weight would multiply the products here)."""
    d = W.shape[1]
    C = np.empty((n_groups, d, d))
    for a in range(d):
        wa = W[:, a]
        for b in range(a, d):
            C[:, a, b] = np.bincount(codes, weights=wa * W[:, b], minlength=n_groups)
            C[:, b, a] = C[:, a, b]
    return C


def _nested_crossprods(design: MultiDesign) -> np.ndarray:
    """C_c of every innermost group: one pass in C over the columns of [Z_1 … Z_K X y] as they
    are (:func:`twolevel.models.lmm.cnested.group_crossprods`), or :func:`_group_crossprods` (the
    reference) without the compiled library."""
    from twolevel.models.lmm import cnested

    fs = design.factors
    cols = [f.Z[:, j] for f in fs for j in range(f.q)]
    cols += [design.X[:, j] for j in range(design.p)] + [design.y]
    if cnested.compiled(len(cols)):
        return cnested.group_crossprods(fs[0].codes, cols, fs[0].n_levels)
    return _group_crossprods(fs[0].codes, np.column_stack(cols), fs[0].n_levels)


@dataclass(frozen=True)
class NestedStats:
    """Per-innermost-group cross-products of a nested design.

    Fields
    ------
    C : (n_1, d, d) cross-products of [Z_1 … Z_K X y] per innermost group (d = Σq_k + p + 1).
    parents : for k = 1..K−1, the index of the level-(k+1) group of every level-k group.
    q : random effects per group at each level, innermost first.  n, p : rows, fixed effects.
    yty : Σ y² (for the degenerate checks).
    """

    C: np.ndarray
    parents: tuple[np.ndarray, ...]
    q: tuple[int, ...]
    n: int
    p: int


def nested_stats(design: MultiDesign) -> NestedStats:
    """The :class:`NestedStats` of a nested design (factors innermost first, as in
    ``design.factors``). One pass over the rows."""
    fs = design.factors
    C = _nested_crossprods(design)
    parents = []
    for k in range(len(fs) - 1):
        par = np.zeros(fs[k].n_levels, dtype=np.intp)
        par[fs[k].codes] = fs[k + 1].codes
        parents.append(par)
    return NestedStats(C=C, parents=tuple(parents), q=tuple(f.q for f in fs), n=design.n,
                       p=design.p)


def _expanded_Z(codes: np.ndarray, Z: np.ndarray, n_levels: int) -> sp.csr_matrix:
    """The sparse N × (ℓ·q) random-effects matrix of one factor: row i holds z_i at the
    columns of its level."""
    n, q = Z.shape
    indices = (codes[:, None] * q + np.arange(q)[None, :]).ravel()
    indptr = np.arange(0, n * q + 1, q)
    return sp.csr_matrix((np.asarray(Z, dtype=float).ravel(), indices, indptr),
                         shape=(n, n_levels * q))


@dataclass(frozen=True)
class CrossedStats:
    """Cross-products of a crossed (or partially crossed) design.

    Fields
    ------
    A11 : (ℓ_1, q_1, q_1) per-level cross-products of the first factor (most levels).
    Ar1 : sparse (m, ℓ_1 q_1): [Z_2 … Z_K X y]ᵀ Z_1, one block per occupied cell.
    Arr : dense (m, m): [Z_2 … Z_K X y]ᵀ [Z_2 … Z_K X y].
    q_rest : ℓ_k q_k for k ≥ 2 (the sizes of the dense random-effects blocks).
    n, p : rows, fixed effects.
    """

    A11: np.ndarray
    Ar1: sp.csr_matrix
    Arr: np.ndarray
    q_rest: tuple[int, ...]
    n: int
    p: int


def crossed_stats(design: MultiDesign) -> CrossedStats:
    """The :class:`CrossedStats` of a design (the first factor is the one with most levels)."""
    fs = design.factors
    f1 = fs[0]
    Z1 = _expanded_Z(f1.codes, f1.Z, f1.n_levels)
    A11 = _group_crossprods(f1.codes, f1.Z, f1.n_levels)
    rest = [_expanded_Z(f.codes, f.Z, f.n_levels) for f in fs[1:]]
    Wr = sp.hstack(rest + [sp.csr_matrix(np.column_stack([design.X, design.y]))], format="csc")
    Ar1 = (Wr.T @ Z1).tocsr()
    Arr = (Wr.T @ Wr).toarray()
    return CrossedStats(A11=A11, Ar1=Ar1, Arr=Arr,
                        q_rest=tuple(f.n_levels * f.q for f in fs[1:]), n=design.n, p=design.p)
