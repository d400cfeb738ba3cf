# The two newcomer commands: `make demo` (set up, then run the whole pipeline at CPU scale)
# and `make test` (set up, then run the test suite). Both create ./.venv on first use.
# `make docs` builds the documentation site into site/ (warnings are errors).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# A pinned CPU-capable torch is installed first when the venv has none, so that the open
# range in pyproject.toml (torch>=2.2) is already satisfied and pip downloads nothing big.
TORCH ?= torch==2.13.0

.PHONY: demo test docs setup setup-dev setup-docs lint clean

demo: setup
	$(BIN)/rdbench demo --out results/demo --force

test: setup-dev
	$(BIN)/python -m pytest -q

lint: setup-dev
	$(BIN)/ruff check .

# The generated blocks of docs/*.md (command help, layer tables) are refreshed from the code
# first; then a strict build, so a broken link, a page outside the nav or a bad anchor fails.
docs: setup-docs
	$(BIN)/python docs/generate.py
	$(BIN)/mkdocs build --strict --site-dir site

setup: $(VENV)/.rdbench-installed
setup-dev: $(VENV)/.rdbench-dev-installed
setup-docs: $(VENV)/.rdbench-docs-installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: $(VENV)/bin/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	touch $@

$(VENV)/.rdbench-installed: $(VENV)/.torch-installed pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.rdbench-dev-installed: $(VENV)/.torch-installed pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.rdbench-installed

$(VENV)/.rdbench-docs-installed: $(VENV)/.torch-installed pyproject.toml
	$(BIN)/pip install -q -e ".[docs]"
	touch $@ $(VENV)/.rdbench-installed

clean:
	rm -rf $(VENV) results/demo site
