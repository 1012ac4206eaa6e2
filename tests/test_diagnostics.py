"""The diagnostics helper process gives ArviZ's numbers exactly, and falls back when it dies."""

from __future__ import annotations

import numpy as np

from twolevel.models.bayes.diagnostics import DiagnosticsHelper, rhat_ess


def _chains(seed=0, k=9):
    rng = np.random.default_rng(seed)
    arr = rng.normal(size=(4, 200, k)).cumsum(axis=1) * 0.1 + rng.normal(size=(4, 200, k))
    arr[1, :, 0] += 3.0  # one parameter whose chains disagree
    return arr


def test_helper_split_equals_arviz_on_all_columns():
    arr = _chains()
    got = DiagnosticsHelper().rhat_ess(arr)
    want = rhat_ess(arr)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert got[0][0] > 1.1  # the disagreeing chains are seen, whichever side computed them


def test_dead_or_closed_helper_falls_back_to_this_process():
    arr = _chains(1)
    dead = DiagnosticsHelper()
    dead._proc.kill()
    dead._proc.wait()
    closed = DiagnosticsHelper()
    closed.close()
    want = rhat_ess(arr)
    for helper in (dead, closed):
        for g, w in zip(helper.rhat_ess(arr), want, strict=True):
            np.testing.assert_array_equal(g, w)
