"""Centering a level-1 predictor: group-mean (within-school) and grand-mean centering.

``center(df, "ses", by="school")`` gives ``ses − mean_j(ses)`` (the lecture's ``famsesc``, HSB's
``cses``) and the school means (HSB's ``meanses``); ``center(df, "ses")`` gives ``ses − mean(ses)``.
The result records what was done so reports can say it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from twolevel.data.errors import DataError

__all__ = ["Centering", "center", "group_means"]


@dataclass(frozen=True)
class Centering:
    """A centred column, the means it was centred on, and a record of how.

    Fields
    ------
    column : the column centred.  by : the grouping column (``None`` for grand-mean centering).
    method : ``"group-mean"`` or ``"grand-mean"``.
    centered : x_ij − x̄_j (group-mean) or x_ij − x̄ (grand-mean), aligned with the input rows.
    means : per row, the mean subtracted (x̄_j or x̄), aligned with the input rows.
    group_means : x̄_j per group (indexed by group label, sorted) for group-mean centering; for
        grand-mean centering a one-element series holding x̄.
    n_groups : number of groups (1 for grand-mean).  n : rows used.

    Examples
    --------
    >>> import twolevel as tl
    >>> c = tl.center(tl.load_data("hsb"), "ses", by="school")
    >>> c.means.name, len(c.group_means)
    ('meanses', 160)
    """

    column: str
    by: str | None
    method: Literal["group-mean", "grand-mean"]
    centered: pd.Series
    means: pd.Series
    group_means: pd.Series
    n_groups: int
    n: int

    def describe(self) -> str:
        """One sentence saying what was done, e.g. for a report."""
        if self.method == "group-mean":
            return (
                f"'{self.centered.name}' = {self.column} − mean of {self.column} within {self.by} "
                f"(group-mean centering over {self.n_groups} groups, {self.n} rows; the means are "
                f"'{self.means.name}')"
            )
        return (
            f"'{self.centered.name}' = {self.column} − {float(self.group_means.iloc[0]):.6g} "
            f"(grand-mean centering: the overall mean of {self.column} over {self.n} rows)"
        )


def group_means(x: pd.Series, g: pd.Series) -> pd.Series:
    """x̄_j = (1/n_j) Σ_{i in j} x_ij for every group j (indexed by sorted group label).

    Parameters
    ----------
    x : pandas.Series
        The values.
    g : pandas.Series
        The group of each value (same index).

    Returns
    -------
    pandas.Series
        One mean per group, indexed by the sorted group labels.

    Examples
    --------
    >>> import pandas as pd, twolevel as tl
    >>> tl.group_means(pd.Series([1.0, 3.0, 10.0]), pd.Series(["a", "a", "b"])).to_dict()
    {'a': 2.0, 'b': 10.0}
    """
    return x.groupby(g.to_numpy(), sort=True).mean()


def center(
    df: pd.DataFrame,
    column: str,
    by: str | None = None,
    *,
    name: str | None = None,
    means_name: str | None = None,
) -> Centering:
    """Center the numeric ``column`` on its group means (``by`` given) or its grand mean.

    Parameters
    ----------
    df : the data; ``column`` (and ``by``) must exist and ``column`` be numeric and finite
        (use :func:`twolevel.data.loaders.require_columns` first to remove missing values).
    column : the predictor to centre.
    by : the grouping column for group-mean centering; ``None`` for grand-mean centering.
    name : name of the centred series (default ``c<column>`` for group-mean, like HSB's ``cses``,
        and ``<column>_gmc`` for grand-mean).
    means_name : name of the means series (default ``mean<column>``, like HSB's ``meanses``).

    Returns
    -------
    Centering
        ``centered = x − x̄_j`` (or ``x − x̄``), ``means`` (per row) and ``group_means``.

    Examples
    --------
    >>> import twolevel as tl
    >>> d = tl.load_data("hsb")
    >>> c = tl.center(d, "ses", by="school")
    >>> c.centered.name, bool(abs(c.centered.groupby(d["school"]).mean()).max() < 1e-12)
    ('cses', True)
    """
    for col in [column] + ([by] if by is not None else []):
        if col not in df.columns:
            raise DataError(
                f"column '{col}' is not in the data; available columns: "
                f"{', '.join(map(str, df.columns))}"
            )
    x = df[column]
    if not pd.api.types.is_numeric_dtype(x) or pd.api.types.is_bool_dtype(x):
        raise DataError(f"column '{column}' is not numeric (dtype {x.dtype}); cannot centre it")
    xv = x.to_numpy(dtype=float, na_value=np.nan)
    if not np.isfinite(xv).all():
        k = int((~np.isfinite(xv)).sum())
        raise DataError(
            f"column '{column}' has {k} missing or non-finite value(s); remove those rows "
            "(require_columns does it and reports the count) before centering"
        )
    means_name = means_name or f"mean{column}"
    if by is None:
        xbar = float(np.mean(xv))
        means = pd.Series(np.full(len(xv), xbar), index=df.index, name=means_name)
        gm = pd.Series([xbar], index=["(all)"], name=means_name)
        method: Literal["group-mean", "grand-mean"] = "grand-mean"
        n_groups = 1
        name = name or f"{column}_gmc"
    else:
        g = df[by]
        if g.isna().any():
            raise DataError(
                f"grouping column '{by}' has {int(g.isna().sum())} missing value(s); remove those "
                "rows before centering"
            )
        gm = group_means(x.astype(float), g).rename(means_name)
        means = pd.Series(gm.loc[g.to_numpy()].to_numpy(), index=df.index, name=means_name)
        method = "group-mean"
        n_groups = int(gm.shape[0])
        name = name or f"c{column}"
    centered = pd.Series(xv - means.to_numpy(), index=df.index, name=name)
    return Centering(
        column=column,
        by=by,
        method=method,
        centered=centered,
        means=means,
        group_means=gm,
        n_groups=n_groups,
        n=len(xv),
    )
