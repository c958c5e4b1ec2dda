# The two commands: `make demo` and `make test`. Both create .venv when absent and install the
# three packages (editable) plus the dev tools, with the versions pinned in constraints.txt.
# `make cuda-build-check` (run by .ci/run after `make test`) builds the CUDA extensions without a
# GPU in a second venv, .venv-cuda, that holds a CUDA build of torch.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEV_TOOLS := pytest ruff nbclient nbformat ipykernel micrograd
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean cuda-build-check

$(STAMP): constraints.txt packages/toygrad/pyproject.toml packages/kernels/pyproject.toml packages/toygpt/pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt \
		-e "packages/toygrad[plot,graph]" -e packages/kernels -e "packages/toygpt[hf,parquet]" $(DEV_TOOLS)
	touch $(STAMP)

install: $(STAMP)

# The CUDA venv: torch's CUDA build (on this project's machines pip takes a CUDA 13 build from
# local disk), ninja and numpy, and the three packages editable without their dependencies (the
# check imports toykernels and toygpt's model only). constraints.txt pins the CPU venv's torch,
# so every other pin comes from it with its torch line left out, and torch is pinned here.
CUDA_VENV := .venv-cuda
CUDA_BIN := $(CUDA_VENV)/bin
CUDA_PIP := $(CUDA_BIN)/python -m pip
CUDA_TORCH := torch==2.14.1
CUDA_STAMP := $(CUDA_VENV)/.installed

$(CUDA_STAMP): constraints.txt packages/toygrad/pyproject.toml packages/kernels/pyproject.toml packages/toygpt/pyproject.toml Makefile
	test -x $(CUDA_BIN)/python || $(PYTHON) -m venv $(CUDA_VENV)
	grep -v '^torch==' constraints.txt > $(CUDA_VENV)/constraints.txt
	$(CUDA_PIP) install -q -c $(CUDA_VENV)/constraints.txt $(CUDA_TORCH) ninja numpy pytest
	$(CUDA_PIP) install -q --no-deps -e packages/toygrad -e packages/kernels -e packages/toygpt
	touch $(CUDA_STAMP)

# Builds both extensions for sm_80 and sm_90 into .toykernels-cache (kept between runs), checks
# the ops' registrations, fake implementations and a torch.compile trace, prints the ptxas table;
# then the autocast tests on fake CUDA tensors, which index them (a CPU-only torch cannot).
# The venv's bin goes first on the PATH for its ninja; nvcc is whichever the PATH has.
cuda-build-check: $(CUDA_STAMP)
	PATH="$(CURDIR)/$(CUDA_BIN):$$PATH" TOYKERNELS_CACHE="$(CURDIR)/.toykernels-cache" \
		$(CUDA_BIN)/python tools/cuda_build_check.py --arch-list "8.0;9.0"
	$(CUDA_BIN)/python -m pytest -q -p no:cacheprovider tests/kernels/test_autocast.py \
		tests/toygpt/test_model.py -k autocast

demo: $(STAMP)
	$(BIN)/toygpt-demo --overwrite

test: $(STAMP)
	$(BIN)/ruff check packages tests tools
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check packages tests tools

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
