"""Data sets, loaders and centering helpers (the bottom layer: imports nothing from the project)."""

from twolevel.data.centering import Centering, center, group_means
from twolevel.data.errors import DataError, FormulaError, TwolevelError
from twolevel.data.loaders import (
    CheckedFrame,
    load_data,
    load_hsb,
    load_lecture,
    load_sleepstudy,
    read_table,
    require_columns,
    require_outcome,
)

__all__ = [
    "Centering",
    "CheckedFrame",
    "DataError",
    "FormulaError",
    "TwolevelError",
    "center",
    "group_means",
    "load_data",
    "load_hsb",
    "load_lecture",
    "load_sleepstudy",
    "read_table",
    "require_columns",
    "require_outcome",
    "simulate_lecture_data",
]


def __getattr__(name: str):
    # Imported lazily so that ``python -m twolevel.data.lecture`` does not import the module twice.
    if name == "simulate_lecture_data":
        from twolevel.data.lecture import simulate_lecture_data

        return simulate_lecture_data
    raise AttributeError(f"module 'data' has no attribute {name!r}")
