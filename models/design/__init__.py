"""Design and statistics stage: formula → model matrices (:mod:`.formula`, :mod:`.matrices`) →
per-group cross-products (:mod:`.crossprods`), everything the engines downstream need; the same
model matrices rebuilt on new data for predictions (:mod:`.newdata`)."""

from twolevel.models.design.crossprods import GroupCrossprods, group_crossprods
from twolevel.models.design.formula import BarTerm, ParsedFormula, parse_formula
from twolevel.models.design.matrices import Design, RandomTerm, make_design

__all__ = [
    "BarTerm",
    "Design",
    "GroupCrossprods",
    "ParsedFormula",
    "RandomTerm",
    "group_crossprods",
    "make_design",
    "parse_formula",
]
