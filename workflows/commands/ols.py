"""``twolevel ols DATA``: per-group OLS (the lecture's table of school intercepts and slopes).

``DATA`` is a built-in data set (``lecture``, ``hsb``, ``sleepstudy``; each has default columns) or
the path of a CSV or Parquet file. The model is ``--y Y --x X [X ...]`` or ``--formula "Y ~ X"``,
fitted separately in every group of ``--group``. ``--csv OUT`` writes the full table (atomically).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd

from twolevel.data.errors import TwolevelError
from twolevel.data.loaders import BUILTIN_DATASETS, load_data, require_columns
from twolevel.models.tables.ols import GroupOLS, group_ols
from twolevel.workflows.commands import add_data_argument

# Default (y, x, group) of the built-in data sets.
DEFAULT_COLUMNS: dict[str, tuple[str, str, str]] = {
    "lecture": ("g1rscore", "famsesc", "schid"),
    "hsb": ("mAch", "cses", "school"),
    "sleepstudy": ("Reaction", "Days", "Subject"),
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ols`` subcommand."""
    p = sub.add_parser(
        "ols",
        help="per-group OLS estimates (B0_hat, B1_hat, SEs, n_j) for a level-1 model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_argument(p)
    p.add_argument("--y", help="response column (e.g. g1rscore)")
    p.add_argument("--x", nargs="+", help="level-1 predictor column(s) (e.g. famsesc)")
    p.add_argument(
        "--formula", help="level-1 formula instead of --y/--x, e.g. 'g1rscore ~ famsesc'"
    )
    p.add_argument("--group", help="grouping column (e.g. schid)")
    p.add_argument("--csv", metavar="OUT", help="write the full table to this CSV file")
    p.add_argument("--rows", type=int, default=20, help="rows to print (0: all; default 20)")
    p.set_defaults(func=run)


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` to ``path`` via a temporary file in the same folder and a rename, so the
    file is either complete or absent; creates the folder if needed. An OS error (no permission,
    the path is a folder, a parent is a file) is a :class:`TwolevelError` naming the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise TwolevelError(
            f"cannot write '{path}': {exc.strerror or exc}; choose another output path"
        ) from None
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            frame.to_csv(fh, index=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise TwolevelError(
            f"cannot write '{path}': {exc.strerror or exc}; choose another output path"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fit_from_args(args: argparse.Namespace) -> tuple[GroupOLS, tuple[str, ...]]:
    """Load the data named by the arguments, validate the columns, fit per-group OLS; returns the
    result and the validation notes."""
    defaults = DEFAULT_COLUMNS.get(args.data) if args.data in BUILTIN_DATASETS else None
    group = args.group or (defaults[2] if defaults else None)
    if args.formula and (args.y or args.x):
        raise TwolevelError("give either --formula or --y and --x, not both")
    if args.formula:
        formula = args.formula
        columns: list[str] = []
    else:
        y = args.y or (defaults[0] if defaults else None)
        xs = args.x or ([defaults[1]] if defaults else None)
        if not y or not xs:
            raise TwolevelError(
                f"say which columns to use for '{args.data}': --y RESPONSE --x PREDICTOR "
                "--group GROUP (or --formula 'y ~ x' --group GROUP)"
            )
        formula = f"{y} ~ {' + '.join(xs)}"
        columns = [y, *xs]
    if not group:
        raise TwolevelError(f"say which column groups the rows of '{args.data}': --group GROUP")
    df = load_data(args.data)
    source = df.attrs.get("source", f"'{args.data}'")
    checked = require_columns(df, columns, group=group, source=source)
    return group_ols(formula, checked.frame, group), checked.notes


def run(args: argparse.Namespace) -> int:
    """Fit, print the table (and notes), optionally write the CSV."""
    result, notes = fit_from_args(args)
    for note in notes:
        print(f"note: {note}")
    rows = args.rows if args.rows > 0 else result.n_groups
    print(result.summary(rows=rows))
    if args.csv:
        path = write_csv_atomic(result.to_frame(), args.csv)
        print(f"wrote {path} ({result.n_groups} rows)")
    return 0
