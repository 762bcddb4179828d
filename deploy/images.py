"""Build and run shoprank's container images with docker, podman or buildah, also where no registry is reachable.

    python3 -m deploy.images base-image [--tool podman]      the local Python 3.11 base (debootstrap), cached
    python3 -m deploy.images check [--image REF]             fail with the reason when containers cannot run
    python3 -m deploy.images build --component-image REF --serving-image REF [--base-image REF] [--push]
    python3 -m deploy.images report REF...                   size and largest layers of images
    python3 -m deploy.images serve --image REF --bundle DIR  the serving image as the cpu overlay runs it

Why this exists rather than two `docker build` lines: the project's machines have podman/buildah but no Docker
engine and no image registry, and their package index needs the host's pip settings and CA bundle. So:

- The tool is whichever is there (`--tool`/`CONTAINER_TOOL` to choose): docker (when its engine answers), podman,
  buildah. podman and buildah get `hack/images/containers.conf` (runc, cgroupfs, ulimits the sandbox allows)
  unless `CONTAINERS_CONF` is set; `SHOPRANK_CONTAINERS_CONF=` (empty) keeps the tool's own settings.
- `base-image` makes `python:3.11-slim`'s stand-in: Debian bookworm minbase with python3, python3-venv and
  ca-certificates (debootstrap from Debian's mirror), apt lists, docs and locales removed, imported as
  `localhost/shoprank-base:bookworm-py311-<key>`. The key hashes the recipe below; the root filesystem tarball is
  kept under `$SHOPRANK_CACHE_DIR/images/` (default ~/.cache/shoprank/images), so a new recipe builds a new base,
  and a wiped image store re-imports in seconds instead of re-running debootstrap.
- `build` uses that local base when it is in the tool's store and no `--base-image` is given; otherwise the
  Dockerfiles' default (`python:3.11-slim`) applies, exactly as for a user with Docker and a registry. The
  host's pip settings (`pip config list`, PIP_* variables) and CA bundle go in as build secrets (`pip.conf`,
  `pip-ca`): mounted for the dependency step only, never in a layer (tests/containers checks the history).
  Layers are cached by the tool between builds; the dependency layer depends on pyproject.toml only.
- `serve` and the container tests start the serving image with the predictor container's settings read from the
  rendered manifests (user, read-only root, no privilege escalation, capabilities dropped, /tmp as the only
  writable path), the bundle read-only at /mnt/models.

Standard library only (the YAML of the manifests is read with PyYAML, in the venv, only by `serve`), so that
`make base-image` and `make images` need no virtualenv.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = ROOT / "hack" / "images" / "containers.conf"
TOOLS = ("docker", "podman", "buildah")
LOCAL_COMPONENT_IMAGE = "localhost/shoprank-components:dev"
LOCAL_SERVING_IMAGE = "localhost/shoprank-serving:dev"
# What the base image is made of. Any change here (or a bump of "recipe") makes a new key, hence a new base.
BASE_RECIPE: dict[str, Any] = {
    "recipe": 1,
    "suite": "bookworm",
    "variant": "minbase",
    "mirror": "http://deb.debian.org/debian",
    # libgomp1: OpenMP, which LightGBM's wheel links (the evaluate step's reference); python:3.11-slim lacks it too,
    # so the component Dockerfile installs it with apt where it is missing.
    "include": ["python3", "python3-venv", "ca-certificates", "libgomp1"],
    # Removed after debootstrap: apt's package lists and downloaded .debs, documentation, man pages, locales.
    "trim": ["var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/doc/*",
             "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*", "var/log/*.log", "var/log/apt/*"],
    "config": ["ENV LANG=C.UTF-8", 'CMD ["python3"]'],
}
BASE_REPOSITORY = "localhost/shoprank-base"


class ImageError(RuntimeError):
    """A build or run step failed; the message says which and why (and what to do, where known)."""


def cache_dir() -> Path:
    """Where base-image tarballs live: outside the checkout, shared by worktrees, kept between CI runs."""
    return Path(os.environ.get("SHOPRANK_CACHE_DIR") or Path.home() / ".cache" / "shoprank") / "images"


@dataclass(frozen=True)
class Tool:
    """A container tool and the environment to run it with."""

    name: str
    exe: str
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, capture: bool = False, timeout: float | None = None,
            **kwargs: Any) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.exe, *args], env={**os.environ, **self.env}, text=True, timeout=timeout,
                              capture_output=capture, **kwargs)
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip()[-3000:] if capture else "(output above)"
            raise ImageError(f"`{self.name} {' '.join(args[:3])} ...` failed with exit code {proc.returncode}:\n"
                             f"{detail}")
        return proc


def tool_env(name: str) -> dict[str, str]:
    """podman and buildah read hack/images/containers.conf unless CONTAINERS_CONF is set (see module docstring)."""
    if name == "docker":
        return {"DOCKER_BUILDKIT": "1"}  # --secret and RUN --mount need BuildKit
    if os.environ.get("CONTAINERS_CONF"):
        return {}
    conf = os.environ.get("SHOPRANK_CONTAINERS_CONF", str(CONTAINERS_CONF))
    return {"CONTAINERS_CONF": conf} if conf else {}


def find_tool(name: str = "") -> Tool:
    """The tool named (must be installed), else the first of docker (engine answering), podman, buildah."""
    if name:
        if name not in TOOLS:
            raise ImageError(f"CONTAINER_TOOL must be one of {', '.join(TOOLS)}, not {name!r}")
        exe = shutil.which(name)
        if exe is None:
            raise ImageError(f"{name} is not installed (CONTAINER_TOOL={name}). On Debian: "
                             f"apt-get install -y {name} runc")
        return Tool(name, exe, tool_env(name))
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0:
        return Tool("docker", docker, tool_env("docker"))
    for candidate in ("podman", "buildah"):
        exe = shutil.which(candidate)
        if exe:
            return Tool(candidate, exe, tool_env(candidate))
    raise ImageError("no container tool: install Docker (with a running engine), podman or buildah "
                     "(Debian: apt-get install -y podman buildah runc)")


def image_exists(tool: Tool, ref: str) -> bool:
    if tool.name == "podman":
        return tool.run("image", "exists", ref, check=False, capture=True).returncode == 0
    if tool.name == "buildah":
        return tool.run("inspect", "--type", "image", ref, check=False, capture=True).returncode == 0
    return tool.run("image", "inspect", ref, check=False, capture=True).returncode == 0


# ----- the base image -----

def base_key(recipe: dict[str, Any] | None = None) -> str:
    """12 hex digits of the recipe's hash: the base image's tag and its cached tarball are named by it."""
    return hashlib.sha256(json.dumps(recipe or BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def base_tag(recipe: dict[str, Any] | None = None) -> str:
    return f"{BASE_REPOSITORY}:{(recipe or BASE_RECIPE)['suite']}-py311-{base_key(recipe)}"


def _debootstrap(tarball: Path) -> None:
    """Make the base root filesystem with debootstrap and write it as a tarball (atomically)."""
    exe = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else "")
    if not exe:
        raise ImageError("make base-image needs debootstrap (Debian: apt-get install -y debootstrap), or pass a "
                         "Python 3.11 base you can pull: make images BASE_IMAGE=python:3.11-slim")
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root (it creates device nodes and chroots); run make base-image as root")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=tarball.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        r = BASE_RECIPE
        cmd = [exe, f"--variant={r['variant']}", f"--include={','.join(r['include'])}", r["suite"], str(rootfs),
               r["mirror"]]
        print(f"base image: {' '.join(cmd)}  (about 2 min)", flush=True)
        t0 = time.monotonic()
        log = Path(tmp) / "debootstrap.log"
        with log.open("w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise ImageError(f"debootstrap failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        for pattern in r["trim"]:
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
        print(f"base image: root filesystem {tarball.stat().st_size / 2**20:.0f} MB in "
              f"{time.monotonic() - t0:.0f}s -> {tarball}", flush=True)


def ensure_base_image(tool: Tool) -> str:
    """The local base image for the current recipe: found in the tool's store, else imported from the cached
    tarball, else built with debootstrap first. Returns its reference."""
    tag = base_tag()
    if image_exists(tool, tag):
        print(f"base image: {tag} (already in {tool.name}'s store)", flush=True)
        return tag
    tarball = cache_dir() / f"base-{base_key()}.tar"
    if not tarball.exists():
        _debootstrap(tarball)
    t0 = time.monotonic()
    if tool.name == "buildah":
        ctr = tool.run("from", "scratch", capture=True).stdout.strip()
        try:
            tool.run("add", ctr, str(tarball), "/", capture=True)
            tool.run("config", "--env", "LANG=C.UTF-8", "--cmd", "python3", ctr, capture=True)
            tool.run("commit", "--quiet", ctr, tag, capture=True)
        finally:
            tool.run("rm", ctr, check=False, capture=True)
    else:
        changes = [a for c in BASE_RECIPE["config"] for a in ("--change", c)]
        tool.run("import", *changes, str(tarball), tag, capture=True)
    print(f"base image: {tag} imported from {tarball} in {time.monotonic() - t0:.1f}s", flush=True)
    return tag


def check_containers(tool: Tool, image: str) -> None:
    """Run a trivial container from `image` as the tests and the pipeline will (non-root, read-only): raise with
    the tool's own message when containers cannot run here, so CI fails with the reason instead of later, in a
    build step or a test, with a symptom."""
    if tool.name == "buildah":
        args = ["run", "--user", "1000:1000"]  # buildah runs commands in working containers only
        ctr = tool.run("from", image, capture=True).stdout.strip()
        try:
            proc = tool.run(*args, ctr, "python3", "-c", "print('ok')", check=False, capture=True, timeout=120)
        finally:
            tool.run("rm", ctr, check=False, capture=True)
    else:
        proc = tool.run("run", "--rm", "--user", "1000:1000", "--read-only", "--cap-drop", "ALL", image, "python3",
                        "-c", "print('ok')", check=False, capture=True, timeout=120)
    if proc.returncode != 0 or proc.stdout.strip() != "ok":
        conf = tool.env.get("CONTAINERS_CONF", os.environ.get("CONTAINERS_CONF", "the tool's defaults"))
        raise ImageError(f"containers cannot run on this machine ({tool.name}, settings: {conf}): "
                         f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    print(f"containers run here ({tool.name}, {image})", flush=True)


# ----- pip settings as build secrets -----

def _pip_config_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) of the host's pip configuration: `pip config list` when pip runs, else the files pip
    reads (PIP_CONFIG_FILE, site, user) and PIP_* variables, in pip's order (later wins)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    entries: list[tuple[str, str, str]] = []
    if proc.returncode == 0:
        for line in proc.stdout.splitlines():
            name, sep, value = line.partition("=")
            if not sep:
                continue
            scope, _, key = name.rpartition(".")
            section = "global" if scope in (":env:", "") else scope
            entries.append((section, key, value.strip().strip("'\"")))
        return entries
    files = ["/etc/xdg/pip/pip.conf", "/etc/pip.conf", str(Path.home() / ".pip" / "pip.conf"),
             str(Path.home() / ".config" / "pip" / "pip.conf")]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(os.environ["PIP_CONFIG_FILE"])
    parser = configparser.RawConfigParser()
    parser.read(files)
    for section in parser.sections():
        entries += [(section, k, v) for k, v in parser.items(section)]
    for name, value in os.environ.items():
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
            entries.append(("global", name[4:].lower().replace("_", "-"), value))
    return entries


def pip_build_secrets(out_dir: Path) -> dict[str, Path]:
    """Write the build's pip.conf and CA bundle into out_dir (private, removed after the build) and return
    {secret id: file}. Settings naming host paths (find-links, a cert path) would mean nothing in the build: the
    CA bundle itself goes in as `pip-ca` instead, and path-valued settings are left out."""
    sections: dict[str, dict[str, str]] = {}
    ca = ""
    for section, key, value in _pip_config_entries():
        if key == "cert":
            ca = value
        elif key in ("client-cert", "config-file") or value.startswith(("/", "~", "./")):
            continue
        else:
            sections.setdefault(section, {})[key] = value
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        ca = ca or os.environ.get(var, "")
    ca = ca or ("/etc/ssl/certs/ca-certificates.crt" if Path("/etc/ssl/certs/ca-certificates.crt").is_file() else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    secrets: dict[str, Path] = {}
    if sections:
        conf = configparser.RawConfigParser()
        for section, values in sections.items():
            conf[section] = values
        path = out_dir / "pip.conf"
        with path.open("w") as fh:
            conf.write(fh)
        secrets["pip.conf"] = path
    if ca and Path(ca).is_file():
        path = out_dir / "pip-ca.pem"
        shutil.copyfile(ca, path)
        secrets["pip-ca"] = path
    return secrets


# ----- building -----

@dataclass(frozen=True)
class ImageSpec:
    """One of the repository's images: its Dockerfile, the build-context filter and the default extras."""

    name: str
    dockerfile: str
    ignorefile: str


