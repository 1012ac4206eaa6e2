#!/usr/bin/env bash
# Create .venv with a Python >= 3.12 and install twolevel (editable) with the locked dependencies.
# Idempotent: does nothing when .venv is already up to date with pyproject.toml and requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.twolevel-installed
# The editable install is setuptools' *strict* mode: a tree of links to the repository's files
# under build/__editable__.* that type checkers and IDEs follow like an installed package (no
# import hook). A new or removed module needs a reinstall, so the stamp records the file list.
files=$(find twolevel data models workflows -name '*.py' -o -name '*.c' -o -name '*.csv' -o -name '*.md' -o -name 'py.typed' | LC_ALL=C sort | cksum)
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt requirements.lock ] \
   && [ "$(cat "$stamp")" = "$files" ]; then
  exit 0
fi
py=$(scripts/find_python.sh)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)'; then
  rm -rf .venv
  echo "[setup] creating .venv with $py"
  "$py" -m venv .venv
fi
echo "[setup] installing dependencies (first run: about 1-2 minutes)"
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock \
  --config-settings editable_mode=strict -e ".[test]"
echo "[setup] building the Bayesian kernels (C library and numba cache; once per installation)"
.venv/bin/python -c "from twolevel.models.bayes.sampler import compile_kernels; compile_kernels()"
echo "[setup] building glmer's C kernels (once per installation and processor)"
.venv/bin/python -c "from twolevel.models.glmm import cpirls; cpirls.build()"
echo "$files" > "$stamp"
echo "[setup] done: $(.venv/bin/python --version)"
