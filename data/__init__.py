"""Data sets, loaders and centering helpers (the bottom layer: imports nothing from the project)."""

from data.centering import Centering, center, group_means
from data.errors import DataError, FormulaError, TwolevelError
from data.lecture import simulate_lecture_data
from data.loaders import (
    CheckedFrame,
    load_data,
    load_hsb,
    load_lecture,
    load_sleepstudy,
    read_table,
    require_columns,
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
    "simulate_lecture_data",
]
