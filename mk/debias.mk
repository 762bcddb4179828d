# Position-bias benchmark: debiased training vs today's model and the unbiased-label bound (true-relevance
# NDCG@10, click AUC), and the counterfactual estimate of clicks vs the generator's truth over click-draw seeds.
# Included by the Makefile (PY, VENV, venv, RUNS). The logic lives in benchmarks/bench_debias.py.
#
#   make bench-debias                                   default scale, all four methods (about 1 h on 2 busy cores;
#                                                       models are cached under $(RUNS)/bench-debias)
#   make bench-debias BENCH_DEBIAS_ARGS='--run runs/latest --skip-training'   part 2 on a `make run` run only

BENCH_DEBIAS_ARGS ?=

.PHONY: bench-debias

bench-debias: venv ## position bias: debiasing methods vs the unbiased-label bound, counterfactual estimates vs truth
	$(PY) -m benchmarks.bench_debias --runs-dir $(RUNS)/bench-debias $(BENCH_DEBIAS_ARGS)
