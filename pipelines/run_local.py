"""Run the compiled-for-Kubeflow pipeline function on this machine with kfp.local.

    python -m pipelines.run_local --preset default [--data synthetic] [--runs-dir runs] [--train-workers N]
                                  [--tune-trials N]
    python -m pipelines.run_local --preset tiny --runner container --component-image localhost/shoprank-components:dev

Writes runs/<run-id>/ (artefacts, promoted model, summary.json, report.html, stages.jsonl) and points
runs/latest at it. Exits non-zero when a step fails.

Runners: `subprocess` (default) runs each step as a process of this virtualenv; `container` runs each step in the
component image, with the compiled component's own command and executor input, as a pod on a cluster would
(kfp.local's DockerRunner, against Docker or against podman's Docker API; deploy/images.py). The container sees
the run directory at the same path, runs as the image's (non-root) user, and gets no other host environment than
the telemetry file and PYTHONHASHSEED.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUMMARY_ROWS = (
    ("AUC", "auc"), ("NDCG@10", "ndcg_at_10"), ("log loss", "log_loss"), ("MRR", "mrr"),
)


def counterfactual_lines(summary: dict) -> list[str]:
    """True-relevance NDCG (synthetic data) and the estimated clicks per request with their intervals."""
    lines = []
    ndcg = summary.get("true_ndcg_at_10") or {}
    if ndcg.get("baseline") is not None:
        lines.append(f"{'true-relevance NDCG@10':<24}{ndcg['baseline']:>14.4f}{ndcg['optimized']:>16.4f}"
                     f"{'1.0000':>10}" + (f"   previous {ndcg['previous']:.4f}" if ndcg.get("previous") else ""))
    cf = summary.get("counterfactual") or {}
    if "skipped" in cf:
        lines.append(f"counterfactual: {cf['skipped']}")
    for name, e in cf.get("models", {}).items():
        truth = f", truth {e['truth']:.4f} ({e['relative_error']:+.2%})" if "truth" in e else ""
        lines.append(f"estimated clicks/request {name:<20}{e['estimate']:.4f} [{e['low']:.4f}, {e['high']:.4f}]{truth}")
    if "models" in cf:
        lines.append(f"  ({cf['estimator']}, propensities from {cf['propensities']['source']}; logged clicks/request "
                     f"{cf['logged_clicks_per_request']:.4f}; {cf.get('previous_model', {}).get('why', '')})")
    return lines


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:,.0f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"


def _training_lines(summary: dict) -> list[str]:
    """Workers and throughput of the final training, and the tuning trials when the run tuned."""
    lines = []
    training = summary.get("training")
    if training:
        lines += ["", f"training: {training.get('workers', 1)} worker(s), {training.get('epochs', '?')} epochs, "
                      f"{training.get('samples_per_second') or 0:,.0f} samples/s, {training.get('seconds', 0):.1f}s"]
    tuning = summary.get("tuning")
    if tuning and tuning.get("used") != "off":
        lines += ["", f"{'tuning trial':<16}{'rung':>5}{'rows':>10}{'val AUC':>10}  settings"]
        for t in tuning["trials"]:
            name = "preset" if t.get("preset") else f"trial {t['trial']}"
            params = ", ".join(f"{k.split('.')[1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[1]}={v}"
                               for k, v in (t.get("params") or {}).items())
            lines.append(f"{name:<16}{t['rung']:>5}{t['rows']:>10,}{t['val_auc']:>10.4f}  {params}")
        w, p = tuning.get("winner") or {}, tuning.get("preset") or {}
        lines.append(f"final training uses the {tuning['used']} (last rung: winner trial {w.get('trial')} "
                     f"{w.get('val_auc', float('nan')):.4f} vs preset {p.get('val_auc', float('nan')):.4f})")
    return lines


def _reference_lines(summary: dict) -> list[str]:
    """The LambdaMART reference beside the network (tie-aware metrics), the bootstrap interval, its cost."""
    ref = summary.get("reference")
    if not ref:
        return []
    if "error" in ref:
        return ["", f"LambdaMART reference: {ref['error']}"]
    table, boot, cost = ref["table"], ref["bootstrap"], ref.get("cost", {})
    ndcg = next(key for key in boot if key.startswith("ndcg_at_"))
    lines = ["", f"{'tie-aware':<24}{'AUC':>10}{'NDCG@' + ndcg[8:]:>10}{'MRR':>10}{'Recall@' + ndcg[8:]:>10}"
             f"{'AUC share':>11}"]
    for name, row in table.items():
        share = row.get("oracle_share", {}).get("auc")
        lines.append(f"{name:<24}{row['auc']:>10.4f}{row[ndcg]:>10.4f}{row['mrr']:>10.4f}"
                     f"{row['recall_at_' + ndcg[8:]]:>10.4f}{(f'{share:.3f}' if share is not None else '-'):>11}")
    for m in (ndcg, "auc"):
        b = boot[m]
        lines.append(f"{boot['a']} - reference, {m}: {b['diff']:+.4f}, {boot['level']:.0%} interval "
                     f"[{b['low']:+.4f}, {b['high']:+.4f}] ({boot['resamples']} resamples over requests)")
    if cost:
        share = cost.get("share_of_run_wall_time")
        lines.append(f"reference cost: {cost.get('total_seconds', 0):.1f}s (training and scoring "
                     f"{cost.get('seconds', 0):.1f}s, bootstraps the rest), "
                     f"peak RSS {cost.get('peak_rss_mib', 0):.0f} MiB"
                     + (f", {share:.1%} of the run's wall time" if share is not None else ""))
    return lines


def summary_table(summary: dict) -> str:
    """The human-readable end-of-run table."""
    data = summary.get("data", {})
    lines = [f"data source: {summary.get('data_source', '?')}"
             + (f" ({data['task']}, {data.get('split_mode')} split)" if data.get("task") else ""), ""]
    lines.append(f"{'':<24}{'baseline':>14}{'optimised int8':>16}{'oracle':>10}")
    for label, key in SUMMARY_ROWS:
        o = summary.get("oracle", {}).get(key)
        lines.append(f"{label:<24}{summary['baseline'][key]:>14.4f}{summary['optimized'][key]:>16.4f}"
                     f"{(f'{o:.4f}' if o is not None else '-'):>10}")
    if "oracle" not in summary:
        lines.append("(no oracle: real data carry no true relevance)")
    if "oracle_auc_share" in summary:
        s = summary["oracle_auc_share"]
        lines.append(f"{'(AUC-.5)/(oracle-.5)':<24}{s['baseline']:>14.3f}{s['optimized']:>16.3f}")
    lines += counterfactual_lines(summary)
    lines += _reference_lines(summary)
    lines.append("")
    lines.append(f"{'artefact':<24}{'bytes':>14}{'gzip':>16}{'ms @1':>10}{'ms @256':>10}")
    for name, size in summary["sizes"].items():
        lat = summary["latency_ms"][name]
        lines.append(f"{name:<24}{_fmt_bytes(size['bytes']):>14}{_fmt_bytes(size['gzip_bytes']):>16}"
                     f"{lat['1']:>10.3f}{lat['256']:>10.3f}")
    r = summary["ratios"]
    lines.append(f"int8 vs baseline: {r['int8_gzip_smaller_x']:.1f}x smaller (gzip), "
                 f"{r['int8_b256_faster_x']:.1f}x faster at batch 256, AUC drop {r['int8_auc_drop']:+.4f}")
    lines.extend(_training_lines(summary))
    lines.append("")
    lines.append(f"blessed: {summary['blessed']}")
    for reason in summary["blessing_reasons"]:
        lines.append(f"  - {reason}")
    if summary.get("model_dir"):
        lines.append(f"promoted SavedModel: {summary['model_dir']}")
        lines.append(f"promoted int8 model: {summary['tflite_path']}")
    for st in summary.get("stages", []):
        lines.append(f"  stage {st['stage']:<11} {st['seconds']:>7.1f}s  peak {st['peak_rss_mib']:>7.0f} MiB")
    return "\n".join(lines)


def _stages(telemetry: Path) -> list[dict]:
    return [json.loads(line) for line in telemetry.read_text().splitlines()] if telemetry.exists() else []


def promoted_bundle(runs_dir: Path, model_name: str = "shoprank-ranker") -> Path | None:
    """The bundle most recently promoted by a run under `runs_dir` (what `make serve` serves after it), or None."""
    pointers = [p for p in runs_dir.glob(f"*/promoted/{model_name}/LATEST") if p.is_file()]
    if not pointers:
        return None
    latest = max(pointers, key=lambda p: p.stat().st_mtime)
    bundle = (latest.parent / latest.read_text().strip()).resolve()
    return bundle if bundle.is_dir() else None


def run(preset: str, overrides: str, data: str, runs_dir: Path, run_id: str | None = None,
        runner: str = "subprocess", component_image: str = "", container_tool: str = "", *,
        train_workers: int = 1, tune_trials: int = 0) -> dict:
    """Run the pipeline once through kfp.local; return the summary (also written to disk).

    runner "container" runs every step in `component_image` (see the module docstring); it must be set before the
    components are first imported in this process, since their base image is fixed when they are defined."""
    if runner not in ("subprocess", "container"):
        raise ValueError(f"runner must be 'subprocess' or 'container', not {runner!r}")
    if runner == "container" and component_image:
        os.environ["SHOPRANK_COMPONENT_IMAGE"] = component_image
    from kfp import local

    import components
    from pipelines.shoprank_pipeline import shoprank_pipeline

    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    run_dir = (runs_dir / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    telemetry = run_dir / "stages.jsonl"
    telemetry.unlink(missing_ok=True)
    os.environ["SHOPRANK_TELEMETRY"] = str(telemetry)  # inherited by every task subprocess
    # The model in service here: the validate step estimates its clicks beside the new model's (the gate's
    # counterfactual check; shoprank.evaluation.counterfactual.PREVIOUS_MODEL_ENV).
    previous = promoted_bundle(runs_dir)
    if previous is not None:
        os.environ["SHOPRANK_PREVIOUS_MODEL"] = str(previous)
    else:
        os.environ.pop("SHOPRANK_PREVIOUS_MODEL", None)
    with contextlib.ExitStack() as stack:
        if runner == "container":
            image = components.COMPONENT_IMAGE
            if component_image and image != component_image:
                raise RuntimeError(f"the components were defined with image {image!r} before --component-image "
                                   f"{component_image!r} was set: run in a fresh process")
            task_runner = stack.enter_context(_container_runner(image, run_dir, telemetry, container_tool,
                                                                previous))
        else:
            task_runner = local.SubprocessRunner(use_venv=False)
        local.init(runner=task_runner, pipeline_root=str(run_dir / "artifacts"))
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Cluster-only task settings (resources, accelerator, node selector) are ignored locally with a
                # warning per task, and so is the component image under SubprocessRunner: expected, not actionable.
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                task = shoprank_pipeline(preset=preset, overrides=overrides, data_source=data,
                                         model_root=str(run_dir / "promoted"),
                                         train_workers=train_workers, tune_trials=tune_trials)
        except RuntimeError as e:  # a task failed: say why at the end, not only in the task's log far above
            errors = [r for r in _stages(telemetry) if r.get("error")]
            if not errors:
                raise
            raise RuntimeError(f"{e}\n" + "\n".join(f"  {r['stage']}: {r['error']}" for r in errors)) from e
        wall = time.perf_counter() - t0
    summary = json.loads(Path(task.output.path).read_text())
    promoted = run_dir / "promoted" / "shoprank-ranker"
    if summary["blessed"] and (promoted / "LATEST").exists():
        bundle = promoted / (promoted / "LATEST").read_text().strip()
        summary |= {"bundle_dir": str(bundle), "model_dir": str(bundle / "saved_model"),
                    "tflite_path": str(bundle / "towers" / "request_tower.tflite")}
    artifacts = run_dir / "artifacts"
    trainings = sorted(artifacts.rglob("training.json"), key=lambda p: p.stat().st_mtime)
    if trainings:
        t = json.loads(trainings[-1].read_text())
        summary["training"] = {"workers": t.get("workers", 1), "epochs": len(t.get("epochs", [])),
                               "samples_per_second": t.get("samples_per_second"), "seconds": t.get("seconds"),
                               "strategy": t.get("strategy"), "launcher": t.get("launcher", {"kind": "in-step"})}
    tunings = sorted(artifacts.rglob("tuning.json"), key=lambda p: p.stat().st_mtime)
    if tunings:
        summary["tuning"] = json.loads(tunings[-1].read_text())
    summary |= {"run_id": run_id, "data_source": data, "wall_seconds": round(wall, 1), "stages": _stages(telemetry)}
    cost = (summary.get("reference") or {}).get("cost", {})
    if "total_seconds" in cost:  # the reference's cost bound (issue 14): its share of the run's wall time
        cost["share_of_run_wall_time"] = round(cost["total_seconds"] / wall, 4)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    reports = sorted((run_dir / "artifacts").rglob("report.html"), key=lambda p: "validate" not in str(p))
    if reports:
        shutil.copy(reports[0], run_dir / "report.html")
    latest = runs_dir / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    return summary


@contextlib.contextmanager
def _container_runner(image: str, run_dir: Path, telemetry: Path, tool: str,
                      previous: Path | None = None) -> Iterator[object]:
    """kfp.local's DockerRunner for `image`, with a Docker API for its lifetime (podman's, started here, when
    there is no Docker engine). The run directory is mounted at its own path (kfp.local mounts only the
    pipeline root; the promote step writes to run_dir/promoted) and made writable for the image's user;
    `previous`, the bundle in service (the gate's counterfactual check), read-only at its own path."""
    import docker
    from docker.types import Mount
    from kfp import local
    from kfp.local import docker_task_handler

    from deploy.images import docker_api

    with docker_api(tool) as host:
        previous = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = host  # what kfp.local's docker.from_env() reads
        try:
            client = docker.from_env()
            try:
                config = client.images.get(image).attrs["Config"]
            except docker.errors.ImageNotFound:
                raise RuntimeError(f"component image {image} not found: build it with `make images` "
                                   "(and `make base-image` where python:3.11-slim cannot be pulled)") from None
            finally:
                client.close()
            uid, _, gid = str(config.get("User") or "0").partition(":")
            if not uid.isdigit() or int(uid) == 0:
                raise RuntimeError(f"component image {image} runs as {config.get('User')!r}: steps must run as a "
                                   "non-root user (USER uid:gid in the Dockerfile)")
            for path in (run_dir, run_dir / "artifacts"):
                path.mkdir(parents=True, exist_ok=True)
                if os.geteuid() == 0:
                    os.chown(path, int(uid), int(gid or uid))
                elif os.geteuid() != int(uid):  # rootless engines map the image's user elsewhere: let it write
                    path.chmod(0o777)
            env = {"SHOPRANK_TELEMETRY": str(telemetry)}
            mounts = [Mount(str(run_dir), str(run_dir), type="bind")]
            if previous is not None:
                env["SHOPRANK_PREVIOUS_MODEL"] = str(previous)
                mounts.append(Mount(str(previous), str(previous), type="bind", read_only=True))
            if os.environ.get("PYTHONHASHSEED"):
                env["PYTHONHASHSEED"] = os.environ["PYTHONHASHSEED"]
            original = docker_task_handler.run_docker_container
            docker_task_handler.run_docker_container = _run_container
            try:
                yield local.DockerRunner(mounts=mounts, environment=env,
                                         network_mode="host")
            finally:
                docker_task_handler.run_docker_container = original
        finally:
            if previous is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = previous


def _run_container(client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any) -> int:
    """kfp.local's run_docker_container, with the exit status read before the container is removed.

    kfp.local starts each step with auto_remove and, when `wait` finds the container gone, assumes exit code 0.
    podman removes such a container as soon as it exits, so a failed step was reported as SUCCESS and the run
    failed later, at the next step, with "task 'ingest' not found" (or not at all, for the last step). Here the
    container is kept until its status is read, then removed. No pull: there is no registry to pull from, and the
    runner checked that the image is there."""
    run_args.pop("auto_remove", None)
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, auto_remove=False, **run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", help="tiny | small | default | large")
    p.add_argument("--overrides", default="{}", help="JSON overrides of the config")
    p.add_argument("--data", default="synthetic", help="'synthetic', a directory with the three tables, "
                   "'esci:<dir>[?locale=us]' or 'events:<dir>[?preset=retailrocket|taobao]' (see the README)")
    p.add_argument("--runs-dir", default="runs", type=Path)
    p.add_argument("--run-id", default=None)
    p.add_argument("--train-workers", type=int, default=1, help="training processes (MultiWorkerMirroredStrategy "
                   "on loopback when > 1)")
    p.add_argument("--tune-trials", type=int, default=0, help="tune step trials (0: no tuning)")
    p.add_argument("--runner", default="subprocess", choices=["subprocess", "container"],
                   help="subprocess: steps as processes of this venv; container: steps in the component image")
    p.add_argument("--component-image", default="", help="with --runner container: the image the steps run in "
                   "(default: $SHOPRANK_COMPONENT_IMAGE, else the compiled default)")
    p.add_argument("--container-tool", default="", help="with --runner container: docker or podman (default: "
                   "a Docker engine if one answers, else podman)")
    a = p.parse_args(argv)
    try:
        summary = run(a.preset, a.overrides, a.data, a.runs_dir, a.run_id, a.runner, a.component_image,
                      a.container_tool, train_workers=a.train_workers, tune_trials=a.tune_trials)
    except RuntimeError as e:  # kfp.local raises when a task fails; its log is above
        print(f"\nshoprank pipeline failed: {e}", file=sys.stderr)
        return 1
    print("\n" + summary_table(summary))
    print(f"\nsummary: {a.runs_dir / 'latest' / 'summary.json'}   report: {a.runs_dir / 'latest' / 'report.html'}"
          f"   wall time {summary['wall_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
