"""In-process compute per ranking request: CPU time of `Ranker.rank` on 100-candidate requests, no server.

    python benchmarks/bench_compute.py --bundle BUNDLE [--requests 3000] [--per-call 1 16] [--rounds 3]

Only `Ranker.load(bundle, "tflite", num_threads=1)` and `Ranker.rank` are used, an API every shoprank version has,
so the same file measures the code before a change too: run it with PYTHONPATH set to a git worktree of the old
commit and that commit's bundle (issue 11's before/after). The requests are drawn from the bundle's catalogue
(transform/catalogue.parquet): a query of title words, 10 history ids, 100 candidates.

CPU time (`time.process_time`), not wall time: on a shared 2-core machine the wall clock measures the neighbours.
Rounds alternate and the median is reported. One LiteRT thread, as the server runs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def make_requests(bundle: Path, n: int, candidates: int = 100, history: int = 10, seed: int = 0) -> list[tuple]:
    cat = pq.read_table(bundle / "transform" / "catalogue.parquet", columns=["item_id", "title"]).to_pydict()
    ids, titles = cat["item_id"], cat["title"]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = str(titles[rng.integers(len(titles))]).split()
        query = " ".join(rng.choice(words, size=min(2, len(words)), replace=False)) if words else ""
        out.append((query, [ids[j] for j in rng.integers(len(ids), size=history)],
                    [ids[j] for j in rng.integers(len(ids), size=candidates)]))
    return out


def cpu_ms_per_request(ranker, requests: list[tuple], per_call: int) -> float:
    calls = [requests[i: i + per_call] for i in range(0, len(requests) - per_call + 1, per_call)]
    for c in calls[:20]:  # warm-up
        ranker.rank([r[0] for r in c], [r[1] for r in c], [r[2] for r in c])
    t0 = time.process_time()
    for c in calls:
        ranker.rank([r[0] for r in c], [r[1] for r in c], [r[2] for r in c])
    return (time.process_time() - t0) / (len(calls) * per_call) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--per-call", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from shoprank.scoring.ranker import Ranker

    t0 = time.perf_counter()
    ranker = Ranker.load(args.bundle, "tflite", num_threads=1)
    load_s = time.perf_counter() - t0
    requests = make_requests(args.bundle, args.requests)
    rounds = {k: [] for k in args.per_call}
    for _ in range(args.rounds):
        for k in args.per_call:
            rounds[k].append(cpu_ms_per_request(ranker, requests, k))
    result = {"bundle": str(args.bundle), "load_s": round(load_s, 2),
              "cpu_ms_per_request": {str(k): round(statistics.median(v), 4) for k, v in rounds.items()},
              "rounds": {str(k): [round(x, 4) for x in v] for k, v in rounds.items()}}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
