# Two entry points for a fresh machine: `make run` (install + replay) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python >= 3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/prewarmer replay

test: $(STAMP)
	@scripts/ensure-test-tools
	$(BIN)/ruff check prewarmer tests benchmarks scripts
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/prewarmer bench replay

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
