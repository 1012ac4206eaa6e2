"""What the binary/count lecture workflow fits: :class:`GlmmWorkflowSpec` (the normal workflow's
:class:`~twolevel.workflows.lecture.spec.WorkflowSpec` plus the family and the number of quadrature
nodes), ``LECTURE_BINARY_SPEC`` (the lecture data's binary outcome ``g1below``) and the sampling
settings of these outcomes (:func:`glmm_run_settings`).
"""

from __future__ import annotations

from dataclasses import dataclass

from twolevel.data.errors import TwolevelError
from twolevel.workflows.lecture.spec import RunSettings, WorkflowSpec

FAMILIES = ("binomial", "poisson")
LINKS = {"binomial": "logit", "poisson": "log"}


@dataclass(frozen=True)
class GlmmWorkflowSpec(WorkflowSpec):
    """``WorkflowSpec`` for a binary (``family="binomial"``, logit link, one 0/1 outcome per
    student) or count (``"poisson"``, log link) outcome. ``nagq``: adaptive Gauss–Hermite nodes
    for the random-intercept model m2 (glmer's nAGQ; m1 has two random effects, so Laplace only).
    """

    family: str = "binomial"
    nagq: int = 12

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise TwolevelError(f"family '{self.family}' has no lecture workflow for a binary or "
                                f"count outcome; use one of {', '.join(FAMILIES)}")
        if not 2 <= self.nagq <= 25:
            raise TwolevelError(f"nAGQ {self.nagq} is outside 2-25 (glmer's adaptive "
                                "Gauss-Hermite quadrature); use e.g. 12")

    @property
    def link(self) -> str:
        """The canonical link: logit (binomial) or log (poisson)."""
        return LINKS[self.family]


LECTURE_BINARY_SPEC = GlmmWorkflowSpec(
    data="lecture",
    y="g1below",
    x="ses",
    group="schid",
    x_centered="famsesc",
    y_label="being below proficiency",
    x_label="SES",
    title="Lecture 5 for a binary outcome: below proficiency, random intercept and random slope "
          "(ECLS-K:2011-like data)",
    family="binomial",
)


def glmm_run_settings(seed: int = RunSettings.seed, quick: bool = False) -> RunSettings:
    """The run settings of a binary or count outcome: 4 chains × 1,000 draws after
    ``INTEGRATED_TUNE`` (500) tuning steps, the integrated sampler's defaults
    (:meth:`twolevel.models.bayes.fit.SamplerSettings.for_family` with
    ``sampler="integrated"``: the school effects integrated out, so NUTS samples the
    hyperparameters only); where that sampler does not apply, the workflow samples every school
    effect with at least the full sampler's default draws and tuning steps (the gate's
    R-hat ≤ 1.01 over every school effect needs the longer chains); ``quick``: 2 × 150 as the
    normal workflow."""
    from twolevel.models.bayes.gate import INTEGRATED_TUNE

    return RunSettings(seed=seed, quick=quick, chains=4, draws=1000, tune=INTEGRATED_TUNE)
