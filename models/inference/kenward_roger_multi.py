"""Kenward–Roger SEs and df for several grouping factors (pbkrtest's ``vcovAdj`` on the
marginal covariance, as lmerTest's ``summary(m, ddf = "Kenward-Roger")``).

Variance parameters γ (pbkrtest's ``.get_SigmaG``): each term's covariance σ²T_kT_kᵀ, lower
triangle column-wise, term after term (θ's layout), then σ². G_r = Z_k(I ⊗ E_r)Z_kᵀ with E_r the
symmetric 0/1 indicator of element r, and G_σ² = I, so Σ = Σ_r γ_r G_r. From Σ⁻¹: Φ = (XᵀΣ⁻¹X)⁻¹,
P_r = −XᵀΣ⁻¹G_rΣ⁻¹X, Q_rs = XᵀΣ⁻¹G_rΣ⁻¹G_sΣ⁻¹X, K_rs = tr(Σ⁻¹G_rΣ⁻¹G_s), then
IE2 = K − 2tr(ΦQ) + tr(ΦPΦP), W = 2 IE2⁻¹, U = Σ W_rs(Q_rs − P_rΦP_s), Φ_A = Φ + 2ΦUΦ and the df
of :func:`twolevel.models.inference.kenward_roger.kr_ddf`.

For a nested design Σ is block-diagonal by the outermost factor, so every piece is a sum over its
groups of products of that group's n_s × n_s blocks (pbkrtest's dense matrices, one group at a
time). A crossed design has no block structure: all rows form one block. A block of more than
``MAX_ROWS`` rows is refused.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from twolevel.data.errors import TwolevelError
from twolevel.models.inference.kenward_roger import KR_REML_ONLY_MESSAGE, KRPieces, kr_ddf

__all__ = ["MAX_ROWS", "ddf_kenward_roger_multi", "kr_pieces_multi"]

MAX_ROWS = 6000


def _blocks(fit) -> list[np.ndarray]:
    """Row sets on which Σ is block-diagonal: the top-level groups of a nested design (Σ is
    block-diagonal by the outermost factor), else all rows as one block."""
    d = fit.design
    if fit.engine != "nested":
        return [np.arange(d.n)]
    top = d.factors[-1].codes
    order = np.argsort(top, kind="stable")
    cuts = np.flatnonzero(np.diff(top[order])) + 1
    return np.split(order, cuts)


def kr_pieces_multi(fit) -> KRPieces:
    """pbkrtest's Φ, P_r, W and Φ_A at a :class:`~twolevel.models.lmm.multi_results.MultiFit`
    (module docstring). Every piece is a sum over the blocks of Σ: the top-level groups of a
    nested design, the whole data set for a crossed one.

    Raises
    ------
    TwolevelError
        For an ML fit, or a block of more than ``MAX_ROWS`` rows.
    """
    if not fit.reml:
        raise TwolevelError(KR_REML_ONLY_MESSAGE)
    d = fit.design
    blocks = _blocks(fit)
    big = max(len(b) for b in blocks)
    if big > MAX_ROWS:
        where = ("rows" if fit.engine != "nested"
                 else f"rows in one '{d.factors[-1].name}' group")
        raise TwolevelError(
            f"Kenward-Roger builds {big} x {big} matrices here ({big} {where}; pbkrtest's "
            f"method) and is limited to {MAX_ROWS} rows per block; use --ddf satterthwaite"
        )
    s2 = fit.sigma**2
    params = []  # (θ index, factor k, r, c, γ)
    for k in range(len(d.factors)):
        tm = d.templates[k]
        cov = s2 * d.factor_T(fit.theta, k) @ d.factor_T(fit.theta, k).T
        for r, c in zip(*np.nonzero(tm >= 0), strict=True):
            params.append((int(tm[r, c]), k, int(r), int(c), float(cov[r, c])))
    params.sort()
    m = len(params) + 1
    p = d.p
    XSX = np.zeros((p, p))
    P = [np.zeros((p, p)) for _ in range(m)]
    Q = {(r, s): np.zeros((p, p)) for r in range(m) for s in range(r, m)}
    K = np.zeros((m, m))
    for rows in blocks:
        nb = len(rows)
        G = []
        for _, k, r, c, _g in params:
            f = d.factors[k]
            codes = f.codes[rows]
            lv, inv = np.unique(codes, return_inverse=True)
            Zr = sp.csr_matrix((f.Z[rows, r], (np.arange(nb), inv)), shape=(nb, len(lv)))
            Zc = sp.csr_matrix((f.Z[rows, c], (np.arange(nb), inv)), shape=(nb, len(lv)))
            Gi = (Zr @ Zc.T).toarray()
            G.append(Gi + Gi.T if r != c else Gi)
        G.append(np.eye(nb))
        g = [pr[4] for pr in params] + [s2]
        Sigma = sum(gi * Gi for gi, Gi in zip(g, G, strict=True))
        Si = np.linalg.inv(Sigma)
        X = d.X[rows]
        SiX = Si @ X
        XSX += X.T @ SiX
        SG = [Si @ Gi for Gi in G]
        GSiX = [Gi @ SiX for Gi in G]
        for r in range(m):
            P[r] -= SiX.T @ GSiX[r]
            for s in range(r, m):
                Q[r, s] += GSiX[r].T @ (SG[s] @ SiX)
                K[r, s] += float(np.sum(SG[r] * SG[s].T))
    Phi = np.linalg.inv(XSX)
    Phi = 0.5 * (Phi + Phi.T)
    IE2 = np.empty((m, m))
    for r in range(m):
        for s in range(r, m):
            IE2[r, s] = IE2[s, r] = (K[r, s] - 2.0 * np.sum(Phi * Q[r, s])
                                     + np.sum((Phi @ P[r]) * (P[s] @ Phi)))
    cond = float(np.min(np.abs(np.linalg.eigvalsh(IE2))))
    W = 2.0 * (np.linalg.inv(IE2) if cond > 1e-10 else np.linalg.pinv(IE2))
    W = 0.5 * (W + W.T)
    U = np.zeros_like(Phi)
    for r in range(m):
        for s in range(m):
            Qrs = Q[r, s] if r <= s else Q[s, r].T
            U += W[r, s] * (Qrs - P[r] @ Phi @ P[s])
    return KRPieces(Phi=Phi, P=tuple(P), W=W, Phi_A=Phi + 2.0 * Phi @ U @ Phi, condition=cond)


def ddf_kenward_roger_multi(fit, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(SE, df) of each row of L under Kenward–Roger (pbkrtest's ``vcovAdj`` and ``Lb_ddf``)."""
    pieces = kr_pieces_multi(fit)
    L = np.atleast_2d(np.asarray(L, dtype=float))
    se = np.sqrt(np.diag(L @ pieces.Phi_A @ L.T))
    return se, np.array([kr_ddf(row, pieces) for row in L])
