"""``twolevel run``: the lecture workflow on any students-in-schools data set.

    twolevel run --data FILE --y Y --x X --group G [--group G2 ...] [--level2 W ...]
                 [--out DIR] [--quick] [--seed N] [--family gaussian|binomial|poisson] [--nagq N]

Repeating ``--group`` (outermost first: ``--group school --group class``) runs the several-level
workflow instead (``twolevel.workflows.lecture3``): ``Y ~ 1 + X (+ W) + (1 | school/class)`` and its
null model by REML, the variance decomposition by level (share of each level and the correlation of
two students sharing it), the ML likelihood-ratio test for the class level, the conditional modes
and a caterpillar plot per level, and the report (Markdown, HTML, CSV tables, figures).

Fits ``Y ~ 1 + cX + (1 + cX | G)`` and ``Y ~ 1 + cX + (1 | G)`` (cX = X centred on its group means,
recorded in the report; each level-2 predictor W adds ``W + W:cX``) by REML and NUTS, and writes the
same report as ``twolevel lecture``. ``--data`` is a CSV/Parquet file or a built-in name (``hsb``:
``--y mAch --x ses --group school``).

``--family binomial`` (Y is 0/1, one student per row; logit link) or ``--family poisson`` (Y is a
count; log link) runs the same ten steps for a binary or count outcome
(``twolevel.workflows.lecture_glmm``): per-school empirical logits (or log rates) instead of
per-school OLS, glmer's Laplace fits of both models and AGQ (``--nagq`` nodes, default 12) of the
random-intercept model, their LRT, NUTS fits, LOO per student and per school, caterpillar plots on
the log-odds scale with odds ratios, shrinkage empirical logit → conditional mode → posterior mean,
and the lecture's questions (odds ratio of X, variation of the school log-odds, median odds ratio).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from twolevel.data.errors import TwolevelError
from twolevel.data.loaders import BUILTIN_DATASETS
from twolevel.workflows.lecture import RunSettings, WorkflowSpec, run_workflow


def add_run_options(p: argparse.ArgumentParser, default_out: str | None,
                    out_help: str = " (default outputs/run-<data name>)") -> None:
    """``--out``, ``--quick``, ``--seed`` (shared by ``lecture`` and ``run``); ``out_help`` says
    what the default folder is when ``default_out`` is None."""
    p.add_argument("--out", default=default_out,
                   help="report folder, replaced atomically"
                   + (" (default %(default)s)" if default_out else out_help))
    p.add_argument("--quick", action="store_true",
                   help="few draws (2 chains x 150): for tests and a first look, not for reporting")
    p.add_argument("--seed", type=int, default=RunSettings.seed,
                   help="random seed of every sampling step (default %(default)s)")


def check_output_folder(out: str | os.PathLike) -> Path:
    """The report folder ``out`` if it can be written (created or replaced as a whole); raises a
    :class:`TwolevelError` naming the path otherwise. Creates nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise TwolevelError(f"cannot write '{path}': it is a file, not a folder; choose another "
                            "output folder with --out")
    parent = path.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise TwolevelError(f"cannot write '{path}': '{probe}' is a file, not a folder; choose "
                            "another output folder with --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise TwolevelError(f"cannot write '{path}': permission denied on '{probe}'; choose "
                            "another output folder with --out")
    return path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand."""
    p = sub.add_parser(
        "run",
        help="the lecture workflow (REML + Bayes + report) on your own data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True,
                   help=f"CSV/Parquet file or built-in name ({', '.join(BUILTIN_DATASETS)})")
    p.add_argument("--y", required=True, help="response column (level 1)")
    p.add_argument("--x", required=True, help="level-1 predictor, centred within groups")
    p.add_argument("--group", required=True, action="append", metavar="G",
                   help="grouping column (schools); repeat it for three or more levels, outermost "
                        "first (--group school --group class: classes nested in schools)")
    p.add_argument("--level2", nargs="+", default=[], metavar="W",
                   help="level-2 predictors (constant within a group); each adds W and W:cX")
    p.add_argument("--x-centered", default=None, metavar="NAME",
                   help="name of the centred predictor (default c<X>)")
    add_run_options(p, None)
    add_family_options(p)
    p.set_defaults(func=run)


def add_family_options(p: argparse.ArgumentParser) -> None:
    """``--family`` and ``--nagq`` (``run``)."""
    p.add_argument("--family", choices=("gaussian", "binomial", "poisson"), default="gaussian",
                   help="gaussian (default: a continuous outcome, REML), binomial (Y is 0/1, "
                        "logit link) or poisson (Y is a count, log link)")
    p.add_argument("--nagq", type=int, default=None, metavar="N",
                   help="adaptive Gauss-Hermite nodes for the random-intercept model of a binary "
                        "or count outcome (2-25, default 12)")


def check_family_options(args: argparse.Namespace) -> None:
    """``--nagq`` only with ``--family binomial|poisson``, and within glmer's 2-25."""
    if args.nagq is None:
        return
    if args.family == "gaussian":
        raise TwolevelError(f"--nagq {args.nagq} applies to a binary or count outcome: add "
                            "--family binomial or --family poisson, or drop --nagq")
    if not 2 <= args.nagq <= 25:
        raise TwolevelError(f"--nagq {args.nagq} is outside 2-25 (glmer's adaptive "
                            "Gauss-Hermite quadrature); use e.g. --nagq 12")


