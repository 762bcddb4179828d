"""Serving benchmark (`make bench-serve`): the same int8 ranker behind different servers, side by side.

One run, the same ranking requests (N candidates each, default 100), concurrency 1, 8 and 32, a fixed number
of requests per cell, closed loop over keep-alive connections from a Go load generator (benchmarks/loadgen):

  a        the in-process ranking function (Ranker.rank: item-table look-up + transform + the int8 composition), no
           server;
           one request at a time (c=1), and 8 / 32 requests per call (what micro-batching can reach)
  b, c     this server (python -m serving), 1 and 2 workers
  b-stock  this server with KServe's own REST infer route (--fast_infer false), 1 worker, for reference
  d-*      MLServer with the same ranking function (benchmarks/mlserver_serving_runtime.py), adaptive batching
           off and on, inference in a worker process (MLServer's default) or in the server process
  e, e2    the protocol floor: a constant v2 model (benchmarks/serving_floor.py) on this same server, same
           options and bodies, 1 and 2 workers; e-stock on KServe's own REST route
  loadgen  the generator against its own in-process constant server: its ceiling on this machine
  before, before2
           the code before this change (`--before-ref`; default: on main, HEAD^ (main before the merge of the
           change); on a branch, where it forks from main),
           checked out into a git worktree under build/bench-before/ and served from there, 1 and 2 workers,
           same options and bodies; on `--before-bundle` when the old code cannot load the new bundle
  soak     open loop (requests started at a fixed rate, whatever the answers) at 80% of the best measured c=32
           throughput of this server, `--soak-seconds` (60): errors (anything but 200, 503 included) and each
           worker's RSS at the start and the end
  burst    open loop at 3x that throughput for `--burst-seconds` (10), then 50% of it for 5 s on the same
           timeline: how many were answered 503 and how many failed otherwise, whether a worker died, and how
           long after the burst every 100 ms bucket is answered in full (200s >= 90% of those sent, no 503)

Also per server of this change: start-up to ready, RSS per process after the cells (the issue's targets: <= 300
MB per worker, <= 3 s to ready with 1 worker), and the memory the promote step would give the bundle
(shoprank.release.kserve.sizing) beside the RSS measured.

The compute bound: the CPU a ranking request needs beyond the protocol floor, measured in process on the same
requests, batched as the server batches them at c=32 (16 requests per call, one per connection of a worker):
the int8 model alone (LiteRT invoke, 1 thread, as the server runs it) and the ranking path around it
(Ranker.features + split_ranked). With F the floor's CPU per request at c=32 (server + generator: they share
the cores), the best ratio the ranker can reach against the floor on this machine is about F / (F + model +
transform); it is reported beside the measured ratio. It is optimistic: in the server a model call holds fewer
requests (6.9 on average at c=16 on one worker) and runs between HTTP work that evicts its caches; py-spy measured
the ranking work there at ~0.2 ms of the event loop per request, about 3x this in-process figure (README,
"Benchmarks").

All servers are started first and stay up (idle ones cost nothing); then each round measures every cell in
turn, config after config, and the report gives per cell the median over the rounds (default 3). Interleaving
keeps a change in background load on this shared 2-core machine from favouring whichever config ran first.
Per cell: requests/s, p50/p99 latency, errors, CPU used by the server's process tree and by the generator
(in cores). The table is printed and written as JSON (default <runs-dir>/bench/serving.json), every round's
numbers included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)
MODEL = "shoprank-ranker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bundle(runs_dir: Path) -> Path:
    summary = runs_dir / "latest" / "summary.json"
    if not summary.exists():
        raise SystemExit(f"{summary} not found: run `make run` first (or pass --bundle)")
    return Path(json.loads(summary.read_text())["bundle_dir"])


# --- requests -----------------------------------------------------------------------------------------------
def make_requests(bundle: Path, n_bodies: int, n_candidates: int, history: int, seed: int = 0) -> list[dict]:
    """Ranking requests over the bundle's catalogue: a query made of title words, a history, N candidates."""
    import pyarrow.parquet as pq

    cat = pq.read_table(bundle / "transform" / "catalogue.parquet", columns=["item_id", "title"]).to_pydict()
    ids, titles = cat["item_id"], cat["title"]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_bodies):
        words = str(titles[rng.integers(len(titles))]).split()
        query = " ".join(rng.choice(words, size=min(2, len(words)), replace=False)) if words else ""
        cands = rng.choice(len(ids), size=n_candidates, replace=len(ids) < n_candidates)
        hist = rng.choice(len(ids), size=history)
        out.append({"query": query, "user_id": f"u{i:05d}", "history": [ids[j] for j in hist],
                    "candidates": [ids[j] for j in cands]})
    return out


