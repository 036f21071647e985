# Everything runs from the project virtualenv that `make setup` builds.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: setup test lint demo clean

setup:
	bash scripts/setup.sh

# Any nonzero exit fails the target, including pytest exit 5 (no tests collected).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PYTHON) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

demo: setup
	$(VENV)/bin/qvl demo

# Keeps .venv: rebuilding it downloads torch again. `rm -rf .venv` forces a fresh one.
clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +
