"""The REML criterion's C kernels (``models/lmm/creml.c``) against numba's
(``models/lmm/kernels.py``, the reference): r², log|L|², log|R_X|² and the gradient sums agree
to 1e-12 relative for q = 1, 2, 3 (the q = 2 kernel and the general one) at random factors; the
dispatched and the baseline builds give the same lecture criterion to 1e-12; a fit in a fresh
process runs without importing numba; a missing library falls back to numba, said once."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from twolevel.data.loaders import load_data
from twolevel.models import native
from twolevel.models.design import group_crossprods, make_design
from twolevel.models.lmm import creml
from twolevel.models.lmm import kernels as nk
from twolevel.models.lmm.lmer import lmer

LECTURE = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"


def _sim(seed=1, J=700):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), rng.integers(2, 12, J))
    x, z, w = rng.normal(size=g.size), rng.normal(size=g.size), rng.normal(size=J)[g]
    y = 1 + x + 0.5 * w + rng.normal(size=(J, 3))[g] @ [1.0, 0.4, 0.3] + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "z": z, "w": w, "g": g})


def _close(a, b, rtol=1e-12):
    a, b = np.asarray(a, float), np.asarray(b, float)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("formula", ["y ~ 1 + x + w + (1 | g)", "y ~ 1 + x + w + (1 + x | g)",
                                     "y ~ 1 + x + z + (1 + x + z | g)"])
def test_c_kernels_equal_numba(formula):
    cp = group_crossprods(make_design(formula, _sim()))
    BC, aug0, gamma = cp.shifted
    q = cp.A.shape[1]
    rng = np.random.default_rng(3)
    Ts = []
    for _ in range(4):
        T = np.tril(rng.normal(scale=0.6, size=(q, q)))
        T[np.diag_indices(q)] = np.abs(T[np.diag_indices(q)]) + 0.05
        Ts.append(T)
        c, n = creml.pls_parts_kernel(T, cp.A, BC, aug0), nk.pls_parts_kernel(T, cp.A, BC, aug0)
        assert c[3] == n[3] == 0
        _close(c[:3], n[:3])
        beta = gamma + rng.normal(scale=0.1, size=gamma.size)
        for with_w in (False, True):
            for a, b in zip(creml.theta_grad_kernel(T, cp.A, BC, beta, with_w),
                            nk.theta_grad_kernel(T, cp.A, BC, beta, with_w), strict=True):
                _close(a, b)
    Ts = np.array(Ts)
    for a, b in zip(creml.pls_parts_batch_kernel(Ts, cp.A, BC, aug0),
                    nk.pls_parts_batch_kernel(Ts, cp.A, BC, aug0), strict=True):
        _close(a, b)


def test_dispatched_and_baseline_give_the_same_criterion(monkeypatch):
    cp = group_crossprods(make_design(LECTURE, load_data("lecture")))
    BC, aug0, _ = cp.shifted
    T = np.array([[0.9, 0.0], [0.2, 0.3]])
    out = {}
    for base in ("0", "1"):
        monkeypatch.setenv(native.BASELINE_ENV, base)
        out[base] = creml.pls_parts_kernel(T, cp.A, BC, aug0)
    _close(out["0"][:3], out["1"][:3])


def test_a_fit_in_a_fresh_process_does_not_import_numba():
    code = ("import sys, twolevel as tl\n"
            f"m = tl.lmer('{LECTURE}', tl.load_data('lecture'))\n"
            "assert 'numba' not in sys.modules, 'numba imported'\n"
            "print(m.fixef()['famsesc'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == pytest.approx(7.65008008, abs=1e-6)


def test_missing_library_falls_back_to_numba_once(monkeypatch):
    d = load_data("lecture")
    ref = lmer(LECTURE, d)
    monkeypatch.setattr(creml, "MODULE", "twolevel.models.lmm._no_such_kernel")
    monkeypatch.setattr(native, "_WARNED", set())
    monkeypatch.setenv("TWOLEVEL_KERNELS", "auto")
    with pytest.warns(native.NumbaKernelWarning, match=r"^twolevel: lmer runs on numba's "
                      r"kernels .*no compiled _no_such_kernel library"):
        m = lmer(LECTURE, d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lmer(LECTURE, d)
    _close(m.fixef().to_numpy(), ref.fixef().to_numpy(), rtol=1e-9)
    _close(m.theta, ref.theta, rtol=1e-6)
