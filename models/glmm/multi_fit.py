"""glmer's two optimisation stages for several nested grouping factors: design → initial joint
PIRLS at θ0 (lp0) → stage 1 (BOBYQA over θ, β inside PIRLS) → lp0 ← stage 1's linear predictor
→ stage 2 (lme4's Nelder–Mead over (θ, β) on the Laplace objective; ``optimizer="newton"``:
Newton steps; ``"tight"``: then the converged objective from glmer's optimum) →
``check.boundary`` → ``deriv12`` Hessian → final evaluation → lme4's convergence checks; the
same path as :func:`twolevel.models.glmm.glmer.fit_glmm` with the objective of
:class:`twolevel.models.glmm.multi.MultiGlmmProblem`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from twolevel.data.errors import FormulaError
from twolevel.models.design.multi import grouping_factors
from twolevel.models.glmm.family import Family
from twolevel.models.glmm.multi import NAGQ_MULTI_MESSAGE, MultiGlmmProblem, MultiPirlsError
from twolevel.models.glmm.multi_results import MultiGlmerFit
from twolevel.models.glmm.optimize import (
    bobyqa_stage1,
    check_boundary,
)
from twolevel.models.glmm.response import glmer_design
from twolevel.models.glmm.results import GlmerOptInfo

__all__ = ["glmer_multi", "fit_glmm_multi"]


def glmer_multi(formula: str, data: pd.DataFrame, fam: Family, nagq: int = 1,
                optimizer: str = "lme4", weights=None, data_name: str = "data"
                ) -> MultiGlmerFit:
    """Fit a binomial or Poisson GLMM with several nested grouping factors as ``lme4::glmer``
    (called by :func:`twolevel.models.glmm.glmer.glmer` for such formulas).

    Parameters
    ----------
    formula : lme4 formula, e.g. ``"y ~ x + (1 | school/class)"`` or
        ``"cbind(s, f) ~ x + (1 | school) + (1 | school:class)"``.
    data : a data frame.  fam : the family and link.
    nagq : 1 (Laplace) or 0 (β inside PIRLS); > 1 is refused as lme4 refuses it.
    optimizer : "lme4", "newton" or "tight" (as :func:`~twolevel.models.glmm.glmer.glmer`).
    weights : prior weights (binomial: trials for proportions).  data_name : for "Data:".

    Returns
    -------
    MultiGlmerFit

    Raises
    ------
    FormulaError
        nAGQ > 1, or crossed (not nested) grouping factors.
    DataError
        A response that does not fit the family.

    Examples
    --------
    >>> import numpy as np, pandas as pd, twolevel as tl
    >>> rng = np.random.default_rng(3)
    >>> d = pd.DataFrame({"school": np.repeat(np.arange(30), 24),
    ...                   "klass": np.tile(np.repeat([1, 2, 3], 8), 30)})
    >>> d["y"] = rng.poisson(np.exp(0.5 + rng.normal(scale=0.5, size=30)[d.school]))
    >>> fit = tl.glmer("y ~ 1 + (1 | school/klass)", d, family="poisson")
    >>> fit.VarCorr().groups
    ('klass:school', 'school')
    """
    facs = grouping_factors(formula)
    if nagq > 1 and len(facs) == 1:
        raise FormulaError(
            f"nAGQ = {nagq} with the interaction grouping factor '{facs[0]}' is not available "
            "here: make it one column (e.g. data['g'] = data['school'].astype(str) + ':' + "
            "data['class'].astype(str)) and write '(1 | g)', which adaptive quadrature fits")
    if nagq > 1:
        raise FormulaError(
            f"{NAGQ_MULTI_MESSAGE}: '{formula}' has several grouping factors; use nAGQ = 1 "
            "(Laplace) or nAGQ = 0")
    design, resp = glmer_design(formula, data, fam, weights, multi=True)
    notes = list(resp.notes)
    for note in design.notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return fit_glmm_multi(MultiGlmmProblem(design, resp, fam), nagq, optimizer, formula,
                          data_name, notes)


def fit_glmm_multi(prob: MultiGlmmProblem, nagq: int, optimizer: str, formula: str,
                   data_name: str, notes: list) -> MultiGlmerFit:
    """glmer's two stages on a built problem (module docstring)."""
    from twolevel.models.glmm.glmer import fit_stage2

    design = prob.design
    lower_t = design.theta_lower
    theta1, _, fe1 = bobyqa_stage1(prob.stage1, prob.theta0, lower_t)
    st1 = prob.stage1_state(theta1)
    if nagq == 0:
        theta, _ = check_boundary(prob.stage1, theta1, st1.value, lower_t)
        st = prob.stage1_state(theta)
        info = GlmerOptInfo(optimizer, theta1, fe1, 0, "", None, None)
        return MultiGlmerFit(prob, 0, theta, st.beta.copy(), st, st.value, None, info, formula,
                             data_name, tuple(notes))

    def stage2(x):
        try:
            return prob.stage2(x)
        except MultiPirlsError:  # PIRLS failed far from the optimum: not a candidate
            return np.inf

    s2 = fit_stage2(prob, stage2, theta1, fe1, st1, optimizer, notes)
    if s2.singular:
        warnings.warn("boundary (singular) fit: see help('isSingular')", stacklevel=3)
    return MultiGlmerFit(prob, nagq, s2.theta, s2.beta, s2.state, s2.state.value, s2.vcov_h,
                         s2.info, formula, data_name, tuple(notes))
