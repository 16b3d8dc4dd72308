# plexserve: `make serve` and `make test` do all the set-up on a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
REPO ?= model_repository
GRPC_PORT ?= 8500
HTTP_PORT ?= 8501
DEMO_MODELS := echo mlp multi_input inception residual shared_encoder multi_output text_classifier multi_task
PYTEST_ARGS ?=
# `make perf`: Triton's perf_analyzer against a running plexserve (`make serve` in another shell).
PERF_VENV := .perf-venv
PERF_MODEL ?= multi_task
PERF_TARGET ?= localhost:$(GRPC_PORT)
PERF_ARGS ?= --concurrency-range 1:8:7 --measurement-interval 5000 -s 50 --percentile=99

.PHONY: install serve test protos lint demo-models clean perf

install: $(STAMP)

# The venv is rebuilt when the dependencies change; requirements.lock pins every package.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test,lint,plot]'
	touch $(STAMP)

# Builds the demo models that are missing from $(REPO) (an existing model is left as it is).
demo-models: $(STAMP)
	@missing=$$(for m in $(DEMO_MODELS); do [ -d $(REPO)/$$m ] || echo $$m; done); \
	if [ -n "$$missing" ]; then $(BIN)/plexserve build $$missing --repo $(REPO); fi

serve: demo-models
	$(BIN)/plexserve serve --repo $(REPO) --grpc-port $(GRPC_PORT)

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Regenerates service/proto/ from protos/*.proto (the test suite fails when they differ).
protos: $(STAMP)
	$(BIN)/python protos/generate.py

lint: $(STAMP)
	$(BIN)/ruff check service models tests protos bench
	$(BIN)/ruff format --check service models tests protos bench
	$(BIN)/mypy service models

# perf_analyzer lives in its own venv: its tritonclient pins protobuf < 7, which breaks our stubs.
# The wheel carries the binary; it needs libb64 and the CUDA runtime library (even on CPU).
# --input-data zero: perf_analyzer's random ints overflow id inputs that feed an Embedding.
perf: $(PERF_VENV)/.installed-stamp
	LD_LIBRARY_PATH=$$(echo $(CURDIR)/$(PERF_VENV)/lib/python3*/site-packages/nvidia/cuda_runtime/lib) \
	$(PERF_VENV)/bin/perf_analyzer -m $(PERF_MODEL) -u $(PERF_TARGET) -i grpc --input-data zero \
		$(PERF_ARGS)

$(PERF_VENV)/.installed-stamp:
	@ldconfig -p | grep -q libb64.so.0d || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get install -y libb64-0d; \
		else echo "perf_analyzer needs libb64: run 'apt-get install -y libb64-0d' as root"; exit 1; fi; }
	$(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/pip install --quiet --disable-pip-version-check \
		'tritonclient[all]==2.51.0' nvidia-cuda-runtime-cu12
	touch $@

clean:
	rm -rf $(VENV) $(PERF_VENV) .pytest_cache .mypy_cache .ruff_cache
