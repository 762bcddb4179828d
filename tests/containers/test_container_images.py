"""The built images: users, sizes, what the serving image leaves out, and no build secret in any layer.

The build gets the host's pip settings and CA bundle as secrets (deploy/images.py); these tests look for them in
every layer of the images (not only the final filesystem, where a later layer could hide a file an earlier one
wrote) and in the image history, and show with a negative control that the scan finds a planted secret.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest

from deploy.images import Tool, history_text, image_report, pip_build_secrets

SERVING_MAX_BYTES = 700 * 10**6
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.S)


def certificates(pem: bytes) -> set[bytes]:
    return {re.sub(rb"\s", b"", body) for body in PEM.findall(pem)}


def markers(tool: Tool, image: str) -> dict[str, bytes]:
    """Byte strings that only a leaked secret would put into an image: the pip.conf the build was given, and a
    base64 line of every host CA certificate that the image's own CA bundle does not have (a private CA)."""
    with tempfile.TemporaryDirectory() as tmp:
        secrets = pip_build_secrets(Path(tmp))
        found = {sid: path.read_bytes() for sid, path in secrets.items()}
    out: dict[str, bytes] = {}
    if "pip.conf" in found:
        out["pip.conf"] = found["pip.conf"].strip()
    if "pip-ca" in found:
        own = tool.run("run", "--rm", "--entrypoint", "cat", image, "/etc/ssl/certs/ca-certificates.crt",
                       capture=True).stdout.encode()
        for i, cert in enumerate(sorted(certificates(found["pip-ca"]) - certificates(own))):
            out[f"host CA certificate {i}"] = cert[64:128]  # a 64-character line of its base64 body
    return out


def layer_dirs(tool: Tool, image: str) -> list[Path]:
    """The directories holding each layer's own files, top layer first: overlay storage (podman's `overlay`,
    Docker's `overlay2`) names them in the image's GraphDriver data. Read in place: `save` would first copy the
    whole image (3 GB for the component image) to a temporary directory, on a disk other builds share."""
    driver = json.loads(tool.run("image", "inspect", "--format", "{{json .GraphDriver}}", image,
                                 capture=True).stdout)
    data = driver.get("Data") or {}
    assert driver.get("Name", "").startswith("overlay") and "UpperDir" in data, \
        f"{tool.name}'s storage driver {driver.get('Name')!r} does not expose per-layer directories: {driver}"
    dirs = [Path(data["UpperDir"])] + [Path(d) for d in data.get("LowerDir", "").split(":") if d]
    assert all(d.is_dir() for d in dirs), "layer directories not readable (run the tests as root)"
    return dirs


def scan_layers(tool: Tool, image: str, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """{marker: [layer/path, ...]} for every file in every layer of `image` that contains a marker, and every
    file under run/secrets. Each layer separately: a file one layer wrote and a later one deleted is still found."""
    hits: dict[str, list[str]] = {}
    dirs = layer_dirs(tool, image)
    for layer in dirs:
        for root, _, files in os.walk(layer):  # symlinks are not followed
            for name in files:
                path = Path(root, name)
                rel = path.relative_to(layer)
                if rel.parts[:2] == ("run", "secrets"):
                    hits.setdefault("run/secrets", []).append(f"{layer.parent.name[:12]}:{rel}")
                if path.is_symlink() or not path.is_file():  # links, and overlay's whiteouts (device files)
                    continue
                content = path.read_bytes()
                for key, needle in needles.items():
                    if needle in content:
                        hits.setdefault(key, []).append(f"{layer.parent.name[:12]}:{rel}")
    assert len(dirs) >= 5, f"{image} has {len(dirs)} layers: not the repository's image?"
    return hits


@pytest.fixture(scope="module")
def reports(tool, component_image, serving_image, measured) -> dict[str, dict]:
    out = {name: image_report(tool, ref) for name, ref in (("component", component_image),
                                                             ("serving", serving_image))}
    for name, report in out.items():
        measured[f"{name} image size (MB)"] = round(report["bytes"] / 1e6)
        measured[f"{name} image largest layers (MB)"] = [
            (round(layer["bytes"] / 1e6), layer["created_by"][-90:]) for layer in report["largest_layers"][:3]]
    return out


def test_images_run_as_uid_1000(tool, component_image, serving_image):
    for image in (component_image, serving_image):
        config = json.loads(tool.run("image", "inspect", image, capture=True).stdout)[0]["Config"]
        assert config["User"] == "1000:1000", (image, config["User"])
        out = tool.run("run", "--rm", image, "python", "-c", "import os; print(os.getuid(), os.getgid())",
                       capture=True).stdout.split()
        assert out == ["1000", "1000"], image


def test_serving_image_size_and_contents(reports):
    serving = reports["serving"]
    assert serving["bytes"] <= SERVING_MAX_BYTES, json.dumps(serving, indent=2)
    # No TensorFlow-sized layer: the largest is the dependency layer, well under TensorFlow's ~1.9 GB alone.
    assert serving["largest_layers"][0]["bytes"] < SERVING_MAX_BYTES
    assert reports["component"]["bytes"] > serving["bytes"]


def test_components_import_in_the_component_image(tool, component_image):
    code = ("import sys, kfp, shoprank.train, shoprank.optimize, shoprank.report, components.train, "
            "pipelines.shoprank_pipeline; print(sys.prefix)")
    assert tool.run("run", "--rm", component_image, "python3", "-c", code, capture=True).stdout.strip() == "/opt/venv"


def test_no_build_secret_in_the_history(tool, component_image, serving_image):
    for image in (component_image, serving_image):
        history = history_text(tool, image)
        assert "pip_install.py" in history, "the dependency step is not in the history: wrong image?"
        for needle in (b"BEGIN CERTIFICATE", *markers(tool, image).values()):
            assert needle.decode() not in history, (image, needle)
        assert "PIP_CERT=" not in history and "PIP_CONFIG_FILE=" not in history


@pytest.mark.parametrize("which", ["serving", "component"])
def test_no_build_secret_in_any_layer(tool, component_image, serving_image, which):
    image = serving_image if which == "serving" else component_image
    needles = markers(tool, image)
    assert needles, "no pip.conf and no private CA on this host: nothing to look for (the test would prove nothing)"
    assert scan_layers(tool, image, needles) == {}


def test_the_layer_scan_finds_a_planted_secret(tool, serving_image):
    """Negative control: an image that carries the secrets in a layer that a later layer deletes (one COPY and
    one RUN on top of the serving image)."""
    needles = markers(tool, serving_image)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        pip_build_secrets(ctx / "secrets")
        (ctx / "Dockerfile").write_text(f"FROM {serving_image}\nUSER 0\nCOPY secrets/ /opt/leaked/\n"
                                        "RUN rm -r /opt/leaked\n")
        tag = "localhost/shoprank-leak-probe:test"
        tool.run("build", "-t", tag, str(ctx), capture=True)
    try:
        hits = scan_layers(tool, tag, needles)
    finally:
        tool.run("rmi", "-f", tag, check=False, capture=True)
    assert set(hits) == set(needles), hits
    assert all(len(paths) == 1 and "opt/leaked/" in paths[0] for paths in hits.values()), hits