def run_multilevel(args: argparse.Namespace) -> int:
    """Several ``--group`` columns: the several-level workflow
    (:mod:`twolevel.workflows.lecture3`), normal outcomes with random intercepts at every level."""
    if args.family != "gaussian":
        raise TwolevelError(f"--family {args.family} is not available with several --group "
                            "columns (the several-level workflow fits normal outcomes); drop "
                            "--family or give one --group")
    if args.x_centered is not None:
        raise TwolevelError("--x-centered applies to the two-level workflow (one --group); with "
                            f"several --group columns '{args.x}' enters as it is: centre it "
                            "yourself if you want")
    if len(set(args.group)) < len(args.group):
        raise TwolevelError(f"--group lists a column twice ({', '.join(args.group)}); give each "
                            "grouping column once, outermost first")
    from twolevel.workflows.lecture3 import MultilevelSpec, run_multilevel_workflow

    spec = MultilevelSpec(data=args.data, y=args.y, x=args.x, groups=tuple(args.group),
                          level2=tuple(args.level2))
    out = check_output_folder(args.out or f"outputs/run-{Path(args.data).stem}")
    run_multilevel_workflow(spec, RunSettings(seed=args.seed, quick=args.quick), out)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the workflow; the report folder is only replaced when every step succeeded."""
    check_family_options(args)
    if len(args.group) > 1:
        return run_multilevel(args)
    name = Path(args.data).name
    group = args.group[0]
    common = dict(data=args.data, y=args.y, x=args.x, group=group,
                  level2=tuple(args.level2), x_centered=args.x_centered)
    if args.family != "gaussian":
        from twolevel.workflows.lecture_glmm import (
            GlmmWorkflowSpec,
            glmm_run_settings,
            run_glmm_workflow,
        )

        spec = GlmmWorkflowSpec(
            **common, family=args.family, nagq=args.nagq or 12,
            y_label=f"{args.y} = 1" if args.family == "binomial" else args.y,
            title=f"Two-level {args.family} model of {args.y} on {args.x} within {group} "
                  f"({name})")
        out = check_output_folder(args.out or f"outputs/run-{Path(args.data).stem}")
        run_glmm_workflow(spec, glmm_run_settings(seed=args.seed, quick=args.quick), out)
        return 0
    spec = WorkflowSpec(
        **common,
        title=f"Two-level model of {args.y} on {args.x} within {group} ({name})",
    )
    out = check_output_folder(args.out or f"outputs/run-{Path(args.data).stem}")
    run_workflow(spec, RunSettings(seed=args.seed, quick=args.quick), out)
    return 0
