# The two commands of the README: `make demo` and `make test`. Each does its own set-up.
.PHONY: setup demo test test-all lint format lock

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/graft demo

test: setup lint
	@bash scripts/setup_test_tools.sh
	.venv/bin/python -m pytest -q

# Also the slow tests (long real runs).
test-all: setup
	@bash scripts/setup_test_tools.sh
	.venv/bin/python -m pytest -q --runslow

lint:
	.venv/bin/ruff check src tests benchmarks scripts
	.venv/bin/ruff format --check src tests benchmarks scripts
	.venv/bin/mypy

format:
	.venv/bin/ruff format src tests benchmarks scripts
	.venv/bin/ruff check --fix src tests benchmarks scripts

# Refresh constraints.txt from pyproject.toml's ranges (a fresh environment, newest versions).
lock:
	@bash scripts/lock.sh
