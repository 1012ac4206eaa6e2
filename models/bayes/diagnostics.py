"""Convergence diagnostics (rank-normalised split R̂, bulk and tail ESS) vectorised over parameters.

ArviZ (arviz-stats 1.x) computes R̂ and ESS one parameter at a time in Python, about 2 ms a
parameter for 4 × 1000 draws, so the gate over every school effect of the lecture model (1,490
parameters) cost ~2.7 s. The functions here are the same algorithms (Vehtari, Gelman, Simpson,
Carpenter and Bürkner 2021, as ``arviz_stats.base.diagnostics``) on a (chain, draw, K) array at
once. Tested equal to ArviZ's ``rhat``/``ess`` to 1e-10 (tests/test_diagnostics.py).

No ArviZ import here (ArviZ's import alone costs over a second).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import special

__all__ = ["TAIL_PROB", "ess_bulk", "ess_mean", "ess_tail", "rhat_ess", "rhat_rank"]

# ArviZ 1.x's tail ESS uses the quantiles prob and 1 − prob with prob = rcParams["stats.ci_prob"]
TAIL_PROB = 0.89


def _columns(x: np.ndarray) -> np.ndarray:
    """(chain, draw, K) → contiguous (K, chain, draw) rows."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(x, float), -1, 0))


def _split_chains(r: np.ndarray) -> np.ndarray:
    """(K, 2C, ⌊D/2⌋): each chain's first and last halves as separate chains (ArviZ's order:
    all first halves, then all last halves)."""
    half = r.shape[2] // 2
    return np.concatenate([r[:, :, :half], r[:, :, r.shape[2] - half:]], axis=1)


def _scores(rows: np.ndarray, table: np.ndarray, keep_sorted: bool = False):
    """Normal scores table[2·rank] of the average ranks within each row (K, N), in the rows' own
    order: position i of a sorted row has rank i + 1, except a run i … j of equal values, which
    shares the rank (i + j)/2 + 1 (runs are rare: found from the adjacent equal pairs). With
    ``keep_sorted`` also the sorted rows."""
    K, N = rows.shape
    order = np.argsort(rows, axis=1)
    sv = np.take_along_axis(rows, order, axis=1)
    sorted_scores = np.broadcast_to(table[2:2 * N + 1:2], (K, N)).copy()
    eq = np.zeros((K, N + 1), bool)
    eq[:, 1:N] = sv[:, 1:] == sv[:, :-1]  # eq[:, c]: positions c − 1 and c are tied
    if eq.any():
        starts = eq[:, 1:] & ~eq[:, :-1]  # a run of ties begins at position c
        ends = eq[:, :-1] & ~eq[:, 1:]  # … and ends at position c
        for (r, i), j in zip(np.argwhere(starts), np.argwhere(ends)[:, 1], strict=True):
            sorted_scores[r, i:j + 1] = table[i + j + 2]
    out = np.empty_like(rows)
    np.put_along_axis(out, order, sorted_scores, axis=1)
    return (out, sv) if keep_sorted else out


