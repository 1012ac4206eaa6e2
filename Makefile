# The two commands of the README: `make demo` (set up + lecture workflow), `make test` (set up + tests).
PY := .venv/bin/python
OUT ?= outputs/lecture

.PHONY: setup demo test test-fast docs clean bench

setup:
	@bash scripts/bootstrap.sh

demo: setup
	@$(PY) -m twolevel lecture --out $(OUT)

test: setup
	@$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: setup
	@$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

docs: setup
	@bash scripts/docs.sh

clean:
	rm -rf .venv outputs .pytest_cache build docs/_build docs/api docs/jupyter_execute