IMAGES = {
    "component": ImageSpec("component", "Dockerfile", ".dockerignore"),
    "serving": ImageSpec("serving", "serving/Dockerfile", "serving/Dockerfile.dockerignore"),
}


def build_image(tool: Tool, spec: ImageSpec, ref: str, base_image: str = "", build_args: Sequence[str] = (),
                network: str | None = None, no_cache: bool = False) -> float:
    """Build one image; return the seconds it took. The layer cache of the tool is used unless no_cache."""
    args = ["build", "-f", str(ROOT / spec.dockerfile), "-t", ref]
    if tool.name != "docker":
        args += ["--ignorefile", str(ROOT / spec.ignorefile), "--layers"]
    if network is None:
        network = "host" if tool.name != "docker" else ""
    if network:
        args += ["--network", network]
    if no_cache:
        args.append("--no-cache")
    if base_image:
        args += ["--build-arg", f"BASE_IMAGE={base_image}"]
    for arg in build_args:
        args += ["--build-arg", arg]
    with tempfile.TemporaryDirectory(prefix="shoprank-build-") as tmp:
        for sid, path in pip_build_secrets(Path(tmp)).items():
            args += ["--secret", f"id={sid},src={path}"]
        args.append(str(ROOT))
        print(f"{spec.name} image: {tool.name} {' '.join(a for a in args if not a.startswith('id='))}", flush=True)
        before = image_id(tool, ref)
        t0 = time.monotonic()
        tool.run(*(["bud", *args[1:]] if tool.name == "buildah" else args))
    seconds = time.monotonic() - t0
    print(f"{spec.name} image: {ref} built in {seconds:.0f}s", flush=True)
    _drop_replaced(tool, ref, before)
    return seconds


