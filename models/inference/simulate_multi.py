"""``simulate`` and the parametric bootstrap for several grouping factors (lme4's
``simulate.merMod`` and ``bootMer`` with ``FUN`` = lme4's ``confint`` parameters).

New responses are drawn from the fitted model: for every factor f and level ℓ,
b_fℓ = σ̂ T_f u_fℓ with u ~ N(0, I); y* = Xβ̂ + Σ_f z_fᵢᵀ b_f,g_f(i) + σ̂ ε. Each replicate is
refitted on the same design with y replaced (the per-innermost-group statistics are recomputed,
the formula and factors are not). The bootstrap parameters are lme4's ``confint`` ones: per term
the standard deviations and correlations (``.sig01`` …, lower triangle column-wise), ``.sigma``,
then the fixed effects.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from twolevel.models.inference.intervals import BootResult

__all__ = ["bootstrap_multi", "sdcor_multi", "simulate_multi"]


def sdcor_multi(fit) -> tuple[list[str], np.ndarray]:
    """lme4's ``Cv_to_Sv`` of the fit: (names ``.sig01`` … ``.sigma``, values): per term the
    lower triangle of its covariance, column-wise, SDs on the diagonal and correlations off it,
    then σ̂."""
    d = fit.design
    vals = []
    for C in fit.VarCorr().covs:
        sd = np.sqrt(np.diag(C))
        for c in range(C.shape[0]):
            for r in range(c, C.shape[0]):
                vals.append(sd[r] if r == c else (C[r, c] / (sd[r] * sd[c])
                                                  if sd[r] * sd[c] > 0 else np.nan))
    vals.append(fit.sigma)
    names = [f".sig{i + 1:02d}" for i in range(d.n_theta)] + [".sigma"]
    return names, np.asarray(vals, dtype=float)


def simulate_multi(fit, nsim: int = 1, seed: int | None = None) -> np.ndarray:
    """(n, nsim) responses drawn from the fitted model (module docstring).

    Parameters
    ----------
    fit : a :class:`~twolevel.models.lmm.multi_results.MultiFit`.
    nsim : number of responses.  seed : NumPy seed (reproducible draws).

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    TwolevelError
        For a fit whose statistics came from DuckDB or Dask (no rows in memory).

    Examples
    --------
    >>> ystar = simulate_multi(fit, nsim=10, seed=1)   # doctest: +SKIP
    """
    fit._need_rows("simulated responses (and bootstrap refits)")
    rng = np.random.default_rng(seed)
    d = fit.design
    mu = d.X @ fit.state.beta
    out = np.empty((d.n, nsim))
    for s in range(nsim):
        y = mu.copy()
        for k, f in enumerate(d.factors):
            b = fit.sigma * rng.standard_normal((f.n_levels, f.q)) @ d.factor_T(fit.theta, k).T
            y += np.einsum("nq,nq->n", f.Z, b[f.codes])
        out[:, s] = y + fit.sigma * rng.standard_normal(d.n)
    return out


def bootstrap_multi(fit, nsim: int = 500, seed: int = 1) -> BootResult:
    """Parametric bootstrap (lme4's ``bootMer`` with ``confint``'s parameters): ``nsim``
    responses from :func:`simulate_multi`, each refitted by the same method (REML or ML).
    Replicates whose fit fails are NaN rows, counted in ``n_failed``.

    Examples
    --------
    >>> bootstrap_multi(fit, nsim=200, seed=1).confint()   # doctest: +SKIP
    """
    from twolevel.models.lmm.multi import fit_multi_design

    names, est = sdcor_multi(fit)
    names = names + list(fit.design.x_names)
    est = np.concatenate([est, fit.state.beta])
    ys = simulate_multi(fit, nsim, seed)
    reps = np.full((nsim, len(names)), np.nan)
    failed = 0
    for s in range(nsim):
        des = dataclasses.replace(fit.design, y=ys[:, s], notes=())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f = fit_multi_design(des, REML=fit.reml)
        except (np.linalg.LinAlgError, ValueError):
            failed += 1
            continue
        reps[s] = np.concatenate([sdcor_multi(f)[1], f.state.beta])
    return BootResult(names=tuple(names), estimate=est, replicates=reps, seed=seed,
                      reml=fit.reml, n_failed=failed)
