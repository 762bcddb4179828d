"""Versioned model storage for the cluster promotion: `<root>/<model name>/<version>/` on s3://, gs://, pvc://
or a local path, plus a `LATEST` pointer beside the versions once a version is in service.

The bundle itself is built by `shoprank.release.bundle.publish_bundle` (the same layout the local run publishes); this
module copies a built bundle folder to where KServe's storage initializer can read it.

- s3://BUCKET/PREFIX: boto3 (the `deploy` extra). Credentials and endpoint come from boto3's usual chain
  (environment, IRSA web identity, `AWS_ENDPOINT_URL` for MinIO and other S3-compatible stores).
- gs://BUCKET/PREFIX: google-cloud-storage (application default credentials / workload identity).
- pvc://CLAIM/PATH: the claim must be mounted in this pod; its files are written to `<mount>/PATH/...`,
  and KServe reads `pvc://CLAIM/PATH/<model>/<version>`.
- a local path or file:// URI: written in place (useful for the local run and tests; KServe cannot read it).

Uploads are idempotent: a version is content-addressed (`bundle_version`), so a destination that already
holds the version's `manifest.json` is complete and is not written again. `manifest.json` goes last for the
object stores and the local copy is renamed into place, so a reader never sees half a bundle as complete.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from shoprank.layout import LATEST, MANIFEST, TRITON_DIR

__all__ = [
    "DEFAULT_PVC_MOUNT",
    "GCSStore",
    "LocalStore",
    "ObjectStore",
    "S3Store",
    "Scheme",
    "StorageLocation",
    "UploadResult",
    "bundle_files",
    "open_store",
    "parse_storage_uri",
    "upload_bundle",
    "version_location",
    "version_of_uri",
    "versioned_storage_uri",
    "write_latest",
]

DEFAULT_PVC_MOUNT = "/mnt/shoprank-models"
Scheme = Literal["s3", "gs", "pvc", "file"]

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")  # S3 and GCS bucket names (loosest common rule)
_CLAIM_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # a PVC name is a DNS subdomain
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a model name or version: one path segment


@dataclass(frozen=True)
class StorageLocation:
    """A parsed storage URI. `bucket` is the bucket (s3, gs) or claim (pvc), None for local paths; `path` is the
    key prefix inside it (no leading or trailing slash), or the absolute local path for `file`."""

    scheme: Scheme
    bucket: str | None
    path: str

    @property
    def uri(self) -> str:
        if self.scheme == "file":
            return self.path
        return f"{self.scheme}://{self.bucket}" + (f"/{self.path}" if self.path else "")

    def child(self, *parts: str) -> StorageLocation:
        joined = posixpath.join(self.path, *parts) if self.path else posixpath.join(*parts)
        return StorageLocation(self.scheme, self.bucket, joined)

    @property
    def kserve_readable(self) -> bool:
        """Whether KServe's storage initializer can fetch from here (it cannot read this machine's disk)."""
        return self.scheme != "file"


def parse_storage_uri(uri: str) -> StorageLocation:
    """Parse s3://bucket/prefix, gs://bucket/prefix, pvc://claim/path, file:///abs/path or a plain path.

    A plain relative path is made absolute against the working directory (what the local run does)."""
    text = uri.strip()
    if not text:
        raise ValueError("storage URI is empty")
    match = _SCHEME_RE.match(text)
    if match is None:
        return StorageLocation("file", None, os.path.abspath(text))
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"{uri!r}: a file:// URI needs an absolute path (file:///...)")
        return StorageLocation("file", None, os.path.normpath(rest))
    if scheme not in ("s3", "gs", "pvc"):
        raise ValueError(f"unsupported storage scheme {scheme!r} in {uri!r} (use s3://, gs://, pvc:// or a path)")
    bucket, _, path = rest.partition("/")  # gs:///x names no bucket: do not strip the leading slash
    what = "claim" if scheme == "pvc" else "bucket"
    if not bucket:
        raise ValueError(f"{uri!r} names no {what}")
    if scheme == "pvc":
        if not _CLAIM_RE.match(bucket) or len(bucket) > 253:
            raise ValueError(f"{uri!r}: {bucket!r} is not a valid PersistentVolumeClaim name")
    elif not _BUCKET_RE.match(bucket):
        raise ValueError(f"{uri!r}: {bucket!r} is not a valid {scheme} bucket name")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{uri!r}: '.' and '..' are not allowed in object paths")
    return StorageLocation(scheme, bucket, "/".join(parts))  # type: ignore[arg-type]


def versioned_storage_uri(root: str, model_name: str, version: str | int) -> str:
    """`<root>/<model_name>/<version>` for s3://, gs://, pvc://, file:// roots and local paths."""
    version = str(version)
    for label, part in (("model_name", model_name), ("version", version)):
        if not _SEGMENT_RE.match(part) or part in (".", ".."):
            raise ValueError(f"{label} {part!r} must be one path segment of letters, digits, '.', '_', '-'")
    root = root.strip()
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", root)
    if match is None:  # a local path, absolute or relative
        if not root:
            raise ValueError("storage root is empty")
        return posixpath.join(root.rstrip("/") or "/", model_name, version)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme in ("s3", "gs", "pvc"):
        rest = rest.strip("/")
        if not rest:
            what = "a PVC name" if scheme == "pvc" else "a bucket"
            raise ValueError(f"{root!r} names no {what}")
        return f"{scheme}://{rest}/{model_name}/{version}"
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"{root!r}: a file:// root must be an absolute path")
        return "file://" + posixpath.join(rest.rstrip("/") or "/", model_name, version)
    raise ValueError(f"unsupported storage scheme {scheme!r} in {root!r} (use s3://, gs://, pvc://, a path)")


