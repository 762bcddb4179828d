"""The bundle version (shoprank.release.bundle): content-addressed over every file a server reads.

Real files in a temporary model root, no stand-ins. What is not tested here: the real artefacts' bytes (the
tiny end-to-end bundle in tests/conftest.py goes through the same publish_bundle).
"""

from __future__ import annotations

import json
from pathlib import Path

from shoprank.release.bundle import UNVERSIONED, bundle_files, bundle_version, publish_bundle

NAME = "shoprank-ranker"


def artefacts(tmp_path: Path, catalogue: bytes = b"catalogue v1") -> tuple[Path, Path, Path]:
    opt, tr = tmp_path / "optimized", tmp_path / "transform"
    (opt / "saved_model" / "variables").mkdir(parents=True)
    (opt / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (opt / "saved_model" / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
    (opt / "model.tflite").write_bytes(b"int8 model")
    tr.mkdir()
    (tr / "transform.json").write_text('{"vocabularies": {}}')
    (tr / "catalogue.parquet").write_bytes(catalogue)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"wall_seconds": 1.0}))
    return opt, tr, summary


def publish(tmp_path: Path, opt: Path, tr: Path, summary: Path) -> dict:
    return publish_bundle(opt, tr, summary, str(tmp_path / "models"), NAME)


def test_a_new_catalogue_with_the_same_model_is_a_new_version(tmp_path):
    opt, tr, summary = artefacts(tmp_path)
    first = publish(tmp_path, opt, tr, summary)
    (tr / "catalogue.parquet").write_bytes(b"catalogue v2")  # the model and transform.json unchanged
    second = publish(tmp_path, opt, tr, summary)
    assert second["version"] != first["version"] and second["outcome"] == "promoted"
    assert second["previous_version"] == first["version"]
    bundle = Path(second["bundle_dir"])
    assert (bundle / "transform" / "catalogue.parquet").read_bytes() == b"catalogue v2"


def test_the_same_artefacts_are_the_same_version_whatever_the_summary_says(tmp_path):
    opt, tr, summary = artefacts(tmp_path)
    first = publish(tmp_path, opt, tr, summary)
    summary.write_text(json.dumps({"wall_seconds": 2.0}))  # a rerun: other timings, same artefacts
    again = publish(tmp_path, opt, tr, summary)
    assert again["version"] == first["version"] and again["outcome"] == "unchanged"
    assert [p.name for p in (tmp_path / "models" / NAME).iterdir() if p.name.startswith(".")] == []  # no staging


def test_every_file_but_the_summary_and_the_manifest_is_hashed_including_new_ones(tmp_path):
    opt, tr, summary = artefacts(tmp_path)
    record = publish(tmp_path, opt, tr, summary)
    bundle = Path(record["bundle_dir"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["version"] == record["version"] == bundle_version(bundle)  # recomputable from the bundle
    assert set(manifest["files"]) - set(manifest["versioned"]) == {"summary.json"}  # the manifest: not listed
    assert set(UNVERSIONED) == {"summary.json", "manifest.json"}
    assert manifest["versioned"] == bundle_files(bundle)
    assert {"model.tflite", "transform/catalogue.parquet", "transform/transform.json",
            "saved_model/variables/variables.data-00000-of-00001"} <= set(manifest["versioned"])
    # Any file the layout grows (here: an item table beside the catalogue) changes the version by itself.
    before = bundle_version(bundle)
    (bundle / "transform" / "item_tower.npy").write_bytes(b"\x93NUMPY table")
    assert bundle_version(bundle) != before
    # A file's place counts, not only its bytes.
    added = bundle_version(bundle)
    (bundle / "transform" / "item_tower.npy").rename(bundle / "item_tower.npy")
    assert bundle_version(bundle) not in (before, added)


def test_the_onnx_export_is_part_of_the_version(tmp_path):
    opt, tr, summary = artefacts(tmp_path)
    plain = publish(tmp_path, opt, tr, summary)
    (opt / "onnx").mkdir()
    (opt / "onnx" / "model.onnx").write_bytes(b"onnx")
    (opt / "onnx" / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    with_onnx = publish(tmp_path, opt, tr, summary)
    assert with_onnx["version"] != plain["version"]  # the onnx backend and Triton read it
    assert with_onnx["triton_repository"].endswith("triton")
