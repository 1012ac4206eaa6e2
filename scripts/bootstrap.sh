#!/usr/bin/env bash
# Create .venv with a Python >= 3.12 and install twolevel (editable) with the locked dependencies.
# The editable install is setuptools' *strict* mode: a tree of links to the repository's files
# under build/__editable__.* that type checkers and IDEs follow like an installed package (no
# import hook); it compiles the C kernels (setup.py). It reruns when a module is added or removed
# (the stamp records the file list) or when a .c file, setup.py, pyproject.toml or
# requirements.lock is newer than the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.twolevel-installed
files=$(find twolevel data models workflows -name '*.py' -o -name '*.c' -o -name '*.csv' -o -name '*.md' -o -name 'py.typed' | LC_ALL=C sort | cksum)
fresh=1
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$files" ] || fresh=0
for f in pyproject.toml requirements.lock setup.py $(git ls-files '*.c' 2>/dev/null || ls models/*.c models/*/*.c); do
  [ -f "$stamp" ] && [ "$stamp" -nt "$f" ] || fresh=0
done
if [ "$fresh" = 1 ]; then
  exit 0
fi
py=$(scripts/find_python.sh)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)'; then
  rm -rf .venv
  echo "[setup] creating .venv with $py"
  "$py" -m venv .venv
fi
echo "[setup] installing dependencies and compiling the kernels (first run: about 2-3 minutes)"
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock \
  --config-settings editable_mode=strict -e ".[test,scale]"
echo "[setup] filling numba's cache with the Bayesian reference kernels (once per installation)"
.venv/bin/python -c "from twolevel.models.bayes.sampler import compile_kernels; compile_kernels()"
echo "$files" > "$stamp"
echo "[setup] done: $(.venv/bin/python --version)"
