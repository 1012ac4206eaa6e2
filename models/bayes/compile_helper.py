"""Compiling the collapsed model's C callbacks into numba's cache on a fresh installation, in a
helper process that runs while the caller imports, loads data and builds the statistics.

numba compiles the log-density callback in about 2.5 s (type inference and lowering of
:mod:`twolevel.models.bayes.kernels`, once per installation; later processes load it from the
cache in milliseconds). This module imports only numba and the kernels, so that
:mod:`twolevel.models.bayes.fit` can start the helper before its own heavier imports.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twolevel.models.bayes import kernels

__all__ = ["start_kernel_compile", "wait_kernel_compile"]


def _kernels_cached(q: int) -> bool:
    """Whether numba's cache holds the C callback for q effects, newer than kernels.py (False
    only when it surely does not: then compiling elsewhere first is worth it)."""
    try:
        from numba.core.caching import FunctionCache

        fn = kernels._logp_c_q2 if q == 2 else kernels._logp_c_general
        index = FunctionCache(fn)._cache_file._index_path
        return os.path.getmtime(index) >= os.path.getmtime(kernels.__file__)
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - numba's internals moved: compile here as usual
        return True


_PENDING: dict[bool, subprocess.Popen] = {}


def start_kernel_compile(q: int) -> None:
    """On a fresh installation (numba's cache lacks the kernels for q effects), compile them into
    the cache in a helper process (a plain ``python -c``, never a fork) while this process goes on
    importing and preparing; :func:`wait_kernel_compile` waits for it. Nothing happens when the
    cache is warm or a helper for the same kernels is running. :mod:`twolevel.models.bayes.fit`
    starts one for q = 2 as the first thing when it is imported. The small copy callback is
    compiled by this process while it waits
    (:func:`~twolevel.models.bayes.sampler.sample_collapsed`)."""
    key = q == 2
    if key in _PENDING or _kernels_cached(q):
        return
    code = f"from twolevel.models.bayes import kernels; kernels.logp_cfunc({int(q)})"
    try:
        _PENDING[key] = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        pass


def wait_kernel_compile(q: int, timeout: float = 600.0) -> None:
    """Wait for the helper of :func:`start_kernel_compile` (if any); whatever it left undone is
    compiled in this process on first use."""
    proc = _PENDING.pop(q == 2, None)
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
