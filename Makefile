# Quick start: `make demo` (a real study on the embedded backend) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_HOME ?= .spotsweep-demo
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench infra-check clean

venv: $(STAMP)

# The worker extra (TensorFlow, Keras, TensorBoard): the demo runs workers and the tests train.
# A submitter alone is `pip install .`.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[worker,dev]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" SPOTSWEEP_HOME=$(DEMO_HOME) bash examples/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

infra-check:
	bash ci/infra/run.sh

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache
