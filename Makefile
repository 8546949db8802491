# Two commands do all the set-up on a fresh machine:
#   make run    install into .venv, optimize the default embedded model, write artifacts/ with the report
#   make test   install into .venv, run the test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[all]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

.PHONY: install run test test-thorough lint
install: $(STAMP)

run: $(STAMP)
	$(BIN)/tcomp optimize default --target cpu -o artifacts/default

test: $(STAMP)
	bash scripts/ensure_chromium.sh
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -n 2 -q

test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
