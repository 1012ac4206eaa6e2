"""Rubin's rules for plausible values and multiply imputed data sets (Rubin 1987; Barnard &
Rubin 1999), per scalar parameter, from M estimates Q_m and their variances U_m:

    Q̄ = (1/M) Σ Q_m,    Ū = (1/M) Σ U_m,    B = (1/(M−1)) Σ (Q_m − Q̄)²,
    T = Ū + (1 + 1/M) B,   r = (1 + 1/M) B / Ū (relative increase in variance, RIV),
    λ = (1 + 1/M) B / T,   ν_Rubin = (M − 1) / λ²,
    ν_obs = (ν_com + 1)/(ν_com + 3) · ν_com · (1 − λ),   ν_BR = 1 / (1/ν_Rubin + 1/ν_obs),
    FMI = (r + 2/(ν_BR + 3)) / (1 + r)   (``mice::pool``'s fmi).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["RubinPool", "rubin_pool"]


@dataclass(frozen=True)
class RubinPool:
    """Pooled estimates; every field is a Series keyed by parameter name.

    Fields
    ------
    m : the number of sets.  qbar, within (Ū), between (B), total (T), riv (r), lambda_ (λ),
    fmi, df_rubin, df_barnard_rubin.  df_com : the complete-data df used.
    """

    m: int
    qbar: pd.Series
    within: pd.Series
    between: pd.Series
    total: pd.Series
    riv: pd.Series
    lambda_: pd.Series
    fmi: pd.Series
    df_rubin: pd.Series
    df_barnard_rubin: pd.Series
    df_com: float

    @property
    def se(self) -> pd.Series:
        """√T."""
        return np.sqrt(self.total)

    def table(self) -> pd.DataFrame:
        """Estimate, Std. Error (√T), df (Barnard–Rubin), t value, Pr(>|t|), RIV, FMI."""
        t = self.qbar / self.se
        df = self.df_barnard_rubin
        return pd.DataFrame({"Estimate": self.qbar, "Std. Error": self.se, "df": df,
                             "t value": t, "Pr(>|t|)": 2 * stats.t.sf(np.abs(t), df),
                             "RIV": self.riv, "FMI": self.fmi})

    def to_dict(self) -> dict:
        """The CLI's ``pv`` object: m, within, between, total, riv, df_rubin,
        df_barnard_rubin (each keyed by fixed effect), plus fmi and df_com."""
        def d(s: pd.Series) -> dict:
            return {k: float(v) for k, v in s.items()}

        return {"m": self.m, "within": d(self.within), "between": d(self.between),
                "total": d(self.total), "riv": d(self.riv), "fmi": d(self.fmi),
                "df_rubin": d(self.df_rubin), "df_barnard_rubin": d(self.df_barnard_rubin),
                "df_com": float(self.df_com)}


def rubin_pool(estimates: pd.DataFrame, variances: pd.DataFrame, df_com: float) -> RubinPool:
    """Combine M sets by Rubin's rules (module docstring).

    Parameters
    ----------
    estimates : (M, k) frame, one row per set, one column per parameter.
    variances : (M, k) frame of the squared standard errors U_m.
    df_com : complete-data degrees of freedom ν_com (``inf`` for large samples).

    Returns
    -------
    RubinPool

    Examples
    --------
    >>> import pandas as pd
    >>> q = pd.DataFrame({"b": [1.0, 2.0, 3.0]}); u = pd.DataFrame({"b": [1.0, 1.0, 1.0]})
    >>> p = rubin_pool(q, u, df_com=float("inf"))
    >>> float(p.qbar["b"]), round(float(p.total["b"]), 6)
    (2.0, 2.333333)
    """
    M = int(estimates.shape[0])
    if M < 2:
        raise ValueError("Rubin's rules need at least two sets")
    qbar = estimates.mean()
    ubar = variances.mean()
    b = estimates.var(ddof=1)
    t = ubar + (1 + 1 / M) * b
    riv = (1 + 1 / M) * b / ubar
    lam = (1 + 1 / M) * b / t
    with np.errstate(divide="ignore"):
        df_r = (M - 1) / lam**2
        if np.isfinite(df_com):
            df_obs = (df_com + 1) / (df_com + 3) * df_com * (1 - lam)
            df_br = 1 / (1 / df_r + 1 / df_obs)
        else:
            df_br = df_r.copy()
    fmi = (riv + 2 / (df_br + 3)) / (1 + riv)
    return RubinPool(m=M, qbar=qbar, within=ubar, between=b, total=t, riv=riv, lambda_=lam,
                     fmi=fmi, df_rubin=df_r, df_barnard_rubin=df_br, df_com=float(df_com))
