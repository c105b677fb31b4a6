# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint unit integration e2e bench clean chaos

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,local]'
	touch $(STAMP)

## run: bring up the whole stack on the embedded local AWS (moto server on 127.0.0.1:4566)
run: $(STAMP)
	$(VENV)/bin/egress local up

## test: lint, type-check and run every test tier (in parallel: TEST_WORKERS=0 runs them in one process)
TEST_WORKERS ?= auto
test: $(STAMP) lint
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS)

lint: $(STAMP)
	$(VENV)/bin/ruff check egress sft_agent tests bench
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

e2e: $(STAMP)
	$(PY) -m pytest -q tests/e2e

## chaos: exactly-once under SIGKILL: two workers killed 20 times at random (CHAOS_SEED=n repeats a timetable)
chaos: $(STAMP)
	CHAOS_KILLS=$${CHAOS_KILLS:-20} $(PY) -m pytest -q -s -k chaos tests/e2e/test_chaos.py

## bench: benchmarks (on demand, not part of the tests); needs the bench extras
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) bench/bench_worker.py
	$(PY) bench/bench_worker.py --only many --objects 500 --latency-ms 40
	$(PY) bench/bench_ranged.py
	$(PY) bench/bench_sft_push.py
	$(PY) bench/bench_esdk_read.py
	$(PY) bench/bench_esdk_nonframed.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .local-stack
