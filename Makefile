# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# what it needs (uv, from PyPI, into the project's own virtualenv); nothing is done by hand.
# The other virtualenvs (.venv-min, .venv-mid, .venv-lowest, .venv-dist) are made by .venv's uv.
# Python 3.11: the version every target tests (python3 if no python3.11 is on the PATH; the venv
# target then says which version it got); test-py3.12 and test-py3.13 run the unit tests on the
# other versions the classifiers claim.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV ?= .venv
VENV_MIN ?= .venv-min
VENV_MID ?= .venv-mid
VENV_LOWEST ?= .venv-lowest
VENV_DIST ?= .venv-dist
AIRFLOW_SPEC ?= apache-airflow>=3.3,<3.4
AIRFLOW_MIN_SPEC ?= apache-airflow>=3.1,<3.2
AIRFLOW_MID_SPEC ?= apache-airflow>=3.2,<3.3
# Airflow 3.2.2 shipped with older ones (resolved at its release, 2026-05-29: fastapi 0.136.3, svcs
# 25.1.0, what its constraints file pins); today's newest break its own execution API, so dag.test()
# fails for any DAG: fastapi>=0.156.1 'needs a discriminator field', svcs>=26 'no attribute
# svcs_registry'. Bisected with a one-task DAG: the loosest bounds that work, each one needed.
MID_CONSTRAINTS ?= "fastapi<0.156.1" "svcs<26"
PYTEST_ARGS ?=
# Test runs spread over PYTEST_WORKERS processes (pytest-xdist, whole files per worker): most of a
# test's wall time is waiting (emulated export tasks, Airflow subprocesses starting), so 4 workers
# on 2 cores halve the unit suite (9 min 41 s -> 4 min 47 s, measured). 0: one process. Tests that
# run a whole Airflow deployment and time its processes (marker e2e) run alone, after the others.
PYTEST_WORKERS ?= 4
XDIST = $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)
# A selection (PYTEST_ARGS) may leave one of a target's two runs with nothing to collect.
ALLOW_EMPTY = $(if $(PYTEST_ARGS),--allow-empty)

BIN := $(VENV)/bin
UV := $(BIN)/uv
INSTALLED := $(VENV)/.installed
INSTALLED_MIN := $(VENV_MIN)/.installed
INSTALLED_MID := $(VENV_MID)/.installed
INSTALLED_LOWEST := $(VENV_LOWEST)/.installed

OTHER_PYTHONS := 3.12 3.13

.PHONY: help venv test test-min test-mid test-lowest test-slow lint typecheck unit docs screenshots demo bench \
	dist clean $(OTHER_PYTHONS:%=test-py%)

help:
	@echo "make demo         run the example DAG through real Airflow against the emulator and a loopback S3"
	@echo "make test         the full gate on Airflow 3.3.x: lint, type-check, docs, then the whole suite"
	@echo "make unit         only the unit tests on Airflow 3.3.x; quick selections: make unit PYTEST_ARGS='-k hook'"
	@echo "make test-min     unit and browser tests on Airflow 3.1.x, newest other dependencies (.venv-min)"
	@echo "make test-mid     unit tests on Airflow 3.2.x, newest other dependencies but MID_CONSTRAINTS (.venv-mid)"
	@echo "make test-lowest  unit tests with every direct dependency at its declared floor (.venv-lowest)"
	@echo "make test-py3.12  unit tests on Python 3.12, Airflow 3.3.x (.venv-py3.12); test-py3.13 likewise"
	@echo "make test-cluster CeleryExecutor cluster (Postgres, Redis, two workers, two triggerers), a backfill with failures"
	@echo "make test-slow    the long reliability variants (chaos at scale, more crash trials)"
	@echo "make lint         ruff check and ruff format --check"
	@echo "make typecheck    mypy (strict) over the package"
	@echo "make docs         Sphinx docs into docs/_build/html, warnings as errors"
	@echo "make dist         wheel and sdist into dist/, twine check, install the wheel into a clean virtualenv"
	@echo "make screenshots  refresh docs/img/connection-form.png from the browser test (Airflow 3.3.x)"
	@echo "make bench        benchmarks; figures go to docs/benchmarks.md"
	@echo "make venv         only create .venv (provider editable, Airflow 3.3.x, dev and docs tools)"
	@echo "make clean        remove the virtualenvs, dist/ and build output"
	@echo "PYTEST_ARGS='...' is passed to pytest by every test target; PYTEST_WORKERS=N (default 4, 0 = one process)"
	@echo "                  sets how many pytest-xdist workers the test, unit and test-min/-mid/-lowest runs use."

$(UV):
	@$(PYTHON) -c 'import sys; sys.version_info[:2] == (3, 11) or print(f"note: {sys.executable} is Python {sys.version.split()[0]}; the package is tested on 3.11 only (make PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade uv

$(INSTALLED): pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e ".[dev,docs]" "$(AIRFLOW_SPEC)"
	@touch $@

venv: $(INSTALLED)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/mypy

unit: $(INSTALLED)
	@scripts/run-pytest $(BIN)/pytest tests/unit $(XDIST) $(PYTEST_ARGS)

test: lint typecheck docs
	@scripts/run-pytest $(ALLOW_EMPTY) $(BIN)/pytest $(XDIST) -m "not slow and not e2e" $(PYTEST_ARGS)
	@scripts/run-pytest $(ALLOW_EMPTY) $(BIN)/pytest -m "e2e and not slow" $(PYTEST_ARGS)

test-slow: $(INSTALLED)
	@scripts/run-pytest $(BIN)/pytest -m slow $(PYTEST_ARGS)

