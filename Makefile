# tune-hand: `make demo` runs the main job, `make test` the test suite.
# Both create .venv and install torch FIRST, then the project, so pip never resolves an
# unpinned torch (a multi-GB CUDA download). GPU users: make TORCH_SPEC="torch==2.13.0" \
# TORCH_INDEX=https://download.pytorch.org/whl/cu128 (or any CUDA build) before the rest.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Local Ray: token authentication (tune-hand's and Ray's default) for the demo; the test suite
# sets RAY_AUTH_MODE=disabled itself (tests/conftest.py).

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/tune-hand demo --out demo_out

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench_renderer.py --json benchmarks/results/renderer.json

clean:
	rm -rf $(VENV) demo_out .pytest_cache
