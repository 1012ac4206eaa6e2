"""Data sets, loaders and centering helpers (the bottom layer: imports nothing from the project)."""

from data.errors import DataError, FormulaError, TwolevelError

__all__ = ["DataError", "FormulaError", "TwolevelError"]
