# daskmask: `make demo` runs the main job, `make test` runs the tests.
# Both create the virtualenv (.venv) and install daskmask into it first, with every dependency
# at the exact version recorded in requirements/lock.txt (a pip constraints file), so a fresh
# machine runs what was tested. `make lock` records a new set from a fresh resolve;
# `make test-latest` runs the suite against the newest releases in .venv-latest (not in CI).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
LATEST_VENV ?= .venv-latest

BENCH_INPUTS ?= walkthrough hcp-nii hcp-gz hcp-2x

.PHONY: demo test test-quick test-latest lock bench lint format clean browser bytecode

demo: bytecode
	$(BIN)/python -m daskmask demo

test: bytecode browser
	$(BIN)/ruff check daskmask tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everyday work: the tests that need no cluster, browser or large file (a few minutes).
test-quick: bytecode
	$(BIN)/ruff check daskmask tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not cluster and not browser" $(PYTEST_ARGS)

# daskmask against nilearn and the machine, ending with the table of issue 14's targets (each
# figure, its ratio, met or not; benchmarks/README.md). BENCH_INPUTS=huge for the 30 GB run.
bench: bytecode
	$(BIN)/python benchmarks/bench_masker.py --inputs $(BENCH_INPUTS)

lint: $(STAMP)
	$(BIN)/ruff check daskmask tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/ruff format --check daskmask tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format daskmask tests benchmarks
	$(BIN)/ruff check --fix daskmask tests benchmarks

# daskmask's own bytecode, as pip writes it for an installed package. An editable install
# leaves it to the first import, which does not write it where PYTHONDONTWRITEBYTECODE is set
# (as on this project's machines): every process (a command, a test's subprocess, a cluster's
# worker) would then compile daskmask's ~90 modules again, 0.2-0.45 s of its start. Quick when
# nothing changed; a stale file is never used (Python checks each source's modification time).
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q daskmask

# Debian's Chromium, for the test that opens a saved report in a real browser.
browser:
	bash .ci/install-browser.sh

# The same suite against the newest releases that pyproject.toml's open ranges allow, in its own
# venv and without the lock: the early warning that a new release changes a result. Not in CI.
test-latest: browser
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[test,fast]"
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable | diff $(LOCK) - | grep '^[<>] [^#]' || true
	$(LATEST_VENV)/bin/ruff check daskmask tests benchmarks
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

# A fresh resolve of the newest releases, written to $(LOCK); run `make test` before committing it.
lock:
	PYTHON=$(PYTHON) LOCK=$(LOCK) bash .ci/lock.sh

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,fast]" -c $(LOCK)
	$(BIN)/python -m pip check
	$(BIN)/python .ci/check_lock.py $(LOCK)
	touch $(STAMP)

clean:
	rm -rf $(VENV) $(LATEST_VENV) .venv-lock .pytest_cache .ruff_cache .hypothesis
