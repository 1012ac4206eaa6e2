"""The design stage's plain-columns shortcut (``_plain_columns_plan``: ``1 + x + w`` read from the
text, without importing ``formulae``) against ``formulae``'s own answer (``_find_simple_plan``),
the reference, on random right-hand sides over columns of many dtypes; and the command line's fit
not importing ``formulae`` at all."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import twolevel as tl
from twolevel.models.design.factor_plan import _find_simple_plan
from twolevel.models.design.formula import _plain_columns_plan


def frame(n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame({
        "x": rng.normal(size=n),
        "w2": rng.normal(size=n).astype("float32"),
        "k": rng.integers(0, 5, size=n),
        "u8": rng.integers(0, 5, size=n).astype("uint8"),
        "nint": pd.array(rng.integers(0, 9, size=n), dtype="Int64"),
        "nflt": pd.array(rng.normal(size=n), dtype="Float64"),
        "b": rng.integers(0, 2, size=n).astype(bool),
        "s": rng.choice(["a", "b", "c"], size=n),
        "cat": pd.Categorical(rng.choice(["p", "q"], size=n)),
        "cz": rng.normal(size=n) + 1j,
        "_under": rng.normal(size=n),
        "y": rng.normal(size=n),
    })


TOKENS = ["1", "x", "w2", "k", "u8", "nint", "nflt", "b", "s", "cat", "_under", "x ", " k",
          "x:k", "C(k)", "center(x)", "0", "-1", "I(x**2)", "np.log(k + 1)", "missing"]


def test_plain_plan_equals_formulae_on_random_right_hand_sides():
    d = frame()
    dtypes = dict(d.dtypes.items())
    rng = np.random.default_rng(11)
    used = 0
    for _ in range(300):
        rhs = " + ".join(rng.choice(TOKENS, size=rng.integers(1, 5)))
        plain = _plain_columns_plan(rhs, dtypes)
        if plain is None:
            continue
        used += 1
        assert plain == _find_simple_plan("y", rhs, d), rhs
    assert used > 40  # the shortcut is exercised, not just refused


@pytest.mark.parametrize("rhs, plan", [
    ("1 + x", ((None, "x"), ("(Intercept)", "x"))),
    ("x + 1 + x + k", ((None, "x", "k"), ("(Intercept)", "x", "k"))),
    ("1", ((None,), ("(Intercept)",))),
])
def test_plain_plan_reads_intercept_order_and_duplicates(rhs, plan):
    d = frame()
    assert _plain_columns_plan(rhs, dict(d.dtypes.items())) == plan
    assert _find_simple_plan("y", rhs, d) == plan


@pytest.mark.parametrize("rhs", ["0 + x", "x - 1", "b", "s", "cat", "cz", "x:k", "C(k)",
                                 "center(x)", "missing", "class", "_under", "x +", ""])
def test_plain_plan_leaves_everything_else_to_formulae(rhs):
    d = frame()
    assert _plain_columns_plan(rhs, dict(d.dtypes.items())) is None


def test_fit_with_shortcut_equals_fit_through_formulae():
    d = tl.load_data("lecture")
    f = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"
    a = tl.lmer(f, d)
    # the same model with a term formulae must evaluate (a no-op product) takes the full route
    b = tl.lmer("g1rscore ~ 1 + famsesc + I(1 * famsesc) - I(1 * famsesc) + (1 + famsesc | schid)",
                d)
    assert np.allclose(a.fixef().to_numpy(), b.fixef().to_numpy(), rtol=1e-12, atol=0)


def test_cli_fit_imports_no_formulae_numba_or_scipy_extras():
    code = (
        "import sys\n"
        "from twolevel.workflows.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['fit', 'lecture', 'g1rscore ~ 1 + famsesc + (1 + famsesc | schid)', '--json'])\n"
        "heavy = ['formulae', 'numba', 'scipy.interpolate', 'scipy.sparse.linalg', 'scipy.stats',\n"
        "         'scipy.optimize', 'matplotlib', 'pymc', 'arviz', 'pytensor']\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), out.stdout
