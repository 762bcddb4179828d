"""Container images for the local cluster's real node, built here: no image registry is reachable, so every
image a pod on the node runs is built on this machine and imported into the node's containerd.

- pause: containerd's pod sandbox image, the static binary of hack/cluster/pause (built with the cluster's
  binaries) in a one-layer image written directly as a docker-archive (no build tool involved).
- base: Debian bookworm (debootstrap minbase, Debian's own packages) with Python 3.11 in a virtualenv at
  /opt/python whose bin/ leads PATH, so `python` and `pip` behave as in the python:3.11-slim image the
  Dockerfiles name; `podman import` makes it an image. It stands in for python:3.11-slim as `BASE_IMAGE`.
- serving: serving/Dockerfile, unchanged, `FROM` the base (`--build-arg BASE_IMAGE=...`).
- storage-initializer: KServe's storage initializer, the `kserve-storage` package from the package index at
  KServe's version, with an entry point of ours (hack/cluster/storage-initializer/).

Each image is tagged with a hash of what it is built from (the recipe, the build context, the base), so an
unchanged image is never rebuilt and a changed one gets a new tag: pods always name exactly what they run, and
the kubelet never tries to pull (the tag is not `latest`, so the pull policy is IfNotPresent).

pip inside a build reaches the package index only with the host's pip settings and CA bundle: they are
mounted read-only into the build's RUN steps (never copied into a layer), and builds use the host's network
(`--network host`, so podman creates no bridge on the host). podman runs with the containers.conf that
../shared/STACK.md gives (cgroupfs, runc, ulimits the sandbox allows), written under the cache folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PREFIX = "localhost/shoprank-cluster"
BASE_RECIPE = {
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "include": ["python3", "python3-venv", "ca-certificates", "passwd"],
    "venv": "/opt/python",
    "version": "1",
}
KSERVE_STORAGE_VERSION = "0.20.0"  # = localcluster.KSERVE_VERSION, the controller that injects it
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""
PIP_CONFIG_FILES = ("/etc/pip.conf",)  # the host's pip settings, mounted read-only into RUN steps


class ImageError(RuntimeError):
    """An image could not be built or loaded; the message says why."""


def log(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _tree_digest(root: Path, paths: Iterable[str]) -> str:
    """A hash of the files under `paths` (relative to root): names and contents, caches left out."""
    h = hashlib.sha256()
    for rel in paths:
        top = root / rel
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


# --- podman -----------------------------------------------------------------------------------------------------


def _conf(cache: Path) -> Path:
    path = cache / "containers.conf"
    if not path.is_file() or path.read_text() != CONTAINERS_CONF:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CONTAINERS_CONF)
    return path


def podman(cache: Path, *args: str, check: bool = True, timeout: float = 3600,
           stdin: int | None = None, stdout: int | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("podman")
    if binary is None:
        raise ImageError("podman is not installed (apt-get install -y podman): it builds the node's images")
    env = dict(os.environ, CONTAINERS_CONF=str(_conf(cache)))
    proc = subprocess.run([binary, *args], env=env, text=True, timeout=timeout, check=False, stdin=stdin,
                          stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE)
    if check and proc.returncode != 0:
        raise ImageError(f"podman {' '.join(args[:3])} ... failed (exit {proc.returncode}):\n"
                         f"{(proc.stderr or '')[-3000:]}")
    return proc


def image_exists(cache: Path, ref: str) -> bool:
    return podman(cache, "image", "exists", ref, check=False).returncode == 0


def _mounts() -> list[str]:
    """Read-only mounts for RUN steps: the host's pip configuration and CA bundle (pip reaches the index
    only through them here); nothing of them ends up in a layer."""
    out = []
    for path in (*PIP_CONFIG_FILES, "/etc/ssl/certs/ca-certificates.crt"):
        if os.path.isfile(path):
            out += ["--volume", f"{path}:{path}:ro"]
    return out


def _prune(cache: Path, repository: str, keep: str) -> None:
    """Remove older tags of `repository` (earlier recipes), so podman's storage does not grow per change."""
    listed = podman(cache, "images", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False).stdout
    for ref in listed.split():
        if ref != keep and ref.startswith(repository + ":"):
            podman(cache, "rmi", "--force", ref, check=False)


