# Everything runs from the project virtualenv that `make setup` builds.
VENV := .venv
PYTHON := $(VENV)/bin/python
# Three workers on the 2 cores here: with two, the cores were busy about half the time (much of the
# suite waits: drains, back-offs, outages, servers coming up), 16:16 for make test; with three,
# 85 % busy and 12:30 (measured side by side). loadgroup keeps each file of tests/integration on
# one worker, so its servers start once (the groups come from tests/support/xdist_groups.py, the
# scheduler tests/conftest.py supplies); tests/conftest.py hands the soak tests out first, in the
# order it sorts them (hence no reordering), so they overlap the rest. A worker that crashes ends the
# run (xdist 3.8's replacement worker once left a loadgroup run waiting, all tests but its own done).
XDIST := -n 3 --dist loadgroup --no-loadscope-reorder --max-worker-restart=0

.PHONY: setup check test-fast test lint demo clean

setup:
	bash scripts/setup.sh

# The quick loop: ruff, the import contracts and the unit tests (about a minute).
check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PYTHON) -m pytest -q $(XDIST) tests/unit

# The everyday loop: every test but the soak tests (the 2,000-row fault suite, the Weaviate cluster,
# the light worker install) and the lifecycle tests (processes started, killed and restarted: crashes,
# outages, drains, replicas, standbys, port races, model moves), which make test runs.
test-fast: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PYTHON) -m pytest -q $(XDIST) -m "not soak and not lifecycle"

# Every test (what .ci/run runs). Any nonzero exit fails the target, including pytest exit 5 (no tests collected).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PYTHON) -m pytest -q $(XDIST) --durations=40

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

demo: setup
	$(VENV)/bin/qvl demo

# Keeps .venv: rebuilding it downloads torch again. `rm -rf .venv` forces a fresh one.
clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +
