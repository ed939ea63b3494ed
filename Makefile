# Set-up and the two entry points a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

DEMO_DIR  ?= runs/demo
DEMO_ARGS ?=

.PHONY: install demo test clean-demo

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/alz-monai demo --output-dir $(DEMO_DIR) $(DEMO_ARGS)

# lint and type check first: both take seconds, the suite minutes
test: $(STAMP)
	$(BIN)/ruff check alz_monai tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
