"""Kenward–Roger adjusted covariance of β̂ and denominator degrees of freedom (pbkrtest).

This is pbkrtest's ``vcovAdj`` (``vcovAdj16_internal``) and ``Lb_ddf`` for an REML fit with one
grouping factor, as lmerTest's ``summary(m, ddf = "Kenward-Roger")`` uses them (§3.6 of the lme4
algorithm notes). pbkrtest builds the n × n marginal covariance Σ and inverts it; here every
quantity is a sum over groups of small q × q, q × p and p × p products, because Σ is
block-diagonal with Σ_j = σ²(I + Z_jTTᵀZ_jᵀ) and, by the Woodbury identity,

    Σ_j⁻¹ = σ⁻²(I − Z_j H_j Z_jᵀ),   H_j = T M_j⁻¹ Tᵀ,   M_j = TᵀA_jT + I_q,

so that, with A_j = Z_jᵀZ_j, B_j = Z_jᵀX_j and Σ_j X_jᵀX_j = XᵀX (only the sum is needed):

    C_j  = Z_jᵀΣ_j⁻¹Z_j = σ⁻²(A_j − A_jH_jA_j)          D_j  = Z_jᵀΣ_j⁻¹X_j = σ⁻²(B_j − A_jH_jB_j)
    Z_jᵀΣ_j⁻²Z_j = σ⁻⁴(I − A_jH_j)A_j(I − H_jA_j)      Z_jᵀΣ_j⁻²X_j = σ⁻²(I − A_jH_j)D_j
    Σ_j X_jᵀΣ_j⁻²X_j = σ⁻⁴(XᵀX − Σ_j B_jᵀ(2H_j − H_jA_jH_j)B_j)
    Σ_j X_jᵀΣ_j⁻³X_j = σ⁻²(XᵀΣ⁻²X − Σ_j D_jᵀH_jD_j)
    tr Σ⁻² = σ⁻⁴ Σ_j (n_j − 2 tr(H_jA_j) + tr(H_jA_jH_jA_j)).

The cost is O(J·m²·(q³ + q²p + qp²)) for m = n_θ + 1 variance parameters; nothing of size n.

Variance parameters (pbkrtest's ``.get_SigmaG``): γ = the lower triangle, column-wise, of each
term's covariance σ²T_kT_kᵀ, then σ²; G_r = Z(I_J ⊗ E_r)Zᵀ with E_r the symmetric 0/1 indicator of
element r, and G_σ² = I_n. This is θ's layout (``Design.theta_template``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from twolevel.data.errors import TwolevelError
from twolevel.models.design import Design, GroupCrossprods

__all__ = [
    "KRResult",
    "KR_REML_ONLY_MESSAGE",
    "ddf_kenward_roger",
    "kenward_roger",
    "kenward_roger_fit",
    "kr_ddf",
    "kr_vcov_adjusted",
]

KR_REML_ONLY_MESSAGE = (
    "Kenward-Roger's method is only available for REML model fits; refit with REML=True "
    "(or use ddf='Satterthwaite')"
)


@dataclass(frozen=True)
class KRPieces:
    """pbkrtest's building blocks at (θ, σ): Φ = vcov(β̂), P_r, W = 2·IE2⁻¹ and Φ_A."""

    Phi: np.ndarray
    P: tuple[np.ndarray, ...]
    W: np.ndarray
    Phi_A: np.ndarray
    condition: float


@dataclass(frozen=True)
class KRResult:
    """Kenward–Roger results for the fixed effects (``L = I``) or given contrasts.

    Fields
    ------
    names : names of the contrasts (the fixed effects' names for ``L = I``).
    estimate : Lβ̂ (only when β̂ was given, else NaN).
    vcov_adj : (p, p) adjusted covariance Φ_A of β̂.
    se : SE_KR = sqrt(diag(L Φ_A Lᵀ)), one per row of L.
    df : Kenward–Roger denominator df of each row of L (pbkrtest ``Lb_ddf`` with q = 1).
    """

    names: tuple[str, ...]
    estimate: np.ndarray
    vcov_adj: np.ndarray
    se: np.ndarray
    df: np.ndarray

    @property
    def t(self) -> np.ndarray:
        """t = estimate / SE_KR."""
        return self.estimate / self.se

    @property
    def p_value(self) -> np.ndarray:
        """Two-sided p = 2·P(T_df > |t|)."""
        return 2.0 * stats.t.sf(np.abs(self.t), self.df)


