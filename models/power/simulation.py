"""Simulation-based power (R simr's ``powerSim`` / ``powerCurve`` / ``extend``, Green & MacLeod
2016): simulate responses from a model with the effect of interest set, refit, test, count
rejections.

Each simulation draws fresh school effects b* ~ N(0, σ²TTᵀ) and residuals, and — as the
parametric bootstrap (:mod:`twolevel.models.inference.simulate`) — never forms y*: the response's
cross-products are drawn from their exact joint distribution, the model is refitted from them
(warm start at the true θ) and the term is tested (a one-random-effect model's Satterthwaite
test from a few (p+1) × (p+1) sums in scalar arithmetic, :mod:`.intercept`, the same numbers):

* ``"satterthwaite"`` — lmerTest's t test with Satterthwaite df (REML);
* ``"kenward-roger"`` — pbkrtest's Kenward–Roger t test (REML);
* ``"lrt"`` — likelihood-ratio test of the term, both models fitted by ML, χ²₁ reference;
* ``"variance"`` — the variance of the term's random slope: REML criteria of the model with and
  without that random effect (and its k covariances), p from the ½χ²_k + ½χ²_{k+1} mixture
  (Stram & Lee 1994; ``effect`` is then the slope's SD, its correlations kept).

Power is the share of p-values below α among the refits that succeeded, with its Monte-Carlo
standard error √(p̂(1−p̂)/m) and Wilson's 95% interval. Every simulation has its own random
stream (``numpy.random.SeedSequence(seed).spawn``), so a result does not depend on the number of
worker processes nor on early stopping.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from twolevel.data.errors import FormulaError, TwolevelError
from twolevel.models.design import Design, group_crossprods, make_design
from twolevel.models.glmm.results import GlmerFit
from twolevel.models.inference.kenward_roger import kenward_roger
from twolevel.models.inference.simulate import _NoiseBasis, simulate_crossprods
from twolevel.models.lmm.deviance import criterion, make_deviance, pls_state, sigma_hat
from twolevel.models.lmm.optimize import optimize_theta
from twolevel.models.lmm.results import LmerFit
from twolevel.models.power.analytic import StudyDesign
from twolevel.models.power.binary import glmer_job
from twolevel.models.power.intercept import InterceptModel
from twolevel.models.power.montecarlo import summarise as _summarise
from twolevel.models.power.montecarlo import wilson_interval
from twolevel.models.power.satterthwaite import satterthwaite_p

__all__ = ["TESTS", "PowerCurve", "SimulationJob", "design_population", "extend", "power",
           "run_simulations", "wilson_interval"]

TESTS = ("satterthwaite", "kenward-roger", "lrt", "variance")


# ---------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class SimulationJob:
    """One simulation setting: a design (its X, Z and grouping; the response is not used), the
    true (θ, σ, β), the tested column (of X; of Z for ``test="variance"``), the test and α;
    ``fast=False`` refuses :mod:`.intercept`'s scalar route (q = 1, Satterthwaite)."""

    design: Design
    theta: np.ndarray
    sigma: float
    beta: np.ndarray
    column: int
    test: str = "satterthwaite"
    alpha: float = 0.05
    fast: bool = True

    def prepare(self) -> _Prepared:
        """Cross-products of X and Z, the noise basis and the reduced model (LRT), once."""
        d = self.design
        cp = group_crossprods(d)
        basis = _NoiseBasis.of(d, cp)
        fast = InterceptModel.for_job(self, cp, basis)
        reduced = None
        if self.test == "lrt":
            keep = [k for k in range(d.p) if k != self.column]
            reduced = replace(d, X=d.X[:, keep], x_names=tuple(d.x_names[k] for k in keep))
        elif self.test == "variance":
            reduced = _drop_random_column(d, self.column)
        return _Prepared(self, cp, basis, d.theta_to_T(self.theta), reduced, fast)


