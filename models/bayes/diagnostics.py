"""Convergence diagnostics (rank-normalised split R̂, bulk and tail ESS) vectorised over parameters.

ArviZ (arviz-stats 1.x) computes R̂ and ESS one parameter at a time in Python, about 2 ms a
parameter for 4 × 1000 draws, so the gate over every school effect of the lecture model (1,490
parameters) cost ~2.7 s. The functions here are the same algorithms (Vehtari, Gelman, Simpson,
Carpenter and Bürkner 2021, as ``arviz_stats.base.diagnostics``) on a (chain, draw, K) array at
once: ranks and normal scores over all K columns, one FFT for every autocovariance, and only
Geyer's truncation loop — sequential by nature — compiled with numba (cached). Tested equal to
ArviZ's ``rhat``/``ess`` to 1e-10 (tests/test_diagnostics.py).

No ArviZ import here (ArviZ's import alone costs over a second).
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import special
from scipy.fft import next_fast_len

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


@numba.njit(cache=True, nogil=True, inline="always")
def _scores_in_order(v, order, table, out):
    """out[i] = table[2·rank(v_i)], ranks 1-based along ``order`` (v sorted), ties given their
    average rank (a multiple of ½, hence the doubled index)."""
    N = v.shape[0]
    i = 0
    while i < N:
        j = i
        while j + 1 < N and v[order[j + 1]] == v[order[i]]:
            j += 1
        s = table[i + j + 2]  # 2 × (average rank (i + j)/2 + 1)
        for m in range(i, j + 1):
            out[order[m]] = s
        i = j + 1


@numba.njit(cache=True, nogil=True)
def _rank_scores(rows, order, table):
    """Normal scores of the ranks of each row (K, N) (``order`` = its argsort) and of the ranks
    of its folded values |v − median(v)|. The median is NumPy's (mean of the two middle values
    for even N); the folded values' order is a merge of the values below the median (taken
    downwards) and those above (upwards), so no second sort."""
    K, N = rows.shape
    z = np.empty((K, N))
    zf = np.empty((K, N))
    f = np.empty(N)
    forder = np.empty(N, np.int64)
    for k in range(K):
        v = rows[k]
        o = order[k]
        _scores_in_order(v, o, table, z[k])
        med = 0.5 * (v[o[(N - 1) // 2]] + v[o[N // 2]])
        m = 0
        for i in range(N):
            f[i] = abs(v[i] - med)
            if v[i] < med:
                m += 1
        lo, hi = m - 1, m
        for i in range(N):
            if hi >= N or (lo >= 0 and f[o[lo]] <= f[o[hi]]):
                forder[i] = o[lo]
                lo -= 1
            else:
                forder[i] = o[hi]
                hi += 1
        _scores_in_order(f, forder, table, zf[k])
    return z, zf


def _z_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blom's normal scores Φ⁻¹((r − 3/8) / (N + 1/4)) of the pooled average ranks r of each row
    of s (K, M, n), N = M·n, and of its folded values (as ArviZ's ``_z_scale`` and ``_z_fold``).
    Ranks are multiples of ½, so Φ⁻¹ is tabulated once at the 2N + 1 possible values."""
    K, M, n = s.shape
    N = M * n
    rows = s.reshape(K, N)
    table = special.ndtri((np.arange(2 * N + 1) / 2.0 - 0.375) / (N + 0.25))
    z, zf = _rank_scores(rows, np.argsort(rows, axis=1), table)
    return z.reshape(K, M, n), zf.reshape(K, M, n)


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
    m = next_fast_len(2 * n)
    x = x - x.mean(axis=2, keepdims=True)
    f = np.fft.rfft(x, n=m, axis=2)
    f *= np.conjugate(f)
    return np.fft.irfft(f, n=m, axis=2)[:, :, :n] / n


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _geyer_tau(mean_acov, mean_var, var_plus, n_total):
    """Integrated autocorrelation time τ̂ per row from the chain-averaged autocovariances
    (K, n): ρ̂_t = 1 − (W − mean_c acov_t)/var⁺, Geyer's initial positive then initial monotone
    sequence, τ̂ = −1 + 2Σρ̂ (+ the last even pair's first term), at least 1/log10(N)."""
    K, D = mean_acov.shape
    tau = np.empty(K)
    rho = np.zeros(D)
    for k in range(K):
        for t in range(D):
            rho[t] = 0.0
        even = 1.0
        rho[0] = even
        odd = 1.0 - (mean_var[k] - mean_acov[k, 1]) / var_plus[k]
        rho[1] = odd
        t = 1
        while t < D - 3 and (even + odd) > 0.0:
            even = 1.0 - (mean_var[k] - mean_acov[k, t + 1]) / var_plus[k]
            odd = 1.0 - (mean_var[k] - mean_acov[k, t + 2]) / var_plus[k]
            if (even + odd) >= 0:
                rho[t + 1] = even
                rho[t + 2] = odd
            t += 2
        max_t = t - 2
        if even > 0:
            rho[max_t + 1] = even
        t = 1
        while t <= max_t - 2:
            if (rho[t + 1] + rho[t + 2]) > (rho[t - 1] + rho[t]):
                rho[t + 1] = (rho[t - 1] + rho[t]) / 2.0
                rho[t + 2] = rho[t + 1]
            t += 2
        s = 0.0
        for i in range(max_t + 1):
            s += rho[i]
        tau_k = -1.0 + 2.0 * s + (rho[max_t + 1] if max_t + 1 < D else 0.0)
        nan = False
        for i in range(D):
            if np.isnan(rho[i]):
                nan = True
        tau[k] = np.nan if nan else max(tau_k, 1.0 / np.log10(n_total))
    return tau


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


def _ess_tail_rows(rows: np.ndarray, prob: float) -> np.ndarray:
    """Tail ESS of rows (K, chains, draws): the smaller ESS of the indicators v ≤ q_{1−prob}
    and v ≤ q_prob (pooled quantiles of each row, NumPy's linear interpolation), split chains."""
    K = rows.shape[0]
    out = None
    for pr in sorted((prob, 1 - prob)):
        qv = np.quantile(rows.reshape(K, -1), pr, axis=1)
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


def rhat_ess(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-normalised split R̂, bulk ESS and tail ESS of every column of a (chain, draw, K)
    array (ArviZ's ``rhat``, ``ess(method="bulk")``, ``ess(method="tail")``); the ranks are
    computed once for both."""
    rows = _columns(arr)
    z, zf = _z_scales(_split_chains(rows))
    return np.maximum(_rhat(z), _rhat(zf)), _ess(z), _ess_tail_rows(rows, TAIL_PROB)
