# The two commands of the README: `make run` (install + whole pipeline) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: run test bench data clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt exists and the files are missing
# (data/raw/ and a torchvision download are the other sources, see README).
data:
	@if [ ! -d $(FMNIST) ] && ! ls data/raw/*ubyte* >/dev/null 2>&1 && command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist \
		|| echo "could not install dataset-fashion-mnist; prepare will try data/raw/ and a download"; \
	fi

run: $(STAMP) data
	test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP) data
	$(BIN)/python -m modeconn.bench

clean-venv:
	rm -rf $(VENV)
