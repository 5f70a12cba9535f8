# Two commands set everything up on a fresh machine:
#   make run   - create .venv, install, fetch the weights, start the backend on :9090
#   make test  - the same set-up plus what the tests need, then run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 9090

.PHONY: install weights run test lint bench worker clean

$(BIN)/isnet: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/isnet

weights: install
	$(BIN)/isnet weights fetch

run: weights
	$(BIN)/isnet serve --host $(HOST) --port $(PORT)

worker: weights
	$(BIN)/python -m worker

test: weights
	$(BIN)/ruff check .
	$(BIN)/lint-imports  # the layering contracts in pyproject.toml
	$(BIN)/deptry .  # runtime dependencies are exactly what the code imports ([tool.deptry])
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: weights
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
