# plexserve: `make serve` and `make test` do all the set-up on a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
REPO ?= model_repository
GRPC_PORT ?= 8500
HTTP_PORT ?= 8501
DEMO_MODELS := mlp multi_input inception residual shared_encoder multi_output text_classifier multi_task
PYTEST_ARGS ?=

.PHONY: install serve test protos lint demo-models clean tools image image-test deploy-check

install: $(STAMP)

# The venv is rebuilt when the dependencies change; requirements.lock pins every package.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test,lint]'
	touch $(STAMP)

# Builds the demo models that are missing from $(REPO) (an existing model is left as it is).
demo-models: $(STAMP)
	@missing=$$(for m in $(DEMO_MODELS); do [ -d $(REPO)/$$m ] || echo $$m; done); \
	if [ -n "$$missing" ]; then $(BIN)/plexserve build $$missing --repo $(REPO); fi

serve: demo-models
	$(BIN)/plexserve serve --repo $(REPO) --grpc-port $(GRPC_PORT)

test: lint tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Regenerates service/proto/ from protos/*.proto (the test suite fails when they differ).
protos: $(STAMP)
	$(BIN)/python protos/generate.py

lint: $(STAMP)
	$(BIN)/ruff check service models tests protos
	$(BIN)/ruff format --check service models tests protos
	$(BIN)/mypy service models

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# --- Deployment (README "Deployment"): the image and the Kubernetes manifests --------------------
TOOLS_VENV := .tools-venv
TOOLS_STAMP := $(TOOLS_VENV)/.installed-stamp
VARIANT ?= cpu
IMAGE ?= plexserve:$(VARIANT)

# hadolint, shellcheck and kubernetes-validate, in their own venv: never in requirements.lock.
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

# Renders and validates the Kubernetes manifests, lints the Dockerfile and scripts (tests/deploy).
deploy-check: $(STAMP) tools
	@command -v kubectl >/dev/null || echo "deploy-check: kubectl is not installed: the rendering tests will skip"
	$(BIN)/python -m pytest -q tests/deploy $(PYTEST_ARGS)
