"""The built images: users, sizes, what the serving image leaves out, and no build secret in any layer.

The build gets the host's pip settings and CA bundle as secrets (deploy/images.py); these tests look for them in
every layer of the images (not only the final filesystem, where a later layer could hide a file an earlier one
wrote) and in the image history, and show with a negative control that the scan finds a planted secret.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
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


def scan_layers(tool: Tool, image: str, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """{marker: [layer/path, ...]} for every file in every layer of `image` that contains a marker, and every
    file under run/secrets. Streams `save` output: nothing is written to disk."""
    hits: dict[str, list[str]] = {}
    proc = subprocess.Popen([tool.exe, "save", image], stdout=subprocess.PIPE, env={**os.environ, **tool.env})
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                if not member.isfile() or member.size < 1024:
                    continue
                try:  # a layer (plain or gzipped tar); anything else in the archive is metadata
                    layer = tarfile.open(fileobj=archive.extractfile(member), mode="r|*")
                except tarfile.ReadError:
                    continue
                with layer:
                    for f in layer:
                        if f.name.lstrip("./").startswith("run/secrets/"):
                            hits.setdefault("run/secrets", []).append(f"{member.name}:{f.name}")
                        if not f.isfile():
                            continue
                        content = layer.extractfile(f).read()
                        for key, needle in needles.items():
                            if needle in content:
                                hits.setdefault(key, []).append(f"{member.name}:{f.name}")
    finally:
        proc.stdout.close()
        assert proc.wait() == 0, f"{tool.name} save {image} failed"
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
    """Negative control: an image that does carry the CA bundle (one COPY on top of the serving image)."""
    needles = markers(tool, serving_image)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        pip_build_secrets(ctx / "secrets")
        (ctx / "Dockerfile").write_text(f"FROM {serving_image}\nCOPY secrets/ /opt/leaked/\n")
        tag = "localhost/shoprank-leak-probe:test"
        tool.run("build", "-t", tag, str(ctx), capture=True)
    try:
        hits = scan_layers(tool, tag, needles)
    finally:
        tool.run("rmi", "-f", tag, check=False, capture=True)
    assert set(hits) == set(needles), hits
