# Serving targets: the KServe v2 model server on the latest promoted model, and its benchmark.
# Included by the Makefile (which defines PYTHON, PY, VENV and the venv target). The logic lives in serving/ and
# benchmarks/bench_serving.py; these recipes only pass the variables on.
#
#   make serve [RUNS=runs] [SERVE_BUNDLE=DIR] [SERVE_BACKEND=auto|tflite|savedmodel] [SERVE_WORKERS=1]
#              [SERVE_HTTP_PORT=8080] [SERVE_GRPC_PORT=8081] [SERVE_ARGS='--max_batch_wait_ms 1']
#   make bench-serve [RUNS=runs] [BENCH_SERVE_ARGS='--requests 3000']   (results: $(RUNS)/bench/serving.json)

RUNS ?= runs
SERVE_MODEL_NAME ?= shoprank-ranker
SERVE_BUNDLE ?=
SERVE_BACKEND ?= auto
SERVE_WORKERS ?= 1
SERVE_HTTP_PORT ?= 8080
SERVE_GRPC_PORT ?= 8081
SERVE_ARGS ?=
# MLServer (the benchmark's peer) pins a FastAPI that KServe does not accept: it gets its own virtualenv, under
# build/ (git-ignored). uvloop 0.21: MLServer 1.7.1's inference workers fail to start on uvloop >= 0.22.
MLSERVER_VENV ?= build/venv-mlserver
MLSERVER_PINS ?= mlserver==1.7.1 uvloop==0.21.0
BENCH_SERVE_ARGS ?=

.PHONY: serve bench-serve

serve: venv ## serve the latest promoted model (RUNS/latest) with KServe v2 over REST and gRPC
	@bundle='$(SERVE_BUNDLE)'; \
	if [ -z "$$bundle" ]; then \
	  bundle=$$($(PY) -m serving.latest '$(RUNS)') || exit 1; \
	fi; \
	echo "serving $$bundle"; \
	echo "  REST    http://localhost:$(SERVE_HTTP_PORT)/v2/models/$(SERVE_MODEL_NAME)/infer"; \
	echo "  health  http://localhost:$(SERVE_HTTP_PORT)/v2/health/ready   metadata http://localhost:$(SERVE_HTTP_PORT)/v2/models/$(SERVE_MODEL_NAME)"; \
	echo "  metrics http://localhost:$(SERVE_HTTP_PORT)/metrics"; \
	echo "  gRPC    localhost:$(SERVE_GRPC_PORT) (inference.GRPCInferenceService)"; \
	exec $(PY) -m serving --model_name '$(SERVE_MODEL_NAME)' --model_dir "$$bundle" --backend '$(SERVE_BACKEND)' \
		--workers '$(SERVE_WORKERS)' --http_port '$(SERVE_HTTP_PORT)' --grpc_port '$(SERVE_GRPC_PORT)' $(SERVE_ARGS)

$(MLSERVER_VENV)/.installed: pyproject.toml mk/serving.mk
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q --upgrade pip
	$(MLSERVER_VENV)/bin/pip install -q -e . $(MLSERVER_PINS)
	$(MLSERVER_VENV)/bin/pip check
	@touch $@

bench-serve: venv $(MLSERVER_VENV)/.installed ## serving benchmark: this server vs MLServer vs the protocol floor (needs go)
	@command -v go >/dev/null || test -x /usr/local/go/bin/go || { echo "make bench-serve: needs Go to build benchmarks/loadgen"; exit 1; }
	$(PY) -m benchmarks.bench_serving --runs-dir $(RUNS) --mlserver-venv $(MLSERVER_VENV) $(BENCH_SERVE_ARGS)
