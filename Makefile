# The README's commands. `make test` and `make demo` set up .venv themselves on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.spk-meta-installed
SLOW_STAMP := $(VENV)/.spk-meta-datagen-installed
SOURCES := pyproject.toml $(shell find src configs -type f -not -name '*.pyc' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: test test-slow demo install info clean

$(VPY):
	@py="$$(sh scripts/find-python.sh)" || exit 1; \
	echo "creating $(VENV) with $$py"; \
	"$$py" -m venv $(VENV) && $(VPY) -m pip install --quiet --upgrade pip

# Non-editable on purpose: Hydra's plugin discovery can silently miss editable installs,
# and a wheel is what users get. Reinstalled whenever a source or config file changes.
$(STAMP): $(VPY) $(SOURCES)
	$(VPY) -m pip install --quiet ".[test]"
	$(VPY) -m pip install --quiet --no-deps --force-reinstall .
	@touch $(STAMP)

# The slow tests also run the data generator (PySCF, tblite): the datagen extra's
# dependencies on top of the install above (same version, so pip keeps that one).
$(SLOW_STAMP): $(STAMP)
	$(VPY) -m pip install --quiet ".[test,datagen]"
	@touch $(SLOW_STAMP)

install: $(STAMP)

# Correctness tests plus one end-to-end spktrain smoke test (under 5 minutes on 2 cores).
test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

# Every other spktrain run, the 2-process DDP fits and the PySCF data generator.
test-slow: $(SLOW_STAMP)
	$(VPY) -m pytest -m slow $(PYTEST_ARGS)

# The main job on the embedded ethanol data: no pre-training vs k = 1 vs Reptile, each an
# spktrain run, fine-tuned on MP2 and evaluated per temperature (quick preset: a few
# minutes on 2 cores). Runs in demo/ so SchNetPack's $PWD/configs search-path entry cannot
# pick up this source tree instead of the installed configs. Finished runs are reused.
DEMO_ARGS ?=
demo: $(STAMP)
	mkdir -p demo && cd demo && PWD="$$(pwd)" ../$(VENV)/bin/spkmeta experiment --preset quick --out . $(DEMO_ARGS)

info: $(STAMP)
	$(VENV)/bin/spkmeta info

clean:
	rm -rf $(VENV) build dist demo
