"""What the several-level workflow fits: :class:`MultilevelSpec` (data, response, predictor,
grouping columns outermost first, level-2/3 predictors) and its three formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

N_STEPS = 8


@dataclass(frozen=True)
class MultilevelSpec:
    """What to fit: ``y ~ 1 + x (+ W …) + (1 | g1/g2/…)`` with the grouping columns outermost first
    (``groups = ("school", "class")``: classes nested in schools; class labels may restart in every
    school, lme4's ``/`` makes them distinct).

    Fields
    ------
    data : a file path (CSV/Parquet) or a built-in name.
    y, x : response and level-1 predictor (entered as it is: no centring).
    groups : grouping columns, outermost first (at least two).
    level2 : predictors of a higher level (constant within a group), entered as main effects.
    title : the report's title.
    """

    data: str
    y: str
    x: str
    groups: tuple[str, ...]
    level2: tuple[str, ...] = ()
    title: str | None = None

    @property
    def nesting(self) -> str:
        """lme4's nesting term, e.g. ``school/class``."""
        return "/".join(self.groups)

    def fixed_rhs(self) -> str:
        """``1 + x`` plus the higher-level predictors."""
        return " + ".join(["1", self.x, *self.level2])

    @property
    def formula_m0(self) -> str:
        """The null model: random intercepts at every level, no predictors."""
        return f"{self.y} ~ 1 + (1 | {self.nesting})"

    @property
    def formula_m1(self) -> str:
        """The model: the predictors and random intercepts at every level."""
        return f"{self.y} ~ {self.fixed_rhs()} + (1 | {self.nesting})"

    @property
    def formula_drop(self) -> str:
        """The model without the innermost grouping level (the LRT's smaller model)."""
        rest = self.groups[:-1]
        return f"{self.y} ~ {self.fixed_rhs()} + (1 | {'/'.join(rest)})"