def v2_body(r: dict) -> dict:
    # A leading batch dimension of 1 on every input: what MLServer's adaptive batching needs to merge requests,
    # and accepted as one ranking request by the shoprank server. The same bytes go to every server.
    return {"inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1, 1], "data": [r["query"]]},
        {"name": "user_id", "datatype": "BYTES", "shape": [1, 1], "data": [r["user_id"]]},
        {"name": "history", "datatype": "BYTES", "shape": [1, len(r["history"])], "data": r["history"]},
        {"name": "candidates", "datatype": "BYTES", "shape": [1, len(r["candidates"])], "data": r["candidates"]}]}


# --- processes ----------------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants."""
    total = 0
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Cell:
    config: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    server_cpu: float | None = None  # cores used by the server's process tree during the cell
    loadgen_cpu: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


class Server:
    def __init__(self, name: str, cmd: list[str], url_path: str, env: dict | None = None, cwd: Path = ROOT,
                 ready_path: str | None = None, log_dir: Path | None = None):
        self.name, self.cmd, self.url_path = name, cmd, url_path
        self.port = int(cmd[cmd.index("--http_port") + 1]) if "--http_port" in cmd else None
        self.ready_path = ready_path
        self.log = (log_dir or Path("/tmp")) / f"serving-bench-{name}.log"
        self.env, self.cwd = env, cwd
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, port: int | None = None) -> None:
        if port is not None:
            self.port = port
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(self.env or {})})
        import httpx

        deadline = t0 + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=1).status_code == 200:
                    self.startup_s = time.monotonic() - t0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after 180 s:\n{self.log.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.url_path}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for p in reversed(_descendants(self.proc.pid)):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait()


def loadgen(binary: Path, url: str, bodies: Path, n: int, c: int, warmup: int, selftest: bool = False,
            schedule: str = "", preconnect: int = 0) -> dict:
    cmd = [str(binary), "-n", str(n), "-c", str(c), "-warmup", str(warmup), "-preconnect", str(preconnect)]
    cmd += ["-selftest"] if selftest else ["-url", url, "-bodies", str(bodies)]
    if schedule:  # open loop: RATE:SECONDS,...
        cmd += ["-schedule", schedule]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    return json.loads(out.stdout)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def server_rss(server: Server) -> dict[str, float | None]:
    """RSS of the server's process and of each worker it spawned (python processes only), by pid."""
    return {str(p): rss_mb(p) for p in _descendants(server.proc.pid)
            if Path(f"/proc/{p}/comm").exists() and "python" in Path(f"/proc/{p}/comm").read_text()}


def measure_cell(server: Server, args, bodies: Path, c: int) -> Cell:
    cpu0, t0 = tree_cpu_seconds(server.proc.pid), time.monotonic()
    r = loadgen(args.loadgen, server.url, bodies, args.requests, c, args.warmup)
    cpu = (tree_cpu_seconds(server.proc.pid) - cpu0) / (time.monotonic() - t0)
    cell = Cell(server.name, c, r["rps"], r["p50_ms"], r["p99_ms"], r["errors"], round(cpu, 2),
                round(r["loadgen_cpu_share"], 2), r.get("first_error", ""))
    print(f"  {server.name:<10} c={c:<3} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
          f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}", flush=True)
    return cell