def version_location(root: str, model_name: str, version: str) -> StorageLocation:
    """Where a version lives: `<root>/<model_name>/<version>` (validated by `versioned_storage_uri`)."""
    versioned_storage_uri(root, model_name, version)  # raises on a bad model name or version segment
    return parse_storage_uri(root).child(model_name, version)


def version_of_uri(storage_uri: str | None, root: str, model_name: str) -> str | None:
    """The version a storageUri points at, when it is `<root>/<model_name>/<version>` (or the Triton variant's
    `<version>/triton`); else None.

    Used to report the previous version from the live InferenceService (a placeholder such as the overlays'
    `.../latest` is reported as such, a URI outside the root as None)."""
    if not storage_uri:
        return None
    try:
        base, loc = parse_storage_uri(root).child(model_name), parse_storage_uri(storage_uri)
    except ValueError:
        return None
    if (loc.scheme, loc.bucket) != (base.scheme, base.bucket):
        return None
    if not loc.path.startswith(base.path.rstrip("/") + "/"):
        return None
    # `.../<version>`, or the Triton variant's model repository inside it (`.../<version>/triton`).
    parts = loc.path[len(base.path.rstrip("/")) + 1:].split("/")
    return parts[0] if parts[0] and parts[1:] in ([], [TRITON_DIR]) else None


# --- backends ----------------------------------------------------------------------------------------------


class ObjectStore(Protocol):
    """The few operations the promotion needs from a storage backend."""

    def exists(self, key: str) -> bool: ...

    def upload_file(self, local: Path, key: str) -> None: ...

    def write_text(self, key: str, text: str) -> None: ...


