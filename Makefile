# daskmask: `make demo` runs the main job, `make test` runs the tests.
# Both create the virtualenv (.venv) and install daskmask into it first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_INPUTS ?= walkthrough hcp-nii hcp-gz hcp-2x

.PHONY: demo test bench lint format clean browser

demo: $(STAMP)
	$(BIN)/python -m daskmask demo

test: $(STAMP) browser
	$(BIN)/ruff check daskmask tests benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# daskmask against nilearn and the machine (benchmarks/README.md); BENCH_INPUTS=huge for 30 GB.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_masker.py --inputs $(BENCH_INPUTS)

lint: $(STAMP)
	$(BIN)/ruff check daskmask tests benchmarks
	$(BIN)/ruff format --check daskmask tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format daskmask tests benchmarks
	$(BIN)/ruff check --fix daskmask tests benchmarks

# Debian's Chromium, for the test that opens a saved report in a real browser.
browser:
	bash .ci/install-browser.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,fast]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
