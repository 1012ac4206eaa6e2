"""The installed wheel against the developer checkout (issue 20): glmer at the lecture design and
the Bayesian lecture fit, each in fresh processes, from a folder of the user's own. A script, not
a test.

The wheel is built from this checkout (``python -m build --wheel --no-isolation``) and installed
(``--no-deps``; pip compiles its bytecode as for any user) into a new virtual environment whose
dependencies come from this environment's site-packages through a ``.pth`` line, as in
``tests/test_package.py``: the same NumPy, SciPy, nutpie, so only twolevel differs. Each job runs
in a fresh process started in an empty temporary folder, with the bytecode cache allowed (as a
user's environment has it), alternating checkout and wheel so both see the same load:

* glmer ``g1below ~ 1 + famsesc + (1 + famsesc | schid)``, binomial, at the lecture data: the
  first call of the process, then the median of ``--repeats`` calls (the issue's line: the wheel
  within 1.3× of the checkout);
* ``tl.fit_bayes`` of the lecture model with the default settings (4 chains × 1000 draws after
  1000 tuning steps, seed 1), wall time of the call (target: within 1.2×).

Also printed: which kernels each side reports (``tl.show_versions`` data) and the load.

Usage::

    nice .venv/bin/python benchmarks/wheel_speed.py [--repeats 5] [--bayes-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLMER = r"""
import json, statistics, sys, time
import twolevel as tl
from twolevel.models.versions import kernel_report
d = tl.load_data("lecture")
f = "g1below ~ 1 + famsesc + (1 + famsesc | schid)"
t = time.perf_counter(); tl.glmer(f, d, family="binomial"); first = time.perf_counter() - t
ts = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter(); tl.glmer(f, d, family="binomial"); ts.append(time.perf_counter() - t)
print(json.dumps({"first": first, "median": statistics.median(ts), "file": tl.__file__,
                  "kernels": kernel_report()}))
"""
BAYES = r"""
import json, time
import twolevel as tl
d = tl.load_data("lecture")
t = time.perf_counter()
b = tl.fit_bayes("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", d,
                 settings=tl.SamplerSettings(seed=1), progress=False)
print(json.dumps({"secs": time.perf_counter() - t, "gate": bool(b.diagnostics.passed)}))
"""


def wheel_python(tmp: Path) -> Path:
    out = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                        str(out), str(ROOT)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stdout[-2000:] + r.stderr[-2000:])
    (whl,) = out.glob("twolevel-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                    "--no-deps", "--disable-pip-version-check", str(whl)], check=True)
    return py


def job(py: Path, code: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    with tempfile.TemporaryDirectory() as cwd:
        r = subprocess.run([str(py), "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                           env=env)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bayes-repeats", type=int, default=3)
    args = ap.parse_args()
    print("load:", os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"checkout": Path(sys.executable), "wheel": wheel_python(Path(tmp))}
        g = {s: [] for s in sides}
        b = {s: [] for s in sides}
        for _ in range(2):
            for s, py in sides.items():
                g[s].append(job(py, GLMER, str(args.repeats)))
        for _ in range(args.bayes_repeats):
            for s, py in sides.items():
                b[s].append(job(py, BAYES))
    for s in sides:
        print(f"{s}: twolevel from {g[s][0]['file']}; kernels {g[s][0]['kernels']}")
    med = statistics.median
    gm = {s: med(r["median"] for r in g[s]) for s in sides}
    gf = {s: med(r["first"] for r in g[s]) for s in sides}
    bm = {s: med(r["secs"] for r in b[s]) for s in sides}
    print(f"{'job':<36}{'checkout s':>11}{'wheel s':>9}{'wheel/checkout':>16}{'target':>8}")
    print(f"{'glmer lecture, first call':<36}{gf['checkout']:>11.3f}{gf['wheel']:>9.3f}"
          f"{gf['wheel'] / gf['checkout']:>16.2f}")
    print(f"{'glmer lecture, median of repeats':<36}{gm['checkout']:>11.3f}{gm['wheel']:>9.3f}"
          f"{gm['wheel'] / gm['checkout']:>16.2f}{'≤ 1.3':>8}")
    print(f"{'fit_bayes lecture (4 × 1000)':<36}{bm['checkout']:>11.2f}{bm['wheel']:>9.2f}"
          f"{bm['wheel'] / bm['checkout']:>16.2f}{'≤ 1.2':>8}")
    print("gate passed:", {s: [r["gate"] for r in b[s]] for s in sides})
    print("load:", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
