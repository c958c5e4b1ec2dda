# The two commands: `make demo` and `make test`. Both create .venv when absent and install the
# three packages (editable) plus the dev tools, with the versions pinned in constraints.txt.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEV_TOOLS := pytest ruff nbclient nbformat ipykernel
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): constraints.txt packages/toygrad/pyproject.toml packages/kernels/pyproject.toml packages/toygpt/pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt \
		-e "packages/toygrad[plot,graph]" -e packages/kernels -e "packages/toygpt[hf]" $(DEV_TOOLS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/toygpt-demo

test: $(STAMP)
	$(BIN)/ruff check packages tests tools
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check packages tests tools

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
