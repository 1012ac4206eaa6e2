#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter, or fail with a message saying what to install.
# Looks at $PYTHON, then python3.13/python3.12/python3 on PATH, then pyenv's versions.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
cands=()
[ -n "${PYTHON:-}" ] && cands+=("$PYTHON")
for n in python3.12 python3.13 python3; do
  p=$(command -v "$n" 2>/dev/null) && cands+=("$p")
done
root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for d in $(ls -d "$root"/versions/3.1[2-9]* 2>/dev/null | sort -V); do
  for n in python3 python; do [ -x "$d/bin/$n" ] && cands+=("$d/bin/$n"); done
done
for c in "${cands[@]}"; do
  if ok "$c"; then "$c" -c 'import sys; print(sys.executable)'; exit 0; fi
done
echo "error: twolevel needs Python >= 3.12 (PyMC 6, ArviZ 1.x); none found on PATH or in pyenv ($root/versions). Install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12." >&2
exit 1
