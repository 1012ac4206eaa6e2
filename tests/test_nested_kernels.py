"""The compiled kernels of several nested factors (``models/lmm/cnested.c``) against their NumPy
references: the per-innermost-group cross-products (one ``bincount`` per entry), the block
elimination (NumPy's batched Cholesky, the ``modes=True`` path) and the numba loop; and the
interaction codes against ``np.unique``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twolevel.models.design.matrices import _factorize_sorted
from twolevel.models.design.multi import _interaction_codes, make_multi_design
from twolevel.models.design.multi_stats import _group_crossprods, nested_stats
from twolevel.models.lmm import cnested
from twolevel.models.lmm.nested import (
    _kernel,
    _T_full,
    criterion_from_parts,
    nested_deviance,
    nested_group_sums,
    nested_state,
)


def _three_levels(seed: int, schools: int = 30, classes: int = 4, students: int = 6,
                  districts: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = schools * classes * students
    school = np.repeat(np.arange(schools), classes * students)
    klass = np.repeat(np.arange(schools * classes), students)
    x = rng.normal(size=n)
    w = rng.normal(size=schools)[school]
    y = (1 + 0.5 * x + 0.3 * w + rng.normal(size=schools)[school]
         + rng.normal(0, 0.3, schools)[school] * x + rng.normal(0, 0.6, schools * classes)[klass]
         + rng.normal(0, 0.4, schools * classes)[klass] * x + rng.normal(size=n))
    d = pd.DataFrame({"school": school, "klass": klass % classes, "x": x, "w": w, "y": y})
    if districts:
        d["district"] = d["school"] % districts
    return d


DESIGNS = [
    ("y ~ x + w + (1 | school/klass)", {}),  # random intercepts: the diagonal scaling
    ("y ~ x + w + (1 + x | school/klass)", {}),  # slopes at both levels: general T
    ("y ~ x + (1 + x | school) + (1 | school:klass)", {}),  # q = 1 inside, q = 2 outside
    ("y ~ x + (1 | district/school/klass)", {"districts": 6}),  # four levels
    ("y ~ x + (1 + x || school/klass)", {}),  # uncorrelated slopes: several terms per factor
]


@pytest.mark.parametrize(("formula", "extra"), DESIGNS)
def test_criterion_equals_numpy_reference(formula, extra):
    d = _three_levels(3, **extra)
    design = make_multi_design(formula, d)
    st = nested_stats(design)
    fn = nested_deviance(design, st)
    fn_ml = nested_deviance(design, st, reml=False)
    rng = np.random.default_rng(7)
    lower = design.theta_lower
    for _ in range(5):
        theta = rng.normal(0.0, 0.8, design.n_theta)
        theta[np.isfinite(lower)] = np.abs(theta[np.isfinite(lower)])
        ref = nested_state(design, st, theta, modes=True)  # NumPy's batched Cholesky
        got = nested_state(design, st, theta)  # the compiled elimination, then F in NumPy
        np.testing.assert_allclose([got.ldL2, got.ldRX2, got.r2], [ref.ldL2, ref.ldRX2, ref.r2],
                                   rtol=1e-12)
        np.testing.assert_allclose(got.beta, ref.beta, rtol=1e-10, atol=1e-12)
        for reml, f in ((True, fn), (False, fn_ml)):
            want = criterion_from_parts(ref.ldL2, ref.ldRX2, ref.r2, st.n, st.p, reml)
            assert f(theta) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(("formula", "extra"), DESIGNS[:2] + DESIGNS[3:4])
def test_compiled_equals_numba_route(formula, extra, monkeypatch):
    d = _three_levels(5, **extra)
    design = make_multi_design(formula, d)
    st = nested_stats(design)
    theta = design.theta_start() * 0.7
    c = nested_deviance(design, st)(theta)
    monkeypatch.setenv("TWOLEVEL_KERNELS", "numba")
    assert not cnested.compiled(st.C.shape[1])
    st_numba = nested_stats(design)  # the bincount reference on this route
    np.testing.assert_allclose(st_numba.C, st.C, rtol=1e-14, atol=1e-12)
    assert nested_deviance(design, st_numba)(theta) == pytest.approx(c, rel=1e-12)


def test_group_crossprods_equal_bincount():
    rng = np.random.default_rng(11)
    n, d, g = 5000, 6, 97
    W = rng.normal(size=(n, d))
    codes = rng.integers(0, g, n)
    codes[:g] = np.arange(g)  # every group occupied
    got = cnested.group_crossprods(codes, [W[:, a] for a in range(d)], g)
    np.testing.assert_array_equal(got, _group_crossprods(codes, W, g))  # same sums, same order
    w = rng.uniform(0.5, 2.0, n)
    got_w = cnested.group_crossprods(codes, [W[:, a] for a in range(d)], g, weights=w)
    np.testing.assert_allclose(got_w, _group_crossprods(codes, W * np.sqrt(w)[:, None], g),
                               rtol=1e-12)
    empty = cnested.group_crossprods(np.zeros(3, dtype=np.int64), [np.ones(3)], 2)
    np.testing.assert_array_equal(empty[:, 0, 0], [3.0, 0.0])  # an empty group stays zero


def test_not_positive_definite_is_infinite():
    d = _three_levels(2)
    design = make_multi_design("y ~ x + (1 | school/klass)", d)
    st = nested_stats(design)
    C = st.C.copy()
    C[:, -2, :] = 0.0  # the x column of [Z X y] zeroed: X'V⁻¹X singular
    C[:, :, -2] = 0.0
    kern = cnested.NestedKernel.from_stats(C, st.q, tuple(f.n_levels for f in design.factors),
                                           st.parents)
    T = _T_full(design, design.theta_start())
    assert kern.parts(T, True) is None
    ld, F = kern.eliminate(T, True)  # the elimination itself succeeds; only F is singular
    assert np.isfinite(ld) and F[1, 1] == 0.0
    assert np.isfinite(_kernel(design, st).parts(T, True)[2])


def _unique_reference(cols, coded):
    """The interaction by np.unique on the combined key (the previous implementation)."""
    key = np.zeros(coded[cols[0]][0].shape[0], dtype=np.int64)
    for c in cols:
        codes, levels = coded[c]
        key = key * len(levels) + codes
    uniq, inv = np.unique(key, return_inverse=True)
    parts, rem = [], uniq.copy()
    for c in reversed(cols):
        levels = coded[c][1]
        parts.append(np.asarray([str(v) for v in levels], dtype=object)[rem % len(levels)])
        rem //= len(levels)
    parts.reverse()
    labels = [":".join(str(p[i]) for p in parts) for i in range(len(uniq))]
    return inv.ravel(), labels


def test_interaction_codes_equal_np_unique():
    rng = np.random.default_rng(4)
    n = 3000
    frame = pd.DataFrame({
        "school": rng.integers(0, 300, n),
        "nested": 0,
        "reused": rng.integers(1, 5, n),  # class labels 1..4 reused in every school
        "text": rng.choice(["b", "a", "c d"], n),
        "neg": rng.integers(-3, 3, n),
        "wide": rng.integers(0, 10**9, n),  # sparse key range: the hashing branch
    })
    frame["nested"] = frame["school"] * 7 + frame["reused"]  # each value in one school
    coded = {c: _factorize_sorted(frame[c]) for c in frame.columns}
    for cols in [("nested", "school"), ("school", "nested"), ("reused", "school"),
                 ("school", "reused"), ("text", "neg", "reused"), ("wide", "school"),
                 ("neg", "wide", "text")]:
        codes, labels = _interaction_codes(cols, coded)
        ref_codes, ref_labels = _unique_reference(cols, coded)
        np.testing.assert_array_equal(codes, ref_codes)
        assert list(labels) == ref_labels, cols


def test_theta_start_from_the_statistics_equals_counting_rows():
    d = _three_levels(8, districts=5)
    for formula in ("y ~ x + (1 | district/school/klass)", "y ~ x + (1 | school/klass)"):
        design = make_multi_design(formula, d)
        sums = nested_group_sums(design, nested_stats(design))
        assert sums is not None
        np.testing.assert_allclose(design.theta_start(sums), design.theta_start(), rtol=1e-12)
    design = make_multi_design("y ~ x + (1 + x | school/klass)", d)  # slopes: θ0 is 1s and 0s
    assert nested_group_sums(design, nested_stats(design)) is None


def _crossed(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 1500
    a = rng.integers(0, 120, n)
    b = rng.integers(0, 25, n)
    x = rng.normal(size=n)
    y = (0.5 * x + rng.normal(size=120)[a] + rng.normal(size=25)[b]
         + rng.normal(0, 0.5, 25)[b] * x + rng.normal(size=n))
    return pd.DataFrame({"a": a, "b": b, "x": x, "y": y})


@pytest.mark.parametrize("formula", ["y ~ x + (1 | a) + (1 | b)",
                                     "y ~ x + (1 | a) + (1 + x | b)",  # T_r block diagonal
                                     "y ~ x + (1 | a) + (1 + x || b)"])
def test_crossed_criterion_equals_reference(formula):
    from twolevel.models.design.multi_stats import crossed_stats
    from twolevel.models.lmm.crossed import crossed_deviance, crossed_state

    design = make_multi_design(formula, _crossed(2))
    st = crossed_stats(design)
    fn = crossed_deviance(design, st)
    assert fn.__name__ == "fn_c"  # the compiled path (first factor scalar)
    rng = np.random.default_rng(3)
    lower = design.theta_lower
    for _ in range(4):
        theta = rng.normal(0.0, 0.8, design.n_theta)
        theta[np.isfinite(lower)] = np.abs(theta[np.isfinite(lower)])
        ref = crossed_state(design, st, theta)
        want = criterion_from_parts(ref.ldL2, ref.ldRX2, ref.r2, st.n, st.p, True)
        assert fn(theta) == pytest.approx(want, rel=1e-12)


def test_scaled_gram_equals_scipy_and_checks_its_target():
    import scipy.sparse as sp

    rng = np.random.default_rng(9)
    A = sp.random(40, 300, density=0.1, random_state=np.random.RandomState(1), format="csr")
    w = rng.uniform(0.1, 2.0, 300)
    gram = cnested.ScaledGram(A)
    S = np.eye(40)
    gram.subtract_from(S, w)
    want = np.eye(40) - (A @ sp.diags(w) @ A.T).toarray()
    np.testing.assert_allclose(np.tril(S), np.tril(want), rtol=1e-13, atol=1e-14)
    assert np.array_equal(np.triu(S, 1), np.zeros((40, 40)))  # upper triangle untouched
    with pytest.raises(ValueError, match="C-contiguous float64"):
        gram.subtract_from(np.eye(40).T[:, :39], w)


def test_crossed_schur_equals_numpy_and_checks_its_inputs():
    import scipy.sparse as sp

    rng = np.random.default_rng(12)
    A = sp.random(30, 200, density=0.1, random_state=np.random.RandomState(2), format="csr")
    B = rng.normal(size=(30, 30))
    Arr = B @ B.T
    t, w = rng.uniform(0.2, 1.5, 30), rng.uniform(0.1, 1.0, 200)
    S = cnested.ScaledGram(A).schur(Arr, t, 25, w)
    want = (Arr - (A @ sp.diags(w) @ A.T).toarray()) * np.outer(t, t)
    want[np.arange(25), np.arange(25)] += 1.0
    np.testing.assert_allclose(np.tril(S), np.tril(want), rtol=1e-12, atol=1e-13)
    gram = cnested.ScaledGram(A)
    with pytest.raises(ValueError, match="Arr must be a C-contiguous"):
        gram.schur(np.asfortranarray(Arr[:, :29]), t, 25, w)
    with pytest.raises(ValueError, match="t must have the 30 entries"):
        gram.schur(Arr, t[:5], 25, w)
