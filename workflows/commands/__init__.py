"""Subcommands of the ``twolevel`` command line, one module each (see ``twolevel.workflows.cli``)."""

from __future__ import annotations

import argparse

from twolevel.data.loaders import BUILTIN_DATASETS


def add_data_argument(p: argparse.ArgumentParser) -> None:
    """The positional ``DATA`` argument shared by ``fit``, ``anova``, ``bayes`` and ``ols``."""
    p.add_argument("data", metavar="DATA", help=f"built-in name ({', '.join(BUILTIN_DATASETS)}) "
                   "or path of a CSV/Parquet file")
