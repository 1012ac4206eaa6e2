"""Kenward–Roger SEs and df for several grouping factors (pbkrtest's ``vcovAdj`` on the
marginal covariance, as lmerTest's ``summary(m, ddf = "Kenward-Roger")``).

Variance parameters γ (pbkrtest's ``.get_SigmaG``): each term's covariance σ²T_kT_kᵀ, lower
triangle column-wise, term after term (θ's layout), then σ². G_r = Z_k(I ⊗ E_r)Z_kᵀ with E_r the
symmetric 0/1 indicator of element r, and G_σ² = I, so Σ = Σ_r γ_r G_r. From Σ⁻¹: Φ = (XᵀΣ⁻¹X)⁻¹,
P_r = −XᵀΣ⁻¹G_rΣ⁻¹X, Q_rs = XᵀΣ⁻¹G_rΣ⁻¹G_sΣ⁻¹X, K_rs = tr(Σ⁻¹G_rΣ⁻¹G_s), then
IE2 = K − 2tr(ΦQ) + tr(ΦPΦP), W = 2 IE2⁻¹, U = Σ W_rs(Q_rs − P_rΦP_s), Φ_A = Φ + 2ΦUΦ and the df
of :func:`twolevel.models.inference.kenward_roger.kr_ddf`.

This is pbkrtest's dense computation with n × n matrices (nested designs could use per-school
sums, crossed designs have no block structure): it is refused above ``MAX_ROWS`` rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from twolevel.data.errors import TwolevelError
from twolevel.models.inference.kenward_roger import KR_REML_ONLY_MESSAGE, KRPieces, kr_ddf

__all__ = ["MAX_ROWS", "ddf_kenward_roger_multi", "kr_pieces_multi"]

MAX_ROWS = 6000


def kr_pieces_multi(fit) -> KRPieces:
    """pbkrtest's Φ, P_r, W and Φ_A at a :class:`~twolevel.models.lmm.multi_results.MultiFit`
    (module docstring).

    Raises
    ------
    TwolevelError
        For an ML fit, or more than ``MAX_ROWS`` rows.
    """
    if not fit.reml:
        raise TwolevelError(KR_REML_ONLY_MESSAGE)
    d = fit.design
    n = d.n
    if n > MAX_ROWS:
        raise TwolevelError(
            f"Kenward-Roger with several grouping factors builds {n} x {n} matrices (pbkrtest's "
            f"method) and is limited to {MAX_ROWS} rows; use --ddf satterthwaite"
        )
    s2 = fit.sigma**2
    Gs, gam = [], []
    for k, f in enumerate(d.factors):
        tm = d.templates[k]
        cov = s2 * d.factor_T(fit.theta, k) @ d.factor_T(fit.theta, k).T
        Zc = [sp.csr_matrix((f.Z[:, j], (np.arange(n), f.codes)), shape=(n, f.n_levels))
              for j in range(f.q)]
        for r, c in zip(*np.nonzero(tm >= 0), strict=True):
            G = (Zc[r] @ Zc[c].T).toarray()
            if r != c:
                G = G + G.T
            Gs.append((int(tm[r, c]), G))
            gam.append((int(tm[r, c]), cov[r, c]))
    order = np.argsort([i for i, _ in Gs])
    G = [Gs[i][1] for i in order] + [np.eye(n)]
    g = np.array([gam[i][1] for i in order] + [s2])
    Sigma = sum(gi * Gi for gi, Gi in zip(g, G, strict=True))
    Si = np.linalg.inv(Sigma)
    X = d.X
    SiX = Si @ X
    Phi = np.linalg.inv(X.T @ SiX)
    Phi = 0.5 * (Phi + Phi.T)
    SG = [Si @ Gi for Gi in G]  # Σ⁻¹G_r
    m = len(G)
    P = [-(SiX.T @ (Gi @ SiX)) for Gi in G]
    IE2 = np.empty((m, m))
    Q = {}
    for r in range(m):
        for s in range(r, m):
            Q[r, s] = SiX.T @ G[r] @ SG[s] @ SiX
            K = float(np.sum(SG[r] * SG[s].T))
            IE2[r, s] = IE2[s, r] = (K - 2.0 * np.sum(Phi * Q[r, s])
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
