# Two commands on a fresh machine (no credentials, no network beyond the package registries):
#   make demo   installs geoft and runs the main job on the embedded synthetic ocean data
#   make test   installs geoft and runs the test suite
# The virtual environment is cached outside the clone, keyed by the dependency files, so a
# second clone (or CI run) with the same dependencies reuses it. GEOFT_VENV overrides the path.

PYTHON ?= python3
DEPS_HASH := $(shell cat pyproject.toml plugins/*/pyproject.toml Makefile | sha256sum | cut -c1-12)
VENV ?= $(or $(GEOFT_VENV),$(HOME)/.cache/geoft/venv-$(DEPS_HASH))
BIN := $(VENV)/bin
RECIPE ?= recipes/ocean-demo.yaml

.PHONY: install demo test bench clean-demo

$(VENV)/.deps-installed:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" "setuptools>=77" wheel
	# torch from the CPU/CUDA wheel pinned in DEVELOPERS.md (served from local disk here)
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e '.[test]' -e plugins/geoft-ocean -e plugins/geoft-land \
		-e plugins/geoft-hrrr
	touch $@

# Editable installs are re-pointed at this clone every time (a cached venv may come from
# another clone); --no-deps keeps it a few seconds.
install: $(VENV)/.deps-installed
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . -e plugins/geoft-ocean \
		-e plugins/geoft-land -e plugins/geoft-hrrr

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/geoft run $(RECIPE)
	@echo "report: runs/ocean-demo/evaluate/report.md"

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python bench/finetune_overhead.py
	$(BIN)/python bench/data_loading.py

clean-demo:
	rm -rf runs/ocean-demo
