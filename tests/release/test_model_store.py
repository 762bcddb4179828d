"""Versioned model storage: URI parsing for every scheme, version paths, and real copies for local and pvc://
roots.

s3:// and gs:// are checked for parsing and for the order and idempotency of what is sent, through a small
recording store; talking to a real bucket is not tested here (no object store is reachable from CI).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoprank.release import model_store
from shoprank.release.model_store import StorageLocation, parse_storage_uri, versioned_storage_uri


@pytest.mark.parametrize("uri, expected", [
    ("s3://shoprank-models", StorageLocation("s3", "shoprank-models", "")),
    ("s3://shoprank-models/team/a/", StorageLocation("s3", "shoprank-models", "team/a")),
    ("gs://bucket.example/x//y", StorageLocation("gs", "bucket.example", "x/y")),
    ("pvc://models-claim/ranker", StorageLocation("pvc", "models-claim", "ranker")),
    ("S3://shoprank-models/a", StorageLocation("s3", "shoprank-models", "a")),
    ("file:///srv/models/", StorageLocation("file", None, "/srv/models")),
    ("/srv/models", StorageLocation("file", None, "/srv/models")),
])
def test_parse_storage_uri(uri, expected):
    assert parse_storage_uri(uri) == expected


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_storage_uri("runs/models") == StorageLocation("file", None, str(tmp_path / "runs/models"))


@pytest.mark.parametrize("uri, message", [
    ("", "empty"),
    ("s3://", "names no bucket"),
    ("gs:///prefix", "names no bucket"),
    ("s3://Bad_Bucket", "not a valid s3 bucket"),
    ("pvc://Claim/x", "not a valid PersistentVolumeClaim"),
    ("pvc://claim/../x", "'.' and '..'"),
    ("file://relative/x", "absolute path"),
    ("hdfs://nn/models", "unsupported storage scheme"),
])
def test_parse_storage_uri_rejects(uri, message):
    with pytest.raises(ValueError, match=message):
        parse_storage_uri(uri)


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("s3://shoprank-models", "s3://shoprank-models/ranker/7"),
        ("s3://shoprank-models/prod/", "s3://shoprank-models/prod/ranker/7"),
        ("gs://bucket/a/b", "gs://bucket/a/b/ranker/7"),
        ("pvc://models-pvc", "pvc://models-pvc/ranker/7"),
        ("pvc://models-pvc/exports//", "pvc://models-pvc/exports/ranker/7"),
        ("/mnt/models/", "/mnt/models/ranker/7"),
        ("artifacts/models", "artifacts/models/ranker/7"),
        ("/", "/ranker/7"),
        ("file:///tmp/models", "file:///tmp/models/ranker/7"),
    ],
)
def test_versioned_storage_uri(root, expected):
    assert versioned_storage_uri(root, "ranker", 7) == expected


@pytest.mark.parametrize(
    ("root", "model", "version", "message"),
    [
        ("s3://", "ranker", "1", "names no a bucket"),
        ("pvc:///", "ranker", "1", "names no a PVC name"),
        ("http://host/models", "ranker", "1", "unsupported storage scheme"),
        ("", "ranker", "1", "empty"),
        ("s3://b", "../etc", "1", "model_name"),
        ("s3://b", "ranker", "1/2", "version"),
        ("s3://b", "ranker", "..", "version"),
        ("file://relative/path", "ranker", "1", "absolute"),
    ],
)
def test_versioned_storage_uri_rejects(root, model, version, message):
    with pytest.raises(ValueError, match=message):
        versioned_storage_uri(root, model, version)


@pytest.mark.parametrize("root, uri", [
    ("s3://shoprank-models", "s3://shoprank-models/shoprank-ranker/v0123456789ab"),
    ("gs://b01/team/", "gs://b01/team/shoprank-ranker/v0123456789ab"),
    ("pvc://models/ranker", "pvc://models/ranker/shoprank-ranker/v0123456789ab"),
    ("/srv/models", "/srv/models/shoprank-ranker/v0123456789ab"),
])
def test_version_location(root, uri):
    assert model_store.version_location(root, "shoprank-ranker", "v0123456789ab").uri == uri


def test_version_location_rejects_path_tricks():
    with pytest.raises(ValueError, match="one path segment"):
        model_store.version_location("s3://b01", "shoprank-ranker", "../v1")


@pytest.mark.parametrize("uri, version", [
    ("s3://shoprank-models/shoprank-ranker/v0123456789ab", "v0123456789ab"),
    ("s3://shoprank-models/shoprank-ranker/latest", "latest"),  # the overlays' placeholder, reported as such
    ("s3://other-bucket/shoprank-ranker/v0123456789ab", None),
    ("s3://shoprank-models/other-model/v1", None),
    ("s3://shoprank-models/shoprank-ranker/v1/extra", None),
    ("gs://shoprank-models/shoprank-ranker/v1", None),
    (None, None),
    ("not a uri at all://x", None),
])
def test_version_of_uri(uri, version):
    assert model_store.version_of_uri(uri, "s3://shoprank-models", "shoprank-ranker") == version


def make_bundle(tmp_path: Path, version: str = "v0123456789ab") -> Path:
    bundle = tmp_path / "bundle" / version
    (bundle / "saved_model" / "variables").mkdir(parents=True)
    (bundle / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (bundle / "saved_model" / "variables" / "variables.index").write_bytes(b"idx")
    (bundle / "model.tflite").write_bytes(b"tflite")
    (bundle / "manifest.json").write_text(json.dumps({"version": version}))
    return bundle


def test_bundle_files_put_the_manifest_last(tmp_path):
    files = model_store.bundle_files(make_bundle(tmp_path))
    assert files[-1].name == "manifest.json" and len(files) == 4


def test_bundle_without_manifest_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model.tflite").write_bytes(b"1")
    with pytest.raises(FileNotFoundError, match="not a shoprank bundle"):
        model_store.bundle_files(tmp_path / "x")


def test_upload_to_a_local_root_copies_once(tmp_path):
    bundle = make_bundle(tmp_path)
    root = str(tmp_path / "models")
    first = model_store.upload_bundle(bundle, root, "shoprank-ranker", "v0123456789ab")
    dest = tmp_path / "models" / "shoprank-ranker" / "v0123456789ab"
    assert first.uploaded and first.files == 4 and first.storage_uri == str(dest)
    assert (dest / "saved_model" / "variables" / "variables.index").read_bytes() == b"idx"
    second = model_store.upload_bundle(bundle, root, "shoprank-ranker", "v0123456789ab")
    assert not second.uploaded and second.storage_uri == first.storage_uri
    assert not [p for p in dest.parent.iterdir() if "staging" in p.name]


def test_upload_to_a_mounted_pvc(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = model_store.upload_bundle(make_bundle(tmp_path), "pvc://models/ranker", "shoprank-ranker",
                                       "v0123456789ab", pvc_mount_path=mount)
    assert result.storage_uri == "pvc://models/ranker/shoprank-ranker/v0123456789ab"
    assert (mount / "ranker" / "shoprank-ranker" / "v0123456789ab" / "model.tflite").read_bytes() == b"tflite"
    pointer = model_store.write_latest("pvc://models/ranker", "shoprank-ranker", "v0123456789ab",
                                       pvc_mount_path=mount)
    assert pointer == "pvc://models/ranker/shoprank-ranker/LATEST"
    assert (mount / "ranker" / "shoprank-ranker" / "LATEST").read_text() == "v0123456789ab\n"


def test_pvc_that_is_not_mounted_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="must be mounted at"):
        model_store.upload_bundle(make_bundle(tmp_path), "pvc://models", "shoprank-ranker", "v0123456789ab",
                                  pvc_mount_path=tmp_path / "absent")


class RecordingStore:
    """Stands in for an S3/GCS bucket: remembers keys, in order."""

    def __init__(self, existing: set[str] | None = None) -> None:
        self.keys: list[str] = []
        self.existing = set(existing or ())
        self.texts: dict[str, str] = {}

    def exists(self, key: str) -> bool:
        return key in self.existing

    def upload_file(self, local: Path, key: str) -> None:
        self.keys.append(key)

    def write_text(self, key: str, text: str) -> None:
        self.texts[key] = text


def test_object_store_upload_sends_the_manifest_last_under_the_prefix(tmp_path):
    store = RecordingStore()
    result = model_store.upload_bundle(make_bundle(tmp_path), "s3://shoprank-models/team", "shoprank-ranker",
                                       "v0123456789ab", store=store)
    assert result.storage_uri == "s3://shoprank-models/team/shoprank-ranker/v0123456789ab" and result.uploaded
    assert store.keys[-1] == "team/shoprank-ranker/v0123456789ab/manifest.json"
    assert "team/shoprank-ranker/v0123456789ab/saved_model/variables/variables.index" in store.keys
    assert all(k.startswith("team/shoprank-ranker/v0123456789ab/") for k in store.keys)


def test_object_store_upload_skips_a_complete_version(tmp_path):
    store = RecordingStore({"shoprank-ranker/v0123456789ab/manifest.json"})
    result = model_store.upload_bundle(make_bundle(tmp_path), "gs://shoprank-models", "shoprank-ranker",
                                       "v0123456789ab", store=store)
    assert not result.uploaded and store.keys == []
    model_store.write_latest("gs://shoprank-models", "shoprank-ranker", "v0123456789ab", store=store)
    assert store.texts == {"shoprank-ranker/LATEST": "v0123456789ab\n"}
