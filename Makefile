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
# PERF_PROTOCOL=http drives the REST port (OIP v2 over HTTP, binary tensors) instead of gRPC.
PERF_VENV := .perf-venv
PERF_MODEL ?= multi_task
PERF_PROTOCOL ?= grpc
PERF_TARGET ?= localhost:$(if $(filter http,$(PERF_PROTOCOL)),$(HTTP_PORT),$(GRPC_PORT))
PERF_ARGS ?= --concurrency-range 1:8:7 --measurement-interval 5000 -s 50 --percentile=99

.PHONY: install serve test protos lint demo-models clean perf perf-tools tools image image-test deploy-check bench-overhead

install: $(STAMP)

# The venv is rebuilt when the dependencies change; requirements.lock pins every package.
# pip shows its progress: the first install is long, and silence would look like a hang.
$(STAMP): pyproject.toml requirements.lock
	@echo "Installing plexserve and its pinned dependencies into $(VENV): the first time this"
	@echo "downloads about 0.7 GB (TensorFlow is most of it; 2.4 GB once installed) and takes"
	@echo "several minutes (6 to 9 on a 2-CPU machine)."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check \
		-c requirements.lock -e '.[test,lint,plot]'
	touch $(STAMP)

# Builds the demo models that are missing from $(REPO) (an existing model is left as it is).
demo-models: $(STAMP)
	@missing=$$(for m in $(DEMO_MODELS); do [ -d $(REPO)/$$m ] || echo $$m; done); \
	if [ -n "$$missing" ]; then $(BIN)/plexserve build $$missing --repo $(REPO); fi

serve: demo-models
	$(BIN)/plexserve serve --repo $(REPO) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT)

test: lint tools perf-tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The suite drives the server with Triton's perf_analyzer where it can be installed (it needs
# libb64 from apt-get, so root); elsewhere those tests skip and say how to install it.
perf-tools:
	@$(MAKE) --no-print-directory $(PERF_VENV)/.installed-stamp || \
		echo "perf_analyzer could not be installed: the tests that run it will skip"

# Regenerates service/proto/ from protos/*.proto (the test suite fails when they differ).
protos: $(STAMP)
	$(BIN)/python protos/generate.py

lint: $(STAMP)
	$(BIN)/ruff check service models tests protos bench
	$(BIN)/ruff format --check service models tests protos bench
	@rm -rf build/typecheck && mkdir -p build/typecheck/plexserve
	@ln -s $(CURDIR)/service/* build/typecheck/plexserve/ && ln -s $(CURDIR)/models build/typecheck/plexserve/models
	MYPYPATH=build/typecheck $(BIN)/mypy -p plexserve

# perf_analyzer lives in its own venv: its tritonclient pins protobuf < 7, which breaks our stubs.
# The wheel carries the binary; it needs libb64 and the CUDA runtime library (even on CPU).
# --input-data zero: perf_analyzer's random ints overflow id inputs that feed an Embedding.
perf: $(PERF_VENV)/.installed-stamp
	LD_LIBRARY_PATH=$$(echo $(CURDIR)/$(PERF_VENV)/lib/python3*/site-packages/nvidia/cuda_runtime/lib) \
	$(PERF_VENV)/bin/perf_analyzer -m $(PERF_MODEL) -u $(PERF_TARGET) -i $(PERF_PROTOCOL) \
		--input-data zero \
		$(PERF_ARGS)

$(PERF_VENV)/.installed-stamp:
	@ldconfig -p | grep -q libb64.so.0d || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y libb64-0d || { apt-get update && apt-get install -y libb64-0d; }; \
		else echo "perf_analyzer needs libb64: run 'apt-get install -y libb64-0d' as root"; exit 1; fi; }
	$(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/pip install --quiet --disable-pip-version-check \
		'tritonclient[all]==2.51.0' nvidia-cuda-runtime-cu12
	touch $@

clean:
	rm -rf $(VENV) $(PERF_VENV) $(TOOLS_VENV) .pytest_cache .mypy_cache .ruff_cache

# --- Deployment (README "Deploy"): the image and the Kubernetes manifests --------------------
TOOLS_VENV := .tools-venv
TOOLS_STAMP := $(TOOLS_VENV)/.installed-stamp
VARIANT ?= cpu
IMAGE ?= plexserve:$(VARIANT)

# hadolint, shellcheck, kubernetes-validate and the kserve SDK (its resource models validate
# deploy/kserve), in their own venv: never in requirements.lock.
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): deploy/tools-requirements.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check -r deploy/tools-requirements.txt
	touch $(TOOLS_STAMP)

# Builds $(IMAGE) (VARIANT=cpu|gpu) with docker when an engine answers, else with buildah.
# Optional: BASE_IMAGE=..., BUILDAH="buildah --storage-driver vfs", PIP_CA=/path/to/ca-bundle.
image:
	VARIANT=$(VARIANT) IMAGE=$(IMAGE) deploy/image/build.sh

# Builds the image with buildah on a local debootstrap base, runs it (non-root, read-only root)
# and answers ModelInfer from outside; 3-5 minutes, needs root. See deploy/image/image-test.sh.
image-test: $(STAMP)
	deploy/image/image-test.sh

# Renders and validates the Kubernetes and KServe manifests, lints the Dockerfile and scripts
# (tests/deploy).
deploy-check: $(STAMP) tools
	@command -v kubectl >/dev/null || echo "deploy-check: kubectl is not installed: the rendering tests will skip"
	$(BIN)/python -m pytest -q tests/deploy $(PYTEST_ARGS)

# The per-request cost against the floor server, with perf_analyzer (bench/overhead.py):
# `make bench-overhead` or, to compare with another checkout, OVERHEAD_ARGS="--compare-src DIR".
OVERHEAD_ARGS ?= --rounds 2
bench-overhead: $(STAMP) $(PERF_VENV)/.installed-stamp
	$(BIN)/python bench/overhead.py $(OVERHEAD_ARGS)
