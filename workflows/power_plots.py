"""The power-curve figure of ``twolevel power --curve`` (matplotlib, Agg backend): power against
the number of schools (or students), the analytic curve as a line, simulated power as points
with their Monte-Carlo (Wilson) intervals; nothing here computes a statistic."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["power_curve_figure"]


def power_curve_figure(table: pd.DataFrame, x: str, title: str, target: float = 0.8) -> Figure:
    """Power against ``x`` (``"schools"`` or ``"students"``): ``power`` (analytic) as a line when
    present, ``power_sim`` with ``lower``/``upper`` as points with bars, ``target`` dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = table[x].to_numpy()
    if "power" in table.columns and "power_sim" in table.columns:
        ax.plot(xs, table["power"], color="#1f5fa8", lw=2, label="analytic (noncentral t)")
    if "power_sim" in table.columns or "lower" in table.columns:
        y = table["power_sim"] if "power_sim" in table.columns else table["power"]
        ax.errorbar(xs, y, yerr=[y - table["lower"], table["upper"] - y], fmt="o",
                    color="#c0392b", capsize=3, label="simulated (95% Wilson interval)")
    elif "power" in table.columns:
        ax.plot(xs, table["power"], "o-", color="#1f5fa8", lw=2, label="analytic (noncentral t)")
    ax.axhline(target, color="#7f7f7f", ls="--", lw=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("schools" if x == "schools" else "students per school")
    ax.set_ylabel("power")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