# --- the images -------------------------------------------------------------------------------------------------


def base_image(cache: Path) -> str:
    """Debian bookworm + Python 3.11 (venv at /opt/python on PATH), built with debootstrap once per recipe."""
    ref = f"{PREFIX}/base:{_digest(json.dumps(BASE_RECIPE, sort_keys=True))}"
    if image_exists(cache, ref):
        return ref
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (apt-get install -y debootstrap): it builds the base image")
    start = time.monotonic()
    log(f"base image {ref}: debootstrap {BASE_RECIPE['suite']} (about 2 min)")
    with tempfile.TemporaryDirectory(prefix="shoprank-rootfs-", dir=cache) as tmp:
        root = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_RECIPE['include'])}",
               BASE_RECIPE["suite"], str(root), BASE_RECIPE["mirror"]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            raise ImageError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        venv = BASE_RECIPE["venv"]
        proc = subprocess.run(["chroot", str(root), "python3", "-m", "venv", venv], capture_output=True, text=True,
                              timeout=300, check=False)
        if proc.returncode != 0:
            raise ImageError(f"python3 -m venv {venv} in the rootfs failed: {proc.stderr[-2000:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for child in (root / junk).glob("*"):
                if child.is_file():
                    child.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            tar.add(root, arcname=".")
        path = f"{venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        podman(cache, "import", "--change", f"ENV PATH={path}", "--change", "ENV LANG=C.UTF-8",
               "--change", 'CMD ["python3"]', str(tarball), ref)
    _prune(cache, f"{PREFIX}/base", ref)
    log(f"base image {ref} built in {time.monotonic() - start:.0f}s")
    return ref


def _build(cache: Path, name: str, ref: str, containerfile: Path, context: Path, base: str) -> str:
    if image_exists(cache, ref):
        return ref
    start = time.monotonic()
    _prune(cache, f"{PREFIX}/{name}", ref)  # before: an older serving image is gigabytes of disk
    log(f"{name} image {ref}: podman build -f {containerfile.relative_to(REPO)} (FROM {base})")
    podman(cache, "build", "--network", "host", "--pull=never", "--layers", *_mounts(),
           "--build-arg", f"BASE_IMAGE={base}", "-f", str(containerfile), "-t", ref, str(context))
    _prune(cache, f"{PREFIX}/{name}", ref)
    log(f"{name} image {ref} built in {time.monotonic() - start:.0f}s")
    return ref


# What serving/Dockerfile copies (serving/Dockerfile.dockerignore), for the tag.
SERVING_CONTEXT = ("pyproject.toml", "README.md", "shoprank", "serving")


def serving_image(cache: Path, base: str) -> str:
    tag = _digest(base, _tree_digest(REPO, SERVING_CONTEXT))
    return _build(cache, "serving", f"{PREFIX}/serving:{tag}", REPO / "serving" / "Dockerfile", REPO, base)


def storage_initializer_image(cache: Path, base: str) -> str:
    folder = HERE / "storage-initializer"
    tag = _digest(base, KSERVE_STORAGE_VERSION, _tree_digest(folder, ("Containerfile", "initializer-entrypoint")))
    return _build(cache, "storage-initializer", f"{PREFIX}/kserve-storage-initializer:{tag}",
                  folder / "Containerfile", folder, base)