def _positions(template: np.ndarray) -> list[tuple[int, int]]:
    """(row, col) of each θ element in T, in θ order (= pbkrtest's γ order)."""
    pos = [(-1, -1)] * int(template.max() + 1)
    for r, c in zip(*np.nonzero(template >= 0), strict=True):
        pos[template[r, c]] = (int(r), int(c))
    return pos


def kr_vcov_adjusted(
    cp: GroupCrossprods, template: np.ndarray, theta: np.ndarray, sigma: float
) -> KRPieces:
    """pbkrtest's ``vcovAdj``: Φ_A = Φ + 2 Φ U Φ, from per-group blocks (no n × n matrix).

    With Φ = (XᵀΣ⁻¹X)⁻¹, P_r = −XᵀΣ⁻¹G_rΣ⁻¹X, Q_rs = XᵀΣ⁻¹G_rΣ⁻¹G_sΣ⁻¹X and
    K_rs = tr(Σ⁻¹G_rΣ⁻¹G_s):

    * IE2_rs = K_rs − 2 tr(Φ Q_rs) + tr(Φ P_r Φ P_s)
    * W = 2 IE2⁻¹ (Moore–Penrose inverse when min |eigenvalue| ≤ 1e-10, as pbkrtest)
    * U = Σ_rs W_rs (Q_rs − P_r Φ P_s)

    Parameters
    ----------
    cp : per-group cross-products.
    template : ``Design.theta_template`` (q × q, index of θ in T or −1).
    theta, sigma : the REML estimates θ̂ and σ̂.
    """
    theta = np.asarray(theta, dtype=float)
    template = np.asarray(template)
    J, q, p = cp.B.shape
    T = np.zeros((q, q))
    mask = template >= 0
    T[mask] = theta[template[mask]]
    s2 = float(sigma) ** 2
    A, B = cp.A, cp.B
    eye_q = np.eye(q)
    M = np.matmul(np.matmul(T.T, A), T) + eye_q
    Minv = np.linalg.inv(M)
    H = np.matmul(np.matmul(T, Minv), T.T)  # (J, q, q)
    HA = np.matmul(H, A)
    AH = np.swapaxes(HA, 1, 2)
    IAH = eye_q - AH  # (I − A_jH_j)
    C = (A - np.matmul(AH, A)) / s2  # Z'Σ⁻¹Z
    D = (B - np.matmul(AH, B)) / s2  # Z'Σ⁻¹X
    Szz2 = np.matmul(np.matmul(IAH, A), np.swapaxes(IAH, 1, 2)) / s2**2  # Z'Σ⁻²Z
    Szx2 = np.matmul(IAH, D) / s2  # Z'Σ⁻²X
    HB = np.matmul(H, B)
    Sxx = (cp.XtX - np.einsum("jqa,jqb->ab", B, HB)) / s2
    Sxx2 = (
        cp.XtX - 2.0 * np.einsum("jqa,jqb->ab", B, HB)
        + np.einsum("jqa,jqb->ab", HB, np.matmul(A, HB))
    ) / s2**2
    Sxx3 = (Sxx2 - np.einsum("jqa,jqb->ab", D, np.matmul(H, D))) / s2
    tr_S2 = (
        cp.n - 2.0 * np.einsum("jii->", HA) + np.einsum("jab,jba->", HA, HA)
    ) / s2**2

    pos = _positions(template)
    m_re = len(pos)
    m = m_re + 1

    def E(k: int) -> np.ndarray:
        r, c = pos[k]
        e = np.zeros((q, q))
        e[r, c] = e[c, r] = 1.0
        return e

    Es = [E(k) for k in range(m_re)]
    # E_r D_j and E_r C_j (J, q, ·)
    ED = [np.matmul(e, D) for e in Es]
    EC = [np.matmul(e, C) for e in Es]

    P: list[np.ndarray] = []
    for k in range(m_re):
        Pk = -np.einsum("jqa,jqb->ab", D, ED[k])
        P.append(0.5 * (Pk + Pk.T))
    P.append(-Sxx2)

    Q: dict[tuple[int, int], np.ndarray] = {}
    K = np.empty((m, m))
    for r in range(m_re):
        for s in range(r, m_re):
            Q[r, s] = np.einsum("jqa,jqb->ab", ED[r], np.matmul(C, ED[s]))
            K[r, s] = K[s, r] = np.einsum("jab,jba->", EC[r], EC[s])
        Q[r, m_re] = np.einsum("jqa,jqb->ab", ED[r], Szx2)
        K[r, m_re] = K[m_re, r] = np.einsum("ab,jba->", Es[r], Szz2)
    Q[m_re, m_re] = Sxx3
    K[m_re, m_re] = tr_S2

    def Qrs(r: int, s: int) -> np.ndarray:
        return Q[r, s] if r <= s else Q[s, r].T

    Phi = np.linalg.inv(Sxx)
    Phi = 0.5 * (Phi + Phi.T)
    IE2 = np.empty((m, m))
    for r in range(m):
        PhiPr = Phi @ P[r]
        for s in range(r, m):
            IE2[r, s] = IE2[s, r] = (
                K[r, s] - 2.0 * np.sum(Phi * Qrs(r, s)) + np.sum(PhiPr * (P[s] @ Phi))
            )
    eig = np.linalg.eigvalsh(IE2)
    cond = float(np.min(np.abs(eig)))
    W = 2.0 * (np.linalg.inv(IE2) if cond > 1e-10 else np.linalg.pinv(IE2))
    W = 0.5 * (W + W.T)
    U = np.zeros((p, p))
    for r in range(m):
        for s in range(m):
            U += W[r, s] * (Qrs(r, s) - P[r] @ Phi @ P[s])
    Phi_A = Phi + 2.0 * Phi @ U @ Phi
    return KRPieces(Phi=Phi, P=tuple(P), W=W, Phi_A=Phi_A, condition=cond)


