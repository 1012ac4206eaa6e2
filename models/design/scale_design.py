"""The scale path's design: what a fit needs from a design, without the rows.

:class:`ScaleDesign` stands where :class:`~twolevel.models.design.matrices.Design` stands for the
in-memory path: names, the θ layout, group levels and sizes, the SQL of the model's columns (for
later passes such as the residual quantiles) and the source that computed the statistics. The
per-student quantities (``X``, ``Z``, ``y``, ``group_index``) are refused with a
:class:`ScaleError` that says what to use instead. Built by
:func:`twolevel.models.design.sources.scale_statistics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from twolevel.data.errors import TwolevelError
from twolevel.models.design.crossprods import GroupCrossprods
from twolevel.models.design.matrices import Design, RandomTerm

__all__ = ["GroupMoments", "ScaleDesign", "ScaleError"]


@dataclass(frozen=True)
class GroupMoments:
    """Per-group sums of the fixed-effect columns (asked for with ``per_group_x=True``): for HLM's
    level-2 classification, cluster-robust SEs and the per-school log-likelihood.

    Xsum (J, p) Σx_k; XtX (J, p, p) X_jᵀX_j; Xty (J, p) X_jᵀy_j; Zsq (J, q) Σz_q²; ZX (J, q, p) B_j.
    """

    Xsum: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    Zsq: np.ndarray
    ZX: np.ndarray


class ScaleError(TwolevelError):
    """A per-student quantity was asked of a fit whose rows were never in memory.

    Examples
    --------
    >>> import twolevel as tl
    >>> issubclass(tl.ScaleError, tl.TwolevelError)
    True
    """


# ----------------------------------------------------------------------------- the design


def _refuse(what: str, instead: str):
    def prop(self):
        if self.frame is not None:  # the rows are a data frame in memory: build them when asked
            return getattr(self.rows_design, what)
        raise ScaleError(
            f"'{what}' is a per-student quantity, not held when the statistics come from "
            f"engine='{self.engine}' (the rows stay in {self.source}); {instead}"
        )
    return property(prop, doc=f"Refused at scale: {instead}")


@dataclass(frozen=True)
class ScaleDesign:
    """What a fit needs from a design, without the rows (the scale path's :class:`Design`).

    Fields
    ------
    formula, response, group, x_names, z_names, terms, group_levels, n_na_dropped,
    dropped_columns, notes : as :class:`Design`.  n_rows : rows used.  ``group_sizes_`` : n_j.
    engine : "duckdb" or "dask".  source : a description of the data.  rows_read : rows scanned
    in the first pass (before the complete-case rule).  columns : the SQL of X's, Z's and y's
    columns (for the residual pass).  runner : the source's runner (for later passes).

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("lecture")
    >>> des, cp = tl.crossprods_from("g1rscore ~ famsesc + (1 | schid)", d, engine="duckdb")
    >>> type(des).__name__, des.engine
    ('ScaleDesign', 'duckdb')
    """

    formula: str
    response: str
    group: str
    x_names: tuple[str, ...]
    z_names: tuple[str, ...]
    terms: tuple[RandomTerm, ...]
    group_levels: np.ndarray
    group_sizes_: np.ndarray
    n_rows: int
    engine: str
    source: str
    rows_read: int
    x_sql: tuple[str, ...]
    z_sql: tuple[str, ...]
    y_sql: str
    from_sql: str
    where_sql: str
    stats_fingerprint: str
    n_na_dropped: int = 0
    dropped_columns: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    runner: Any = field(default=None, compare=False, repr=False)
    group_moments: GroupMoments | None = field(default=None, compare=False, repr=False)
    column_moments: dict | None = field(default=None, compare=False, repr=False)
    yty_groups: np.ndarray | None = field(default=None, compare=False, repr=False)
    frame: Any = field(default=None, compare=False, repr=False)

    X = _refuse("X", "use fit.fixef(), fit.vcov() or the cross-products fit.crossprods; HLM "
                "statistics need per_group_x=True (the CLI's --hlm asks for it)")
    Z = _refuse("Z", "use fit.ranef() (BLUPs with conditional variances) or fit.crossprods")
    y = _refuse("y", "use fit.crossprods (n_j, Σy, yᵀy per school) or fit.summary()'s residual "
                "quantiles")
    group_index = _refuse("group_index", "use fit.design.group_levels and group_sizes (per school)")

    @cached_property
    def rows_design(self) -> Design:
        """The in-memory :class:`Design` of the same formula on ``frame``, when the statistics came
        from DuckDB but the rows are a pandas frame (``tl.lmer``'s default for large frames):
        built the first time a per-student quantity (``X``, ``Z``, ``y``, ``group_index``,
        ``model_specs``) is asked, e.g. by ``residuals()``, ``predict()`` or ``simulate()``."""
        from twolevel.models.design.matrices import make_design

        if self.frame is None:
            raise ScaleError(f"the rows of this fit stay in {self.source}: refit with "
                             "engine='memory' for per-student quantities")
        d = make_design(self.formula, self.frame)
        if (d.x_names != self.x_names or d.n != self.n
                or not np.array_equal(np.asarray(d.group_levels), np.asarray(self.group_levels))):
            raise ScaleError("the data frame no longer matches this fit (changed since the fit?): "
                             "refit it")
        return d

    @property
    def model_specs(self) -> dict:
        """How each model matrix was built, for new data (from :attr:`rows_design`)."""
        return self.rows_design.model_specs

    @property
    def n(self) -> int:
        """Number of observations (rows used)."""
        return self.n_rows

    @property
    def p(self) -> int:
        """Number of fixed effects."""
        return len(self.x_names)

    @property
    def q(self) -> int:
        """Number of random effects per group."""
        return len(self.z_names)

    @property
    def n_groups(self) -> int:
        """Number of groups J."""
        return int(self.group_levels.shape[0])

    @property
    def group_sizes(self) -> np.ndarray:
        """n_j in ``group_levels`` order."""
        return self.group_sizes_

    theta_template = cached_property(Design.theta_template.func)
    _theta_positions = cached_property(Design._theta_positions.func)
    n_theta = Design.n_theta
    theta_lower = Design.theta_lower
    theta_names = Design.theta_names
    theta_to_T = Design.theta_to_T
    T_to_theta = Design.T_to_theta

    def residual_quantiles(self, beta: np.ndarray, b: np.ndarray, sigma: float
                           ) -> tuple[np.ndarray, str]:
        """Scaled-residual quantiles from streaming passes over the rows
        (:func:`twolevel.models.design.residual_pass.residual_quantiles`)."""
        from twolevel.models.design.residual_pass import residual_quantiles
        return residual_quantiles(self, beta, b, sigma)

    def theta_start(self, cp: GroupCrossprods | None = None) -> np.ndarray:
        """lme4's starting θ (see :meth:`Design.theta_start`), the intercept-only variances from
        the per-group sums: v_g = (Σ n_j ȳ_j² − n ȳ²)/(n − 1), v(y) = (yᵀy − n ȳ²)/(n − 1)."""
        theta = self.T_to_theta(np.eye(self.q))
        if self.z_names == ("(Intercept)",) and cp is not None:
            nj = self.group_sizes.astype(float)
            sy = cp.c[:, 0]
            n = float(self.n)
            ybar = float(sy.sum()) / n
            v_g = (float(np.sum(sy * sy / nj)) - n * ybar**2) / (n - 1.0)
            v_e = (cp.yty - n * ybar**2) / (n - 1.0) - v_g
            if v_e > 0:
                theta = np.array([np.sqrt(max(v_g, 0.0) / v_e)])
        return theta
