"""Closed-form power and minimum detectable effect sizes (MDES) of the standard school designs,
PowerUp!'s formulas (Dong & Maynard 2013, *JREE* 6:24–67), as coded in the PowerUpR package
(Bulus, Dong, Kelcey & Spybrook; ``R/cra2.R``, ``R/bira2.R``, ``R/ira.R``, ``R/cra3.R``,
``R/bcra3r2.R``, ``R/utils.R`` of version 1.1.0).

Everything is in standard-deviation units of the outcome (total variance 1). With P the share
of units treated, g the number of covariates at the randomised level (PowerUp!'s g2, g3, g1) and
R²'s the shares of each level's variance explained by covariates, the standardised standard
error (SSE) of the treatment effect and its degrees of freedom are

===========  ======================================================================  ============
design        SSE²                                                                    df
===========  ======================================================================  ============
CRA2_2r      ρ(1−R²₂)/(P(1−P)J) + (1−ρ)(1−R²₁)/(P(1−P)Jn)                             J − g − 2
BIRA2_1r     ρω(1−R²_T)/J + (1−ρ)(1−R²₁)/(P(1−P)Jn)                                  J − g − 1
BIRA2_1c     (1−R²₁)/(P(1−P)Jn)                                                       J(n−1) − g − 1
CRA3_3r      ρ₃(1−R²₃)/(P(1−P)K) + ρ₂(1−R²₂)/(P(1−P)KJ) + (1−ρ₂−ρ₃)(1−R²₁)/(P(1−P)KJn)  K − g − 2
BCRA3_2r     ρ₃ω(1−R²_T)/K + ρ₂(1−R²₂)/(P(1−P)KJ) + (1−ρ₂−ρ₃)(1−R²₁)/(P(1−P)KJn)       K − g − 1
===========  ======================================================================  ============

(two levels: J schools of n students; three levels: K schools of J classes of n students; ω is
the variance of the school-specific treatment effects relative to the intercept variance,
τ²_T/τ², R²_T the share of it explained by school covariates). BIRA2_1c omits the (1−ρ) factor,
as PowerUp! does (school fixed effects, constant treatment effect).

Power of the two-sided t test (PowerUp!'s default), with λ = δ/SSE the noncentrality and
t_c = t_{1−α/2, df}:  power = 1 − F_t(t_c; df, λ) + F_t(−t_c; df, λ).
MDES (PowerUp!): M·SSE with the multiplier M = t_{1−α/2, df} + t_{power, df} (central t, an
approximation); the exact MDES solves power(δ) = target for δ with the noncentral t.

Unequal school sizes (CRA2_2r only): the design effect of Van Breukelen, Candel & Berger (2007,
*Stat Med* 26:2589–2603): with mean size n̄ and coefficient of variation CV of the school sizes,
the relative efficiency of unequal to equal sizes is RE = 1 − CV²·λ(1−λ), λ = n̄ρ'/(n̄ρ' + 1 − ρ')
and ρ' = ρ(1−R²₂)/(ρ(1−R²₂) + (1−ρ)(1−R²₁)) the residual ICC; SSE² is divided by RE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from scipy import optimize, stats

from twolevel.data.errors import TwolevelError

__all__ = [
    "DESIGNS",
    "PowerResult",
    "StudyDesign",
    "mdes_multiplier",
    "power_analytic",
    "power_t",
    "relative_efficiency_unequal",
    "study_design",
]

#: PowerUp!'s design names by twolevel's short names
DESIGNS = {"cra2": "CRA2_2r", "bira2": "BIRA2_1r", "bira2c": "BIRA2_1c", "cra3": "CRA3_3r",
           "bcra3": "BCRA3_2r"}


def _tail_above(x: float, df: float, lam: float) -> float:
    """P(T > x) for T ~ t(df, λ); scipy's ``nct`` can return NaN far in a tail, where the
    complement (or, failing that, the side of λ) decides."""
    v = float(stats.nct.sf(x, df, lam))
    if math.isnan(v):
        c = float(stats.nct.cdf(x, df, lam))
        v = 1.0 - c if not math.isnan(c) else float(x < lam)
    return v


def power_t(effect: float, sse: float, df: float, alpha: float = 0.05,
            two_tailed: bool = True) -> float:
    """Power of the t test of a standardised effect δ with standard error SSE and df degrees of
    freedom (PowerUpR's ``.power.fun``): λ = δ/SSE;
    two-sided 1 − F_t(t_{1−α/2}; df, λ) + F_t(−t_{1−α/2}; df, λ), one-sided 1 − F_t(t_{1−α}; df, λ).
    """
    lam = effect / sse
    if two_tailed:
        tc = float(stats.t.isf(alpha / 2.0, df))
        return _tail_above(tc, df, lam) + 1.0 - _tail_above(-tc, df, lam)
    return _tail_above(float(stats.t.isf(alpha, df)), df, lam)


def mdes_multiplier(df: float, power: float = 0.8, alpha: float = 0.05,
                    two_tailed: bool = True) -> float:
    """PowerUp!'s multiplier M = t₁ + t₂ with t₁ = t_{1−α/2, df} (two-sided; t_{1−α, df}
    one-sided) and t₂ = t_{power, df} (``.mdes.fun``: t₁ + |t₂| for power ≥ .5, t₁ − |t₂| below)."""
    t1 = stats.t.isf(alpha / 2.0 if two_tailed else alpha, df)
    return float(t1 + stats.t.ppf(power, df))


def relative_efficiency_unequal(n_mean: float, cv: float, icc: float) -> float:
    """Van Breukelen, Candel & Berger (2007): RE = 1 − CV²·λ(1−λ), λ = n̄ρ/(n̄ρ + 1 − ρ), the
    efficiency of unequal school sizes (mean n̄, coefficient of variation CV) relative to equal
    sizes for the treatment effect of a cluster-randomised trial (ρ the residual ICC)."""
    lam = n_mean * icc / (n_mean * icc + 1.0 - icc)
    return 1.0 - cv * cv * lam * (1.0 - lam)


def _check_share(name: str, value: float, upper_open: bool = True) -> float:
    v = float(value)
    ok = 0.0 <= v < 1.0 if upper_open else 0.0 <= v <= 1.0
    if not ok or math.isnan(v):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise TwolevelError(f"{name} must be in {bound}, got {value!r}")
    return v


def _check_count(name: str, value, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
        raise TwolevelError(f"{name} must be a whole number of {what} ≥ {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class StudyDesign:
    """A planned study: one of PowerUp!'s designs and its parameters (validated).

    Fields
    ------
    design : ``"cra2"`` (CRA2_2r), ``"bira2"`` (BIRA2_1r), ``"bira2c"`` (BIRA2_1c), ``"cra3"``
        (CRA3_3r) or ``"bcra3"`` (BCRA3_2r).
    schools : number of schools (PowerUp!'s J in two-level designs, K in three-level ones).
    students : students per school (two levels) or per class (three levels), PowerUp!'s n.
    classes : classes per school (three levels; PowerUp!'s J).
    icc : ρ of two-level designs, the class-level ρ₂ of three-level ones.
    icc3 : the school-level ρ₃ (three levels).
    r2_1, r2_2, r2_3 : variance shares explained by covariates at each level.
    omega, r2_t : treatment-effect heterogeneity ω = τ²_T/τ² across schools and the share of it
        explained (BIRA2_1r, BCRA3_2r).
    p : share treated.  covariates : g, covariates at the randomised (or block) level.
    cv : coefficient of variation of school sizes (CRA2_2r only).
    alpha, two_tailed : the test.

    Examples
    --------
    >>> import twolevel as tl
    >>> sd = tl.StudyDesign("cra3", schools=20, classes=3, students=15, icc=0.1, icc3=0.1)
    >>> sd.classes, sd.icc3
    (3, 0.1)
    """

    design: str
    schools: int
    students: int
    icc: float = 0.0
    classes: int = 1
    icc3: float = 0.0
    r2_1: float = 0.0
    r2_2: float = 0.0
    r2_3: float = 0.0
    omega: float = 0.0
    r2_t: float = 0.0
    p: float = 0.5
    covariates: int = 0
    cv: float = 0.0
    alpha: float = 0.05
    two_tailed: bool = True

    def __post_init__(self):
        if self.design not in DESIGNS:
            raise TwolevelError(f"unknown design {self.design!r}; choose one of "
                                f"{', '.join(DESIGNS)}")
        _check_count("schools", self.schools, 3, "schools")
        _check_count("students", self.students, 2, "students per group")
        _check_count("covariates", self.covariates, 0, "covariates")
        _check_share("icc", self.icc)
        for name in ("r2_1", "r2_2", "r2_3", "r2_t"):
            _check_share(name, getattr(self, name))
        if not 0.0 < self.p < 1.0:
            raise TwolevelError(f"p, the share treated, must be between 0 and 1, got {self.p!r}")
        if not 0.0 < self.alpha < 1.0:
            raise TwolevelError(f"alpha must be between 0 and 1, got {self.alpha!r}")
        if self.omega < 0 or math.isnan(self.omega):
            raise TwolevelError(f"omega, the treatment-effect variance relative to the "
                                f"intercept variance, must be ≥ 0, got {self.omega!r}")
        if self.three_level:
            _check_count("classes", self.classes, 2, "classes per school")
            _check_share("icc3", self.icc3)
            if self.icc + self.icc3 >= 1.0:
                raise TwolevelError(f"icc + icc3 must be below 1 (the student-level share is "
                                    f"1 − ρ₂ − ρ₃), got {self.icc} + {self.icc3}")
        if self.cv < 0 or (self.cv > 0 and self.design != "cra2"):
            raise TwolevelError("cv (unequal school sizes) is a non-negative coefficient of "
                                "variation and applies to design 'cra2' only")
        if self.df < 1:
            raise TwolevelError(f"design {self.powerup_name} with {self.schools} schools and "
                                f"{self.covariates} covariates has df = {self.df:g} < 1; "
                                "add schools or drop covariates")

    # ----------------------------------------------------------------- the design's pieces
    @property
    def powerup_name(self) -> str:
        """PowerUp!'s name of the design (e.g. ``"CRA2_2r"``)."""
        return DESIGNS[self.design]

    @property
    def three_level(self) -> bool:
        """True for CRA3_3r and BCRA3_2r."""
        return self.design in ("cra3", "bcra3")

    @property
    def df(self) -> float:
        """Degrees of freedom (module table): J−g−2, J−g−1, J(n−1)−g−1, K−g−2, K−g−1."""
        J, n, g = self.schools, self.students, self.covariates
        return {"cra2": J - g - 2, "bira2": J - g - 1, "bira2c": J * (n - 1) - g - 1,
                "cra3": J - g - 2, "bcra3": J - g - 1}[self.design]

    def sse_per_school(self) -> float:
        """SSE²·(number of schools): the variance of the effect estimate for one school (the
        module table's numerators), divided by RE for unequal school sizes."""
        n, P = self.students, self.p
        pq = P * (1.0 - P)
        rho, w = self.icc, self.omega
        if self.design == "cra2":
            v = rho * (1 - self.r2_2) / pq + (1 - rho) * (1 - self.r2_1) / (pq * n)
            if self.cv > 0:
                t2, s2 = rho * (1 - self.r2_2), (1 - rho) * (1 - self.r2_1)
                v /= relative_efficiency_unequal(n, self.cv, t2 / (t2 + s2))
            return v
        if self.design == "bira2":
            return rho * w * (1 - self.r2_t) + (1 - rho) * (1 - self.r2_1) / (pq * n)
        if self.design == "bira2c":
            return (1 - self.r2_1) / (pq * n)
        Jc, rho3 = self.classes, self.icc3
        lower = (rho * (1 - self.r2_2) / (pq * Jc)
                 + (1 - rho - rho3) * (1 - self.r2_1) / (pq * Jc * n))
        if self.design == "cra3":
            return rho3 * (1 - self.r2_3) / pq + lower
        return rho3 * w * (1 - self.r2_t) + lower

    @property
    def sse(self) -> float:
        """The standardised standard error of the effect estimate (module table)."""
        return math.sqrt(self.sse_per_school() / self.schools)

    def with_schools(self, schools: int) -> StudyDesign:
        """The same design with another number of schools."""
        return replace(self, schools=schools)

    # ------------------------------------------------------------------ power and MDES
    def power(self, effect: float) -> float:
        """Power to detect the standardised effect δ (:func:`power_t`)."""
        return power_t(effect, self.sse, self.df, self.alpha, self.two_tailed)

    def ncp(self, effect: float) -> float:
        """The noncentrality λ = δ/SSE."""
        return effect / self.sse

    def mdes(self, power: float = 0.8) -> float:
        """PowerUp!'s MDES: M·SSE (:func:`mdes_multiplier`)."""
        _check_power(power)
        return mdes_multiplier(self.df, power, self.alpha, self.two_tailed) * self.sse

    def mdes_exact(self, power: float = 0.8) -> float:
        """The δ with power(δ) = target, solved with the noncentral t (Brent's method)."""
        _check_power(power)
        lo = 1e-12
        if self.power(lo) >= power:
            return 0.0
        hi = max(1.0, 2.0 * self.mdes(power))
        while self.power(hi) < power:
            hi *= 2.0
        return float(optimize.brentq(lambda d: self.power(d) - power, lo, hi, xtol=1e-14,
                                     rtol=1e-13))

    def schools_for_power(self, effect: float, power: float = 0.8, max_schools: int = 100_000
                          ) -> int:
        """The smallest number of schools whose power for δ reaches the target (power is
        increasing in the number of schools: doubling, then bisection over whole numbers)."""
        _check_power(power)
        if effect <= 0:
            raise TwolevelError(f"effect must be positive to solve for schools, got {effect!r}")
        lo = 3
        while True:
            try:
                self.with_schools(lo)
                break
            except TwolevelError:  # df < 1 with few schools
                lo += 1
        if self.with_schools(lo).power(effect) >= power:
            return lo
        hi = lo * 2
        while self.with_schools(hi).power(effect) < power:
            lo, hi = hi, hi * 2
            if hi > max_schools:
                raise TwolevelError(f"more than {max_schools} schools would be needed for "
                                    f"power {power} at effect {effect}")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.with_schools(mid).power(effect) >= power:
                hi = mid
            else:
                lo = mid
        return hi

    def mrss_powerup(self, effect: float, power: float = 0.8, start: float = 10.0,
                     tol: float = 0.10) -> int:
        """PowerUpR's ``mrss.*`` iteration for the number of schools: J₁ = (M/δ)²·SSE²·J with M
        at df(J₀), J₀ ← (J₀ + J₁)/2, 101 steps — stopping once |J₁ − J₀| < tol in the
        two-level designs (``mrss.cra2r2``, ``mrss.bira2r1``; the three-level ``mrss.cra3r3``
        and ``mrss.bcra3r2`` have no such test) — then R's ``round`` (half to even). Not for
        BIRA2_1c, whose df depends on n."""
        if self.design == "bira2c":
            raise TwolevelError("mrss_powerup solves for schools; BIRA2_1c's df depends on the "
                                "students, use schools_for_power")
        v = self.sse_per_school()
        offset = self.schools - self.df
        j0 = float(start)
        for _ in range(101):
            df = j0 - offset
            if df <= 0:
                raise TwolevelError("PowerUp!'s iteration reached df ≤ 0; use schools_for_power")
            m = mdes_multiplier(df, power, self.alpha, self.two_tailed)
            j1 = (m / effect) ** 2 * v
            done = abs(j1 - j0) < tol and not self.three_level
            j0 = (j1 + j0) / 2.0
            if done:
                break
        return int(round(j0))


def _check_power(power: float) -> None:
    if not 0.0 < power < 1.0:
        raise TwolevelError(f"the target power must be between 0 and 1, got {power!r}")


def study_design(design: str = "cra2", **params) -> StudyDesign:
    """Build a :class:`StudyDesign` (``design`` one of :data:`DESIGNS`; the other fields as
    keywords).

    Parameters
    ----------
    design : str
        ``"cra2"``, ``"bira2"``, ``"bira2c"``, ``"cra3"`` or ``"bcra3"``.
    **params
        The design's fields (:class:`StudyDesign`): ``schools``, ``students``, ``icc``, ...

    Returns
    -------
    StudyDesign
        The validated design.

    Raises
    ------
    TwolevelError
        A value outside its range (ρ outside [0, 1), fewer than 3 schools, ...).

    Examples
    --------
    >>> import twolevel as tl
    >>> sd = tl.study_design("cra2", schools=40, students=20, icc=0.1)
    >>> sd.design, sd.schools, sd.students
    ('cra2', 40, 20)
    """
    return StudyDesign(design=design, **params)


@dataclass(frozen=True)
class PowerResult:
    """Analytic power of a design: ``power`` at ``effect``, ``mdes`` (PowerUp!'s multiplier form)
    and ``mdes_exact`` (noncentral t) at ``target_power``, ``df``, ``ncp`` = δ/SSE, ``sse``,
    ``schools_needed`` (smallest number of schools reaching ``target_power`` at ``effect``).

    Examples
    --------
    >>> import twolevel as tl
    >>> r = tl.power_analytic("cra2", schools=40, students=20, icc=0.1, effect=0.3)
    >>> round(r.power, 3), round(r.mdes, 3), r.df, r.schools_needed
    (0.68, 0.346, 38.0, 53)
    """

    design: StudyDesign
    effect: float
    power: float
    mdes: float
    mdes_exact: float
    df: float
    ncp: float
    sse: float
    target_power: float
    schools_needed: int | None

    def to_dict(self) -> dict:
        """A JSON-ready dict (design parameters included)."""
        out = {"design": self.design.design, "powerup": self.design.powerup_name,
               "power": self.power, "mdes": self.mdes, "mdes_exact": self.mdes_exact,
               "df": self.df, "ncp": self.ncp, "sse": self.sse, "effect": self.effect,
               "target_power": self.target_power, "schools_needed": self.schools_needed}
        out["parameters"] = {k: getattr(self.design, k) for k in self.design.__dataclass_fields__}
        return out

    def summary(self) -> str:
        """A short printed report."""
        d = self.design
        lines = [f"Analytic power, {d.powerup_name} (PowerUp!), alpha = {d.alpha:g}, "
                 f"{'two' if d.two_tailed else 'one'}-sided",
                 f"  schools = {d.schools}, students = {d.students}"
                 + (f", classes = {d.classes}" if d.three_level else ""),
                 f"  effect  = {self.effect:g}",
                 f"  power   = {self.power:.4f}",
                 f"  mdes    = {self.mdes:.4f}  (at power {self.target_power:g}; exact "
                 f"{self.mdes_exact:.4f})",
                 f"  df      = {self.df:g}",
                 f"  ncp     = {self.ncp:.4f}"]
        if self.schools_needed is not None:
            lines.append(f"  schools for power {self.target_power:g}: {self.schools_needed}")
        return "\n".join(lines)


def power_analytic(design: str | StudyDesign = "cra2", effect: float = 0.25,
                   target_power: float = 0.8, **params) -> PowerResult:
    """Closed-form power, MDES, df and noncentrality of a standard design (module docstring).

    Parameters
    ----------
    design : a :class:`StudyDesign`, or its name (``"cra2"``, ``"bira2"``, ``"bira2c"``,
        ``"cra3"``, ``"bcra3"``) with the other fields as keywords (``schools``, ``students``,
        ``icc``, ``classes``, ``icc3``, ``r2_1``, ``r2_2``, ``r2_3``, ``omega``, ``r2_t``, ``p``,
        ``covariates``, ``cv``, ``alpha``, ``two_tailed``).
    effect : the standardised effect δ.  target_power : power for the MDES and the schools needed.

    Returns
    -------
    PowerResult

    Raises
    ------
    TwolevelError
        A parameter out of range (ρ outside [0, 1), fewer than 3 schools, fewer than 2 students).

    Examples
    --------
    PowerUpR's cross-check ``mdes.cra2(rho2=.17, n=15, J=20)`` gives 0.629:

    >>> r = power_analytic("cra2", effect=0.629, schools=20, students=15, icc=0.17)
    >>> round(r.mdes, 3), round(r.power, 2), r.df
    (0.629, 0.8, 18.0)
    """
    sd = design if isinstance(design, StudyDesign) else StudyDesign(design=design, **params)
    if isinstance(design, StudyDesign) and params:
        sd = replace(sd, **params)
    _check_power(target_power)
    needed = sd.schools_for_power(effect, target_power) if effect > 0 else None
    return PowerResult(design=sd, effect=float(effect), power=sd.power(effect),
                       mdes=sd.mdes(target_power), mdes_exact=sd.mdes_exact(target_power),
                       df=float(sd.df), ncp=sd.ncp(effect), sse=sd.sse,
                       target_power=float(target_power), schools_needed=needed)