def kr_ddf(L: np.ndarray, pieces: KRPieces) -> float:
    """pbkrtest's ``Lb_ddf``: Kenward–Roger denominator df of the hypothesis Lβ = 0.

    With Θ = Lᵀ(LΦLᵀ)⁻¹L, u_r = ΘΦP_rΦ and q = rank L:

    * A1 = Σ_{r≤s} e_rs W_rs tr(u_r) tr(u_s), A2 = Σ_{r≤s} e_rs W_rs tr(u_r u_s), e = 1 on the
      diagonal and 2 off it;
    * B = (A1 + 6A2)/(2q), g = ((q+1)A1 − (q+4)A2)/((q+2)A2);
    * c1 = g/(3q + 2(1−g)), c2 = (q−g)/(3q + 2(1−g)), c3 = (q+2−g)/(3q + 2(1−g));
    * ρ = (1/q)·((1 − A2/q)/(1 − c2B))²·(1 + c1B)/(1 − c3B);  ddf = 4 + (q+2)/(qρ − 1).
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    Phi = pieces.Phi
    q = int(np.linalg.matrix_rank(L))
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    ThetaPhi = Theta @ Phi
    u = [ThetaPhi @ Pr @ Phi for Pr in pieces.P]
    tr_u = np.array([np.trace(x) for x in u])
    m = len(u)
    A1 = A2 = 0.0
    for r in range(m):
        for s in range(r, m):
            e = 1.0 if r == s else 2.0
            A1 += e * pieces.W[r, s] * tr_u[r] * tr_u[s]
            A2 += e * pieces.W[r, s] * np.sum(u[r] * u[s].T)
    Bq = (A1 + 6.0 * A2) / (2.0 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3.0 * q + 2.0 * (1.0 - g)
    c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
    V0 = 1.0 + c1 * Bq
    if abs(V0) < 1e-10:
        V0 = 0.0
    V1 = 1.0 - c2 * Bq
    V2 = 1.0 - c3 * Bq
    ratio = (1.0 - A2 / q) / V1 if V1 != 0 else 0.0
    rho = ratio**2 * V0 / V2 / q
    return float(4.0 + (q + 2.0) / (q * rho - 1.0))


def kenward_roger(
    design: Design,
    cp: GroupCrossprods,
    theta: np.ndarray,
    sigma: float,
    L: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    reml: bool = True,
    names: tuple[str, ...] | None = None,
) -> KRResult:
    """Kenward–Roger SEs and df for each row of ``L`` (default: each fixed effect).

    Parameters
    ----------
    design : the model's design (θ layout and fixed-effect names).
    cp : per-group cross-products of ``design``.
    theta, sigma : REML estimates θ̂ and σ̂ (lme4's ``getME(m, "theta")``, ``sigma(m)``).
    L : (k, p) contrast matrix or a p-vector; None for the identity.
    beta : β̂, to fill ``estimate`` (and t, p) of the result.
    reml : whether the fit is REML; KR is only defined for REML fits (lmerTest's rule).
    names : row names for ``L`` (default the fixed effects' names, or ``L1``, ``L2``, …).

    Raises
    ------
    TwolevelError
        For an ML fit (lmerTest: "Kenward-Roger's method is only available for REML model fits").
    """
    if not reml:
        raise TwolevelError(KR_REML_ONLY_MESSAGE)
    p = cp.p
    if L is None:
        Lm = np.eye(p)
        row_names = tuple(design.x_names)
    else:
        Lm = np.atleast_2d(np.asarray(L, dtype=float))
        if Lm.shape[1] != p:
            raise TwolevelError(
                f"contrast L has {Lm.shape[1]} columns but the model has {p} fixed effects "
                f"({', '.join(design.x_names)}); give one weight per fixed effect"
            )
        row_names = tuple(f"L{i + 1}" for i in range(Lm.shape[0]))
    if names is not None:
        row_names = tuple(names)
    pieces = kr_vcov_adjusted(cp, design.theta_template, theta, sigma)
    V = Lm @ pieces.Phi_A @ Lm.T
    se = np.sqrt(np.diag(V))
    df = np.array([kr_ddf(Lm[i], pieces) for i in range(Lm.shape[0])])
    est = Lm @ np.asarray(beta, dtype=float) if beta is not None else np.full(Lm.shape[0], np.nan)
    return KRResult(names=row_names, estimate=est, vcov_adj=pieces.Phi_A, se=se, df=df)


# ------------------------------------------------------------------------ LmerFit adapters


def kenward_roger_fit(fit, L: np.ndarray | None = None) -> KRResult:
    """:func:`kenward_roger` at a fitted model (``twolevel.models.lmm.lmer.lmer``'s
    :class:`LmerFit`): its θ̂,
    σ̂ and β̂; raises for an ML fit (lmerTest's rule).

    Parameters
    ----------
    fit : LmerFit (REML)
    L : contrasts, one per row (default: each fixed effect).

    Returns
    -------
    KRResult
        The adjusted vcov, SEs and denominator df of each contrast.

    Raises
    ------
    TwolevelError
        For an ML fit or a glmer fit (pbkrtest refuses both).

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> tl.kenward_roger_fit(fit).df.shape
    (2,)
    """
    from twolevel.models.fit_base import require_lmm

    require_lmm(fit, "Kenward-Roger", "pbkrtest refuses glmer fits too; use the z tests of "
                "summary() or confint(method='profile')")
    return kenward_roger(
        fit.design, fit.crossprods, fit.theta, fit.sigma, L=L, beta=fit.beta, reml=fit.reml
    )


def ddf_kenward_roger(fit, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``summary(fit, ddf="Kenward-Roger")``'s hook: (SE_KR, df_KR) of each row of ``L``."""
    r = kenward_roger_fit(fit, L)
    return r.se, r.df
