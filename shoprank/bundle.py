"""The serving bundle: what promotion publishes to <model_root>/<model_name>/<version>/ and what the
model server loads (layout in shoprank.ranker)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from shoprank.onnx_export import MODEL_FILE, ONNX_DIR, TRITON_DIR, triton_repository

LATEST = "LATEST"  # file beside the versions naming the version in service


def bundle_version(optimized_dir: str | Path, transform_dir: str | Path) -> str:
    """Content-addressed: the same model and transform always get the same version (reruns are no-ops)."""
    h = hashlib.sha256()
    for f in (Path(optimized_dir) / "model.tflite", Path(transform_dir) / "transform.json"):
        h.update(f.read_bytes())
    return "v" + h.hexdigest()[:12]


def local_root(model_root: str) -> Path:
    if "://" in model_root and not model_root.startswith("file://"):
        raise ValueError(f"model root '{model_root}': this step publishes to local paths only; "
                         "object stores (s3://, gs://) and pvc:// are handled by the cluster promotion")
    return Path(model_root.removeprefix("file://"))


def publish_bundle(optimized_dir: str | Path, transform_dir: str | Path, summary_path: str | Path,
                   model_root: str, model_name: str) -> dict:
    """Copy the optimised SavedModel, the int8 model, the transform and the summary into a new version
    folder, lay out the ONNX export (when there is one) as a Triton model repository under triton/ with the
    model named `model_name`, and point LATEST at it. Returns the promotion record (previous and new version).

    The version is keyed on the int8 model and the transform only: the ONNX export is derived from the same
    optimised weights, and a newer tf2onnx writing different bytes is not a new model."""
    opt, tr = Path(optimized_dir), Path(transform_dir)
    version = bundle_version(opt, tr)
    home = local_root(model_root) / model_name
    dest = home / version
    latest = home / LATEST
    previous = latest.read_text().strip() if latest.exists() else None
    if not dest.exists():
        staging = home / f".{version}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copytree(opt / "saved_model", staging / "saved_model")
        shutil.copy(opt / "model.tflite", staging / "model.tflite")
        (staging / "transform").mkdir()
        for f in ("transform.json", "catalogue.parquet"):
            shutil.copy(tr / f, staging / "transform" / f)
        if (opt / ONNX_DIR / MODEL_FILE).is_file():  # the Triton/ONNX variant's model repository
            triton_repository(opt / ONNX_DIR, staging / TRITON_DIR, model_name)
        shutil.copy(summary_path, staging / "summary.json")
        (staging / "manifest.json").write_text(json.dumps(
            {"model_name": model_name, "version": version, "created": int(time.time()),
             "files": sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())}, indent=1))
        staging.rename(dest)  # atomic: a reader never sees half a bundle
    latest.write_text(version + "\n")
    record = {"model_name": model_name, "version": version, "previous_version": previous,
              "outcome": "unchanged" if previous == version else "promoted", "bundle_dir": str(dest.resolve()),
              "model_dir": str((dest / "saved_model").resolve()), "tflite_path": str((dest / "model.tflite").resolve()),
              "triton_repository": str((dest / TRITON_DIR).resolve()) if (dest / TRITON_DIR).is_dir() else None}
    print(f"[promote] {record['outcome']}: {model_name} {previous or '-'} -> {version} at {dest}", flush=True)
    return record
