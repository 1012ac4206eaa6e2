"""The design stage's factor shortcut (``models/design/factor_plan.py``: ``formulae`` reads a head
holding every level, the columns are rebuilt from factor codes) against ``formulae`` evaluating
every row, the reference: the same matrices bit for bit, the same names, the same predictions for
new data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import twolevel as tl
from twolevel.models.design import factor_plan


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    n, j = 6000, 120
    g = np.repeat(np.arange(j), n // j)
    d = pd.DataFrame({
        "x": rng.normal(size=n), "w": rng.normal(size=j)[g],
        "f": rng.choice(["lo", "mid", "hi"], n),
        "c": pd.Categorical(rng.choice(["z", "a", "m"], n), categories=["z", "m", "a", "q"]),
        "k": pd.Categorical(rng.integers(1, 4, n)),
        "b": rng.integers(0, 2, n).astype(bool),
        "g": g,
    })
    d["rare"] = np.where(np.arange(n) == n - 7, "late", "common")  # a level seen once, at the end
    d["y"] = d["x"] + (d["f"] == "hi") * 0.5 + rng.normal(size=j)[g] + rng.normal(size=n)
    d.loc[5, "x"] = np.nan  # a dropped row
    return d


FORMULAS = [
    "y ~ x * w + f + (1 + x | g)",
    "y ~ 0 + f + x:f + (1 | g)",
    "y ~ c + x * c + b + (1 | g)",
    "y ~ f:c + (1 | g)",
    "y ~ x + f * k * w + (1 + x | g)",
    "y ~ x + rare + (1 | g)",
    "y ~ 1 + x + (1 + f | g)",
]


def without_shortcut(monkeypatch, formula, d):
    with monkeypatch.context() as m:
        m.setattr(factor_plan, "factor_model_matrix", lambda *a, **k: None)
        return tl.make_design(formula, d)


@pytest.mark.parametrize("formula", FORMULAS)
def test_factor_shortcut_equals_formulae(formula, data, monkeypatch):
    calls = []
    real = factor_plan.factor_model_matrix

    def spy(*a, **k):
        out = real(*a, **k)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(factor_plan, "factor_model_matrix", spy)
    fast = tl.make_design(formula, data)
    monkeypatch.undo()
    assert any(calls)  # the shortcut built at least one matrix
    ref = without_shortcut(monkeypatch, formula, data)
    assert fast.x_names == ref.x_names and fast.z_names == ref.z_names
    assert np.array_equal(fast.X, ref.X) and np.array_equal(fast.Z, ref.Z)
    assert fast.dropped_columns == ref.dropped_columns


def test_factor_shortcut_predicts_new_data_as_formulae(data, monkeypatch):
    f = "y ~ x * f + c + (1 | g)"
    fast = tl.lmer(f, data)
    with monkeypatch.context() as m:
        m.setattr(factor_plan, "factor_model_matrix", lambda *a, **k: None)
        ref = tl.lmer(f, data)
    assert fast.criterion == pytest.approx(ref.criterion, rel=1e-11)
    new = data.iloc[[0, 10, 20, 30]].assign(g=[0, 1, 999, 2])
    a = fast.predict(new, allow_new_levels=True)
    b = ref.predict(new, allow_new_levels=True)
    # the same matrices, laid out differently (column-major here): BLAS rounds differently, so the
    # two optimizer paths end within their tolerance, not bit for bit
    assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=0)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | g)", "y ~ I(x ** 2) + (1 | g)",
                                     "y ~ center(x) + f + (1 | g)", "y ~ C(f) + (1 | g)"])
def test_factor_shortcut_declines(formula, data):
    from twolevel.models.design.formula import _variables, parse_formula
    from twolevel.models.design.matrices import _ModelData

    rhs = parse_formula(formula).fixed
    used = [c for c in data.columns if c in formula]
    keep = data[used].dropna()
    md = _ModelData(keep, {c: keep[c] for c in used}, slice(None), len(keep))
    assert factor_plan.factor_model_matrix("y", rhs, _variables(rhs, keep.columns), md) is None
