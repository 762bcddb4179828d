# Container images: build them with docker, podman or buildah, run the pipeline's steps and the model server in
# them. Included by the Makefile (PY, VENV, venv, RUNS). The logic lives in deploy/images.py (standard library
# only, so base-image and images need no virtualenv) and tests/containers/.
#
#   make base-image                         Python 3.11 base (Debian bookworm via debootstrap), cached by recipe
#   make container-check                    a trivial container runs here, or the reason it does not
#   make images [CONTAINER_TOOL=podman]     both images (IMAGE=component|serving: one); the local base when built,
#                                           else python:3.11-slim
#   make images COMPONENT_IMAGE=REG/shoprank-components:TAG SERVING_IMAGE=REG/shoprank-serving:TAG PUSH=1
#   make run RUNNER=container SCALE=tiny    every pipeline step in the component image (kfp.local DockerRunner)
#   make serve-container [SERVE_BUNDLE=DIR] the serving image as the cpu overlay's predictor runs it
#   make test-containers                    the container tests (tests/containers, marker `container`)

CONTAINER_TOOL ?=
# Local tags when COMPONENT_IMAGE / SERVING_IMAGE (the registry names make deploy needs) are not given.
LOCAL_COMPONENT_IMAGE ?= localhost/shoprank-components:dev
LOCAL_SERVING_IMAGE ?= localhost/shoprank-serving:dev
BUILD_COMPONENT_IMAGE = $(or $(COMPONENT_IMAGE),$(LOCAL_COMPONENT_IMAGE))
BUILD_SERVING_IMAGE = $(or $(SERVING_IMAGE),$(LOCAL_SERVING_IMAGE))
BASE_IMAGE ?=
# Extra build arguments, e.g. the GPU serving variant (see serving/Dockerfile):
#   IMAGE_BUILD_ARGS='--build-arg BASE_IMAGE=... --build-arg EXTRAS=serving,savedmodel' (DOCKER_BUILD_ARGS: old name)
IMAGE_BUILD_ARGS ?= $(DOCKER_BUILD_ARGS)
IMAGE ?=
PUSH ?= 0
CONTAINER_TEST_ARGS ?=
IMAGES_PY = python3 -m deploy.images --tool '$(CONTAINER_TOOL)'

.PHONY: base-image container-check images serve-container test-containers

base-image: ## build (or find cached) the local Python 3.11 base image with debootstrap (no registry needed)
	$(IMAGES_PY) base-image

container-check: ## run a trivial container (non-root, read-only) from the base image; say why when that fails
	$(IMAGES_PY) check $(if $(BASE_IMAGE),--image '$(BASE_IMAGE)',)

images: ## build the component and serving images (docker, podman or buildah; COMPONENT_IMAGE=, SERVING_IMAGE=, PUSH=1)
	$(IMAGES_PY) build --component-image '$(BUILD_COMPONENT_IMAGE)' --serving-image '$(BUILD_SERVING_IMAGE)' \
		--base-image '$(BASE_IMAGE)' $(if $(IMAGE),--only '$(IMAGE)',) $(IMAGE_BUILD_ARGS) \
		$(if $(filter 1,$(PUSH)),--push,)

serve-container: venv ## serve the latest promoted model from the serving image, as the cpu overlay's predictor runs
	@bundle='$(SERVE_BUNDLE)'; \
	if [ -z "$$bundle" ]; then \
	  test -f '$(RUNS)/latest/summary.json' || { echo "make serve-container: $(RUNS)/latest/summary.json not found: run 'make run' first, or set SERVE_BUNDLE=DIR"; exit 1; }; \
	  bundle=$$($(PY) -c 'import json, sys; print(json.load(open(sys.argv[1]))["bundle_dir"] or "")' '$(RUNS)/latest/summary.json'); \
	  test -n "$$bundle" || { echo "make serve-container: the latest run promoted no model"; exit 1; }; \
	fi; \
	$(PY) -m deploy.images --tool '$(CONTAINER_TOOL)' serve --image '$(BUILD_SERVING_IMAGE)' --bundle "$$bundle" \
		--backend '$(filter-out auto,$(SERVE_BACKEND))' --http-port '$(SERVE_HTTP_PORT)' --grpc-port '$(SERVE_GRPC_PORT)'

test-containers: venv ## container tests: image history, serving image as deployed, pipeline in containers vs subprocess
	SHOPRANK_CONTAINER_TESTS=1 SHOPRANK_COMPONENT_IMAGE='$(BUILD_COMPONENT_IMAGE)' SHOPRANK_SERVING_IMAGE='$(BUILD_SERVING_IMAGE)' \
	CONTAINER_TOOL='$(CONTAINER_TOOL)' $(PY) -m pytest tests/containers -p no:cacheprovider -o addopts='-q -ra' \
		-m container --durations=0 $(CONTAINER_TEST_ARGS)
