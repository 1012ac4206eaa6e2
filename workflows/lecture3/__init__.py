"""The lecture workflow for three (or more) levels — students in classes in schools —
(``twolevel run --group SCHOOL --group CLASS``): REML fits of the null and the conditional
nested random-intercept models, the variance decomposition by level both ways, the likelihood-ratio
test for the class level, per-level conditional modes with caterpillar plots, the same model by
NUTS with every level integrated out (variances, caterpillars and shrinkage per level), and the
report.
"""

from twolevel.workflows.lecture3.run import run_multilevel_workflow
from twolevel.workflows.lecture3.spec import MultilevelSpec

__all__ = ["MultilevelSpec", "run_multilevel_workflow"]
