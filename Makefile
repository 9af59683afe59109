# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# what it needs (uv, from PyPI, into the project's own virtualenv); nothing is done by hand.
PYTHON ?= python3
VENV ?= .venv
VENV_MIN ?= .venv-min
AIRFLOW_SPEC ?= apache-airflow>=3.3,<3.4
AIRFLOW_MIN_SPEC ?= apache-airflow>=3.1,<3.2
PYTEST_ARGS ?=

BIN := $(VENV)/bin
BIN_MIN := $(VENV_MIN)/bin
INSTALLED := $(VENV)/.installed
INSTALLED_MIN := $(VENV_MIN)/.installed

.PHONY: help venv test test-min test-slow lint typecheck unit docs screenshots demo bench clean

help:
	@echo "make demo      run the example DAG through real Airflow against the emulator and a loopback S3"
	@echo "make test      lint, type-check, docs and the whole test suite (Airflow 3.3.x)"
	@echo "make test-min  unit tests against the lowest supported Airflow (3.1.x)"
	@echo "make test-slow the long reliability variants (chaos at scale, more crash trials)"
	@echo "make bench     benchmarks; figures go to docs/benchmarks.md"
	@echo "make docs      Sphinx docs, warnings as errors"
	@echo "make screenshots  refresh docs/img/connection-form.png from the browser test"

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade uv

$(INSTALLED): pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[dev,docs]" "$(AIRFLOW_SPEC)"
	@touch $@

venv: $(INSTALLED)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/mypy

unit: $(INSTALLED)
	@scripts/run-pytest $(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: lint typecheck docs
	@scripts/run-pytest $(BIN)/pytest $(PYTEST_ARGS)

test-slow: $(INSTALLED)
	@scripts/run-pytest $(BIN)/pytest -m slow $(PYTEST_ARGS)

$(BIN_MIN)/uv:
	$(PYTHON) -m venv $(VENV_MIN)
	$(BIN_MIN)/python -m pip install --quiet --upgrade uv

$(INSTALLED_MIN): pyproject.toml | $(BIN_MIN)/uv
	$(BIN_MIN)/uv pip install --quiet --python $(BIN_MIN)/python -e ".[test]" "$(AIRFLOW_MIN_SPEC)"
	@touch $@

test-min: $(INSTALLED_MIN)
	@$(BIN_MIN)/python -c "import airflow; print('Airflow', airflow.__version__)"
	@scripts/run-pytest $(BIN_MIN)/pytest tests/unit $(PYTEST_ARGS)

docs: $(INSTALLED)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

screenshots: $(INSTALLED)
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest tests/browser -k save

demo: $(INSTALLED)
	$(BIN)/python scripts/demo.py

bench: $(INSTALLED)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) $(VENV_MIN) docs/_build .demo .bench .pytest_cache .mypy_cache .ruff_cache