def image_id(tool: Tool, ref: str) -> str:
    """The image id `ref` names now, or "" (none, or a tool that cannot say)."""
    if tool.name == "buildah":
        args = ["inspect", "--type", "image", "--format", "{{.FromImageID}}", ref]
    else:
        args = ["image", "inspect", "--format", "{{.Id}}", ref]
    proc = tool.run(*args, check=False, capture=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _drop_replaced(tool: Tool, ref: str, before: str) -> None:
    """Remove the image `ref` named before this build, now untagged: each rebuild of a local tag (every code
    change) otherwise leaves a dangling image of up to 3 GB behind, and CI on one machine ran out of disk after a
    few dozen runs. Its layers that the new image shares stay (the tool keeps layers still in use); an image a
    container still uses, or one with another tag, is left alone (the tool refuses, and that is fine)."""
    after = image_id(tool, ref)
    if before and after and before != after:
        proc = tool.run("rmi", before, check=False, capture=True)
        if proc.returncode == 0:
            print(f"removed the image {ref} named before ({before[:19]})", flush=True)


def build_images(tool: Tool, refs: dict[str, str], base_image: str = "", build_args: Sequence[str] = (),
                 push: bool = False, network: str | None = None, no_cache: bool = False) -> dict[str, float]:
    """Build the images named in refs ({"component": REF, "serving": REF}); the local base when none is given."""
    if not base_image and image_exists(tool, base_tag()):
        base_image = base_tag()
        print(f"using the local base image {base_image} (make base-image; BASE_IMAGE=... to choose another)")
    times = {}
    for name, ref in refs.items():
        times[name] = build_image(tool, IMAGES[name], ref, base_image, build_args, network, no_cache)
    if push:
        for ref in refs.values():
            tool.run("push", ref)
    return times


# ----- inspecting -----

def image_report(tool: Tool, ref: str, top: int = 5) -> dict[str, Any]:
    """Size of an image (uncompressed, bytes) and its largest layers with the step that made them."""
    if tool.name == "docker":
        size = int(tool.run("image", "inspect", "--format", "{{.Size}}", ref, capture=True).stdout.strip())
        rows = tool.run("history", "--no-trunc", "--format", "{{json .}}", ref, capture=True).stdout.splitlines()
        layers = [{"bytes": _docker_size(json.loads(r)["Size"]), "created_by": json.loads(r)["CreatedBy"]}
                  for r in rows]
    else:
        podman = tool if tool.name == "podman" else Tool("podman", shutil.which("podman") or "podman", tool.env)
        size = int(podman.run("image", "inspect", "--format", "{{.Size}}", ref, capture=True).stdout.strip())
        history = json.loads(podman.run("history", "--no-trunc", "--format", "json", ref, capture=True).stdout)
        layers = [{"bytes": int(h.get("size") or h.get("Size") or 0),
                   "created_by": h.get("CreatedBy") or h.get("createdBy") or h.get("created_by") or ""}
                  for h in history]
    layers = sorted(layers, key=lambda layer: -layer["bytes"])[:top]
    return {"image": ref, "bytes": size, "largest_layers": layers}


def _docker_size(text: str) -> int:
    units = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * units[unit])
    return int(text or 0)


