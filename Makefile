# Two entry points (README): `make demo` and `make test`; both set up .venv first if needed.
PY := .venv/bin/python

.PHONY: setup demo test benchmark clean-env

setup:
	@bash tools/setup_env.sh

# the toy training uses both cores
demo: setup
	$(PY) tools/run_toy_demo.py

# small models in tests run fastest on one thread per process
test: export OMP_NUM_THREADS = 1
test: setup
	$(PY) -m pytest -q tests

benchmark: setup
	$(PY) benchmarks/run_all.py

clean-env:
	rm -rf .venv
