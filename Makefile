# Two entry points (README): `make demo` and `make test`; both set up .venv first if needed.
PY := .venv/bin/python

.PHONY: setup demo test app lint format benchmark clean-env

setup:
	@bash tools/setup_env.sh

# the toy training uses both cores
demo: setup
	$(PY) tools/run_toy_demo.py

# small models in tests run fastest on one thread per process
test: export OMP_NUM_THREADS = 1
test: setup
	$(PY) -m pytest -q tests

# the web app (docs/DEMO.md) on http://127.0.0.1:7860; PORT=... to change the port
PORT ?= 7860
app: setup
	$(PY) demo/app.py --port $(PORT)

# formatting (pyproject.toml: black + isort, line length 100)
LINT_PATHS := projects tests tools benchmarks datasets demo train_net.py setup.py
lint: setup
	$(PY) -m black --check --quiet $(LINT_PATHS)
	$(PY) -m isort --check-only --quiet $(LINT_PATHS)

format: setup
	$(PY) -m isort --quiet $(LINT_PATHS)
	$(PY) -m black --quiet $(LINT_PATHS)

benchmark: setup
	$(PY) benchmarks/run_all.py

clean-env:
	rm -rf .venv
