"""The serving bundle: what promotion publishes to <model_root>/<model_name>/<version>/ and what the
model server loads (layout in shoprank.layout)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from shoprank.layout import (
    CATALOGUE_FILE,
    CONFIG_FILE,
    LATEST,
    MANIFEST,
    MODEL_FILE,
    ONNX_DIR,
    SAVED_MODEL_DIR,
    SUMMARY_FILE,
    TFLITE_FILE,
    TRANSFORM_DIR,
    TRANSFORM_FILE,
    TRITON_DIR,
    TRITON_VERSION,
)

__all__ = ["bundle_version", "local_root", "publish_bundle", "triton_repository"]


def bundle_version(optimized_dir: str | Path, transform_dir: str | Path) -> str:
    """Content-addressed: the same model and transform always get the same version (reruns are no-ops)."""
    h = hashlib.sha256()
    for f in (Path(optimized_dir) / TFLITE_FILE, Path(transform_dir) / TRANSFORM_FILE):
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
        shutil.copytree(opt / SAVED_MODEL_DIR, staging / SAVED_MODEL_DIR)
        shutil.copy(opt / TFLITE_FILE, staging / TFLITE_FILE)
        (staging / TRANSFORM_DIR).mkdir()
        for f in (TRANSFORM_FILE, CATALOGUE_FILE):
            shutil.copy(tr / f, staging / TRANSFORM_DIR / f)
        if (opt / ONNX_DIR / MODEL_FILE).is_file():  # the Triton/ONNX variant's model repository
            triton_repository(opt / ONNX_DIR, staging / TRITON_DIR, model_name)
        shutil.copy(summary_path, staging / SUMMARY_FILE)
        (staging / MANIFEST).write_text(json.dumps(
            {"model_name": model_name, "version": version, "created": int(time.time()),
             "files": sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())}, indent=1))
        staging.rename(dest)  # atomic: a reader never sees half a bundle
    latest.write_text(version + "\n")
    record = {"model_name": model_name, "version": version, "previous_version": previous,
              "outcome": "unchanged" if previous == version else "promoted", "bundle_dir": str(dest.resolve()),
              "model_dir": str((dest / SAVED_MODEL_DIR).resolve()), "tflite_path": str((dest / TFLITE_FILE).resolve()),
              "triton_repository": str((dest / TRITON_DIR).resolve()) if (dest / TRITON_DIR).is_dir() else None}
    print(f"[promote] {record['outcome']}: {model_name} {previous or '-'} -> {version} at {dest}", flush=True)
    return record


def triton_repository(onnx_dir: str | Path, repository: str | Path, model_name: str) -> Path:
    """Lay out a Triton model repository: `<repository>/<model_name>/config.pbtxt` and
    `<repository>/<model_name>/1/model.onnx`. Returns the model's directory."""
    src = Path(onnx_dir)
    for f in (MODEL_FILE, CONFIG_FILE):
        if not (src / f).is_file():
            raise FileNotFoundError(f"{src / f} not found: the optimised model has no ONNX export "
                                    "(optimize.export_onnx was off?)")
    model_dir = Path(repository) / model_name
    (model_dir / TRITON_VERSION).mkdir(parents=True, exist_ok=True)
    shutil.copy(src / CONFIG_FILE, model_dir / CONFIG_FILE)
    shutil.copy(src / MODEL_FILE, model_dir / TRITON_VERSION / MODEL_FILE)
    return model_dir
