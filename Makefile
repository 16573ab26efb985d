# Everything runs as root on Debian 12; `make test` works on a fresh machine.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: all deps test lint demo bench clean

all: test

deps:
	bash scripts/install-deps.sh

test: deps
	.venv/bin/python -m pytest -rs tests

lint: deps
	$(VENV)/bin/ruff check nfsyncd tests
	$(VENV)/bin/mypy --strict nfsyncd

demo: deps
	$(PY) -m nfsyncd.lab.demo

bench: deps
	@if [ -f bench/run_all.py ]; then $(PY) bench/run_all.py; \
	else echo "bench/run_all.py does not exist yet"; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
