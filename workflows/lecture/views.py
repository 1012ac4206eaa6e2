"""Views of the fits that the later steps share: :class:`RemlView` (fixed effects, T, σ², BLUPs and
conditional SDs of an REML fit) and :class:`BayesView` (draws of β, T, σ and per-school summaries
of a posterior), copied out through each fit's public API.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class RemlView:
    """What the later steps need from an REML random-slope fit (copied from the fit's API).

    ``fixef``/``se`` by lme4 name; ``T`` (q × q) covariance of the school effects with names
    ``effects``; ``sigma2`` (NaN for a glmer fit); per school (index = group levels): ``u``
    BLUPs, ``u_sd`` conditional SDs, ``coef`` = fixef + BLUP (absolute coefficients).
    """

    fixef: pd.Series
    se: pd.Series
    effects: tuple[str, ...]
    T: np.ndarray
    sigma2: float
    u: pd.DataFrame
    u_sd: pd.DataFrame
    coef: pd.DataFrame


@dataclass(frozen=True)
class BayesView:
    """What the later steps need from a posterior of the random-slope model.

    Draws flattened over chains: ``beta`` (S, p) with names ``fixed``, ``T`` (S, q, q),
    ``sigma`` (S,; NaN for a binary or count outcome, which has none). Per school: ``u_mean``,
    ``u_lo``, ``u_hi`` (2.5%, 97.5%) and the same for the absolute coefficients ``coef_*`` (each
    school × effect).
    """

    fixed: tuple[str, ...]
    beta: np.ndarray
    T: np.ndarray
    sigma: np.ndarray
    u_mean: pd.DataFrame
    u_lo: pd.DataFrame
    u_hi: pd.DataFrame
    coef_mean: pd.DataFrame
    coef_lo: pd.DataFrame
    coef_hi: pd.DataFrame


def reml_view(fit) -> RemlView:
    """Copy what the later steps need out of an :class:`twolevel.models.lmm.results.LmerFit` (or a
    :class:`twolevel.models.glmm.results.GlmerFit`: conditional modes and their SDs)."""
    names = list(fit.design.z_names)
    vc = fit.VarCorr()
    re = fit.ranef(cond_var=True)
    return RemlView(
        fixef=fit.fixef(),
        se=fit.se(),
        effects=tuple(names),
        T=np.asarray(vc.cov, float),
        sigma2=float(vc.residual) if vc.residual is not None else float("nan"),  # glmer: none
        u=re[names],
        u_sd=re[[f"condsd_{n}" for n in names]].set_axis(names, axis=1),
        coef=fit.coef()[names],
    )


def reml_quantities(view: RemlView, xc: str):
    """The REML numbers the lecture's questions use (γ00, γ10, SEs, T, σ²)."""
    from twolevel.models.tables.lecture_answers import REMLQuantities

    i0, i1 = view.effects.index("(Intercept)"), view.effects.index(xc)
    return REMLQuantities(
        gamma00=float(view.fixef["(Intercept)"]), gamma10=float(view.fixef[xc]),
        se00=float(view.se["(Intercept)"]), se10=float(view.se[xc]),
        tau00=float(view.T[i0, i0]), tau11=float(view.T[i1, i1]), tau01=float(view.T[i0, i1]),
        sigma2=view.sigma2,
    )


def bayes_answer_draws(view: BayesView, xc: str, effects: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Posterior draws of γ00, γ10, τ00, τ11, τ01 for
    :func:`twolevel.models.tables.lecture_answers.lecture_answers`."""
    i0, i1 = effects.index("(Intercept)"), effects.index(xc)
    f0, f1 = view.fixed.index("(Intercept)"), view.fixed.index(xc)
    return {
        "gamma00": view.beta[:, f0], "gamma10": view.beta[:, f1],
        "tau00": view.T[:, i0, i0], "tau11": view.T[:, i1, i1], "tau01": view.T[:, i0, i1],
    }


def _stack(da, *dims: str) -> np.ndarray:
    """Draws of a posterior variable as an array (S, *dims), chains and draws flattened."""
    return da.stack(sample=("chain", "draw")).transpose("sample", *dims).to_numpy()


def bayes_view(dt, school_index: pd.Index) -> BayesView:
    """Copy what the later steps need out of a posterior DataTree with the builders' fixed names
    (``beta`` [fixed], ``sigma``, ``sd`` [effect], ``corr`` [effect, effect_b], ``b_school``
    [school, effect]; see :mod:`twolevel.models.bayes.pymc_model`)."""
    post = dt["posterior"]
    schools = [str(v) for v in post["school"].to_numpy()]
    if schools != [str(v) for v in school_index]:
        raise ValueError("posterior schools are not in the order of the REML fit's groups")
    fixed = tuple(str(v) for v in post["fixed"].to_numpy())
    effects = [str(v) for v in post["effect"].to_numpy()]
    beta = _stack(post["beta"], "fixed")
    sd = _stack(post["sd"], "effect")
    if "corr" in post:
        corr = _stack(post["corr"], "effect", "effect_b")
    else:
        corr = np.repeat(np.eye(len(effects))[None], sd.shape[0], axis=0)
    T = sd[:, :, None] * sd[:, None, :] * corr
    b = post["b_school"]
    q = b.quantile([0.025, 0.975], dim=("chain", "draw"))
    idx = pd.Index(school_index, name=school_index.name)

    def frame(da) -> pd.DataFrame:
        return pd.DataFrame(da.transpose("school", "effect").to_numpy(), index=idx, columns=effects)

    u_mean, u_lo, u_hi = frame(b.mean(("chain", "draw"))), frame(q.sel(quantile=0.025)), \
        frame(q.sel(quantile=0.975))
    gamma = post["beta"].sel(fixed=[e for e in effects if e in fixed])
    absb = b + gamma.rename(fixed="effect").reindex(effect=effects, fill_value=0.0)
    qa = absb.quantile([0.025, 0.975], dim=("chain", "draw"))
    sigma = _stack(post["sigma"]) if "sigma" in post else np.full(beta.shape[0], np.nan)
    return BayesView(
        fixed=fixed, beta=beta, T=T, sigma=sigma,
        u_mean=u_mean, u_lo=u_lo, u_hi=u_hi,
        coef_mean=frame(absb.mean(("chain", "draw"))), coef_lo=frame(qa.sel(quantile=0.025)),
        coef_hi=frame(qa.sel(quantile=0.975)),
    )