def _drop_random_column(d: Design, col: int) -> Design:
    """The design without column ``col`` of Z (the random effect and its covariances)."""
    from twolevel.models.design import RandomTerm

    keep = [k for k in range(d.q) if k != col]
    new_index = {k: i for i, k in enumerate(keep)}
    terms = []
    for t in d.terms:
        cols = [c for c in t.columns if c != col]
        if cols:
            names = tuple(nm for c, nm in zip(t.columns, t.names, strict=True) if c != col)
            terms.append(RandomTerm(names=names, columns=tuple(new_index[c] for c in cols),
                                    group=t.group))
    return replace(d, Z=d.Z[:, keep], z_names=tuple(d.z_names[k] for k in keep),
                   terms=tuple(terms))


def _mixture_k(d: Design, col: int) -> int:
    """k: the covariances removed with random effect ``col`` (the other columns of its term)."""
    return next(len(t.columns) - 1 for t in d.terms if col in t.columns)


@dataclass(frozen=True)
class _Prepared:
    job: SimulationJob
    cp: object
    basis: _NoiseBasis
    T: np.ndarray
    reduced: Design | None
    fast: InterceptModel | None = None

    def p_value(self, rng: np.random.Generator) -> float:
        """Simulate one response, refit, return the test's p-value (NaN if the refit failed)."""
        job, d = self.job, self.job.design
        if self.fast is not None:
            return self.fast.p_value(rng, job.column)
        b = job.sigma * rng.standard_normal((d.n_groups, d.q)) @ self.T.T
        cps = simulate_crossprods(d, self.cp, self.basis, b, job.sigma, job.beta, rng)
        reml = job.test != "lrt"
        try:
            fn = make_deviance(d, reml=reml, crossprods=cps)
            opt = optimize_theta(fn, job.theta, d.theta_lower)
            st = pls_state(cps, d.theta_to_T(opt.theta))
            L = np.zeros(d.p)
            L[job.column] = 1.0
            if job.test == "satterthwaite":
                fit = LmerFit(design=d, crossprods=cps, reml=True,
                              theta=np.asarray(opt.theta, float), state=st, optsum=opt)
                return satterthwaite_p(fit, job.column)
            if job.test == "kenward-roger":
                kr = kenward_roger(d, cps, np.asarray(opt.theta, float), sigma_hat(st, True),
                                   L=L, beta=st.beta)
                return float(kr.p_value[0])
            if job.test == "variance":
                return self._variance_p(cps, st)
            keep = [k for k in range(d.p) if k != job.column]
            cpr = replace(cps, B=cps.B[:, :, keep], XtX=cps.XtX[np.ix_(keep, keep)],
                          Xty=cps.Xty[keep], p=d.p - 1)
            fr = make_deviance(self.reduced, reml=False, crossprods=cpr)
            opr = optimize_theta(fr, opt.theta, d.theta_lower)
            chi2 = max(0.0, float(opr.fmin) - float(criterion(st, False)))
            return float(stats.chi2.sf(chi2, 1))
        except (TwolevelError, np.linalg.LinAlgError, FloatingPointError, ValueError):
            return math.nan

    def _variance_p(self, cps, st) -> float:
        """REML LRT of the random effect ``column`` against the ½χ²_k + ½χ²_{k+1} mixture."""
        d, col, red = self.job.design, self.job.column, self.reduced
        keep = [k for k in range(d.q) if k != col]
        cpr = replace(cps, A=cps.A[:, keep][:, :, keep], B=cps.B[:, keep, :],
                      c=cps.c[:, keep])
        start = red.T_to_theta(np.linalg.cholesky(
            self.T[np.ix_(keep, keep)] @ self.T[np.ix_(keep, keep)].T
            + 1e-12 * np.eye(len(keep))))
        opr = optimize_theta(make_deviance(red, reml=True, crossprods=cpr),
                             np.maximum(start, red.theta_lower), red.theta_lower)
        lrt = max(0.0, float(opr.fmin) - float(criterion(st, True)))
        k = _mixture_k(d, col)
        p_k = (0.0 if lrt > 0 else 1.0) if k == 0 else float(stats.chi2.sf(lrt, k))
        return 0.5 * p_k + 0.5 * float(stats.chi2.sf(lrt, k + 1))


