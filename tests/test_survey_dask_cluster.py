"""A weighted fit through an external Dask cluster that loses a worker mid-run (issue 23).

The test starts ``dask scheduler`` and two ``dask worker`` processes, fits a weighted model of
Parquet files through the scheduler's address, and kills one worker (SIGKILL) as soon as it is
processing a task of the fit. Dask reruns the lost tasks on the other worker (they are pure:
DuckDB over one file), so the fit completes and equals the in-memory fit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twolevel.models.lmm.lmer import lmer

pytestmark = pytest.mark.slow

FORMULA = "y ~ 1 + x + (1 + x | g)"


def simulate(n: int, J: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, J, n)
    x = rng.normal(size=n)
    u0 = rng.normal(0, 1.0, J)
    u1 = 0.3 * u0 + rng.normal(0, 0.4, J)
    wj = rng.uniform(1, 4, J)
    return pd.DataFrame({"y": 1 + 0.5 * x + u0[g] + u1[g] * x + rng.normal(size=n), "x": x,
                         "g": g, "wj": wj[g], "w1": rng.uniform(0.5, 2.0, n) * wj[g]})


def dask_exe() -> str:
    exe = Path(sys.executable).with_name("dask")
    if not exe.exists():
        found = shutil.which("dask")
        if found is None:
            pytest.skip("the 'dask' command is not installed")
        return found
    return str(exe)


def test_external_scheduler_killed_worker(tmp_path):
    from distributed import Client

    df = simulate(40_000, 300)
    files = []
    for k, part in enumerate(np.array_split(np.arange(len(df)), 8)):
        path = tmp_path / f"part{k:02d}.parquet"
        df.iloc[part].to_parquet(path, index=False)
        files.append(str(path))
    sfile = tmp_path / "scheduler.json"
    env = os.environ | {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([dask_exe(), "scheduler", "--scheduler-file", str(sfile),
                               "--port", "0", "--dashboard-address", ":0", "--no-show"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        for _ in range(300):
            if sfile.exists() and sfile.read_text().strip():
                break
            time.sleep(0.1)
        address = json.loads(sfile.read_text())["address"]
        for k in range(2):
            procs.append(subprocess.Popen(
                [dask_exe(), "worker", address, "--nthreads", "1", "--nworkers", "1",
                 "--name", f"w{k}", "--no-dashboard"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        client = Client(address, timeout=60)
        client.wait_for_workers(2, timeout=60)
        pids = client.run(os.getpid)  # worker address → pid
        victim_addr, victim_pid = sorted(pids.items())[0]
        killed = threading.Event()
        done = threading.Event()

        def killer() -> None:
            while not done.is_set():
                if client.processing().get(victim_addr):
                    os.kill(victim_pid, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.005)

        watcher = threading.Thread(target=killer, daemon=True)
        watcher.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = lmer(FORMULA, files, weights=("w1", "wj"), REML=False, engine="dask",
                       scheduler=address)
        done.set()
        watcher.join(5)
        client.close()
        assert killed.is_set(), "the worker was not killed while the fit ran"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mem = lmer(FORMULA, df, weights=("w1", "wj"), REML=False)
        assert fit.loglik == pytest.approx(mem.loglik, rel=1e-9)
        np.testing.assert_allclose(fit.beta, mem.beta, rtol=1e-8)
    finally:
        for p in procs[::-1]:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
