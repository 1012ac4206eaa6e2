"""Simulation from a fitted model (lme4's ``simulate.merMod``) and the parametric bootstrap
(lme4's ``bootMer``, laid out as MixedModels.jl's ``parametricbootstrap``).

The bootstrap never rebuilds a design nor touches the rows: Z_jᵀZ_j, Z_jᵀX_j and XᵀX are the
fit's (:class:`~twolevel.models.design.GroupCrossprods`); each replicate only needs the
response's cross-products c_j = Z_jᵀy*_j, Xᵀy* and y*ᵀy*, which are drawn directly from their
exact joint distribution in O(J) work (:func:`simulate_crossprods`). Each refit starts at θ̂
(lme4's ``refit`` warm start) and uses the fit's criterion (REML or ML) and optimizer path
(§3 of ``predict-simulate-r2.md``).

Random numbers are NumPy's (``numpy.random.default_rng(seed)``); R's stream cannot be reproduced,
so results agree with lme4's in distribution, not draw by draw.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import DataError, TwolevelError
from twolevel.models.design import Design, GroupCrossprods, group_crossprods
from twolevel.models.fit_base import as_generator, seed_of
from twolevel.models.inference.profile import cv_to_sv, parameter_names
from twolevel.models.lmm.deviance import criterion, make_deviance, pls_state, sigma_hat
from twolevel.models.lmm.optimize import optimize_theta

__all__ = [
    "BOOT_TYPES",
    "BootstrapResult",
    "Replicate",
    "bootstrap",
    "bootstrap_predict",
    "norm_inter",
    "parametric_bootstrap",
    "refits",
    "simulate",
    "simulate_crossprods",
]

BOOT_TYPES = ("perc", "basic", "norm", "shortest")


def _check_nsim(nsim) -> int:
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or nsim <= 0:
        raise TwolevelError(f"nsim must be a positive whole number of simulations, got {nsim!r}")
    return int(nsim)


# ------------------------------------------------------------------------------- simulate


def simulate(
    fit,
    nsim: int = 1,
    rng=None,
    use_u: bool = False,
    newdata=None,
    allow_new_levels: bool = False,
    *,
    seed: int | None = None,
) -> pd.DataFrame:
    """lme4's ``simulate(fit, nsim, seed, use.u)``: new responses from a fitted LMM or GLMM.

    LMM: y* = η + Zb* + σ̂ε.

    * ``use_u=False`` (lme4's ``re.form = NA``): η = Xβ̂ and every school, fitted or new, gets a
      fresh b* ~ N(0, T̂) per simulation.
    * ``use_u=True`` (``re.form = NULL``): η = Xβ̂ + Zb̃ (the BLUPs are held fixed) and only ε is
      redrawn; a new school (``allow_new_levels``) gets b = 0 and no draw, as in lme4.

    GLMM: see :func:`simulate_glmer` (fitted rows only).

    Parameters
    ----------
    fit : LmerFit or GlmerFit
    nsim : number of simulated responses.
    rng : a seed or a ``numpy.random.Generator`` (``seed=`` is the older spelling).
    use_u, newdata, allow_new_levels : as above (lme4's ``use.u``, ``newdata``,
        ``allow.new.levels``).

    Returns
    -------
    pandas.DataFrame
        Columns ``sim_1 … sim_nsim``; one row per row of newdata, or per fitted row.

    Raises
    ------
    TwolevelError
        nsim not a positive integer; a new school without ``allow_new_levels``.

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> tl.simulate(fit, nsim=2, rng=1).shape == (fit.nobs, 2)
    True
    """
    from twolevel.models.design.newdata import NewRows, new_model_matrices
    from twolevel.models.inference.predict import predict

    if hasattr(fit, "family"):  # a GlmerFit
        return fit.simulate(nsim, rng, seed=seed, use_u=use_u, newdata=newdata,
                            allow_new_levels=allow_new_levels)
    nsim = _check_nsim(nsim)
    d = fit.design
    rng = as_generator(rng, seed)
    if newdata is None:
        rows = NewRows(X=d.X, Z=d.Z, group_index=d.group_index, new_groups=())
        index = pd.RangeIndex(d.n)
    else:
        nd = newdata if isinstance(newdata, pd.DataFrame) else pd.DataFrame(newdata)
        if d.group not in nd.columns:
            raise DataError(f"newdata lacks the grouping column '{d.group}': simulate draws or "
                            "conditions on each school's effects, so it needs the school")
        rows = new_model_matrices(d, nd)
        index = nd.index
        if rows.new_groups and not allow_new_levels:
            from twolevel.models.design.newdata import check_new_levels

            check_new_levels(rows, False, d.group)
    eta = predict(fit, newdata, re_form=None if use_u else "NA", allow_new_levels=allow_new_levels)
    m, q = rows.Z.shape
    sims = np.empty((m, nsim))
    T = fit.state.T
    sigma = fit.sigma
    if use_u:
        sims[:] = eta[:, None] + sigma * rng.standard_normal((m, nsim))
    else:
        # one effect per school present: fitted schools by index, new ones by label
        gi = rows.group_index.copy()
        if (gi < 0).any():
            labels = pd.Series(nd[d.group].to_numpy()).astype(str)
            codes, _ = pd.factorize(labels[gi < 0])
            gi[gi < 0] = d.n_groups + codes
        n_lev = int(gi.max()) + 1
        for s in range(nsim):
            u = rng.standard_normal((n_lev, q))
            b = sigma * u @ T.T
            eps = rng.standard_normal(m)
            sims[:, s] = eta + np.einsum("mq,mq->m", rows.Z, b[gi]) + sigma * eps
    return pd.DataFrame(sims, index=index, columns=[f"sim_{k + 1}" for k in range(nsim)])


def simulate_glmer(fit, nsim: int = 1, rng=None, *, seed: int | None = None,
                   use_u: bool = False) -> pd.DataFrame:
    """lme4's ``simulate(fit, nsim, seed, use.u)`` for a binomial or Poisson GLMM, fitted rows.

    η* = o + Xβ̂ + Zb* with b* ~ N(0, T̂T̂ᵀ) per school and simulation (``use_u=False``) or the
    conditional modes b̃ (``use_u=True``); μ* = g⁻¹(η*). Poisson: y* ~ Poisson(μ*). Binomial:
    y* ~ Binomial(n_i, μ*) with n_i the trials (1 for a 0/1 response), returned as the number
    of successes (lme4 returns a successes/failures matrix for ``cbind``, the proportion for a
    weighted proportion; divide by the trials for the latter).

    Returns
    -------
    pandas.DataFrame
        Columns ``sim_1 … sim_nsim``, one row per fitted row.

    Examples
    --------
    >>> import numpy as np, pandas as pd, twolevel as tl
    >>> rng = np.random.default_rng(2)
    >>> d = pd.DataFrame({"g": np.repeat(np.arange(20), 10), "x": rng.normal(size=200)})
    >>> d["y"] = rng.poisson(np.exp(0.3 * d.x + rng.normal(0, 0.5, 20)[d.g]))
    >>> sims = tl.simulate(tl.glmer("y ~ x + (1 | g)", d, family="poisson"), 3, rng=1)
    >>> sims.shape
    (200, 3)
    """
    nsim = _check_nsim(nsim)
    gen = as_generator(rng, seed)
    d, resp = fit.design, fit.problem.resp
    base = resp.offset + d.X @ fit.beta
    trials = np.rint(resp.n if getattr(resp, "kind", "") == "cbind" else
                     (resp.w if getattr(resp, "kind", "") == "proportion" else
                      np.ones(d.n))).astype(np.int64)
    T = fit.T
    sims = np.empty((d.n, nsim))
    for s in range(nsim):
        b = fit.b if use_u else gen.standard_normal((d.n_groups, d.q)) @ T.T
        mu = fit.family.linkinv(base + np.einsum("nq,nq->n", d.Z, b[d.group_index]))
        if fit.family.name == "poisson":
            sims[:, s] = gen.poisson(mu)
        else:
            sims[:, s] = gen.binomial(trials, np.clip(mu, 0.0, 1.0))
    return pd.DataFrame(sims, index=pd.RangeIndex(d.n),
                        columns=[f"sim_{k + 1}" for k in range(nsim)])


# --------------------------------------------------------------------------- the refits


@dataclass(frozen=True)
class Replicate:
    """One bootstrap refit: the simulated school effects ``b_true`` (J, q), θ̂*, σ̂*, the
    criterion at θ̂*, and the PLS state (β̂* = ``state.beta``, BLUPs ``state.b``)."""

    b_true: np.ndarray
    theta: np.ndarray
    sigma: float
    objective: float
    state: object


def _school_xtx(design: Design) -> np.ndarray:
    """X_jᵀX_j per school, (J, p, p) (one pass over the rows, once per bootstrap; from the
    per-school sums when the rows are not held, engines duckdb/dask with ``per_group_x``)."""
    moments = getattr(design, "group_moments", None)
    if moments is not None:
        return moments.XtX
    g, J, X = design.group_index, design.n_groups, design.X
    p = X.shape[1]
    out = np.empty((J, p, p))
    for a in range(p):
        for b in range(a, p):
            out[:, a, b] = out[:, b, a] = np.bincount(g, weights=X[:, a] * X[:, b], minlength=J)
    return out


@dataclass(frozen=True)
class _NoiseBasis:
    """Per school, an orthonormal basis of the residual's cross-products W_jᵀe_j with
    W_j = [Z_j X_j]: G_j = W_jᵀW_j = U_jΛ_jU_jᵀ, ``F[j] = U_jΛ_j^{1/2}`` (zero columns where
    Λ_j = 0), ``keep[j]`` marks the non-zero Λ_j (their count is rank W_j)."""

    F: np.ndarray
    keep: np.ndarray

    @classmethod
    def of(cls, design: Design, cp: GroupCrossprods) -> _NoiseBasis:
        q, p = design.q, design.p
        J = design.n_groups
        G = np.empty((J, q + p, q + p))
        G[:, :q, :q] = cp.A
        G[:, :q, q:] = cp.B
        G[:, q:, :q] = np.swapaxes(cp.B, 1, 2)
        G[:, q:, q:] = _school_xtx(design)
        lam, U = np.linalg.eigh(G)
        tol = 1e-10 * np.maximum(lam.max(axis=1, keepdims=True), 1e-300)
        keep = lam > tol
        F = U * np.sqrt(np.where(keep, lam, 0.0))[:, None, :]
        return cls(F=F, keep=keep)


def simulate_crossprods(
    design: Design, cp: GroupCrossprods, basis: _NoiseBasis, b: np.ndarray, sigma: float,
    beta: np.ndarray, rng: np.random.Generator,
) -> GroupCrossprods:
    """The response cross-products of y* = Xβ + Zb + σε without forming y* (exact, O(J·(q+p)²)):

    * W_jᵀε_j = F_jξ_j, ξ_j ~ N(0, I) (:class:`_NoiseBasis`), split into Z_jᵀε_j and X_jᵀε_j;
    * c_j = B_jβ + A_jb_j + σZ_jᵀε_j;  Xᵀy = XᵀXβ + Σ_j B_jᵀb_j + σΣ_jX_jᵀε_j;
    * yᵀy = ‖Xβ + Zb‖² + 2σ(βᵀXᵀε + Σ_j b_jᵀZ_jᵀε_j) + σ²εᵀε, with
      ‖Xβ + Zb‖² = βᵀXᵀXβ + 2Σ_j b_jᵀB_jβ + Σ_j b_jᵀA_jb_j and
      εᵀε = Σ_j‖ξ_j‖² + χ²(n − Σ_j rank W_j) (the part of ε_j orthogonal to W_j is
      independent of W_jᵀε_j).
    """
    q = design.q
    xi = rng.standard_normal(basis.F.shape[:2])
    xi[~basis.keep] = 0.0
    w = np.einsum("jab,jb->ja", basis.F, xi)
    ze, xe = w[:, :q], w[:, q:].sum(axis=0)
    Bbeta = cp.B @ beta  # (J, q)
    Ab = np.einsum("jab,jb->ja", cp.A, b)
    c = Bbeta + Ab + sigma * ze
    Xty = cp.XtX @ beta + np.einsum("jaq,ja->q", cp.B, b) + sigma * xe
    dof = design.n - int(basis.keep.sum())
    chi = rng.chisquare(dof) if dof > 0 else 0.0
    ete = float(np.sum(xi * xi)) + chi
    mm = float(beta @ cp.XtX @ beta + 2.0 * np.sum(b * Bbeta) + np.sum(b * Ab))
    cross = float(beta @ xe + np.sum(b * ze))
    yty = mm + 2.0 * sigma * cross + sigma**2 * ete
    return replace(cp, c=c, Xty=Xty, yty=yty)


def refits(
    design: Design,
    cp: GroupCrossprods,
    theta: np.ndarray,
    sigma: float,
    beta: np.ndarray,
    *,
    reml: bool,
    nsim: int,
    rng: np.random.Generator,
    on_failure: Callable[[int, Exception], None] | None = None,
) -> Iterator[Replicate | None]:
    """Simulate ``nsim`` responses from (θ, σ, β) with fresh school effects (``use.u = FALSE``)
    and refit each from its cross-products (:func:`simulate_crossprods`, no pass over the rows);
    yields a :class:`Replicate` (or None when the refit failed, after calling ``on_failure``)."""
    J, q = design.n_groups, design.q
    T = design.theta_to_T(np.asarray(theta, float))
    beta = np.asarray(beta, float)
    basis = _NoiseBasis.of(design, cp)
    lower = design.theta_lower
    start = np.asarray(theta, float)
    for i in range(nsim):
        b = sigma * rng.standard_normal((J, q)) @ T.T
        cps = simulate_crossprods(design, cp, basis, b, sigma, beta, rng)
        try:
            fn = make_deviance(design, reml=reml, crossprods=cps)
            opt = optimize_theta(fn, start, lower)
            st = pls_state(cps, design.theta_to_T(opt.theta))
            yield Replicate(b_true=b, theta=np.asarray(opt.theta, float),
                            sigma=sigma_hat(st, reml), objective=float(criterion(st, reml)),
                            state=st)
        except TwolevelError as exc:
            if on_failure is not None:
                on_failure(i, exc)
            yield None


# ----------------------------------------------------------------------- bootstrap table


def norm_inter(t: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``boot:::norm.inter``: the α quantiles of the replicates t by interpolation on the normal
    scale between order statistics: r = (R+1)α; an integer r gives t₍r₎, otherwise with k = ⌊r⌋
    t₍k₎ + (Φ⁻¹(α) − Φ⁻¹(k/(R+1))) / (Φ⁻¹((k+1)/(R+1)) − Φ⁻¹(k/(R+1))) · (t₍k+1₎ − t₍k₎);
    k = 0 or R gives the extreme order statistic."""
    t = np.sort(np.asarray(t, float)[np.isfinite(t)])
    R = t.shape[0]
    out = []
    for a in np.atleast_1d(alpha):
        rk = (R + 1) * a
        k = int(np.floor(rk + 1e-10))
        if abs(rk - round(rk)) < 1e-10 and 1 <= round(rk) <= R:
            out.append(t[int(round(rk)) - 1])
        elif k == 0:
            out.append(t[0])
        elif k >= R:
            out.append(t[-1])
        else:
            z = stats.norm.ppf
            tk, tk1 = z(k / (R + 1)), z((k + 1) / (R + 1))
            out.append(t[k - 1] + (z(a) - tk) / (tk1 - tk) * (t[k] - t[k - 1]))
    return np.array(out)


@dataclass(frozen=True)
class BootstrapResult:
    """A parametric bootstrap (MixedModels.jl's ``MixedModelBootstrap``; lme4's ``bootMer``).

    Fields
    ------
    table : one row per replicate: ``objective``, the fixed effects, ``sigma``, the SDs and
        correlations of the school effects (lme4's ``sd_…|g`` / ``cor_…|g``), then θ
        (``theta_<name>``). A failed refit is a row of NaN.
    estimate : the same quantities for the original fit (a Series).
    seed, reml : how the replicates were made.  n_failed : refits that failed.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> b = tl.bootstrap(tl.lmer("g1rscore ~ famsesc + (1 | schid)", d), nsim=5, rng=1)
    >>> b.confint().index.tolist()
    ['sd_(Intercept)|schid', 'sigma', '(Intercept)', 'famsesc']
    """

    table: pd.DataFrame
    estimate: pd.Series
    seed: int | None
    reml: bool
    n_failed: int = 0

    @property
    def nsim(self) -> int:
        """Number of replicates."""
        return int(self.table.shape[0])

    def lme4_columns(self) -> list[str]:
        """lme4's ``confint`` rows: sd/cor in θ order, ``sigma``, the fixed effects."""
        vc = [c for c in self.table.columns if c.startswith(("sd_", "cor_"))]
        fixed = [c for c in self.table.columns
                 if c not in vc and c not in ("objective", "sigma") and not c.startswith("theta_")]
        sigma = ["sigma"] if "sigma" in self.table.columns else []  # none for a GLMM
        return vc + sigma + fixed

    def confint(self, level: float = 0.95, type: str = "perc") -> pd.DataFrame:
        """Bootstrap intervals, lme4 rows (``boot.ci``): ``"perc"`` (default; ``norm.inter``
        quantiles), ``"basic"`` (2t₀ − q), ``"norm"`` (t₀ − bias ± z·sd) or ``"shortest"``
        (MixedModels.jl: the shortest interval holding ⌈R·level⌉ sorted replicates)."""
        if type not in BOOT_TYPES:
            raise TwolevelError(f"unknown bootstrap interval type {type!r}; choose one of "
                                f"{', '.join(BOOT_TYPES)}")
        if not 0.0 < level < 1.0:
            raise TwolevelError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
        a = (1.0 - level) / 2.0
        rows = []
        for name in self.lme4_columns():
            t = self.table[name].to_numpy()
            t = t[np.isfinite(t)]
            t0 = float(self.estimate[name])
            if t.size < 2:
                rows.append((np.nan, np.nan))
            elif type == "perc":
                rows.append(tuple(norm_inter(t, [a, 1 - a])))
            elif type == "basic":
                lo, hi = norm_inter(t, [a, 1 - a])
                rows.append((2 * t0 - hi, 2 * t0 - lo))
            elif type == "norm":
                bias = t.mean() - t0
                h = t.std(ddof=1) * stats.norm.ppf(1 - a)
                rows.append((t0 - bias - h, t0 - bias + h))
            else:
                s = np.sort(t)
                w = int(np.ceil(s.size * level))
                if w >= s.size:
                    rows.append((s[0], s[-1]))
                else:
                    i = int(np.argmin(s[w - 1:] - s[: s.size - w + 1]))
                    rows.append((s[i], s[i + w - 1]))
        cols = [f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"]
        return pd.DataFrame(rows, index=pd.Index(self.lme4_columns(), name="parameter"),
                            columns=cols)


def _row(design: Design, theta, sigma, beta, objective) -> np.ndarray:
    sv = cv_to_sv(design, theta, sigma)  # sd/cor in θ order, then σ
    return np.concatenate([[objective], beta, [sigma], sv[:-1], theta])


def _columns(design: Design) -> list[str]:
    return (["objective", *design.x_names, "sigma", *parameter_names(design)[:-1]]
            + [f"theta_{n}" for n in design.theta_names])


def parametric_bootstrap(
    design: Design,
    theta: np.ndarray,
    sigma: float,
    beta: np.ndarray,
    *,
    reml: bool = True,
    nsim: int = 1000,
    seed: int | None = 1,
    crossprods: GroupCrossprods | None = None,
    objective: float = np.nan,
    progress: bool = False,
) -> BootstrapResult:
    """The parametric bootstrap of a model given by its design and (θ, σ, β): ``nsim`` responses
    with fresh school effects, each refitted from cross-products (module docstring)."""
    nsim = _check_nsim(nsim)
    cp = crossprods if crossprods is not None else group_crossprods(design)
    cols = _columns(design)
    out = np.full((nsim, len(cols)), np.nan)
    rng = np.random.default_rng(seed)
    failed = 0
    step = max(1, nsim // 10)
    for i, rep in enumerate(refits(design, cp, theta, sigma, beta, reml=reml, nsim=nsim,
                                   rng=rng)):
        if rep is None:
            failed += 1
        else:
            out[i] = _row(design, rep.theta, rep.sigma, rep.state.beta, rep.objective)
        if progress and (i + 1) % step == 0:
            print(f"bootstrap: {i + 1}/{nsim} refits", file=sys.stderr, flush=True)
    est = pd.Series(_row(design, np.asarray(theta, float), sigma, np.asarray(beta, float),
                         objective), index=cols)
    return BootstrapResult(table=pd.DataFrame(out, columns=cols), estimate=est, seed=seed,
                           reml=reml, n_failed=failed)


def bootstrap(fit, nsim: int = 1000, rng=None, *, seed: int | None = None,
              progress: bool = False) -> BootstrapResult:
    """MixedModels.jl's ``parametricbootstrap(nsim, fit)`` / lme4's ``bootMer(fit, nsim,
    use.u = FALSE)``.

    Parameters
    ----------
    fit : LmerFit
    nsim : number of simulated data sets, each refitted with the fit's criterion.
    rng : a seed or a ``numpy.random.Generator`` (default seed 1; ``seed=`` also accepted).
    progress : print progress on stderr every 10%.

    Returns
    -------
    BootstrapResult
        A table of ``nsim`` refitted parameter sets; ``.confint()`` gives lme4's percentile
        intervals.

    For a glmer fit the refits are glmer's (:func:`bootstrap_glmer`).

    Examples
    --------
    >>> import twolevel as tl
    >>> fit = tl.lmer("g1rscore ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"))
    >>> tl.bootstrap(fit, nsim=5, rng=3).nsim
    5
    """
    if hasattr(fit, "family"):
        res = bootstrap_glmer(fit, nsim, as_generator(rng, seed, default=1), progress=progress)
        return replace(res, seed=seed_of(rng, seed, default=1))
    res = parametric_bootstrap(
        fit.design, fit.theta, fit.sigma, fit.beta, reml=fit.reml, nsim=nsim,
        seed=as_generator(rng, seed, default=1), crossprods=fit.crossprods,
        objective=fit.criterion, progress=progress,
    )
    return replace(res, seed=seed_of(rng, seed, default=1))


def _glmer_row(fit) -> np.ndarray:
    sv = cv_to_sv(fit.design, fit.theta, 1.0)[:-1]  # SDs and correlations of TTᵀ, no σ
    return np.concatenate([[fit.minus2loglik], fit.beta, sv, fit.theta])


def bootstrap_glmer(fit, nsim: int = 1000, rng=None, *, progress: bool = False
                    ) -> BootstrapResult:
    """lme4's ``bootMer(fit, nsim, use.u = FALSE)`` for a glmer fit: ``nsim`` responses drawn
    by :func:`simulate_glmer` (fresh school effects), each refitted with the fit's nAGQ and
    optimizer (glmer's two stages on the same design, offset and weights). The table's columns
    are ``objective`` (−2 log L), the fixed effects, ``sd_…``/``cor_…`` and θ; no ``sigma``."""
    from twolevel.models.glmm.glmer import fit_glmm

    nsim = _check_nsim(nsim)
    gen = as_generator(rng)
    d, resp = fit.design, fit.problem.resp
    sims = simulate_glmer(fit, nsim, gen).to_numpy()
    if fit.family.name == "binomial":
        trials = np.rint(resp.n if resp.kind == "cbind" else
                         (resp.w if resp.kind == "proportion" else np.ones(d.n)))
        sims = sims / np.where(trials > 0, trials, 1)[:, None]
    cols = (["objective", *d.x_names, *parameter_names(d)[:-1]]
            + [f"theta_{n}" for n in d.theta_names])
    out = np.full((nsim, len(cols)), np.nan)
    failed = 0
    step = max(1, nsim // 10)
    for i in range(nsim):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = fit_glmm(d, resp.with_y(sims[:, i]), fit.family, fit.nagq,
                               fit.optinfo.optimizer, fit.formula, fit.data_name, [])
            out[i] = _glmer_row(ref)
        except (TwolevelError, np.linalg.LinAlgError, FloatingPointError, ValueError):
            failed += 1
        if progress and (i + 1) % step == 0:
            print(f"bootstrap: {i + 1}/{nsim} refits", file=sys.stderr, flush=True)
    est = pd.Series(_glmer_row(fit), index=cols)
    return BootstrapResult(table=pd.DataFrame(out, columns=cols), estimate=est, seed=None,
                           reml=False, n_failed=failed)


# ------------------------------------------------------------------ bootstrap prediction


class _ReplicateFit:
    """What the plug-in interval functions of :mod:`twolevel.models.inference.predict` read from
    a fit (``state``, ``sigma``, ``VarCorr().cov``), for one bootstrap refit."""

    def __init__(self, state, sigma: float):
        self.state, self.sigma = state, sigma
        self._cov = sigma**2 * state.T @ state.T.T

    def VarCorr(self):  # noqa: N802 (lme4's name)
        return self

    @property
    def cov(self) -> np.ndarray:
        return self._cov


def plugin_prediction_sd(fit, rows, known: np.ndarray) -> np.ndarray:
    """The plug-in prediction SD of each row: sqrt(PEV + σ̂²) for rows of known schools
    (``known``), sqrt(x₀ᵀV̂x₀ + z₀ᵀT̂z₀ + σ̂²) for the others."""
    from twolevel.models.inference.predict import new_school_variance, prediction_error_variance

    var = np.empty(rows.X.shape[0])
    if (~known).any():
        var[~known] = new_school_variance(fit, rows.X[~known], rows.Z[~known])
    if known.any():
        var[known] = fit.sigma**2 + prediction_error_variance(
            fit, rows.X[known], rows.Z[known], rows.group_index[known])
    return np.sqrt(var)


def bootstrap_predict(fit, rows, pred: np.ndarray, cond: bool, *, nsim: int = 1000,
                      seed: int | None = 1, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Studentized parametric-bootstrap prediction intervals (bootstrap-t), which carry the
    uncertainty of θ̂ that the plug-in interval ignores.

    For each replicate, a data set and a new student's score y₀* are simulated from the fit
    (the student's school effect is that school's simulated b*_j for a fitted school, a fresh
    N(0, T̂) draw for a new school or a population-level prediction); the model is refitted, and
    the prediction error is studentized by the refit's own plug-in prediction SD ŝ₀*:
    t* = (y₀* − ŷ₀*)/ŝ₀* (ŷ₀* = x₀ᵀβ̂* + z₀ᵀb̃*_j, or x₀ᵀβ̂*). The interval is
    ŷ₀ + ŝ₀·[q_{(1−level)/2}(t*), q_{(1+level)/2}(t*)] with the fit's plug-in ŝ₀. When T̂* is
    underestimated, ŝ₀* is too small and t* has heavy tails, which widens the interval."""
    nsim = _check_nsim(nsim)
    d = fit.design
    rng = np.random.default_rng(seed)
    known = (rows.group_index >= 0) & cond
    j = rows.group_index[known]
    m, q = rows.Z.shape
    T, sigma = fit.state.T, fit.sigma
    mean0 = rows.X @ fit.beta
    tstat = np.full((nsim, m), np.nan)
    for i, rep in enumerate(refits(d, fit.crossprods, fit.theta, sigma, fit.beta, reml=fit.reml,
                                   nsim=nsim, rng=rng)):
        if rep is None:
            continue
        b0 = sigma * rng.standard_normal((m, q)) @ T.T  # new school effects
        b0[known] = rep.b_true[j]
        y0 = mean0 + np.einsum("mq,mq->m", rows.Z, b0) + sigma * rng.standard_normal(m)
        yhat = rows.X @ rep.state.beta
        yhat[known] += np.einsum("mq,mq->m", rows.Z[known], rep.state.b[j])
        s_star = plugin_prediction_sd(_ReplicateFit(rep.state, rep.sigma), rows, known)
        tstat[i] = (y0 - yhat) / s_star
    a = (1.0 - level) / 2.0
    ok = np.all(np.isfinite(tstat), axis=1)
    s0 = plugin_prediction_sd(fit, rows, known)
    lo = np.array([norm_inter(tstat[ok, k], [a])[0] for k in range(m)])
    hi = np.array([norm_inter(tstat[ok, k], [1 - a])[0] for k in range(m)])
    return pred + s0 * lo, pred + s0 * hi