def _slope_sd_theta(d: Design, theta: np.ndarray, sigma: float, col: int, sd: float
                    ) -> np.ndarray:
    """θ with the SD of random effect ``col`` set to ``sd`` (its correlations kept): row ``col``
    of T scaled, Σ_b = σ²TTᵀ."""
    T = d.theta_to_T(theta).copy()
    cur = sigma * float(np.linalg.norm(T[col]))
    if cur <= 0:
        raise TwolevelError(f"the pilot's SD of the random effect '{d.z_names[col]}' is 0, so "
                            "its correlations are unknown; refit the pilot or choose another term")
    T[col] *= sd / cur
    return d.T_to_theta(T)


# ------------------------------------------------------------------------ running them

_WORKER: _Prepared | None = None


def _init_worker(prep: _Prepared) -> None:
    global _WORKER
    _WORKER = prep


def _chunk(seeds: list[np.random.SeedSequence]) -> np.ndarray:
    return np.array([_WORKER.p_value(np.random.default_rng(s)) for s in seeds])


def run_simulations(
    job: SimulationJob,
    nsim: int,
    seed: int | np.random.SeedSequence | np.random.Generator | None = 1,
    n_jobs: int = 1,
    progress: bool = False,
    tol: float | None = None,
    label: str = "",
) -> np.ndarray:
    """The p-values of ``nsim`` simulations of ``job`` (NaN for failed refits; fewer than
    ``nsim`` when ``tol`` stopped early: the Monte-Carlo standard error of the power fell below
    ``tol`` after at least 100 simulations). ``n_jobs`` > 1 forks that many worker processes;
    each simulation's stream is ``SeedSequence(seed).spawn(nsim)[i]``, whatever ``n_jobs``."""
    if isinstance(seed, np.random.Generator):
        ss = np.random.SeedSequence(int(seed.integers(2**63)))
    elif isinstance(seed, np.random.SeedSequence):
        ss = seed
    else:
        ss = np.random.SeedSequence(seed)
    seeds = ss.spawn(nsim)
    prep = job.prepare()
    batch = max(25, min(250, nsim // (10 * max(1, n_jobs)) or 25))
    chunks = [seeds[i:i + batch] for i in range(0, nsim, batch)]
    out: list[np.ndarray] = []
    t0 = time.perf_counter()

    def report(done_p: list[np.ndarray]) -> bool:
        p = np.concatenate(done_p)
        ok = p[np.isfinite(p)]
        m = ok.size
        pw = float(np.mean(ok < job.alpha)) if m else math.nan
        if progress:
            print(f"power{label}: {p.size}/{nsim} simulations, power {pw:.3f} "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        return tol is not None and m >= 100 and math.sqrt(pw * (1 - pw) / m) < tol

    if n_jobs <= 1:
        _init_worker(prep)
        for ch in chunks:
            out.append(_chunk(ch))
            if report(out):
                break
    else:
        ctx = mp.get_context("fork")  # the workers inherit the prepared job, nothing pickled
        with warnings.catch_warnings():
            # Python ≥ 3.12 warns on fork() with threads (BLAS, numba); the children run only
            # NumPy/NLopt code of this job and start no threads of their own
            warnings.simplefilter("ignore", DeprecationWarning)
            pool = ctx.Pool(n_jobs, initializer=_init_worker, initargs=(prep,))
        with pool:
            for res in pool.imap(_chunk, chunks):
                out.append(res)
                if report(out):
                    pool.terminate()
                    break
    return np.concatenate(out)


# --------------------------------------------------------------- designs and pilot fits


def extend(design: Design, n_schools: int | None = None, n_students: int | None = None,
           method: str = "cycle", rng: np.random.Generator | None = None) -> Design:
    """simr's ``extend``: a pilot's design with more (or fewer) schools and/or students.

    ``method="cycle"`` (simr's rule): new school k copies pilot school k mod J₀ (all its rows and
    covariates), and within a school student i copies the school's student i mod n_j.
    ``method="resample"``: schools drawn with replacement, students drawn with replacement
    within their school (``rng``). The response is carried along but not used.

    Parameters
    ----------
    design : Design
        The pilot's design (:func:`~twolevel.models.design.make_design`).
    n_schools, n_students : int, optional
        The new number of schools, and of students per school (None keeps the pilot's).
    method : {"cycle", "resample"}
        simr's cyclic copying (default) or resampling with replacement.
    rng : numpy.random.Generator, optional
        For ``method="resample"`` (default: a generator seeded with 0).

    Returns
    -------
    Design
        The extended design, rows ordered by school.

    Examples
    --------
    >>> import twolevel as tl
    >>> pilot = tl.make_design("Reaction ~ Days + (1 | Subject)", tl.load_data("sleepstudy"))
    >>> big = tl.extend(pilot, n_schools=30)        # 18 subjects → 30, 10 rows each
    >>> big.n_groups, big.n
    (30, 300)
    """
    if method not in ("cycle", "resample"):
        raise TwolevelError(f"extend method must be 'cycle' or 'resample', got {method!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    J0 = design.n_groups
    rows_of = [np.flatnonzero(design.group_index == j) for j in range(J0)]
    J = J0 if n_schools is None else _count("n_schools", n_schools, 3, "schools")
    if n_students is not None:
        _count("n_students", n_students, 2, "students per school")
    if method == "cycle":
        src = [k % J0 for k in range(J)]
    else:
        src = rng.integers(0, J0, size=J).tolist()
    idx, gi = [], []
    for k, j in enumerate(src):
        r = rows_of[j]
        if n_students is not None:
            r = (r[np.arange(n_students) % r.size] if method == "cycle"
                 else rng.choice(r, size=n_students, replace=True))
        idx.append(r)
        gi.append(np.full(r.size, k))
    idx_a = np.concatenate(idx)
    return replace(design, y=design.y[idx_a], X=design.X[idx_a], Z=design.Z[idx_a],
                   group_index=np.concatenate(gi),
                   group_levels=np.array([f"school{k + 1:05d}" for k in range(J)]))


def _count(name: str, value, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
        raise TwolevelError(f"{name} must be a whole number of {what} ≥ {minimum}, got {value!r}")
    return int(value)


def _school_sizes(n: int, J: int, cv: float) -> np.ndarray:
    """School sizes with mean ≈ n and coefficient of variation ≈ cv: the J mid-quantiles of a
    gamma distribution (shape 1/cv²), rounded, at least 2 (deterministic)."""
    if cv <= 0:
        return np.full(J, n)
    shape = 1.0 / (cv * cv)
    qs = stats.gamma.ppf((np.arange(J) + 0.5) / J, shape, scale=n / shape)
    return np.maximum(2, np.rint(qs)).astype(int)


def design_population(sd: StudyDesign, effect: float, rng: np.random.Generator
                      ) -> tuple[Design, np.ndarray, float, np.ndarray, int]:
    """The data-generating model of a two-level :class:`StudyDesign` in standard-deviation units
    (total variance 1): school intercept variance τ² = ρ, student variance σ² = 1 − ρ; a school
    covariate w explains R²₂ of τ² and a student covariate x explains R²₁ of σ² (each included
    only when its R² > 0; both standard normal, drawn from ``rng``).

    * ``cra2`` (CRA2_2r): ``y ~ treat [+ w] [+ x] + (1 | school)``, round(P·J) schools treated;
    * ``bira2`` (BIRA2_1r): ``y ~ treat [+ x] + (1 + treat | school)`` with treatment-effect
      variance ωτ²(1 − R²_T) uncorrelated with the intercepts (``(1 | school)`` when ω = 0),
      round(P·n) students treated in each school; ``bira2c`` (BIRA2_1c): ``(1 | school)``.

    Returns the design, θ, σ, β and the index of ``treat`` in β.
    """
    if sd.three_level:
        raise TwolevelError(f"simulation of the three-level design {sd.powerup_name} needs "
                            "nested grouping factors (schools and classes), which lmer's "
                            "one-grouping-factor designs cannot fit; use the analytic power")
    J, n, rho, P = sd.schools, sd.students, sd.icc, sd.p
    sizes = _school_sizes(n, J, sd.cv)
    school = np.repeat(np.arange(J), sizes)
    frame = pd.DataFrame({"school": [f"s{j:05d}" for j in school], "y": 0.0})
    tau2, sig2 = rho, 1.0 - rho
    terms, beta = ["treat"], [0.0, effect]
    if sd.design == "cra2":
        treated = np.zeros(J)
        treated[: int(round(P * J))] = 1.0
        frame["treat"] = treated[school]
        if sd.r2_2 > 0:
            frame["w"] = rng.standard_normal(J)[school]
            terms.append("w")
            beta.append(math.sqrt(tau2 * sd.r2_2))
            tau2 *= 1.0 - sd.r2_2
    else:
        pos = np.concatenate([np.arange(s) for s in sizes])
        frame["treat"] = (pos < np.rint(P * sizes[school])).astype(float)
    if sd.r2_1 > 0:
        frame["x"] = rng.standard_normal(school.size)
        terms.append("x")
        beta.append(math.sqrt(sig2 * sd.r2_1))
        sig2 *= 1.0 - sd.r2_1
    slope = sd.design == "bira2" and sd.omega * (1 - sd.r2_t) > 0
    re = "(1 + treat | school)" if slope else "(1 | school)"
    design = make_design(f"y ~ {' + '.join(terms)} + {re}", frame)
    sigma = math.sqrt(sig2)
    if slope:
        tt = rho * sd.omega * (1 - sd.r2_t)
        theta = np.array([math.sqrt(tau2 / sig2), 0.0, math.sqrt(tt / sig2)])
    else:
        theta = np.array([math.sqrt(tau2 / sig2)])
    return design, theta, sigma, np.array(beta), 1


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class PowerCurve:
    """Simulated power at one or more sample sizes (simr's ``powerCurve``).

    Fields
    ------
    table : one row per setting: ``schools``, ``students`` (per school; the mean when sizes
        vary), ``nsim`` (simulations run), ``failed`` (refits that failed), ``rejections``,
        ``power`` (rejections / successful refits), ``se`` (its Monte-Carlo standard error
        √(p̂(1−p̂)/m)), ``lower``/``upper`` (Wilson's 95% interval) and, for a planned design,
        ``power_analytic`` (:mod:`.analytic`).
    term, effect, test, alpha, seed : what was simulated.  p_values : per setting, the p-values.

    Examples
    --------
    >>> import twolevel as tl
    >>> sd = tl.study_design("cra2", schools=20, students=10, icc=0.1)
    >>> curve = tl.power(sd, effect=0.5, nsim=20, rng=3)
    >>> list(curve.table.columns[:6])
    ['schools', 'students', 'nsim', 'failed', 'rejections', 'power']
    """

    table: pd.DataFrame
    term: str
    effect: float
    test: str
    alpha: float
    seed: object
    p_values: tuple[np.ndarray, ...] = ()

    @property
    def power(self) -> float:
        """The power of the first (or only) setting."""
        return float(self.table["power"].iloc[0])

    @property
    def se(self) -> float:
        """Its Monte-Carlo standard error."""
        return float(self.table["se"].iloc[0])

    def to_frame(self) -> pd.DataFrame:
        """The table (a copy)."""
        return self.table.copy()

    def summary(self) -> str:
        """simr's printout, one line per setting."""
        head = (f"Power for the test of {self.term} = {self.effect:g} ({self.test}, alpha = "
                f"{self.alpha:g}), by simulation; 95% Wilson intervals")
        lines = [head]
        for r in self.table.itertuples():
            extra = (f", analytic {r.power_analytic:.3f}"
                     if "power_analytic" in self.table.columns else "")
            lines.append(f"  schools {r.schools:>5}, students {r.students:>6g}: "
                         f"{100 * r.power:6.2f}% ({100 * r.lower:.2f}, {100 * r.upper:.2f}) "
                         f"se {r.se:.4f}, {r.nsim} simulations, {r.failed} failed{extra}")
        return "\n".join(lines)


def _term_column(design: Design, term: str) -> int:
    """Index of ``term`` among the fixed effects; a factor or a missing term is refused."""
    names = list(design.x_names)
    if term in names:
        return names.index(term)
    levels = [c for c in names if c.startswith(term) and c != term]
    if levels:
        raise FormulaError(f"term '{term}' is a factor with coefficients {', '.join(levels)}; "
                           "power is for one coefficient: give one of them as term")
    raise FormulaError(f"term '{term}' is not a fixed effect of '{design.formula}'; its "
                       f"coefficients are {', '.join(names)}")


def _random_column(design: Design, term: str) -> int:
    """Index of ``term`` among the random effects (``test="variance"``), not the intercept."""
    names = list(design.z_names)
    if term not in names or term == "(Intercept)":
        raise FormulaError(f"test='variance' needs a random slope: '{term}' is not a random "
                           f"effect of '{design.formula}' besides the intercept (random "
                           f"effects: {', '.join(names)})")
    return names.index(term)


def _as_list(v) -> list:
    if v is None:
        return [None]
    return list(v) if isinstance(v, (list, tuple, range, np.ndarray)) else [v]


def power(
    model,
    term: str = "treat",
    effect: float = 0.25,
    *,
    n_schools=None,
    n_students=None,
    nsim: int = 1000,
    test: str = "satterthwaite",
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = None,
    n_jobs: int = 1,
    progress: bool = False,
    tol: float | None = None,
    extend_method: str = "cycle",
    rng: int | np.random.Generator | None = None,
) -> PowerCurve:
    """Simulation-based power of the test of one fixed effect (simr's ``powerSim`` /
    ``powerCurve``), from a fitted model or a planned design.

    Parameters
    ----------
    model : an :class:`~twolevel.models.lmm.results.LmerFit` (a pilot: its θ̂, σ̂ and β̂ are the
        truth, with the coefficient of ``term`` set to ``effect`` in the response's units), a
        binomial (0/1) or Poisson :class:`~twolevel.models.glmm.results.GlmerFit` (``effect``
        on the link scale, e.g. a log odds ratio; refits by glmer, Wald z test:
        :mod:`.binary`), or a
        two-level :class:`~twolevel.models.power.analytic.StudyDesign` (``effect`` in standard
        deviations; :func:`design_population`).
    term : the fixed effect tested (lme4's coefficient name; ``"treat"`` for a design).
    effect : its value under the alternative (0 gives the type I error).
    n_schools, n_students : a number or a list (a power curve over every combination); the
        pilot is extended (:func:`extend`, ``extend_method``) or the design's sizes replaced.
    nsim : simulations per setting.  test : ``"satterthwaite"``, ``"kenward-roger"``, ``"lrt"``
        or ``"variance"`` (a random slope's variance, χ̄² mixture; ``effect`` its SD).
    alpha : the test's level.  rng, seed : the package's seed convention: ``rng=`` an int, a
        ``SeedSequence`` or a ``Generator`` (``seed=`` the same, kept; not both; default 1).
    n_jobs : worker processes (fork).  progress : print progress to stderr.
    tol : stop a setting early once the Monte-Carlo standard error is below ``tol``.

    Returns
    -------
    PowerCurve

    Raises
    ------
    TwolevelError
        Unknown test, a term that is not a coefficient (or is a factor), too few schools or
        students, a three-level design.

    Examples
    --------
    >>> import twolevel as tl
    >>> sd = tl.study_design("cra2", schools=20, students=10, icc=0.1)
    >>> curve = tl.power(sd, effect=0.5, n_schools=[10, 20], nsim=20, rng=1)
    >>> curve.table[["schools", "nsim"]].to_dict("list")
    {'schools': [10, 20], 'nsim': [20, 20]}
    >>> bool(curve.table["power"].between(0, 1).all())
    True
    """
    if rng is not None and seed is not None:
        raise TwolevelError("give either rng= (a seed or a numpy Generator) or seed=, not both")
    seed = rng if rng is not None else (1 if seed is None else seed)
    if test not in TESTS:
        raise TwolevelError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    nsim = _count("nsim", nsim, 1, "simulations")
    if not 0.0 < alpha < 1.0:
        raise TwolevelError(f"alpha must be between 0 and 1, got {alpha!r}")
    ss = (np.random.SeedSequence(int(seed.integers(2**63)))
          if isinstance(seed, np.random.Generator) else np.random.SeedSequence(seed))
    design_ss, sim_ss = ss.spawn(2)
    rows, pvals = [], []
    settings = [(J, n) for J in _as_list(n_schools) for n in _as_list(n_students)]
    streams = sim_ss.spawn(len(settings))
    for (J, n), stream in zip(settings, streams, strict=True):
        if isinstance(model, StudyDesign):
            if test == "variance":
                raise TwolevelError("test='variance' tests a random slope of a pilot lmer fit; "
                                    "a planned design's test is for its treatment")
            if term != "treat":
                raise FormulaError(f"term '{term}' is not a fixed effect of a planned design; "
                                   "its treatment is 'treat'")
            sd = replace(model, schools=J if J is not None else model.schools,
                         students=n if n is not None else model.students)
            design, theta, sigma, beta, col = design_population(
                sd, float(effect), np.random.default_rng(design_ss))
            extra = {"power_analytic": sd.power(float(effect))}
        elif isinstance(model, LmerFit):
            col = (_random_column(model.design, term) if test == "variance"
                   else _term_column(model.design, term))
            if J is not None:
                _count("n_schools", J, 3, "schools")
            design = (model.design if J is None and n is None else
                      extend(model.design, J, n, extend_method,
                             np.random.default_rng(design_ss)))
            theta, sigma = np.asarray(model.theta, float), float(model.sigma)
            beta = np.array(model.beta, float)
            if test == "variance":
                theta = _slope_sd_theta(model.design, theta, sigma, col, float(effect))
            else:
                beta[col] = float(effect)
            extra = {}
        elif isinstance(model, GlmerFit):
            col = _term_column(model.design, term)
            if J is not None:
                _count("n_schools", J, 3, "schools")
            design = (model.design if J is None and n is None else
                      extend(model.design, J, n, extend_method,
                             np.random.default_rng(design_ss)))
            if test != "satterthwaite":
                raise TwolevelError(f"a glmer fit is tested by glmer's Wald z test; test="
                                    f"{test!r} is for lmer fits")
            job = glmer_job(model, design, col, effect, alpha)
            extra = {}
        else:
            raise TwolevelError(f"power needs a fitted lmer or glmer model or a StudyDesign, got "
                                f"{type(model).__name__}")
        if not isinstance(model, GlmerFit):
            job = SimulationJob(design=design, theta=theta, sigma=sigma, beta=beta, column=col,
                                test=test, alpha=alpha)
        label = f" [schools {design.n_groups}]"
        p = run_simulations(job, nsim, stream, n_jobs=n_jobs, progress=progress, tol=tol,
                            label=label)
        pvals.append(p)
        rows.append({"schools": design.n_groups,
                     "students": float(np.mean(design.group_sizes)),
                     **_summarise(p, alpha), **extra})
    return PowerCurve(table=pd.DataFrame(rows), term=term, effect=float(effect), test=test,
                      alpha=alpha, seed=seed if not isinstance(seed, np.random.Generator)
                      else "Generator", p_values=tuple(pvals))
