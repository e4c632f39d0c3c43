# Two entry points (README): `make demo` and `make test`; both set up .venv first if needed.
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test benchmark clean-env

setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) tools/run_toy_demo.py

test: setup
	$(PY) -m pytest -q tests

benchmark: setup
	$(PY) benchmarks/run_all.py

clean-env:
	rm -rf .venv