def median_cell(rounds: list[Cell]) -> Cell:
    """Median of each number over the rounds (errors: the sum); every round is kept in `extra`."""
    med = lambda k: float(np.median([getattr(x, k) for x in rounds]))  # noqa: E731
    cpu = lambda k: None if getattr(rounds[0], k) is None else round(med(k), 2)  # noqa: E731
    first = rounds[0]
    return Cell(first.config, first.concurrency, med("rps"), med("p50_ms"), med("p99_ms"),
                sum(x.errors for x in rounds), cpu("server_cpu"), cpu("loadgen_cpu"), first.note,
                {"rounds": [{"rps": round(x.rps, 1), "p50_ms": x.p50_ms, "p99_ms": x.p99_ms, "errors": x.errors}
                            for x in rounds]})


# --- (a) in process -----------------------------------------------------------------------------------------
def in_process(ranker, requests: list[dict], n: int, k: int) -> Cell:
    """Ranker.rank on k requests per call (k=1: one request at a time), n requests in all."""
    calls = max(1, n // k)

    def batch(i: int) -> tuple[list, list, list]:
        rs = [requests[(i * k + j) % len(requests)] for j in range(k)]
        return [r["query"] for r in rs], [r["history"] for r in rs], [r["candidates"] for r in rs]

    for i in range(min(50, calls)):  # warm-up
        ranker.rank(*batch(i))
    times = []
    t_all = time.perf_counter()
    for i in range(calls):
        args = batch(i)
        t = time.perf_counter()
        ranker.rank(*args)
        times.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - t_all
    name = "a" if k == 1 else f"a (x{k})"
    cell = Cell(name, k, calls * k / wall, float(np.percentile(times, 50)), float(np.percentile(times, 99)),
                note="one request per call" if k == 1 else f"{k} requests per call; latency is per call")
    print(f"  {name:<10} c={k:<3} {cell.rps:8.0f} req/s  p50 {cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:7.2f} ms",
          flush=True)
    return cell


def compute_bound(ranker, requests: list[dict], n: int, k: int = 16) -> dict:
    """CPU ms per request of the model alone and of the ranking path around it, k requests per call. The model is
    the served composition (issue 11): the request tower once per request, the gather of the candidates' item
    vectors and the pair head; the path around it is the request side of the transform (query tokens, history
    rows), the candidates' row look-up and the split into ranked lists."""
    from shoprank.scoring.ranker import split_ranked

    calls = max(1, n // k)
    batches = []
    for i in range(calls):
        rs = [requests[(i * k + j) % len(requests)] for j in range(k)]
        batches.append(([r["query"] for r in rs], [r["history"] for r in rs], [r["candidates"] for r in rs]))
    for b in batches[:10]:  # warm-up
        ranker.rank(*b)
    model = transform = 0.0
    for q, h, c in batches:
        t0 = time.process_time()
        rows = ranker.items.rows([x for cands in c for x in cands])
        unknown = ~ranker.items.known(rows)
        request = ranker.request_inputs(q, h)
        rr = np.repeat(np.arange(len(c)), [len(x) for x in c])
        affinity = ranker.affinity(request, rows, rr)
        t1 = time.process_time()
        scores = ranker.scorer.score_pairs(ranker.scorer.request_vectors(request), rr, ranker.items.item_vectors(rows),
                                           affinity)
        t2 = time.process_time()
        split_ranked(scores, unknown, c, ranker.unknown_candidates)
        t3 = time.process_time()
        model += t2 - t1
        transform += (t1 - t0) + (t3 - t2)
    per = calls * k
    out = {"requests_per_call": k, "rows_per_call": sum(len(x) for x in batches[0][2]),
           "model_cpu_ms": round(model / per * 1000, 4), "transform_cpu_ms": round(transform / per * 1000, 4)}
    print(f"  compute: model (request tower, item-vector gather, pair head) {out['model_cpu_ms']:.3f} ms CPU per "
          f"request, ranking path around it {out['transform_cpu_ms']:.3f} ms ({k} requests of "
          f"{len(requests[0]['candidates'])} candidates per call)", flush=True)
    return out


def bound_vs_floor(cells: list[Cell], compute: dict, measured: float | None) -> dict | None:
    """The best ratio to the floor that the model's and the transform's CPU allow at c=32 on this machine."""
    floor = best(cells, ("e", "e2"), 32)
    if floor is None or floor.server_cpu is None or floor.loadgen_cpu is None or not floor.rps:
        return None
    f = (floor.server_cpu + floor.loadgen_cpu) / floor.rps * 1000  # CPU ms per request, server + generator
    m, t = compute["model_cpu_ms"], compute["transform_cpu_ms"]
    return {"floor": f"{floor.config} {floor.rps:.0f} req/s", "floor_cpu_ms": round(f, 4), **compute,
            "bound_ratio": round(f / (f + m + t), 3), "bound_ratio_model_only": round(f / (f + m), 3),
            "measured_ratio": measured}


# --- the code before this change -----------------------------------------------------------------------
def default_before_ref() -> str:
    """HEAD^ on main (main before the change was merged), else the commit the branch forked from main."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    if git("rev-parse", "--abbrev-ref", "HEAD") == "main":
        return "HEAD^"
    return git("merge-base", "HEAD", "main") or "HEAD^"


def before_worktree(ref: str) -> Path:
    """A git worktree of `ref` under build/bench-before/<sha> (made once, reused)."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    path = ROOT / "build" / "bench-before" / sha[:12]
    if not (path / "serving").is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return path


# --- open-loop cells: soak and burst -------------------------------------------------------------------
def soak(server: Server, args, bodies: Path, capacity: float) -> dict:
    """80% of capacity for --soak-seconds: errors and RSS growth per process."""
    rate = 0.8 * capacity
    loadgen(args.loadgen, server.url, bodies, 1, 32, args.warmup)  # warm connections
    rss0 = server_rss(server)
    r = loadgen(args.loadgen, server.url, bodies, 1, 1024, 0, schedule=f"{rate:.0f}:{args.soak_seconds}")
    rss1 = server_rss(server)
    growth = {p: round((rss1[p] - v) / v * 100, 1) for p, v in rss0.items() if v and rss1.get(p)}
    out = {"server": server.name, "rate": round(rate, 1), "seconds": args.soak_seconds, "sent": r["sent"],
           "not_sent": r["not_sent"], "ok": r["ok"], "refused_503": r["refused"], "errors": r["errors"],
           "first_error": r.get("first_error", ""), "ok_rps": round(r["ok_rps"], 1), "p50_ms": r["p50_ms"],
           "p99_ms": r["p99_ms"], "loadgen_cpu": round(r["loadgen_cpu_share"], 2), "rss_mb_start": rss0,
           "rss_mb_end": rss1, "rss_growth_pct": growth,
           "met": r["refused"] == 0 and r["errors"] == 0 and r["not_sent"] == 0
           and all(g <= 5 for g in growth.values())}
    print(f"  soak {server.name}: {rate:.0f} req/s x {args.soak_seconds}s: ok {r['ok']}, 503 {r['refused']}, "
          f"errors {r['errors']}, p99 {r['p99_ms']:.1f} ms, RSS growth % {growth}", flush=True)
    return out


def burst(server: Server, args, bodies: Path, capacity: float) -> dict:
    """3x capacity for --burst-seconds, then 50% for 5 s: 503s, other errors, deaths, recovery time. The
    generator's 2048 connections are dialled before the burst (a client fleet's warm pools): dialled in the
    burst's first 100 ms they overflowed the listen queue and stalled in the kernel's SYN retries (loadgen's
    -preconnect says more)."""
    pids0 = set(server_rss(server))
    hi, lo, after_s = 3 * capacity, 0.5 * capacity, 5.0
    r = loadgen(args.loadgen, server.url, bodies, 1, 2048, 0,
                schedule=f"{hi:.0f}:{args.burst_seconds},{lo:.0f}:{after_s}", preconnect=2048)
    pids1 = set(server_rss(server))
    timeline = r["timeline"]
    during = [b for b in timeline if b["t"] < args.burst_seconds]
    after = [b for b in timeline if args.burst_seconds <= b["t"] < args.burst_seconds + after_s - 0.1]
    recovered_at = None
    for i, b in enumerate(after):  # from this bucket on, every bucket answered in full
        if all(x["refused"] == 0 and x["errors"] == 0 and x["ok"] >= 0.9 * x["sent"] for x in after[i:]):
            recovered_at = round(b["t"] - args.burst_seconds, 2)
            break
    refused = sum(b["refused"] for b in during)
    errors = sum(b["errors"] for b in during) + sum(b["errors"] for b in after)
    out = {"server": server.name, "burst_rate": round(hi, 1), "burst_seconds": args.burst_seconds,
           "after_rate": round(lo, 1), "sent_in_burst": sum(b["sent"] for b in during),
           "ok_in_burst": sum(b["ok"] for b in during), "refused_503_in_burst": refused, "errors": errors,
           "first_error": r.get("first_error", ""), "retry_after": r.get("retry_after", ""),
           "not_sent": r["not_sent"], "ok_p99_ms": r["p99_ms"], "refused_p99_ms": r["refused_p99_ms"],
           "workers_died": sorted(pids0 - pids1), "recovered_after_s": recovered_at,
           "loadgen_cpu": round(r["loadgen_cpu_share"], 2), "timeline": timeline,
           "met": refused > 0 and errors == 0 and pids0 == pids1 and recovered_at is not None
           and recovered_at <= 2.0}
    print(f"  burst {server.name}: {hi:.0f} req/s x {args.burst_seconds}s: ok {out['ok_in_burst']}, 503 {refused}, "
          f"other errors {errors}, died {out['workers_died']}, recovered after {recovered_at} s", flush=True)
    return out


# --- configurations -----------------------------------------------------------------------------------------
def shoprank_server(name: str, bundle: Path, workers: int, extra: list[str], log_dir: Path,
                    module: str = "serving", cwd: Path = ROOT) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", module, "--model_name", MODEL, "--http_port", str(port),
           "--grpc_port", str(free_port()), "--workers", str(workers), *extra]
    if module == "serving":
        cmd += ["--model_dir", str(bundle)]
    # PYTHONPATH: the checkout's own packages, ahead of the editable install of this one (the before cell).
    return Server(name, cmd, f"/v2/models/{MODEL}/infer", ready_path=f"/v2/models/{MODEL}/ready", log_dir=log_dir,
                  env={"PYTHONPATH": str(cwd)}, cwd=cwd)


def mlserver(name: str, venv: Path, bundle: Path, work: Path, parallel_workers: int, batch: int, batch_ms: float,
             log_dir: Path) -> Server:
    port = free_port()
    repo = work / name
    (repo / "ranker").mkdir(parents=True, exist_ok=True)
    (repo / "settings.json").write_text(json.dumps({
        "debug": False, "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": parallel_workers}))
    model = {"name": MODEL, "implementation": "benchmarks.mlserver_serving_runtime.RankerRuntime",
             "parameters": {"uri": str(bundle)}}
    if batch > 1:
        model |= {"max_batch_size": batch, "max_batch_time": batch_ms / 1000}
    (repo / "ranker" / "model-settings.json").write_text(json.dumps(model))
    cmd = [str(venv / "bin" / "mlserver"), "start", str(repo)]  # ports come from settings.json
    s = Server(name, cmd, f"/v2/models/{MODEL}/infer", env={"PYTHONPATH": str(ROOT)},
               ready_path=f"/v2/models/{MODEL}/ready", log_dir=log_dir)
    s.port = port
    return s


def best(cells: list[Cell], prefix: tuple[str, ...], c: int) -> Cell | None:
    pool = [x for x in cells if x.config in prefix and x.concurrency == c and x.errors == 0]
    return max(pool, key=lambda x: x.rps) if pool else None


def evaluate(cells: list[Cell]) -> dict:
    """The issue's throughput targets, on the best of each group per concurrency."""
    mls = tuple(sorted({x.config for x in cells if x.config.startswith("d-")}))
    out = {}
    for c in (8, 32):
        ours, peer = best(cells, ("b", "c"), c), best(cells, mls, c)
        if ours and peer:
            out[f"c{c}_vs_mlserver"] = {
                "ours": f"{ours.config} {ours.rps:.0f} req/s p99 {ours.p99_ms:.1f} ms",
                "mlserver": f"{peer.config} {peer.rps:.0f} req/s p99 {peer.p99_ms:.1f} ms",
                "throughput_ratio": round(ours.rps / peer.rps, 2),
                "met": ours.rps >= 1.5 * peer.rps}
    ours = best(cells, ("b", "c"), 32)
    for label, group in (("same_server", ("e", "e2")), ("kserve_stock_route", ("e-stock",))):
        floor = best(cells, group, 32)
        if ours and floor:
            out[f"c32_vs_floor_{label}"] = {"ours": f"{ours.config} {ours.rps:.0f} req/s",
                                            "floor": f"{floor.config} {floor.rps:.0f} req/s",
                                            "ratio": round(ours.rps / floor.rps, 2),
                                            "met": ours.rps >= 0.5 * floor.rps}
    before = best(cells, ("before", "before2"), 32)
    if ours and before:
        out["c32_vs_before"] = {"ours": f"{ours.config} {ours.rps:.0f} req/s",
                                "before": f"{before.config} {before.rps:.0f} req/s",
                                "ratio": round(ours.rps / before.rps, 2), "met": ours.rps >= 2.5 * before.rps}
    if ours:
        out["c32_p99"] = {"ours": f"{ours.config} p99 {ours.p99_ms:.1f} ms", "met": ours.p99_ms <= 15.0}
    return out


def table(cells: list[Cell]) -> str:
    head = f"{'config':<11}{'c':>4}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'err':>6}{'srv cpu':>9}{'gen cpu':>9}"
    rows = [head, "-" * len(head)]
    for x in cells:
        fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
        rows.append(f"{x.config:<11}{x.concurrency:>4}{x.rps:>9.0f}{x.p50_ms:>9.2f}{x.p99_ms:>9.2f}{x.errors:>6}"
                    f"{fmt(x.server_cpu):>9}{fmt(x.loadgen_cpu):>9}")
    return "\n".join(rows)


def build_loadgen(path: Path) -> None:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    subprocess.run([go, "build", "-o", str(path.resolve()), "."], cwd=ROOT / "benchmarks" / "loadgen", check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--bundle", type=Path, default=None, help="default: bundle_dir of <runs-dir>/latest")
    p.add_argument("--requests", type=int, default=3000, help="measured requests per cell")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3, help="rounds over all cells; the report gives medians")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--mlserver-venv", type=Path, default=Path("build/venv-mlserver"))
    p.add_argument("--loadgen", type=Path, default=Path("build/loadgen"))
    p.add_argument("--only", default="", help="comma-separated configs to run (default: all)")
    p.add_argument("--out", type=Path, default=None, help="default: <runs-dir>/bench/serving.json")
    p.add_argument("--before-ref", default=None,
                   help="git ref of the code before this change (default: HEAD^ on main, else the fork point from "
                        "main; '' : no before cells)")
    p.add_argument("--before-bundle", type=Path, default=None,
                   help="bundle for the before cells (default: the same bundle)")
    p.add_argument("--soak-seconds", type=float, default=60.0)
    p.add_argument("--burst-seconds", type=float, default=10.0)
    args = p.parse_args()

    bundle = (args.bundle or find_bundle(args.runs_dir)).resolve()
    out = args.out or args.runs_dir / "bench" / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / "serving-work"
    work.mkdir(exist_ok=True)
    build_loadgen(args.loadgen)
    requests = make_requests(bundle, 64, args.candidates, history=10)
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(json.dumps(v2_body(r)) + "\n" for r in requests))
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    want = lambda name: not only or name in only  # noqa: E731
    load_start = os.getloadavg()
    if load_start[0] > 0.7:
        print(f"warning: load average {load_start[0]:.2f} before the run: numbers will be noisy", flush=True)
    print(f"bundle {bundle}\n{args.requests} requests per cell, {args.candidates} candidates per request",
          flush=True)

    startup: dict[str, float] = {}
    gen = loadgen(args.loadgen, "", bodies, 20000, 32, 1000, selftest=True)
    print(f"  loadgen self-test (c=32): {gen['rps']:.0f} req/s with generator + constant server in one process "
          f"using {gen['loadgen_cpu_share']:.2f} cores", flush=True)
    from shoprank.scoring.ranker import Ranker

    bound_ranker = Ranker.load(bundle, "tflite", num_threads=1)  # as the server runs it: 1 LiteRT thread
    ranker = bound_ranker if want("a") else None

    servers: list[Server] = []
    if want("b"):
        servers.append(shoprank_server("b", bundle, 1, [], work))
    if want("c"):
        servers.append(shoprank_server("c", bundle, 2, [], work))
    if want("b-stock"):
        servers.append(shoprank_server("b-stock", bundle, 1, ["--fast_infer", "false"], work))
    if args.mlserver_venv.joinpath("bin", "mlserver").exists():
        for name, pw, batch in (("d-off", 1, 0), ("d-on", 1, 32), ("d-off-pw0", 0, 0), ("d-on-pw0", 0, 32)):
            if want(name):
                servers.append(mlserver(name, args.mlserver_venv.resolve(), bundle, work, pw, batch, 2.0, work))
    elif any(want(n) for n in ("d-off", "d-on")):
        print(f"warning: no MLServer at {args.mlserver_venv} (make bench-serve installs it): skipping (d)")
    for name, workers, extra in (("e", 1, []), ("e2", 2, []), ("e-stock", 1, ["--fast_infer", "false"])):
        if want(name):
            servers.append(shoprank_server(name, bundle, workers, extra, work, module="benchmarks.serving_floor"))
    before_ref = None
    if args.before_ref is None:
        args.before_ref = default_before_ref()
    if args.before_ref and (want("before") or want("before2")):
        try:
            tree = before_worktree(args.before_ref)
            before_ref = f"{args.before_ref} ({tree.name})"
            old_bundle = (args.before_bundle or bundle).resolve()
            for name, workers in (("before", 1), ("before2", 2)):
                if want(name):
                    servers.append(shoprank_server(name, old_bundle, workers, [], work, cwd=tree))
        except subprocess.CalledProcessError as e:
            print(f"warning: no before cell: git worktree of {args.before_ref} failed: {e.stderr}", flush=True)

    rounds: dict[tuple[str, int], list[Cell]] = {}
    up: list[Server] = []
    cells: list[Cell] = []
    rss: dict[str, dict] = {}
    by_name: dict[str, Server] = {}
    soak_result = burst_result = None
    try:
        for s in servers:  # one at a time, so that start-up times are not inflated by each other
            try:
                s.start()
                startup[s.name] = round(s.startup_s, 2)
                up.append(s)
            except RuntimeError as e:
                print(f"  {s.name}: FAILED to start: {e}", flush=True)
                s.stop()
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} (load average {os.getloadavg()[0]:.2f})", flush=True)
            for c in CONCURRENCY:
                if ranker is not None:
                    cell = in_process(ranker, requests, args.requests, c)
                    rounds.setdefault((cell.config, c), []).append(cell)
                for s in up:
                    if s.proc.poll() is not None:
                        continue
                    try:
                        rounds.setdefault((s.name, c), []).append(measure_cell(s, args, bodies, c))
                    except subprocess.CalledProcessError as e:
                        print(f"  {s.name} c={c}: loadgen failed: {e.stderr[-500:]}", flush=True)
        order = ["a", "a (x8)", "a (x32)"] + [s.name for s in servers]
        cells = [median_cell(rounds[(name, c)]) for name in order for c in CONCURRENCY if (name, c) in rounds]
        rss = {s.name: server_rss(s) for s in up if s.name in ("b", "c", "before", "before2") and s.proc.poll() is None}
        ours = best(cells, ("b", "c"), 32)
        by_name = {s.name: s for s in up}
        if ours is not None and ours.config in by_name:
            if args.soak_seconds > 0 and want("soak"):
                soak_result = soak(by_name[ours.config], args, bodies, ours.rps)
            if args.burst_seconds > 0 and want("burst"):
                burst_result = burst(by_name[ours.config], args, bodies, ours.rps)
    finally:
        for s in servers:
            s.stop()

    targets = evaluate(cells)
    compute = compute_bound(bound_ranker, requests, args.requests)
    measured = targets.get("c32_vs_floor_same_server", {}).get("ratio")
    bound = bound_vs_floor(cells, compute, measured)
    from shoprank.release.kserve.sizing import memory_need

    need = memory_need(bundle, "tflite")
    sizing = {"estimate_per_process_mb": round(need.per_process_bytes / 2**20, 1), "request": need.request,
              "limit": need.limit, "measured_rss_mb": rss}
    workers_rss = [v for name in ("b", "c") for pid, v in (rss.get(name) or {}).items()
                   if v and (name == "b" or pid != str(by_name[name].proc.pid))]
    targets["rss_per_worker"] = {"max_mb": max(workers_rss) if workers_rss else None,
                                 "met": bool(workers_rss) and max(workers_rss) <= 300}
    if "b" in startup:
        targets["startup_1_worker"] = {"seconds": startup["b"], "met": startup["b"] <= 3.0}
    if soak_result:
        targets["soak"] = {k: soak_result[k] for k in ("rate", "errors", "refused_503", "rss_growth_pct", "met")}
    if burst_result:
        targets["burst"] = {k: burst_result[k] for k in ("refused_503_in_burst", "errors", "workers_died",
                                                         "recovered_after_s", "met")}
    report = {
        "bundle": str(bundle), "requests_per_cell": args.requests, "candidates": args.candidates,
        "rounds": args.rounds, "before": before_ref, "soak": soak_result, "burst": burst_result,
        "sizing": sizing,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "loadgen_selftest": gen, "startup_to_ready_s": startup, "targets": targets, "compute_bound": bound,
        "cells": [c.__dict__ for c in cells],
    }
    out.write_text(json.dumps(report, indent=2))
    print("\n" + table(cells))
    print("\nstartup to ready (s): " + ", ".join(f"{k} {v}" for k, v in startup.items()))
    print(f"RSS (MB) by server and process: {rss}; the promote step's estimate per process: "
          f"{sizing['estimate_per_process_mb']} MB (request {need.request}, limit {need.limit})")
    for k, v in targets.items():
        print(f"target {k}: {'MET' if v['met'] else 'MISSED'}  {v}")
    if bound:
        print(f"compute bound at c=32: the floor ({bound['floor']}) costs {bound['floor_cpu_ms']:.3f} ms CPU per "
              f"request (server + generator), the int8 model alone {bound['model_cpu_ms']:.3f} ms, the ranking path "
              f"around it {bound['transform_cpu_ms']:.3f} ms\n  -> best possible ratio vs the floor "
              f"~ {bound['floor_cpu_ms']:.3f} / ({bound['floor_cpu_ms']:.3f} + {bound['model_cpu_ms']:.3f} + "
              f"{bound['transform_cpu_ms']:.3f}) = {bound['bound_ratio']:.2f} (model alone, zero transform: "
              f"{bound['bound_ratio_model_only']:.2f}); measured {bound['measured_ratio']}")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
