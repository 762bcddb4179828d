# Data targets: the streaming ingest/preprocess benchmark. Included by the Makefile (PY, VENV, venv, RUNS).
#
#   make bench-data                                   1M, 10M and 50M events (about 2 min on 2 cores, plus
#                                                     about 40 s to generate the logs the first time)
#   make bench-data BENCH_SCALES=1000000,10000000     other scales
#
# Generated logs are kept under $(RUNS)/bench-data/events-<n>/source for reruns (about 8 bytes/event);
# ingested tables and features (10 GB at 50M events) are removed after each scale (BENCH_KEEP=1 keeps them).

BENCH_SCALES ?= 1000000,10000000,50000000
BENCH_KEEP ?= 0

.PHONY: bench-data

bench-data: venv ## data benchmark: generate 1M/10M/50M events, time + peak memory of streaming ingest/preprocess
	$(PY) -m benchmarks.bench_data --scales '$(BENCH_SCALES)' --runs-dir $(RUNS)/bench-data \
		$(if $(filter 1,$(BENCH_KEEP)),--keep,)
