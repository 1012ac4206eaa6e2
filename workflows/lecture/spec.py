"""What the lecture workflow fits and how: :class:`WorkflowSpec` (data, response, level-1
predictor, group, level-2 predictors, centring, labels; ``LECTURE_SPEC`` is Lecture 5's model),
:class:`RunSettings` (seed, chains, draws; ``--quick``) and :class:`Progress` (one timed line per
step).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

N_STEPS = 10


@dataclass(frozen=True)
class WorkflowSpec:
    """What to fit: ``y ~ 1 + xc (+ W + W:xc) + (1 + xc | group)`` with ``xc`` = x centred within
    groups (group-mean centering, recorded in the report).

    Fields
    ------
    data : a built-in data set name (``lecture``, ``hsb``) or a file path.
    y, x, group : response, level-1 predictor, grouping column.
    level2 : level-2 predictors W (each enters as W and the cross-level interaction W:xc).
    x_centered : name of the centred column (default ``c<x>``); an existing column of that name is
        used when it equals the recomputed centring (to 1e-9), so published numbers are reproduced.
    y_label, x_label : words for the report ("reading score", "SES").
    title : the report's title.  group_label : the word for a group ("school").
    """

    data: str
    y: str
    x: str
    group: str
    level2: tuple[str, ...] = ()
    x_centered: str | None = None
    y_label: str | None = None
    x_label: str | None = None
    title: str | None = None
    group_label: str = "school"

    @property
    def xc(self) -> str:
        """Name of the group-mean-centred predictor."""
        return self.x_centered or f"c{self.x}"

    def fixed_rhs(self) -> str:
        """Fixed part: ``1 + xc`` plus ``W + W:xc`` for each level-2 predictor."""
        terms = ["1", self.xc]
        for w in self.level2:
            terms += [w, f"{w}:{self.xc}"]
        return " + ".join(terms)

    @property
    def formula_m1(self) -> str:
        """Random intercept and slope."""
        return f"{self.y} ~ {self.fixed_rhs()} + (1 + {self.xc} | {self.group})"

    @property
    def formula_m2(self) -> str:
        """Random intercept only."""
        return f"{self.y} ~ {self.fixed_rhs()} + (1 | {self.group})"

    @property
    def formula_m0(self) -> str:
        """The null model (random intercept, no predictors): its ICC and the baseline of PRV."""
        return f"{self.y} ~ 1 + (1 | {self.group})"


LECTURE_SPEC = WorkflowSpec(
    data="lecture",
    y="g1rscore",
    x="ses",
    group="schid",
    x_centered="famsesc",
    y_label="reading score",
    x_label="SES",
    title=("Lecture 5: two-level model with random intercept and random slope "
           "(ECLS-K:2011-like data)"),
)


@dataclass(frozen=True)
class RunSettings:
    """Sampling settings. ``quick`` uses few draws (for tests and a first look)."""

    seed: int = 20250121
    quick: bool = False
    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    ppc_draws: int = 200

    def effective(self) -> RunSettings:
        """The settings actually used (``quick`` shrinks chains, draws and tuning)."""
        if not self.quick:
            return self
        return RunSettings(seed=self.seed, quick=True, chains=2, draws=150, tune=150, ppc_draws=60)

    def seed_for(self, step: str) -> int:
        """A fixed seed per random step, derived from the run's seed."""
        offsets = {"prior_m1": 1, "bayes_m1": 2, "bayes_m2": 3, "ppc_m1": 4, "ppc_m2": 5,
                   "prior_m2": 6, "predict": 7}
        return int(self.seed) * 10 + offsets[step]


@dataclass
class Progress:
    """Prints one line per step with its wall time; keeps the timings for the report."""

    emit: Callable[[str], None] = print
    timings: list[tuple[str, float]] = field(default_factory=list)
    k: int = 0
    n_steps: int = N_STEPS

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.k += 1
        self.emit(f"[{self.k}/{self.n_steps}] {name} ...")
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.timings.append((name, dt))
        self.emit(f"[{self.k}/{self.n_steps}] {name}: done in {dt:.1f} s")

    def note(self, text: str) -> None:
        self.emit(f"      {text}")


def _labels(spec: WorkflowSpec) -> tuple[str, str]:
    return spec.y_label or spec.y, spec.x_label or spec.x
