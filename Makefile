# The two commands of the README: `make run` (install + whole pipeline) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: help run test check fast lint format bench data clean-venv width instability bn

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt exists and the files are missing
# (data/raw/ and a torchvision download are the other sources, see docs/pipeline.md).
data:  ## install Fashion-MNIST from Debian's package when it is missing
	@if [ ! -d $(FMNIST) ] && ! ls data/raw/*ubyte* >/dev/null 2>&1 && command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist \
		|| echo "could not install dataset-fashion-mnist; prepare will try data/raw/ and a download"; \
	fi

run: $(STAMP) data  ## install, then run the whole pipeline (dvc repro)
	test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

width: $(STAMP) data  ## install, then run the width experiment (its own pipeline, experiments/width)
	test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro experiments/width/dvc.yaml

instability: $(STAMP) data  ## install, then run the instability experiment (its own pipeline, experiments/instability)
	test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro experiments/instability/dvc.yaml

bn: $(STAMP) data  ## install, then run the BN experiment (barrier card with BatchNorm, REPAIR; experiments/bn)
	test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro experiments/bn/dvc.yaml

test: $(STAMP) lint  ## install, lint (ruff), then run the test suite (pytest)
	$(BIN)/python -m pytest -q

check: $(STAMP) lint  ## the edit loop: lint, then the tests not marked slow (pyproject.toml says what slow covers)
	$(BIN)/python -m pytest -q -m "not slow"

fast: check  ## the same as check

lint: $(STAMP)  ## ruff: lint and format check (configured in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## ruff: fix what can be fixed and format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) data  ## throughput figures of the default model and data (1 and 2 processes too)
	$(BIN)/python -m tools.bench
	$(BIN)/python -m tools.bench_ddp --processes 2

clean-venv:  ## remove the virtual environment
	rm -rf $(VENV)