# One virtualenv per supported Airflow line, made by .venv's uv. `uv pip install` upgrades to the
# newest versions the spec allows whenever pyproject.toml changes. Each run has its own pytest
# temp directory under build/, so runs side by side (.ci/run) never prune each other's.
%/bin/python: | $(UV)
	$(UV) venv --quiet --python $(PYTHON) $*

$(INSTALLED_MIN): pyproject.toml | $(VENV_MIN)/bin/python
	$(UV) pip install --quiet --python $(VENV_MIN)/bin/python -e ".[test]" "$(AIRFLOW_MIN_SPEC)"
	@touch $@

$(INSTALLED_MID): pyproject.toml Makefile | $(VENV_MID)/bin/python
	$(UV) pip install --quiet --python $(VENV_MID)/bin/python -e ".[test]" "$(AIRFLOW_MID_SPEC)" $(MID_CONSTRAINTS)
	@touch $@

# The declared floors, resolved with the project's own requirements as the root: every direct
# dependency at the lowest version it allows, everything else as new as a user would get today.
# `uv pip sync` makes the virtualenv exactly that set, also after a floor moved.
$(INSTALLED_LOWEST): pyproject.toml | $(VENV_LOWEST)/bin/python
	$(UV) pip compile --quiet pyproject.toml --extra test --resolution lowest-direct \
		--python $(VENV_LOWEST)/bin/python -o $(VENV_LOWEST)/requirements.txt
	$(UV) pip sync --quiet --python $(VENV_LOWEST)/bin/python $(VENV_LOWEST)/requirements.txt
	$(UV) pip install --quiet --python $(VENV_LOWEST)/bin/python --no-deps -e .
	@touch $@

test-min: $(INSTALLED_MIN)
	@$(VENV_MIN)/bin/python -c "import airflow; print('Airflow', airflow.__version__)"
	@mkdir -p build/pytest
	@scripts/run-pytest $(VENV_MIN)/bin/pytest tests/unit tests/browser --basetemp=build/pytest/test-min $(XDIST) $(PYTEST_ARGS)

test-mid: $(INSTALLED_MID)
	@$(VENV_MID)/bin/python -c "import airflow; print('Airflow', airflow.__version__)"
	@mkdir -p build/pytest
	@scripts/run-pytest $(VENV_MID)/bin/pytest tests/unit --basetemp=build/pytest/test-mid $(XDIST) $(PYTEST_ARGS)

test-lowest: $(INSTALLED_LOWEST)
	@$(VENV_LOWEST)/bin/python scripts/check_floors.py --extra test
	@mkdir -p build/pytest
	@scripts/run-pytest $(VENV_LOWEST)/bin/pytest tests/unit --basetemp=build/pytest/test-lowest $(XDIST) $(PYTEST_ARGS)

$(OTHER_PYTHONS:%=test-py%): test-py%: | $(UV)
	@scripts/test-other-python $* $(UV) "$(AIRFLOW_SPEC)" $(XDIST) $(PYTEST_ARGS)

docs: $(INSTALLED)
	scripts/install-system-packages docs
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

screenshots: $(INSTALLED)
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest tests/browser -k save

# What a package index gets: build, check the metadata, then install the wheel alone into a clean
# virtualenv and ask Airflow there whether it sees the provider.
dist: | $(UV)
	rm -rf dist
	$(UV) build --quiet --out-dir dist
	$(UV) tool run --quiet --from "twine>=6.1" twine check --strict dist/*
	$(BIN)/python scripts/check_dist.py --uv $(UV) --python $(PYTHON) --venv $(VENV_DIST) dist

demo: $(INSTALLED)
	$(BIN)/python scripts/demo.py

# The benchmark-only dependency (matplotlib, for the report's charts) on top of the dev install.
INSTALLED_BENCH := $(VENV)/.installed-bench

$(INSTALLED_BENCH): $(INSTALLED)
	$(UV) pip install --quiet --python $(BIN)/python -e ".[bench]" "$(AIRFLOW_SPEC)"
	@touch $@

bench: $(INSTALLED_BENCH)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) $(VENV_MIN) $(VENV_MID) $(VENV_LOWEST) $(VENV_DIST) $(OTHER_PYTHONS:%=.venv-py%) dist build \
		docs/_build .demo .bench \
		.pytest_cache .mypy_cache .ruff_cache

# make test-cluster: the provider on production-shaped Airflow (issue 16). PostgreSQL and Redis
# from Debian's packages (installed when missing), the Celery provider and the PostgreSQL drivers
# into .venv, then tests/cluster: CeleryExecutor with two workers and two triggerers, a 14-day
# backfill with a worker and a triggerer killed, a deadline while deferred, rate limits.
CLUSTER_SPEC ?= apache-airflow-providers-celery>=3.10 celery>=5.5,<5.7 psycopg2-binary>=2.9 asyncpg>=0.29
INSTALLED_CLUSTER := $(VENV)/.installed-cluster

.PHONY: test-cluster

$(INSTALLED_CLUSTER): $(INSTALLED)
	$(BIN)/uv pip install --quiet --python $(BIN)/python "$(AIRFLOW_SPEC)" $(foreach spec,$(CLUSTER_SPEC),"$(spec)")
	@touch $@

test-cluster: $(INSTALLED_CLUSTER)
	scripts/install-system-packages cluster
	@LOYALTY_CLUSTER=1 scripts/run-pytest $(BIN)/pytest tests/cluster -m cluster -p no:cacheprovider $(PYTEST_ARGS)
