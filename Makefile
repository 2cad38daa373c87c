# Quick start: `make demo` runs dfprep on a built-in demo input; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: demo test install install-test bench clean wheel-smoke

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet 'torch==2.13.0'
	$(BIN)/pip install --quiet -e '.[demo,torch]'

install-test: $(BIN)/python
	$(BIN)/pip install --quiet 'torch==2.13.0'
	$(BIN)/pip install --quiet -e '.[test,demo,torch]'

demo: install
	$(BIN)/dfprep demo -o $(DEMO_OUT)

test: install-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Build the wheel, install it (not editable) in a fresh venv, run `dfprep models` + a caddm-ffpp extract elsewhere.
wheel-smoke: install-test
	PYTHON=$(PYTHON) DEV_PYTHON=$(abspath $(BIN))/python .ci/wheel_smoke.sh

bench: install-test
	$(BIN)/python benchmarks/extract.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info .pytest_cache
