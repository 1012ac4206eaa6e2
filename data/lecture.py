"""The lecture's ECLS-K:2011-like data set, simulated deterministically.

The real ECLS-K:2011 restricted file used in Lecture 5 cannot be downloaded, so twolevel ships a
simulated stand-in with the same design (742 schools, 11,091 first graders, 10–25 per school) and
generating values equal to the lecture's ``lmer`` estimates. See ``data/README.md``.

Generating model (school j, student i)::

    ses_ij      = m_j + w_ij,       m_j ~ N(0, SD_SES_BETWEEN²), w_ij ~ N(0, SD_SES_WITHIN²)
    meanses_j   = mean_i ses_ij     (of the stored, rounded ses)
    famsesc_ij  = ses_ij − meanses_j
    a_j         = GAMMA01 · meanses_j + u0_j (total intercept deviation)
    (a_j, u1_j) ~ N(0, T),   T = [[τ00, ρ√(τ00 τ11)], [ρ√(τ00 τ11), τ11]]
    g1rscore_ij = γ00 + a_j + (γ10 + u1_j) · famsesc_ij + r_ij,   r_ij ~ N(0, σ²)

A binary outcome ``g1below`` (1 = below proficiency) comes from its own logistic two-level model
on the same schools and ``famsesc``, with its own school effects and its own random stream (seed
``BINARY_SEED`` = seed + 1), so adding it left every other column as it was::

    (v0_j, v1_j) ~ N(0, T_b),   T_b = [[τ00, ρ√(τ00 τ11)], [ρ√(τ00 τ11), τ11]]   (BINARY_VALUES)
    logit P(g1below_ij = 1) = γ00 + v0_j + (γ10 + v1_j) · famsesc_ij

The contextual effect ``GAMMA01 · m_j`` carries part of τ00 (GAMMA01² · SD_SES_BETWEEN² of it), so
the intercept variance of the lecture's model without ``meanses`` is τ00 while a model with
``meanses`` finds a level-2 effect. Random numbers come from NumPy's legacy ``RandomState``, whose
streams are frozen across NumPy versions, and only element-wise arithmetic is used; stored values
are rounded to fixed decimals (scores 2, SES 3, derived columns 12), so the CSV is byte-identical on
every regeneration. Regenerate the shipped file with ``python -m twolevel.data.lecture --write``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "LECTURE_CSV",
    "LECTURE_SEED",
    "GENERATING_VALUES",
    "BINARY_SEED",
    "BINARY_VALUES",
    "simulate_binary_outcome",
    "lecture_csv_text",
    "simulate_lecture_data",
    "write_lecture_csv",
]

LECTURE_SEED = 20250121  # the date of Lecture 5
LECTURE_CSV = Path(__file__).with_name("ecls_k_like.csv")

N_SCHOOLS = 742
N_STUDENTS = 11_091
MIN_SIZE, MAX_SIZE = 10, 25

# The lecture's lmer estimates (Lecture 5, m1) used as generating values.
GAMMA00 = 95.262
GAMMA10 = 7.3826
TAU00 = 54.893
TAU11 = 4.656
RHO01 = -0.24
SIGMA2 = 233.954
# Design choices of the simulation (not in the lecture).
GAMMA01 = 8.0  # contextual effect of school mean SES on the school mean score
SD_SES_BETWEEN = 0.5  # sd of true school mean SES
SD_SES_WITHIN = 0.63  # sd of SES within a school: puts SE(γ10) near the lecture's 0.25

GENERATING_VALUES: dict[str, float] = {
    "gamma00": GAMMA00,
    "gamma10": GAMMA10,
    "tau00": TAU00,
    "tau11": TAU11,
    "corr_u0_u1": RHO01,
    "sigma2": SIGMA2,
    "gamma01_meanses": GAMMA01,
    "sd_ses_between": SD_SES_BETWEEN,
    "sd_ses_within": SD_SES_WITHIN,
}

# The binary outcome g1below (1 = below proficiency): a logistic two-level model with a random
# intercept and a random famsesc slope, on the same schools and famsesc, with values chosen to be
# plausible (about 30% below proficiency; an odds ratio of exp(-0.6) = 0.55 per unit of SES).
BINARY_SEED = LECTURE_SEED + 1  # the shipped file's; another ``seed`` draws with ``seed + 1``
BINARY_VALUES: dict[str, float] = {
    "gamma00": -1.0,  # log-odds of being below proficiency at a school's mean SES, average school
    "gamma10": -0.6,  # log odds ratio per unit of famsesc
    "tau00": 0.64,  # variance of the school log-odds (SD 0.8)
    "tau11": 0.16,  # variance of the school SES slopes (SD 0.4)
    "corr_v0_v1": -0.3,
}

# The first 20 school ids of the lecture's OLS table; later ids continue with random gaps.
_LECTURE_IDS = (1002, 1003, 1006, 1014, 1015, 1016, 1017, 1019, 1020, 1021,
                1022, 1023, 1025, 1031, 1032, 1033, 1034, 1035, 1036, 1039)  # fmt: skip


def _school_ids(rs: np.random.RandomState) -> np.ndarray:
    """742 increasing 4-digit school ids: the lecture's first 20, then gaps 1 + Geometric(1/2)−1."""
    gaps = rs.geometric(0.5, size=N_SCHOOLS - len(_LECTURE_IDS))
    rest = _LECTURE_IDS[-1] + np.cumsum(gaps)
    return np.concatenate([np.array(_LECTURE_IDS, dtype=np.int64), rest.astype(np.int64)])


