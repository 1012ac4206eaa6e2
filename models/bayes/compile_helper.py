"""Building the collapsed model's callbacks on a fresh installation in the background, while the
caller imports, loads data and builds the statistics.

Two routes (:func:`twolevel.models.bayes.ckernels.kernel_route`):

* **C** (default when a C compiler is found): the compiler builds ``ckernels.c`` into
  twolevel's cache once (a fraction of a second); later processes load the library directly.
* **numba** (the fallback): numba compiles the callback in about 2.5 s of CPU (once per
  installation; later processes load it from numba's cache in milliseconds), here in a helper
  ``python -c`` process.

This module imports neither numba nor the kernels until the numba route needs them, so that
:mod:`twolevel.models.bayes.fit` can start the build before its own heavier imports.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twolevel.models.bayes import ckernels

__all__ = ["start_kernel_compile", "wait_kernel_compile"]


def _kernels_cached(q: int) -> bool:
    """Whether numba's cache holds the C callback for q effects, newer than kernels.py (False
    only when it surely does not: then compiling elsewhere first is worth it)."""
    try:
        from numba.core.caching import FunctionCache

        from twolevel.models.bayes import kernels

        fn = kernels._logp_c_q2 if q == 2 else kernels._logp_c_general
        index = FunctionCache(fn)._cache_file._index_path
        return os.path.getmtime(index) >= os.path.getmtime(kernels.__file__)
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - numba's internals moved: compile here as usual
        return True


_PENDING: dict[object, object] = {}


def start_kernel_compile(q: int) -> None:
    """On a fresh installation, start building the callbacks for q effects in the background:
    the C compiler on ``ckernels.c`` (C route), or a helper ``python -c`` process (never a fork)
    compiling numba's kernels into its cache (numba route); :func:`wait_kernel_compile` waits for
    it. Nothing happens when they are built already or a build is running.
    :mod:`twolevel.models.bayes.fit` starts one for q = 2 as the first thing when it is imported."""
    try:
        route = ckernels.kernel_route()
    except Exception:  # noqa: BLE001 - a bad TWOLEVEL_KERNELS is reported where the fit uses it
        return
    if route == "c":
        if "c" not in _PENDING:
            try:
                pending = ckernels.start_build()
            except OSError:
                pending = None
            if pending is not None:
                _PENDING["c"] = pending
        return
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
    """Wait for the build of :func:`start_kernel_compile` (if any); a failed C build leaves its
    message in :data:`twolevel.models.bayes.ckernels.BUILD_ERRORS` (the default route then falls
    back to numba); whatever is left undone is built in this process on first use."""
    pending = _PENDING.pop("c", None)
    if pending is not None:
        ckernels.finish_build(pending, timeout)
    proc = _PENDING.pop(q == 2, None)
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
