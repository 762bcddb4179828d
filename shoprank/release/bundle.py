"""The serving bundle: what promotion publishes to <model_root>/<model_name>/<version>/ and what the
model server loads (layout in shoprank.layout)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from shoprank.layout import (
    CATALOGUE_FILE,
    CONFIG_FILE,
    ITEMS_DIR,
    LATEST,
    MANIFEST,
    MODEL_FILE,
    ONNX_DIR,
    SAVED_MODEL_DIR,
    SUMMARY_FILE,
    TFLITE_FILE,
    TOWERS_DIR,
    TRANSFORM_DIR,
    TRANSFORM_FILE,
    TRITON_DIR,
    TRITON_VERSION,
)

__all__ = ["UNVERSIONED", "bundle_files", "bundle_version", "local_root", "publish_bundle", "triton_repository"]


# Files of a bundle that no server reads: the run summary (its timestamps and wall times differ on every run)
# and the manifest (written last, it names the version). Every other file is hashed into the version.
UNVERSIONED = (SUMMARY_FILE, MANIFEST)
_CHUNK = 1 << 20


def bundle_files(bundle_dir: str | Path) -> list[str]:
    """The files of a bundle that its version covers: every file but UNVERSIONED, as sorted relative paths."""
    root = Path(bundle_dir)
    return sorted(rel for rel in (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
                  if rel not in UNVERSIONED)


def bundle_version(bundle_dir: str | Path) -> str:
    """Content-addressed over every file the servers read: each file's relative path, size and bytes, in path
    order. So a new catalogue with an unchanged model is a new version, a file added to the bundle layout
    (per-item tables, a new export) is covered without touching this function, and the same artefacts always
    get the same version (a rerun is a no-op)."""
    root = Path(bundle_dir)
    h = hashlib.sha256()
    for rel in bundle_files(root):
        f = root / rel
        h.update(f"{rel}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                h.update(chunk)
    return "v" + h.hexdigest()[:12]


def local_root(model_root: str) -> Path:
    if "://" in model_root and not model_root.startswith("file://"):
        raise ValueError(f"model root '{model_root}': this step publishes to local paths only; "
                         "object stores (s3://, gs://) and pvc:// are handled by the cluster promotion")
    return Path(model_root.removeprefix("file://"))


def publish_bundle(optimized_dir: str | Path, transform_dir: str | Path, summary_path: str | Path,
                   model_root: str, model_name: str) -> dict:
    """Copy the optimised SavedModel, the towers and item tables, the transform and the summary into a new version
    folder, lay out the ONNX export (when there is one) as a Triton model repository under triton/ with the
    model named `model_name`, and point LATEST at it. Returns the promotion record (previous and new version).

    The bundle is assembled in a staging folder first and its version computed from what it holds
    (`bundle_version`: every file but the summary and the manifest), so the version covers exactly the files a
    server can read, whatever the layout grows to."""
    opt, tr = Path(optimized_dir), Path(transform_dir)
    home = local_root(model_root) / model_name
    home.mkdir(parents=True, exist_ok=True)
    latest = home / LATEST
    previous = latest.read_text().strip() if latest.exists() else None
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=home))
    try:
        shutil.copytree(opt / SAVED_MODEL_DIR, staging / SAVED_MODEL_DIR)
        for d in (TOWERS_DIR, ITEMS_DIR):  # the served composition and its per-item tables
            if (opt / d).is_dir():
                shutil.copytree(opt / d, staging / d)
        if (opt / TFLITE_FILE).is_file():  # a whole-graph int8 model (optimised models before issue 11)
            shutil.copy(opt / TFLITE_FILE, staging / TFLITE_FILE)
        (staging / TRANSFORM_DIR).mkdir()
        for f in (TRANSFORM_FILE, CATALOGUE_FILE):
            shutil.copy(tr / f, staging / TRANSFORM_DIR / f)
        if (opt / ONNX_DIR / MODEL_FILE).is_file():  # the Triton/ONNX variant's model repository
            triton_repository(opt / ONNX_DIR, staging / TRITON_DIR, model_name)
        version = bundle_version(staging)
        dest = home / version
        if not dest.exists():
            shutil.copy(summary_path, staging / SUMMARY_FILE)
            files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
            (staging / MANIFEST).write_text(json.dumps(
                {"model_name": model_name, "version": version, "created": int(time.time()),
                 "files": files, "versioned": [f for f in files if f not in UNVERSIONED],
                 "bytes": sum((staging / f).stat().st_size for f in files)}, indent=1))
            staging.rename(dest)  # atomic: a reader never sees half a bundle
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    latest.write_text(version + "\n")
    record = {"model_name": model_name, "version": version, "previous_version": previous,
              "outcome": "unchanged" if previous == version else "promoted", "bundle_dir": str(dest.resolve()),
              "model_dir": str((dest / SAVED_MODEL_DIR).resolve()), "tflite_path": str((dest / TOWERS_DIR).resolve()),
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