def history_text(tool: Tool, ref: str) -> str:
    """Every history entry of an image (the commands that made its layers), for the secret-leak check."""
    exe = tool if tool.name != "buildah" else Tool("podman", shutil.which("podman") or "podman", tool.env)
    return exe.run("history", "--no-trunc", "--format", "{{.CreatedBy}}", ref, capture=True).stdout


# ----- the Docker API for kfp.local's DockerRunner -----

@contextlib.contextmanager
def docker_api(tool_name: str = "") -> Iterator[str]:
    """A Docker Engine API endpoint for the docker Python SDK (kfp.local's DockerRunner): DOCKER_HOST or a running
    Docker engine as they are; with podman, `podman system service` on a private socket for the duration."""
    if os.environ.get("DOCKER_HOST") and tool_name in ("", "docker"):
        yield os.environ["DOCKER_HOST"]
        return
    tool = find_tool(tool_name)
    if tool.name == "docker":
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    if tool.name != "podman":
        raise ImageError("running containers needs Docker or podman (buildah only builds): "
                         "apt-get install -y podman runc")
    with tempfile.TemporaryDirectory(prefix="shoprank-podman-") as tmp:
        sock = Path(tmp) / "podman.sock"
        log = Path(tmp) / "service.log"
        with log.open("w") as fh:
            proc = subprocess.Popen([tool.exe, "system", "service", "--time=0", f"unix://{sock}"],
                                    env={**os.environ, **tool.env}, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not _answers(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ImageError(f"podman system service did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
            yield f"unix://{sock}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b" 200 " in s.recv(64)
        except OSError:
            return False


# ----- running the serving image as the cluster does -----

@dataclass(frozen=True)
class PodContainer:
    """What a pod runs for one container of the rendered manifests, as far as a local run can reproduce it."""

    command: list[str]
    args: list[str]
    env: dict[str, str]
    security: dict[str, Any]
    tmp_size: str  # the /tmp emptyDir's sizeLimit ("" = none)
    limits: dict[str, str]


def rendered_manifests(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize manifests/overlays/<overlay>` as a list of objects."""
    import yaml  # the venv's (PyYAML comes with kserve and kubernetes)

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ImageError("kubectl (with kustomize) is needed to read the predictor's settings from manifests/")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "manifests" / "overlays" / overlay)], check=True,
                         capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for unit in sorted(units, key=len, reverse=True):
        if q.endswith(unit):
            return int(float(q[: -len(unit)]) * units[unit])
    return int(q)


def predictor_container(docs: list[dict[str, Any]], name: str = "shoprank-ranker") -> PodContainer:
    """The predictor container as KServe builds it from the ServingRuntime and the InferenceService: the
    runtime's command, args and env, the model's args appended, the model's securityContext and limits over the
    runtime's, and the runtime's /tmp emptyDir. The `{{.Name}}` template becomes the InferenceService name."""
    runtime = next(d for d in docs if d["kind"] == "ServingRuntime")
    isvc = next(d for d in docs if d["kind"] == "InferenceService" and d["metadata"]["name"] == name)
    container = runtime["spec"]["containers"][0]
    model = isvc["spec"]["predictor"].get("model", {})
    args = [a.replace("{{.Name}}", name) for a in container.get("args", [])] + list(model.get("args", []))
    security = {**container.get("securityContext", {}), **model.get("securityContext", {})}
    limits = {**container.get("resources", {}).get("limits", {}), **model.get("resources", {}).get("limits", {})}
    env = {e["name"]: e["value"] for e in container.get("env", []) + model.get("env", []) if "value" in e}
    tmp = _tmp_volume(runtime["spec"].get("volumes", []), container.get("volumeMounts", []))
    return PodContainer(list(container["command"]), args, env, security, tmp, limits)


def transformer_container(docs: list[dict[str, Any]], name: str = "shoprank-ranker") -> PodContainer:
    """The transformer container of an InferenceService (the gpu-triton overlay)."""
    isvc = next(d for d in docs if d["kind"] == "InferenceService" and d["metadata"]["name"] == name)
    spec = isvc["spec"]["transformer"]
    container = spec["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    tmp = _tmp_volume(spec.get("volumes", []), container.get("volumeMounts", []))
    return PodContainer(list(container["command"]), list(container.get("args", [])), env,
                        dict(container.get("securityContext", {})), tmp,
                        dict(container.get("resources", {}).get("limits", {})))


def _tmp_volume(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> str:
    names = {m["name"] for m in mounts if m.get("mountPath") == "/tmp"}
    for v in volumes:
        if v["name"] in names and "emptyDir" in v:
            return str(v["emptyDir"].get("sizeLimit", "") or "unlimited")
    return ""


def run_flags(c: PodContainer) -> list[str]:
    """`docker/podman run` flags that give a container what the pod spec gives it. Refuses settings it cannot
    reproduce rather than silently dropping them."""
    s = c.security
    flags: list[str] = []
    if "runAsUser" in s:
        flags += ["--user", f"{s['runAsUser']}:{s.get('runAsGroup', s['runAsUser'])}"]
    if s.get("runAsNonRoot") and not s.get("runAsUser"):
        raise ImageError("runAsNonRoot without runAsUser: the image's user decides; give runAsUser")
    if s.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if s.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if s.get("privileged"):
        raise ImageError("privileged containers are not reproduced here")
    for cap in s.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", cap]
    for cap in s.get("capabilities", {}).get("add", []):
        flags += ["--cap-add", cap]
    profile = s.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if profile == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    elif profile != "RuntimeDefault":  # the runtime's default profile is what docker/podman apply anyway
        raise ImageError(f"seccompProfile {profile} is not reproduced here")
    if c.tmp_size:
        size = "" if c.tmp_size == "unlimited" else f",size={_quantity_bytes(c.tmp_size)}"
        flags += ["--tmpfs", f"/tmp:rw,mode=1777{size}"]
    if "memory" in c.limits:
        flags += ["--memory", str(_quantity_bytes(str(c.limits["memory"])))]
    if "cpu" in c.limits:
        cpu = str(c.limits["cpu"])
        flags += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
    for k, v in c.env.items():
        flags += ["--env", f"{k}={v}"]
    return flags


def serve(tool: Tool, image: str, bundle: Path, backend: str = "", http_port: int = 8080, grpc_port: int = 8081,
          overlay: str = "cpu", name: str = "shoprank-ranker") -> int:
    """Run the serving image in the foreground as `overlay`'s predictor container runs, ports published."""
    if tool.name == "buildah":
        raise ImageError("buildah cannot run a server; use podman or docker (CONTAINER_TOOL=podman)")
    c = predictor_container(rendered_manifests(overlay), name)
    args = [a for a in c.args if not (backend and a.startswith("--backend"))] + \
        ([f"--backend={backend}"] if backend else [])
    cmd = ["run", "--rm", "--init", "--name", f"shoprank-serve-{os.getpid()}", *run_flags(c),
           "-v", f"{bundle.resolve()}:/mnt/models:ro", "-p", f"{http_port}:8080", "-p", f"{grpc_port}:8081",
           image, *c.command, *args]
    print(f"{tool.name} {' '.join(cmd)}", flush=True)
    return tool.run(*cmd, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tool", default=os.environ.get("CONTAINER_TOOL", ""), help="docker | podman | buildah")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("base-image", help="build (or find) the local Python 3.11 base image")
    c = sub.add_parser("check", help="fail with the reason when containers cannot run here")
    c.add_argument("--image", default="", help="default: the local base image (built if needed)")
    b = sub.add_parser("build", help="build the component and serving images")
    b.add_argument("--component-image", default=LOCAL_COMPONENT_IMAGE)
    b.add_argument("--serving-image", default=LOCAL_SERVING_IMAGE)
    b.add_argument("--only", choices=["component", "serving"], default=None)
    b.add_argument("--base-image", default="", help="default: the local base if built, else the Dockerfile's")
    b.add_argument("--build-arg", action="append", default=[], help="KEY=VALUE, repeatable")
    b.add_argument("--network", default=None, help="build network (default: host for podman/buildah)")
    b.add_argument("--no-cache", action="store_true")
    b.add_argument("--push", action="store_true")
    r = sub.add_parser("report", help="image sizes and largest layers (JSON)")
    r.add_argument("images", nargs="+")
    s = sub.add_parser("serve", help="run the serving image as the overlay's predictor container")
    s.add_argument("--image", default=LOCAL_SERVING_IMAGE)
    s.add_argument("--bundle", required=True, type=Path)
    s.add_argument("--backend", default="")
    s.add_argument("--overlay", default="cpu")
    s.add_argument("--http-port", type=int, default=8080)
    s.add_argument("--grpc-port", type=int, default=8081)
    a = p.parse_args(argv)
    try:
        tool = find_tool(a.tool)
        if a.cmd == "base-image":
            print(ensure_base_image(tool))
        elif a.cmd == "check":
            check_containers(tool, a.image or ensure_base_image(tool))
        elif a.cmd == "build":
            refs = {"component": a.component_image, "serving": a.serving_image}
            if a.only:
                refs = {a.only: refs[a.only]}
            times = build_images(tool, refs, a.base_image, a.build_arg, a.push, a.network, a.no_cache)
            for name, ref in refs.items():
                try:
                    size = f"{image_report(tool, ref)['bytes'] / 1e6:,.0f} MB"
                except ImageError:  # buildah alone: its size is read through podman
                    size = "size unknown"
                print(f"  {name:<10} {ref}  {size}  ({times[name]:.0f}s)")
        elif a.cmd == "report":
            print(json.dumps([image_report(tool, ref) for ref in a.images], indent=2))
        elif a.cmd == "serve":
            return serve(tool, a.image, a.bundle, a.backend, a.http_port, a.grpc_port, a.overlay)
    except ImageError as e:
        print(f"deploy.images: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
