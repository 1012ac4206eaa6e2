"""ArviZ's convergence diagnostics (rank-normalised split R̂, bulk and tail ESS) over many
parameters, optionally shared with a helper process.

ArviZ computes R̂ and ESS one parameter at a time in Python (about 2 ms a parameter for 4 × 1000
draws, holding the GIL), so the gate over every school effect of the lecture model (1,490
parameters) costs about 2.7 s on one core. :class:`DiagnosticsHelper` starts a separate Python
process early (``python -m twolevel.models.bayes.diagnostics``: it imports ArviZ while the model compiles and
samples, using the second core), sends it half of the parameters as ``.npy`` bytes through a pipe
and computes the other half here. It is a plain subprocess: nothing is forked from this
multi-threaded process and the user's ``__main__`` is never re-imported. Any failure of the helper
falls back to computing everything here; the numbers are ArviZ's either way.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np

__all__ = ["DiagnosticsHelper", "rhat_ess"]


def rhat_ess(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ArviZ's rank-normalised split R̂, bulk ESS and tail ESS of every column of a
    (chain, draw, K) array."""
    import arviz as az
    import xarray as xr

    ds = xr.Dataset({"x": (("chain", "draw", "k"), np.asarray(arr, float))})
    return tuple(np.asarray(r["x"].to_numpy(), float)
                 for r in (az.rhat(ds), az.ess(ds, method="bulk"), az.ess(ds, method="tail")))


def _npy_bytes(arr: np.ndarray) -> bytes:
    """``arr`` in NumPy's ``.npy`` format (pipes cannot seek, so through memory)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=float))
    return buf.getvalue()


class DiagnosticsHelper:
    """A helper process that computes :func:`rhat_ess` of one array sent to it, then exits.

    ``DiagnosticsHelper()`` starts it (returns at once); :meth:`rhat_ess` splits the columns
    between the helper and this process; :meth:`close` stops an unused helper.
    """

    def __init__(self) -> None:
        # The same interpreter finds the installed twolevel package (wheel or editable) as we did.
        try:
            self._proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "twolevel.models.bayes.diagnostics"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            self._proc = None

    def rhat_ess(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`rhat_ess` of ``arr``: the last half of its columns in the helper, the first half
        here at the same time; everything here if the helper is missing or fails."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return rhat_ess(arr)
        half = arr.shape[-1] // 2
        try:
            proc.stdin.write(_npy_bytes(arr[..., half:]))
            proc.stdin.close()
        except OSError:
            proc.kill()
            return rhat_ess(arr)
        first = rhat_ess(arr[..., :half])
        try:
            second = np.load(io.BytesIO(proc.stdout.read()))
            proc.wait(timeout=60)
        except (OSError, ValueError, EOFError, subprocess.TimeoutExpired):
            proc.kill()
            second = np.stack(rhat_ess(arr[..., half:]))
        return tuple(np.concatenate([a, b]) for a, b in zip(first, second, strict=True))

    def close(self) -> None:
        """Stop the helper if it was not used."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


def _worker() -> None:
    """The helper's side: import ArviZ, read one (chain, draw, K) array from stdin, write the
    (3, K) array of R̂, bulk ESS and tail ESS to stdout."""
    import arviz  # noqa: F401  (imported while the parent is still sampling)

    arr = np.load(io.BytesIO(sys.stdin.buffer.read()))
    sys.stdout.buffer.write(_npy_bytes(np.stack(rhat_ess(arr))))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _worker()
