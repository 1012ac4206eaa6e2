"""Is simulated power right? (a script, not a test; ``tests/test_power.py`` runs lighter versions)

1. Power: balanced cluster-randomised designs with a random intercept, where the Satterthwaite t
   test is the exact t test of the school means with J − 2 df (unless τ̂² = 0): simulated power
   against PowerUp!'s noncentral-t power, with the Monte-Carlo SE and z = (sim − exact)/SE.
2. Type I error at δ = 0 for the Satterthwaite and Kenward–Roger tests, balanced and unbalanced
   school sizes (sizes with coefficient of variation 0.6), against α = 0.05.

Usage::

    nice -n 10 .venv/bin/python benchmarks/power_validity.py --nsim 2000 --jobs 2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import twolevel as tl  # noqa: E402

POWER_SETTINGS = [(10, 20, 0.2, 0.8), (10, 5, 0.3, 1.0), (20, 10, 0.05, 0.4),
                  (30, 10, 0.1, 0.4), (60, 20, 0.15, 0.3)]
TYPE1_SETTINGS = [(10, 10, 0.1, 0.0), (10, 10, 0.1, 0.6), (30, 20, 0.05, 0.0),
                  (30, 20, 0.05, 0.6)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsim", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}; {args.nsim} simulations per row")
    t0 = time.perf_counter()
    print("\n| J | n | ρ | δ | analytic | simulated | MC SE | z | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for J, n, rho, delta in POWER_SETTINGS:
        sd = tl.study_design("cra2", schools=J, students=n, icc=rho)
        r = tl.power(sd, effect=delta, nsim=args.nsim, n_jobs=args.jobs, seed=2026)
        exact = sd.power(delta)
        se = math.sqrt(exact * (1 - exact) / args.nsim)
        print(f"| {J} | {n} | {rho} | {delta} | {exact:.4f} | {r.power:.4f} | {se:.4f} | "
              f"{(r.power - exact) / se:+.2f} | {int(r.table['failed'][0])} |")
    se0 = math.sqrt(0.05 * 0.95 / args.nsim)
    print(f"\nType I error at α = 0.05 (MC SE {se0:.4f}; ±2 SE = "
          f"[{0.05 - 2 * se0:.4f}, {0.05 + 2 * se0:.4f}])")
    print("\n| J | n | ρ | CV of sizes | test | rejection rate | z |")
    print("|---|---|---|---|---|---|---|")
    for J, n, rho, cv in TYPE1_SETTINGS:
        sd = tl.study_design("cra2", schools=J, students=n, icc=rho, cv=cv)
        for test in ("satterthwaite", "kenward-roger"):
            r = tl.power(sd, effect=0.0, nsim=args.nsim, n_jobs=args.jobs, seed=7, test=test)
            print(f"| {J} | {n} | {rho} | {cv} | {test} | {r.power:.4f} | "
                  f"{(r.power - 0.05) / se0:+.2f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s; load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
