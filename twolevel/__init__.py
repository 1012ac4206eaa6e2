"""twolevel: two-level (students-in-schools) models, exact REML/ML with lme4 + lmerTest parity and
a PyMC workflow.

>>> import twolevel as tl
>>> d = tl.load_data("lecture")
>>> m1 = tl.lmer("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", d)   # REML, lme4's digits
>>> print(m1.summary())                                                  # doctest: +SKIP

The public API is lme4's vocabulary; each name is imported on first use, so ``import twolevel``
is cheap and PyMC is imported only by :func:`fit_bayes` with a non-default likelihood and by
:func:`prior_predictive` (the default collapsed model runs on compiled kernels). The
repository's folders map into this namespace: ``data/`` → :mod:`twolevel.data`,
``models/`` → :mod:`twolevel.models`, ``workflows/`` → :mod:`twolevel.workflows`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The strict editable install (scripts/bootstrap.sh) links the repository's folders into one
# `twolevel` tree under build/; run from the repository root, this folder is found first, so the
# package's path also takes that tree (a no-op in an installed wheel).
__path__ = pkgutil.extend_path(__path__, __name__)

# public name → module that defines it
_API: dict[str, str] = {
    # data
    "load_data": "twolevel.data.loaders",
    "read_table": "twolevel.data.loaders",
    "center": "twolevel.data.centering",
    "group_means": "twolevel.data.centering",
    "Centering": "twolevel.data.centering",
    "TwolevelError": "twolevel.data.errors",
    "DataError": "twolevel.data.errors",
    "FormulaError": "twolevel.data.errors",
    # design and statistics
    "make_design": "twolevel.models.design",
    "group_crossprods": "twolevel.models.design",
    "Design": "twolevel.models.design",
    "GroupCrossprods": "twolevel.models.design",
    "center_new_rows": "twolevel.models.design.newdata",
    "crossprods_from": "twolevel.models.design.sources",
    "ScaleDesign": "twolevel.models.design.sources",
    "ScaleError": "twolevel.models.design.sources",
    # the LMM engine
    "lmer": "twolevel.models.lmm.lmer",
    "refit_ml": "twolevel.models.lmm.lmer",
    "LmerFit": "twolevel.models.lmm.results",
    "VarCorr": "twolevel.models.lmm.results",
    # several grouping factors (nested and crossed)
    "lmer_multi": "twolevel.models.lmm.multi",
    "refit_ml_multi": "twolevel.models.lmm.multi",
    "anova_multi": "twolevel.models.lmm.multi",
    "make_multi_design": "twolevel.models.design.multi",
    "MultiFit": "twolevel.models.lmm.multi_results",
    # what this installation runs on (compiled kernels, versions)
    "show_versions": "twolevel.models.versions",
    # the GLMM engine (binomial, Poisson)
    "glmer": "twolevel.models.glmm.glmer",
    "GlmerFit": "twolevel.models.glmm.results",
    # inference on a fit
    "anova": "twolevel.models.inference.anova",
    "AnovaResult": "twolevel.models.inference.anova",
    "confint": "twolevel.models.inference.intervals",
    "profile": "twolevel.models.inference.profile",
    "Profile": "twolevel.models.inference.profile",
    "kenward_roger_fit": "twolevel.models.inference.kenward_roger",
    "hlm_statistics_fit": "twolevel.models.inference.hlm",
    "HLMStatistics": "twolevel.models.inference.hlm",
    "HLM3Statistics": "twolevel.models.inference.hlm3",
    "school_table_fit": "twolevel.models.inference.residuals",
    "predict": "twolevel.models.inference.predict",
    "simulate": "twolevel.models.inference.simulate",
    "bootstrap": "twolevel.models.inference.simulate",
    "BootstrapResult": "twolevel.models.inference.simulate",
    "icc": "twolevel.models.inference.effect_sizes",
    "icc_at": "twolevel.models.inference.effect_sizes",
    "r2_nakagawa": "twolevel.models.inference.effect_sizes",
    "prv": "twolevel.models.inference.effect_sizes",
    "snijders_bosker": "twolevel.models.inference.effect_sizes",
    "residual_summary_fit": "twolevel.models.inference.residuals",
    # Bayes
    "fit_bayes": "twolevel.models.bayes.fit",
    "loo": "twolevel.models.bayes.loo",
    "BayesFit": "twolevel.models.bayes.fit",
    "SamplerSettings": "twolevel.models.bayes.fit",
    "prior_predictive": "twolevel.models.bayes.fit",
    "posterior_predictive": "twolevel.models.bayes.fit",
    "predict_bayes": "twolevel.models.bayes.predict",
    "bayes_r2": "twolevel.models.bayes.predict",
    "bayes_icc": "twolevel.models.bayes.predict",
    "Prior": "twolevel.models.bayes.priors",
    "ModelPriors": "twolevel.models.bayes.priors",
    "default_priors": "twolevel.models.bayes.priors",
    # survey data: sampling weights, plausible values, imputed data sets
    "WeightedLmerFit": "twolevel.models.survey.fit",
    "PooledFit": "twolevel.models.survey.pv",
    "rubin_pool": "twolevel.models.survey.rubin",
    "weighted_group_crossprods": "twolevel.models.survey.crossprods",
    # tables
    "group_ols": "twolevel.models.tables.ols",
    "GroupOLS": "twolevel.models.tables.ols",
    "shrinkage_table": "twolevel.models.tables.shrinkage",
    "caterpillar_table": "twolevel.models.tables.shrinkage",
    # planning a study: power and MDES
    "power": "twolevel.models.power.simulation",
    "PowerCurve": "twolevel.models.power.simulation",
    "extend": "twolevel.models.power.simulation",
    "power_analytic": "twolevel.models.power.analytic",
    "study_design": "twolevel.models.power.analytic",
    "StudyDesign": "twolevel.models.power.analytic",
    "PowerResult": "twolevel.models.power.analytic",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'twolevel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


if TYPE_CHECKING:  # for editors and type checkers; at run time names load lazily
    from twolevel.data.centering import Centering, center, group_means  # noqa: F401
    from twolevel.data.errors import DataError, FormulaError, TwolevelError  # noqa: F401
    from twolevel.data.loaders import load_data, read_table  # noqa: F401
    from twolevel.models.bayes.fit import (  # noqa: F401
        BayesFit,
        SamplerSettings,
        fit_bayes,
        posterior_predictive,
        prior_predictive,
    )
    from twolevel.models.bayes.loo import loo  # noqa: F401
    from twolevel.models.bayes.predict import bayes_icc, bayes_r2, predict_bayes  # noqa: F401
    from twolevel.models.bayes.priors import ModelPriors, Prior, default_priors  # noqa: F401
    from twolevel.models.design import (  # noqa: F401
        Design,
        GroupCrossprods,
        group_crossprods,
        make_design,
    )
    from twolevel.models.design.multi import make_multi_design  # noqa: F401
    from twolevel.models.design.newdata import center_new_rows  # noqa: F401
    from twolevel.models.design.sources import (  # noqa: F401
        ScaleDesign,
        ScaleError,
        crossprods_from,
    )
    from twolevel.models.glmm.glmer import glmer  # noqa: F401
    from twolevel.models.glmm.results import GlmerFit  # noqa: F401
    from twolevel.models.inference.anova import AnovaResult, anova  # noqa: F401
    from twolevel.models.inference.effect_sizes import (  # noqa: F401
        icc,
        icc_at,
        prv,
        r2_nakagawa,
        snijders_bosker,
    )
    from twolevel.models.inference.hlm import HLMStatistics, hlm_statistics_fit  # noqa: F401
    from twolevel.models.inference.hlm3 import HLM3Statistics  # noqa: F401
    from twolevel.models.inference.intervals import confint  # noqa: F401
    from twolevel.models.inference.kenward_roger import kenward_roger_fit  # noqa: F401
    from twolevel.models.inference.predict import predict  # noqa: F401
    from twolevel.models.inference.profile import Profile, profile  # noqa: F401
    from twolevel.models.inference.residuals import (  # noqa: F401
        residual_summary_fit,
        school_table_fit,
    )
    from twolevel.models.inference.simulate import BootstrapResult, bootstrap, simulate  # noqa: F401
    from twolevel.models.lmm.lmer import lmer, refit_ml  # noqa: F401
    from twolevel.models.lmm.multi import anova_multi, lmer_multi, refit_ml_multi  # noqa: F401
    from twolevel.models.lmm.multi_results import MultiFit  # noqa: F401
    from twolevel.models.lmm.results import LmerFit, VarCorr  # noqa: F401
    from twolevel.models.power.analytic import (  # noqa: F401
        PowerResult,
        StudyDesign,
        power_analytic,
        study_design,
    )
    from twolevel.models.power.simulation import PowerCurve, extend, power  # noqa: F401
    from twolevel.models.survey.crossprods import weighted_group_crossprods  # noqa: F401
    from twolevel.models.survey.fit import WeightedLmerFit  # noqa: F401
    from twolevel.models.survey.pv import PooledFit  # noqa: F401
    from twolevel.models.survey.rubin import rubin_pool  # noqa: F401
    from twolevel.models.tables.ols import GroupOLS, group_ols  # noqa: F401
    from twolevel.models.tables.shrinkage import caterpillar_table, shrinkage_table  # noqa: F401
    from twolevel.models.versions import show_versions  # noqa: F401