class LocalStore:
    """A directory: a local path, or a mounted PVC. Versions are staged beside their destination and renamed."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)

    def exists(self, key: str) -> bool:
        return (self.base / key).exists()

    def upload_file(self, local: Path, key: str) -> None:
        dest = self.base / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, dest)

    def write_text(self, key: str, text: str) -> None:
        dest = self.base / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        tmp.replace(dest)  # atomic: readers see the old or the new pointer, never a partial file

    def upload_tree(self, local_dir: Path, prefix: str) -> int:
        dest = self.base / prefix
        staging = dest.with_name(f".{dest.name}.staging-{uuid.uuid4().hex[:8]}")
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(local_dir, staging)
        try:
            staging.rename(dest)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (dest / MANIFEST).exists():  # lost a race to nobody: a real failure
                raise
        return sum(1 for p in local_dir.rglob("*") if p.is_file())


class S3Store:
    """An S3 (or S3-compatible) bucket through a boto3 client."""

    def __init__(self, bucket: str, client: Any) -> None:
        self.bucket, self.client = bucket, client

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def upload_file(self, local: Path, key: str) -> None:
        self.client.upload_file(str(local), self.bucket, key)

    def write_text(self, key: str, text: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=text.encode(), ContentType="text/plain")


class GCSStore:
    """A Google Cloud Storage bucket through google-cloud-storage."""

    def __init__(self, bucket: Any) -> None:
        self.bucket = bucket

    def exists(self, key: str) -> bool:
        return bool(self.bucket.blob(key).exists())

    def upload_file(self, local: Path, key: str) -> None:
        self.bucket.blob(key).upload_from_filename(str(local))

    def write_text(self, key: str, text: str) -> None:
        self.bucket.blob(key).upload_from_string(text, content_type="text/plain")


def open_store(location: StorageLocation, *, pvc_mount_path: str | Path = DEFAULT_PVC_MOUNT) -> ObjectStore:
    """The backend for a location. Object-store clients are imported here so a local run needs neither."""
    if location.scheme == "file":
        return LocalStore(Path("/"))
    if location.scheme == "pvc":
        mount = Path(pvc_mount_path)
        if not mount.is_dir():
            raise FileNotFoundError(
                f"{location.uri}: the claim {location.bucket!r} must be mounted at {mount} in this pod "
                f"(compile the pipeline with SHOPRANK_MODEL_PVC={location.bucket}, or mount it yourself)")
        return LocalStore(mount)
    if location.scheme == "s3":
        try:
            import boto3
        except ImportError as exc:  # the deploy extra is not installed
            raise ImportError("s3:// model roots need boto3: pip install 'shoprank[deploy]'") from exc
        return S3Store(location.bucket or "", boto3.client("s3"))
    from google.cloud import storage

    return GCSStore(storage.Client().bucket(location.bucket))


def _key(location: StorageLocation, *parts: str) -> str:
    """The object key (s3, gs), the path inside the mount (pvc), or the absolute path (file: LocalStore at /)."""
    return posixpath.join(location.path, *parts) if location.path else posixpath.join(*parts)


@dataclass(frozen=True)
class UploadResult:
    storage_uri: str  # what the InferenceService's storageUri should say
    uploaded: bool  # False: the version was already there (content-addressed, so identical)
    files: int


def bundle_files(bundle_dir: Path) -> list[Path]:
    """The bundle's files in upload order: everything, then `manifest.json` (the completeness marker)."""
    files = sorted((p for p in bundle_dir.rglob("*") if p.is_file()), key=lambda p: (p.name == MANIFEST, str(p)))
    if not files or files[-1].name != MANIFEST:
        raise FileNotFoundError(f"{bundle_dir} is not a shoprank bundle (no {MANIFEST})")
    return files


def upload_bundle(bundle_dir: str | Path, root: str, model_name: str, version: str, *,
                  store: ObjectStore | None = None, pvc_mount_path: str | Path = DEFAULT_PVC_MOUNT) -> UploadResult:
    """Copy a built bundle folder to `<root>/<model_name>/<version>/` unless that version is already complete."""
    bundle_dir = Path(bundle_dir)
    location = version_location(root, model_name, version)
    files = bundle_files(bundle_dir)
    store = store or open_store(location, pvc_mount_path=pvc_mount_path)
    if store.exists(_key(location, MANIFEST)):
        return UploadResult(location.uri, False, len(files))
    if isinstance(store, LocalStore):
        return UploadResult(location.uri, True, store.upload_tree(bundle_dir, _key(location)))
    for path in files:  # manifest.json last
        store.upload_file(path, _key(location, path.relative_to(bundle_dir).as_posix()))
    return UploadResult(location.uri, True, len(files))


def write_latest(root: str, model_name: str, version: str, *, store: ObjectStore | None = None,
                 pvc_mount_path: str | Path = DEFAULT_PVC_MOUNT) -> str:
    """Point `<root>/<model_name>/LATEST` at the version now in service (after a successful rollout only)."""
    location = version_location(root, model_name, version)
    model_dir = parse_storage_uri(root).child(model_name)
    store = store or open_store(location, pvc_mount_path=pvc_mount_path)
    store.write_text(_key(model_dir, LATEST), version + "\n")
    return model_dir.child(LATEST).uri
