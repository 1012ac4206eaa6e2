"""``twolevel power``: planning a study — power, minimum detectable effect (MDES), df and
noncentrality of PowerUp!'s designs (Dong & Maynard 2013), and power by simulation.

Designs (``--design``), in standard-deviation units:

* ``cra2``  — CRA2_2r: schools randomised; ``--schools`` J, ``--students`` n per school,
  ``--icc`` ρ, ``--r2-1``/``--r2-2`` covariates' R² at the student/school level, ``--cv`` unequal
  school sizes (Van Breukelen et al. 2007's design effect).
* ``bira2`` — BIRA2_1r: students randomised within schools, the effect varying across schools
  with variance ``--omega`` ω·τ² (default 0), ``--r2-t`` of it explained;
  ``--constant-effect`` gives BIRA2_1c (constant effect, school fixed effects, df J(n−1)−g−1).
* ``cra3``  — CRA3_3r: schools randomised, ``--classes`` per school, ``--students`` per class,
  ``--icc`` the class-level ρ₂, ``--icc3`` the school-level ρ₃, ``--r2-3`` school covariates.
* ``bcra3`` — BCRA3_2r: classes randomised within schools (schools are random blocks, effect
  variance ``--omega`` ω·τ²₃).

Printed: ``power`` at ``--effect``, ``mdes`` at ``--power`` (PowerUp!'s multiplier form;
``mdes_exact`` solves the noncentral t), ``df``, ``ncp``, ``schools_needed``; with
``--simulate NSIM`` (two-level designs) also ``power_sim`` and its Monte-Carlo ``se``.

``--fit DATA FORMULA --term T --effect δ`` simulates from a pilot fit instead (simr): the fit's
variances, the coefficient of T set to δ (response units), extended to ``--schools`` /
``--students``. ``--curve schools=20:100:10`` (or ``students=...``) writes a table (CSV) and a
figure (PNG) at ``--out`` (default ``power_curve``).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings

from twolevel.data.errors import TwolevelError

DESIGN_CHOICES = ("cra2", "bira2", "cra3", "bcra3")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``power`` subcommand."""
    p = sub.add_parser("power", help="power and MDES of school designs, analytic and simulated",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--design", choices=DESIGN_CHOICES, help="a PowerUp! design (above)")
    src.add_argument("--fit", nargs=2, metavar=("DATA", "FORMULA"),
                     help="simulate from a pilot lmer fit of FORMULA on DATA")
    p.add_argument("--term", help="with --fit: the fixed effect tested")
    p.add_argument("--schools", type=int, help="number of schools (J; K in three-level designs)")
    p.add_argument("--students", type=int, help="students per school (per class in cra3/bcra3)")
    p.add_argument("--classes", type=int, help="classes per school (cra3, bcra3)")
    p.add_argument("--icc", type=float, help="ρ (two levels); the class-level ρ₂ (three levels)")
    p.add_argument("--icc3", type=float, default=0.0, help="the school-level ρ₃ (three levels)")
    p.add_argument("--r2-1", type=float, default=0.0, help="R² of student covariates")
    p.add_argument("--r2-2", type=float, default=0.0, help="R² of level-2 covariates")
    p.add_argument("--r2-3", type=float, default=0.0, help="R² of school covariates (cra3)")
    p.add_argument("--omega", type=float, default=0.0,
                   help="treatment-effect variance across blocks / intercept variance (bira2, "
                   "bcra3)")
    p.add_argument("--r2-t", type=float, default=0.0, help="R² of the effect variance")
    p.add_argument("--constant-effect", action="store_true",
                   help="bira2: a constant effect across schools (BIRA2_1c)")
    p.add_argument("--p", type=float, default=0.5, dest="share", help="share treated (0.5)")
    p.add_argument("--covariates", type=int, default=0,
                   help="g, covariates at the randomised level (df)")
    p.add_argument("--cv", type=float, default=0.0, help="CV of school sizes (cra2)")
    p.add_argument("--effect", type=float, required=True, help="effect δ (SD units for designs)")
    p.add_argument("--alpha", type=float, default=0.05, help="the test's level (0.05)")
    p.add_argument("--power", type=float, default=0.8, help="target power for mdes (0.8)")
    p.add_argument("--one-sided", action="store_true", help="one-sided test (PowerUp! option)")
    p.add_argument("--simulate", type=int, metavar="NSIM", help="also simulate NSIM data sets")
    p.add_argument("--test", default="satterthwaite",
                   choices=("satterthwaite", "kenward-roger", "lrt", "variance"),
                   help="simulation's test (variance: --fit only, a random slope)")
    p.add_argument("--seed", type=int, default=1, help="random seed (1)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for simulations")
    p.add_argument("--curve", metavar="SIZE=FROM:TO:BY",
                   help="a power curve over schools or students, e.g. schools=20:100:10")
    p.add_argument("--out", default="power_curve", help="--curve's files: OUT.csv, OUT.png")
    p.add_argument("--progress", action="store_true", help="simulation progress on stderr")
    p.add_argument("--tol", type=float, default=None,
                   help="stop simulating once the Monte-Carlo SE is below TOL (≥ 100 sims)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def parse_curve(spec: str) -> tuple[str, list[int]]:
    """``schools=20:100:10`` → ("schools", [20, 30, …, 100]) (the end included)."""
    try:
        what, rng = spec.split("=")
        a, b, c = (int(v) for v in rng.split(":"))
    except ValueError:
        raise TwolevelError(f"--curve expects SIZE=FROM:TO:BY with whole numbers, e.g. "
                            f"schools=20:100:10; got {spec!r}") from None
    if what not in ("schools", "students"):
        raise TwolevelError(f"--curve varies 'schools' or 'students', got {what!r}")
    if c <= 0 or b < a:
        raise TwolevelError(f"--curve needs FROM ≤ TO and a positive step, got {spec!r}")
    return what, list(range(a, b + 1, c))


def _study(args: argparse.Namespace):
    from twolevel.models.power.analytic import StudyDesign

    for flag in ("schools", "students", "icc"):
        if getattr(args, flag) is None:
            raise TwolevelError(f"--design {args.design} needs --{flag}")
    design = "bira2c" if args.design == "bira2" and args.constant_effect else args.design
    if design in ("cra3", "bcra3") and args.classes is None:
        raise TwolevelError(f"--design {args.design} needs --classes (classes per school)")
    return StudyDesign(design=design, schools=args.schools, students=args.students,
                       icc=args.icc, classes=args.classes or 1, icc3=args.icc3,
                       r2_1=args.r2_1, r2_2=args.r2_2, r2_3=args.r2_3, omega=args.omega,
                       r2_t=args.r2_t, p=args.share, covariates=args.covariates, cv=args.cv,
                       alpha=args.alpha, two_tailed=not args.one_sided)


def _sim_kwargs(args: argparse.Namespace) -> dict:
    return {"nsim": args.simulate, "test": args.test, "alpha": args.alpha, "seed": args.seed,
            "n_jobs": args.jobs, "progress": args.progress, "tol": args.tol}


def _num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def run(args: argparse.Namespace) -> int:
    """Compute and print (or write the curve)."""
    from twolevel.models.power.analytic import power_analytic
    from twolevel.models.power.simulation import power

    if args.simulate is not None and args.simulate < 1:
        raise TwolevelError(f"--simulate needs a positive number of simulations, got "
                            f"{args.simulate}")
    curve = parse_curve(args.curve) if args.curve else None
    if args.fit is not None:
        return _run_fit(args, curve)
    sd = _study(args)
    if curve is not None:
        return _write_curve(args, sd, curve)
    res = power_analytic(sd, effect=args.effect, target_power=args.power)
    out = res.to_dict()
    if args.simulate:
        sim = power(sd, effect=args.effect, **_sim_kwargs(args))
        out.update(power_sim=sim.power, se=sim.se, nsim=int(sim.table["nsim"].iloc[0]),
                   test=args.test,
                   sim_failed=int(sim.table["failed"].iloc[0]), seed=args.seed)
    if args.json:
        print(json.dumps({k: _num(v) for k, v in out.items()}, indent=2))
        return 0
    d = res.design
    print(f"{d.powerup_name} (PowerUp!): {d.schools} schools"
          + (f" × {d.classes} classes" if d.three_level else "")
          + f" × {d.students} students, effect {args.effect:g}, alpha {d.alpha:g}, "
          f"{'two' if d.two_tailed else 'one'}-sided; mdes at power {args.power:g}")
    for key in ("power", "mdes", "mdes_exact", "df", "ncp", "schools_needed", "power_sim", "se"):
        if key in out and out[key] is not None:
            v = out[key]
            print(f"{key}: {v:.6g}" if isinstance(v, float) else f"{key}: {v}")
    return 0


def _run_fit(args: argparse.Namespace, curve) -> int:
    from twolevel.data.loaders import load_data
    from twolevel.models.lmm.lmer import lmer
    from twolevel.models.power.simulation import power

    if not args.term:
        raise TwolevelError("--fit needs --term, the fixed effect whose power is wanted")
    data, formula = args.fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = lmer(formula, load_data(data))
    kw = _sim_kwargs(args)
    kw["nsim"] = args.simulate or 1000
    schools, students = args.schools, args.students
    if curve is not None:
        schools, students = (curve[1], students) if curve[0] == "schools" else (schools, curve[1])
    res = power(fit, term=args.term, effect=args.effect, n_schools=schools,
                n_students=students, **kw)
    if curve is not None:
        return _save_curve(args, res.table, curve[0], f"{args.term} = {args.effect:g}")
    row = res.table.iloc[0]
    out = {"power": res.power, "power_sim": res.power, "se": res.se,
           "lower": float(row["lower"]), "upper": float(row["upper"]),
           "schools": int(row["schools"]), "students": float(row["students"]),
           "nsim": int(row["nsim"]), "failed": int(row["failed"]), "term": args.term,
           "effect": args.effect, "test": args.test, "seed": args.seed}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(res.summary())
        for key in ("power_sim", "se", "lower", "upper"):
            print(f"{key}: {out[key]:.6g}")
    return 0


def _write_curve(args: argparse.Namespace, sd, curve) -> int:
    import pandas as pd

    from twolevel.models.power.analytic import power_analytic
    from twolevel.models.power.simulation import power

    what, values = curve
    rows = []
    for v in values:
        s = sd.with_schools(v) if what == "schools" else _replace(sd, students=v)
        r = power_analytic(s, effect=args.effect, target_power=args.power)
        rows.append({"schools": s.schools, "students": s.students, "power": r.power,
                     "mdes": r.mdes, "df": r.df, "ncp": r.ncp})
    table = pd.DataFrame(rows)
    if args.simulate:
        kw = {"n_schools": values} if what == "schools" else {"n_students": values}
        sim = power(sd, effect=args.effect, **kw, **_sim_kwargs(args)).table
        table["power_sim"] = sim["power"].to_numpy()
        table["se"] = sim["se"].to_numpy()
        table["lower"] = sim["lower"].to_numpy()
        table["upper"] = sim["upper"].to_numpy()
    return _save_curve(args, table, what, f"{sd.powerup_name}, effect {args.effect:g}")


def _replace(sd, **kw):
    from dataclasses import replace

    return replace(sd, **kw)


def _save_curve(args: argparse.Namespace, table, what: str, title: str) -> int:
    from twolevel.workflows.commands.ols import write_csv_atomic
    from twolevel.workflows.power_plots import power_curve_figure

    csv = write_csv_atomic(table, f"{args.out}.csv")
    fig = power_curve_figure(table, what, title)
    png = f"{args.out}.png"
    fig.savefig(png, dpi=120)
    if args.json:
        print(json.dumps({"table": str(csv), "figure": png,
                          "rows": json.loads(table.to_json(orient="records"))}, indent=2))
    else:
        print(table.to_string(index=False))
        print(f"wrote {csv} and {png}")
    return 0
