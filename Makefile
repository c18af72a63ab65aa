# The two commands a new user types (see README.md):
#   make train   virtual env, aeexp, Fashion-MNIST, one default training run
#   make test    virtual env, aeexp with its test extra, the test suite (make test-fast: without the slow tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision must come as a matching pair; these two install together offline here.
TORCH ?= torch==2.14.1 torchvision==0.29.1
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: venv install dev data train test test-fast bench

venv: $(BIN)/python
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Each installs torch and aeexp in one pip run, and again only when pyproject.toml changes
# (a stamp file in the venv), so `make test` installs the package at most once.
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH) -e .
	touch $@

dev: $(VENV)/.installed-dev
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH) -e ".[dev]"
	touch $@ $(VENV)/.installed

# Fashion-MNIST from Debian's package where apt is there; elsewhere torchvision downloads it on the first run.
data:
	@if [ -e $(FASHION_MNIST) ]; then echo "Fashion-MNIST: $(FASHION_MNIST) present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; } || \
	  echo "apt could not install dataset-fashion-mnist; the first run will try to download it"; \
	else echo "no apt: the first run downloads Fashion-MNIST through torchvision"; fi

train: install data
	$(BIN)/python train.py dataset=fashion_mnist

# Everything, one test at a time (about 10 minutes on 2 cores); the inner loop while editing,
# without the slow tests and one worker per core: make test-fast (about a minute on 2 cores)
test: dev
	$(BIN)/python -m pytest

test-fast: dev
	$(BIN)/python -m pytest -m "not slow" -n auto

bench: install data
	$(BIN)/python benchmarks/bench_epoch.py
