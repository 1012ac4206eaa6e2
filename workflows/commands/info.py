"""``twolevel info``: what this installation runs on (``tl.show_versions()``).

Prints twolevel's version, which kernels each engine uses (compiled C, numba or PyTensor), the
vector path and thread count of the compiled kernels, and the scientific dependencies' versions;
``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``info`` subcommand."""
    p = sub.add_parser("info", help="twolevel's version, active kernels and dependency versions",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the report; exit status 0."""
    from twolevel.models.versions import kernel_report, show_versions

    if args.json:
        print(json.dumps(kernel_report(), indent=2))
    else:
        show_versions()
    return 0