def _school_sizes(rs: np.random.RandomState) -> np.ndarray:
    """n_j in 10..25 summing to exactly 11,091: 10 + BetaBinomial(15, 2, 4.06), then ±1 moves on
    random schools (never the smallest and largest, which are pinned to 10 and 25)."""
    p = rs.beta(2.0, 4.06, size=N_SCHOOLS)
    sizes = MIN_SIZE + rs.binomial(MAX_SIZE - MIN_SIZE, p)
    lo, hi = int(np.argmin(sizes)), int(np.argmax(sizes))
    sizes[lo], sizes[hi] = MIN_SIZE, MAX_SIZE
    free = np.array([j for j in range(N_SCHOOLS) if j not in (lo, hi)])
    while (diff := N_STUDENTS - int(sizes.sum())) != 0:
        j = free[rs.randint(free.size)]
        step = 1 if diff > 0 else -1
        if MIN_SIZE <= sizes[j] + step <= MAX_SIZE:
            sizes[j] += step
    return sizes


def lecture_csv_text(seed: int = LECTURE_SEED) -> str:
    """The lecture data set as CSV text (the exact bytes of ``data/ecls_k_like.csv`` for the
    default seed). Columns: schid, stuid, g1rscore, ses, meanses, famsesc, g1below (the binary
    outcome of :func:`simulate_binary_outcome`, drawn with ``seed + 1``: :data:`BINARY_SEED`)."""
    rs = np.random.RandomState(seed)
    ids = _school_ids(rs)
    sizes = _school_sizes(rs)
    school = np.repeat(np.arange(N_SCHOOLS), sizes)

    # SES, stored in thousandths; the school mean and the centred SES are exact rationals of them.
    m = SD_SES_BETWEEN * rs.standard_normal(N_SCHOOLS)
    ses_raw = m[school] + SD_SES_WITHIN * rs.standard_normal(N_STUDENTS)
    ses_milli = np.rint(ses_raw * 1000.0).astype(np.int64)
    sum_milli = np.zeros(N_SCHOOLS, dtype=np.int64)
    np.add.at(sum_milli, school, ses_milli)
    meanses = sum_milli / (1000.0 * sizes)
    famsesc = (ses_milli * sizes[school] - sum_milli[school]) / (1000.0 * sizes[school])

    # School effects: (a_j, u1_j) ~ N(0, T) with a_j = GAMMA01 * meanses_j + u0_j.
    # Exactly rounded sums (math.fsum) keep the values independent of NumPy's summation order.
    ctx = GAMMA01 * (meanses - math.fsum(meanses) / N_SCHOOLS)
    var_meanses = SD_SES_BETWEEN**2 + SD_SES_WITHIN**2 * math.fsum(1.0 / sizes) / N_SCHOOLS
    var_u0 = TAU00 - GAMMA01**2 * var_meanses
    u0 = math.sqrt(var_u0) * rs.standard_normal(N_SCHOOLS)
    a = ctx + u0
    slope_on_a = RHO01 * math.sqrt(TAU11 / TAU00)  # regression of u1 on a: cov / τ00
    u1 = slope_on_a * a + math.sqrt(TAU11 * (1.0 - RHO01**2)) * rs.standard_normal(N_SCHOOLS)
    r = math.sqrt(SIGMA2) * rs.standard_normal(N_STUDENTS)
    y = GAMMA00 + a[school] + (GAMMA10 + u1[school]) * famsesc + r
    y_cents = np.rint(y * 100.0).astype(np.int64)
    below = simulate_binary_outcome(school, famsesc, seed + 1)

    out = io.StringIO()
    out.write("schid,stuid,g1rscore,ses,meanses,famsesc,g1below\n")
    sid = ids[school]
    for k in range(N_STUDENTS):
        j = school[k]
        out.write(
            f"{sid[k]},{k + 1},{_fixed(y_cents[k], 2)},{_fixed(ses_milli[k], 3)},"
            f"{meanses[j]:.12f},{famsesc[k]:.12f},{below[k]}\n"
        )
    return out.getvalue().replace("-0.000000000000", "0.000000000000")


