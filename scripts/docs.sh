#!/usr/bin/env bash
# make docs: install the docs extra of pyproject.toml (pinned by requirements.lock) into .venv when
# missing, then build the site with Sphinx, warnings as errors, executing the tutorials.
# TWOLEVEL_DOCS_QUICK=0 samples the tutorials' full chains (default 1: short chains).
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.twolevel-docs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
  echo "[docs] installing the documentation tools"
  reqs=$(.venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"]))')
  # shellcheck disable=SC2086
  echo "$reqs" | xargs .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock
  touch "$stamp"
fi
rm -rf docs/_build/html docs/jupyter_execute
export TWOLEVEL_DOCS_QUICK="${TWOLEVEL_DOCS_QUICK:-1}"
.venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
# a fit displayed in a notebook renders lme4's summary as HTML tables
grep -q "twolevel-summary" docs/_build/html/tutorials/predictions.html \
  || { echo "[docs] the predictions tutorial shows no summary tables" >&2; exit 1; }
echo "[docs] built docs/_build/html/index.html"
