# Set-up and everyday commands. Every target installs what it needs into .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test lint bench clean

$(STAMP): pyproject.toml examples/adapter-template/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps -e examples/adapter-template
	touch $(STAMP)

## Run the gateway on its embedded default (SQLite under ./var, demo partners).
run: $(STAMP)
	$(BIN)/tongban serve

## Submit sample cases to a running gateway and watch them flow.
demo: $(STAMP)
	$(BIN)/tongban demo

## The whole test suite: lint, types, tests (installs Chromium from Debian's packages if missing,
## for the test that renders /docs in a real browser).
test: $(STAMP)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test will be skipped (fails under CI=true)"
	$(BIN)/ruff check gateway adapters tests bench examples tools
	$(BIN)/ruff format --check gateway adapters tests bench examples tools
	$(BIN)/mypy
	$(BIN)/mypy --strict examples/adapter-template/src
	$(BIN)/pytest -q

## Throughput and latency figures (installs wrk from Debian's packages if missing).
bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.validation

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