def simulate_binary_outcome(
    school: np.ndarray, x: np.ndarray, seed: int = BINARY_SEED,
    values: dict[str, float] | None = None,
) -> np.ndarray:
    """0/1 outcomes of a logistic two-level model with a random intercept and slope on ``x``.

    For school j (``school`` holds 0-based school indices, ``x`` the level-1 predictor, here
    ``famsesc``)::

        (v0_j, v1_j) ~ N(0, T_b),  T_b = [[τ00, ρ√(τ00 τ11)], [ρ√(τ00 τ11), τ11]]
        η_ij = γ00 + v0_j + (γ10 + v1_j) · x_ij,   y_ij = 1 if U_ij < 1 / (1 + exp(−η_ij))

    with U_ij ~ Uniform(0, 1). Draws come from NumPy's legacy ``RandomState(seed)`` (frozen
    streams) in a fixed order: v0's standard normals (J), v1's (J), then U (n); the inverse
    logit is ``math.exp`` per student. ``values`` defaults to :data:`BINARY_VALUES`.

    Returns an int64 array of 0/1, one per student.
    """
    v = BINARY_VALUES if values is None else values
    school = np.asarray(school, dtype=np.int64)
    x = np.asarray(x, dtype=float)
    n_schools = int(school.max()) + 1
    rs = np.random.RandomState(seed)
    z0 = rs.standard_normal(n_schools)
    z1 = rs.standard_normal(n_schools)
    tau00, tau11, rho = v["tau00"], v["tau11"], v["corr_v0_v1"]
    v0 = math.sqrt(tau00) * z0
    v1 = rho * math.sqrt(tau11) * z0 + math.sqrt(tau11 * (1.0 - rho**2)) * z1
    eta = v["gamma00"] + v0[school] + (v["gamma10"] + v1[school]) * x
    p = np.array([1.0 / (1.0 + math.exp(-e)) for e in eta.tolist()])
    return (rs.uniform(size=school.size) < p).astype(np.int64)


def _fixed(units: int, decimals: int) -> str:
    """An integer count of 10^-decimals written as a fixed-point decimal string, exactly."""
    sign = "-" if units < 0 else ""
    q, rem = divmod(abs(int(units)), 10**decimals)
    return f"{sign}{q}.{rem:0{decimals}d}"


def simulate_lecture_data(seed: int = LECTURE_SEED) -> pd.DataFrame:
    """Simulate the ECLS-K:2011-like lecture data set (see the module docstring).

    Parameters
    ----------
    seed : int
        Seed of NumPy's legacy ``RandomState``; the default gives the shipped file.

    Returns
    -------
    pandas.DataFrame
        11,091 rows, columns ``schid, stuid, g1rscore, ses, meanses, famsesc, g1below``; the
        values are exactly those of the CSV text (parsed from it), so the frame equals the
        shipped file.
    """
    return pd.read_csv(io.StringIO(lecture_csv_text(seed)))


def write_lecture_csv(path: str | os.PathLike[str] = LECTURE_CSV, seed: int = LECTURE_SEED) -> str:
    """Write the CSV atomically (temp file then rename); return its sha256."""
    data = lecture_csv_text(seed).encode("ascii")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twolevel.data.lecture", description="Regenerate the lecture data set."
    )
    parser.add_argument("--write", action="store_true", help=f"write {LECTURE_CSV.name}")
    parser.add_argument("--out", default=str(LECTURE_CSV), help="path to write (with --write)")
    parser.add_argument("--seed", type=int, default=LECTURE_SEED)
    args = parser.parse_args(argv)
    if args.write:
        digest = write_lecture_csv(args.out, args.seed)
        print(f"wrote {args.out} (sha256 {digest})")
    else:
        data = lecture_csv_text(args.seed).encode("ascii")
        print(f"sha256 {hashlib.sha256(data).hexdigest()} ({len(data)} bytes); --write to save")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