def pause_archive(cache: Path, pause_binary: Path) -> tuple[str, Path]:
    """The sandbox image as a docker-archive (what `ctr images import` reads): one layer with /pause."""
    binary = pause_binary.read_bytes()
    ref = f"{PREFIX}/pause:{_digest(binary)}"
    target = cache / "pause" / f"{ref.rsplit(':', 1)[1]}.tar"
    if target.is_file():
        return ref, target
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime = len(binary), 0o755, 0
        tar.addfile(info, io.BytesIO(binary))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                         "history": [{"created_by": "hack/cluster/images.py pause_archive"}]},
                        sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]).encode()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        for name, data in (("layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    partial.replace(target)
    return ref, target


def build_containers(cache: Path) -> dict[str, str]:
    """The images built with podman (everything but pause, which needs the Go build): name -> reference."""
    base = base_image(cache)
    return {"base": base, "storage-initializer": storage_initializer_image(cache, base),
            "serving": serving_image(cache, base)}


def build_all(cache: Path, pause_binary: Path) -> dict[str, str]:
    """Every image the node needs (built or found); returns name -> reference."""
    refs = build_containers(cache)
    refs["pause"] = pause_archive(cache, pause_binary)[0]
    return refs


# --- into containerd ------------------------------------------------------------------------------------------


def ctr(address: str, *args: str, stdin: int | None = None, check: bool = True,
        timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("ctr")
    if binary is None:
        raise ImageError("ctr (Debian package containerd) is not installed")
    proc = subprocess.run([binary, "--address", address, "--namespace", "k8s.io", *args], stdin=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise ImageError(f"ctr {' '.join(args[:3])} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def containerd_images(address: str) -> dict[str, str]:
    """Every image reference in the node's containerd -> the digest it points at."""
    listed = ctr(address, "images", "list").stdout.splitlines()[1:]  # REF TYPE DIGEST SIZE ...
    return {cols[0]: cols[2] for cols in (line.split() for line in listed) if len(cols) >= 3}


def stale_references(listed: dict[str, str], wanted: set[str]) -> list[str]:
    """The references to drop from the node's store: our older tags, and the `sha256:<image id>` aliases the
    kubelet's image service (CRI) adds to every image it has seen, unless they point at a wanted image. Removing
    only the tag leaves the alias, which keeps the layers and their unpacked snapshots: measured, 11 such aliases
    held 20 GB of a cache after a few dozen runs, and CI ran out of disk building the next image."""
    keep = {digest for ref, digest in listed.items() if ref in wanted}
    return sorted(ref for ref, digest in listed.items()
                  if ref not in wanted and digest not in keep
                  and (ref.startswith(PREFIX + "/") or ref.startswith("sha256:")))


def load(cache: Path, address: str, images: dict[str, str], pause_binary: Path) -> list[str]:
    """Import every image containerd does not have yet (by reference: tags are content hashes); drop older
    shoprank-cluster images (and their CRI aliases) from its store first. Returns what was imported."""
    wanted = set(images.values())
    stale = stale_references(containerd_images(address), wanted)
    if stale:  # older images first: the disk is shared; --sync waits for containerd's garbage collection
        ctr(address, "images", "remove", "--sync", *stale, check=False)
        log(f"removed {len(stale)} older image reference(s) from the node's containerd")
    have = set(containerd_images(address))
    loaded = []
    for name, ref in images.items():
        if name == "base" or ref in have:
            continue
        start = time.monotonic()
        if name == "pause":
            _, archive = pause_archive(cache, pause_binary)
            with open(archive, "rb") as fh:
                ctr(address, "images", "import", "-", stdin=fh.fileno())
        else:  # streamed: no archive of gigabytes on disk
            _save_into(cache, address, ref)
        loaded.append(ref)
        log(f"imported {ref} into the node's containerd in {time.monotonic() - start:.0f}s")
    return loaded


def _save_into(cache: Path, address: str, ref: str) -> None:
    """`podman save --format docker-archive REF | ctr images import -`, failing with either side's error."""
    podman_bin, ctr_bin = shutil.which("podman"), shutil.which("ctr")
    if podman_bin is None or ctr_bin is None:
        raise ImageError("podman and ctr are needed to load images into the node")
    env = dict(os.environ, CONTAINERS_CONF=str(_conf(cache)))
    save = subprocess.Popen([podman_bin, "save", "--format", "docker-archive", ref], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.run([ctr_bin, "--address", address, "--namespace", "k8s.io", "images", "import", "-"],
                          stdin=save.stdout, capture_output=True, text=True, timeout=3600, check=False)
    if save.stdout:
        save.stdout.close()
    save_err = save.stderr.read().decode(errors="replace") if save.stderr else ""
    save.wait(60)
    if save.returncode != 0 or load.returncode != 0:
        raise ImageError(f"podman save {ref} | ctr images import failed: podman exit {save.returncode} "
                         f"{save_err.strip()[-1500:]}; ctr exit {load.returncode} {load.stderr.strip()[-1500:]}")