def _z_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blom's normal scores Φ⁻¹((r − 3/8) / (N + 1/4)) of the pooled average ranks r of each row
    of s (K, M, n), N = M·n, and of its folded values (as ArviZ's ``_z_scale`` and ``_z_fold``).
    Ranks are multiples of ½, so Φ⁻¹ is tabulated once at the 2N + 1 possible values."""
    z, zf, _ = _z_scales_sorted(s)
    return z, zf


def _z_scales_sorted(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_z_scales` and the sorted pooled rows (K, N) (one sort gives the ranks, the median
    for the folding and, in :func:`_rhat_ess_rows`, the tail quantiles)."""
    K, M, n = s.shape
    N = M * n
    rows = s.reshape(K, N)
    table = special.ndtri((np.arange(2 * N + 1) / 2.0 - 0.375) / (N + 0.25))
    z, sv = _scores(rows, table, keep_sorted=True)
    h = N // 2
    med = sv[:, h] if N % 2 else (sv[:, h - 1] + sv[:, h]) / 2.0  # np.median's value
    folded = np.abs(rows - med[:, None])
    return z.reshape(K, M, n), _scores(folded, table).reshape(K, M, n), sv


def _sorted_quantile(sv: np.ndarray, prob: float) -> np.ndarray:
    """np.quantile(row, prob) (linear interpolation, NumPy's lerp) of each sorted row of sv."""
    N = sv.shape[1]
    virtual = prob * (N - 1)
    lo = int(np.floor(virtual))
    hi = min(lo + 1, N - 1)
    t = virtual - lo
    a, b = sv[:, lo], sv[:, hi]
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def _rhat(x: np.ndarray) -> np.ndarray:
    """Potential scale reduction √((B/W + n − 1)/n) per row of x (K, chains, n), B = n·var of
    the chain means, W = mean of the chain variances."""
    n = x.shape[2]
    between = n * np.var(x.mean(axis=2), axis=1, ddof=1)
    within = np.mean(np.var(x, axis=2, ddof=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant column: NaN, as ArviZ
        return np.sqrt((between / within + n - 1) / n)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row and chain at lags 0 … n−1 (FFT, divided by n), (K, M, n)."""
    n = x.shape[2]
    m = sfft.next_fast_len(2 * n)
    x = x - x.mean(axis=2, keepdims=True)
    f = sfft.rfft(x, n=m, axis=2)  # pocketfft, as NumPy's
    f *= np.conjugate(f)
    return sfft.irfft(f, n=m, axis=2)[:, :, :n] / n


def _geyer_tau(mean_acov: np.ndarray, mean_var: np.ndarray, var_plus: np.ndarray,
               n_total: float) -> np.ndarray:
    """Integrated autocorrelation time τ̂ per row from the chain-averaged autocovariances
    (K, n): ρ̂_t = 1 − (W − mean_c acov_t)/var⁺; Geyer's initial positive sequence (pairs
    ρ̂_{t+1} + ρ̂_{t+2} while positive), then his initial monotone sequence; τ̂ = −1 + 2Σ_{t≤T}ρ̂_t
    + ρ̂_{T+1}, at least 1/log10(N). All rows step through t together, each stopping by a mask."""
    K, D = mean_acov.shape
    rows = np.arange(K)
    rho = np.zeros((K, D))
    rho[:, 0] = 1.0
    even = np.ones(K)
    odd = 1.0 - (mean_var - mean_acov[:, 1]) / var_plus
    rho[:, 1] = odd
    t_end = np.ones(K, dtype=np.int64)
    active = np.full(K, 1 < D - 3) & ((even + odd) > 0.0)
    t = 1
    while active.any():
        e = 1.0 - (mean_var - mean_acov[:, t + 1]) / var_plus
        o = 1.0 - (mean_var - mean_acov[:, t + 2]) / var_plus
        keep = active & ((e + o) >= 0)
        rho[keep, t + 1] = e[keep]
        rho[keep, t + 2] = o[keep]
        even = np.where(active, e, even)
        odd = np.where(active, o, odd)
        t_end = np.where(active, t + 2, t_end)
        t += 2
        active = active & (t < D - 3) & ((even + odd) > 0.0)
    max_t = t_end - 2
    pos = even > 0
    rho[rows[pos], max_t[pos] + 1] = even[pos]
    for t in range(1, int(max_t.max()) - 1, 2):
        fix = (t <= max_t - 2) & ((rho[:, t + 1] + rho[:, t + 2]) > (rho[:, t - 1] + rho[:, t]))
        rho[fix, t + 1] = (rho[fix, t - 1] + rho[fix, t]) / 2.0
        rho[fix, t + 2] = rho[fix, t + 1]
    csum = np.concatenate([np.zeros((K, 1)), np.cumsum(rho, axis=1)], axis=1)
    nxt = np.where(max_t + 1 < D, rho[rows, np.minimum(max_t + 1, D - 1)], 0.0)
    tau = -1.0 + 2.0 * csum[rows, max_t + 1] + nxt
    tau = np.maximum(tau, 1.0 / np.log10(n_total))
    return np.where(np.isnan(rho).any(axis=1), np.nan, tau)


def _ess(x: np.ndarray) -> np.ndarray:
    """Effective sample size M·n/τ̂ of each row of x (K, M chains, n draws); a constant row
    (range below float resolution) has ESS M·n, as in ArviZ."""
    K, M, n = x.shape
    acov = _autocov(x)
    mean_var = acov[:, :, 0].mean(axis=1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if M > 1:
        var_plus = var_plus + np.var(x.mean(axis=2), axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = _geyer_tau(np.ascontiguousarray(acov.mean(axis=1)), mean_var, var_plus,
                         float(M * n))
        ess = M * n / tau
    flat = x.reshape(K, -1)
    const = (flat.max(axis=1) - flat.min(axis=1)) < np.finfo(float).resolution
    return np.where(const, float(M * n), ess)


def _ess_tail_rows(rows: np.ndarray, prob: float, sv: np.ndarray | None = None) -> np.ndarray:
    """Tail ESS of rows (K, chains, draws): the smaller ESS of the indicators v ≤ q_{1−prob}
    and v ≤ q_prob (pooled quantiles of each row, NumPy's linear interpolation), split chains.
    ``sv``: the rows' pooled values already sorted (K, chains·draws), if at hand."""
    K = rows.shape[0]
    out = None
    for pr in sorted((prob, 1 - prob)):
        qv = (np.quantile(rows.reshape(K, -1), pr, axis=1) if sv is None
              else _sorted_quantile(sv, pr))
        e = _ess(_split_chains((rows <= qv[:, None, None]).astype(float)))
        out = e if out is None else np.minimum(out, e)
    return out


def rhat_rank(x: np.ndarray) -> np.ndarray:
    """Rank-normalised split R̂ of each column of a (chain, draw, K) array: the larger of the
    R̂ of the normal scores and of the folded normal scores (|x − median|)."""
    z, zf = _z_scales(_split_chains(_columns(x)))
    return np.maximum(_rhat(z), _rhat(zf))


def ess_bulk(x: np.ndarray) -> np.ndarray:
    """Bulk ESS: ESS of the normal scores of the split chains."""
    return _ess(_z_scales(_split_chains(_columns(x)))[0])


def ess_mean(x: np.ndarray) -> np.ndarray:
    """ESS of the mean: ESS of the split chains themselves (ArviZ's ``method="mean"``)."""
    return _ess(_split_chains(_columns(x)))


def ess_tail(x: np.ndarray, prob: float = TAIL_PROB) -> np.ndarray:
    """Tail ESS (ArviZ's ``method="tail"`` with its default ``prob``)."""
    return _ess_tail_rows(_columns(x), prob)


def _rhat_ess_rows(rows: np.ndarray) -> np.ndarray:
    """(3, K) R̂, bulk ESS and tail ESS of rows (K, chains, draws); the ranks computed once."""
    z, zf, sv = _z_scales_sorted(_split_chains(rows))
    # an even number of draws: the split chains pool the same values as the chains
    tail = _ess_tail_rows(rows, TAIL_PROB, sv if rows.shape[2] % 2 == 0 else None)
    return np.stack([np.maximum(_rhat(z), _rhat(zf)), _ess(z), tail])


def rhat_ess(arr: np.ndarray, threads: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-normalised split R̂, bulk ESS and tail ESS of every column of a (chain, draw, K)
    array (ArviZ's ``rhat``, ``ess(method="bulk")``, ``ess(method="tail")``). Above 256 columns
    the columns are shared among ``threads`` threads (NumPy's sorts and FFTs release the GIL)."""
    rows = _columns(arr)
    K = rows.shape[0]
    if threads < 2 or K <= 256:
        out = _rhat_ess_rows(rows)
    else:
        from concurrent.futures import ThreadPoolExecutor

        parts = np.array_split(np.arange(K), threads)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            out = np.concatenate(list(pool.map(lambda ix: _rhat_ess_rows(rows[ix]), parts)),
                                 axis=1)
    return out[0], out[1], out[2]
