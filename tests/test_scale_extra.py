"""Without twolevel's ``scale`` extra (DuckDB, Dask/distributed, pyarrow): a fit from a pandas
frame works, and asking for an engine (or a file format) that needs the extra is a clear error
naming it. Absence is simulated in a fresh interpreter by ``sys.modules[name] = None`` for those
packages: ``import`` then raises ModuleNotFoundError and ``importlib.util.find_spec`` returns
None, as when they are not installed."""

from __future__ import annotations

import json
import subprocess
import sys

LECTURE = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"

_BLOCK = """
import sys
BLOCKED = ("duckdb", "dask", "distributed", "pyarrow")
for _name in BLOCKED:
    sys.modules[_name] = None
"""


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


def test_pandas_fit_without_the_scale_extra(tmp_path):
    code = ("import twolevel as tl\n"
            f"m = tl.lmer('{LECTURE}', tl.load_data('lecture'))\n"
            "assert all(sys.modules[k] is None for k in BLOCKED)\n"
            "print(m.fixef().to_json())\n")
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["famsesc"] == __import__("pytest").approx(7.65008008, abs=1e-6)


def test_engine_duckdb_or_dask_without_the_extra_names_it(tmp_path):
    """``twolevel fit FILE --engine duckdb|dask`` without the extra: exit status 2, one line
    naming the package and the extra, nothing written."""
    from twolevel.data.loaders import load_data

    load_data("lecture").to_csv(tmp_path / "lecture.csv", index=False)
    for engine, pkg in (("duckdb", "duckdb"), ("dask", "dask")):
        code = ("from twolevel.workflows.cli import main\n"
                f"sys.exit(main(['fit', 'lecture.csv', '{LECTURE}', '--engine', '{engine}', "
                "'--json']))\n")
        r = _run(code, tmp_path)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert r.stderr.strip() == (
            f"twolevel fit: error: engine '{engine}' needs the package '{pkg}', which comes "
            "with twolevel's 'scale' extra: pip install 'twolevel[scale]'"), r.stderr
        assert [p.name for p in tmp_path.iterdir()] == ["lecture.csv"]  # nothing written


def test_parquet_file_without_pyarrow_names_the_extra(tmp_path):
    import pandas as pd

    pd.DataFrame({"y": [1.0, 2.0]}).to_parquet(tmp_path / "d.parquet")
    code = ("import twolevel as tl\n"
            "try:\n"
            "    tl.read_table('d.parquet')\n"
            "except tl.DataError as e:\n"
            "    print(e)\n")
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "reading the Parquet file 'd.parquet' needs the package 'pyarrow', which comes with "
        "twolevel's 'scale' extra: pip install 'twolevel[scale]'")
