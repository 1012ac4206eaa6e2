"""OpenMP's wait policy: twolevel's kernels make waiting threads sleep (``OMP_WAIT_POLICY=PASSIVE``)
unless the user chose a policy, set before the first kernel loads OpenMP's runtime; it is shown by
``tl.show_versions()``. Each case runs in a fresh process (the runtime reads the variable once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CODE = """
import json, os
import twolevel as tl
before = os.environ.get("OMP_WAIT_POLICY")
g = tl.glmer("g1below ~ 1 + famsesc + (1 | schid)", tl.load_data("lecture"), family="binomial")
from twolevel.models.versions import kernel_report
print(json.dumps({"before": before, "after": os.environ.get("OMP_WAIT_POLICY"),
                  "report": kernel_report()["omp_wait_policy"],
                  "route": kernel_report()["kernels"]["glmer"]}))
"""


def run(env_policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernels_make_openmp_wait_passively_by_default():
    r = run(None)
    if r["route"] != "compiled":
        pytest.skip("no compiled glmer kernel in this installation")
    assert r["before"] is None and r["after"] == "PASSIVE" and r["report"] == "PASSIVE"


def test_a_policy_the_user_set_is_kept():
    r = run("active")
    assert r["after"] == "active" and r["report"] == "active"
