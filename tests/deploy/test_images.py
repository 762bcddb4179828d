"""The image build's logic without a container tool (the images themselves: tests/containers, `make
test-containers`): the dependency split, the requirements each image installs, the pip settings handed to a
build, the base image's cache key, the pod settings turned into run flags, and a TensorFlow-free serving path."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy import images

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack" / "images"))

import pip_install  # noqa: E402

TENSORFLOW = ("tensorflow", "tf_keras", "tensorflow-model-optimization")


def names(reqs: list[str]) -> set[str]:
    return {r.split("==")[0].split(">=")[0].split("[")[0].strip().lower() for r in reqs}


def test_serving_requirements_carry_no_tensorflow_and_the_pipeline_does():
    serving = names(pip_install.requirements(REPO / "pyproject.toml", ["serving"]))
    assert not serving & set(TENSORFLOW) and "matplotlib" not in serving
    assert {"kserve", "onnxruntime", "ai-edge-litert", "pyarrow"} <= serving
    pipeline = names(pip_install.requirements(REPO / "pyproject.toml", ["pipeline", "deploy"]))
    assert set(TENSORFLOW) | {"matplotlib", "kfp", "tf2onnx", "boto3"} <= pipeline  # train, through shoprank[train]
    assert "shoprank" not in pipeline  # the self-reference was expanded, not passed to pip
    gpu = names(pip_install.requirements(REPO / "pyproject.toml", ["serving", "savedmodel"]))
    assert {"tensorflow", "tf_keras"} <= gpu


def test_make_venv_installs_every_extra():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    makefile = (REPO / "Makefile").read_text()
    line = next(s for s in makefile.splitlines() if "pip install -q -e" in s)
    installed = set(line.split('".[')[1].split("]")[0].split(","))
    assert set(extras) - {"train"} <= installed  # train comes with pipeline


def test_an_unknown_extra_is_refused():
    with pytest.raises(SystemExit, match="no extra 'servng'"):
        pip_install.requirements(REPO / "pyproject.toml", ["servng"])


def test_pip_settings_become_build_secrets_without_host_paths(tmp_path, monkeypatch):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = https://pypi.example/simple\ncert = {ca}\nfind-links = /opt/wheels\n"
                    "[install]\ntrusted-host = pypi.example\n")
    for var in [v for v in os.environ if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    secrets = images.pip_build_secrets(tmp_path / "out")
    text = secrets["pip.conf"].read_text()
    assert "index-url = https://pypi.example/simple" in text and "trusted-host = pypi.example" in text
    assert "/opt/wheels" not in text and "cert" not in text  # host paths mean nothing inside the build
    assert secrets["pip-ca"].read_bytes() == ca.read_bytes()
    assert (tmp_path / "out").stat().st_mode & 0o077 == 0


def test_the_base_image_key_follows_its_recipe():
    changed = {**images.BASE_RECIPE, "include": [*images.BASE_RECIPE["include"], "curl"]}
    assert images.base_key() == images.base_key(dict(images.BASE_RECIPE))
    assert images.base_key(changed) != images.base_key()
    assert images.base_tag().startswith("localhost/shoprank-base:bookworm-py311-")
    assert images.base_tag().endswith(images.base_key())


def test_the_cpu_predictor_settings_become_run_flags():
    c = images.predictor_container(images.rendered_manifests("cpu"))
    assert c.command == ["python", "-m", "serving"]
    assert "--model_name=shoprank-ranker" in c.args and "--backend=tflite" in c.args
    flags = images.run_flags(c)
    joined = " ".join(flags)
    for expected in ("--user 1000:1000", "--read-only", "--security-opt no-new-privileges", "--cap-drop ALL",
                     f"--tmpfs /tmp:rw,mode=1777,size={256 * 2**20}", f"--memory {2 * 2**30}", "--cpus 2.0",
                     "--env HOME=/tmp"):
        assert expected in joined, (expected, flags)
    t = images.transformer_container(images.rendered_manifests("gpu-triton"))
    assert t.command == ["python", "-m", "serving.transformer"] and "--protocol=v2" in t.args
    assert "--read-only" in images.run_flags(t)


def test_settings_that_cannot_be_reproduced_are_refused():
    c = images.PodContainer(["python"], [], {}, {"privileged": True}, "", {})
    with pytest.raises(images.ImageError, match="privileged"):
        images.run_flags(c)
    c = images.PodContainer(["python"], [], {}, {"seccompProfile": {"type": "Localhost"}}, "", {})
    with pytest.raises(images.ImageError, match="seccompProfile"):
        images.run_flags(c)


def test_the_int8_and_onnx_serving_path_imports_no_tensorflow(tiny_bundle):
    """What the CPU serving image runs, in a fresh interpreter of this venv (which has TensorFlow installed):
    loading the model server and the transformer on a bundle with either backend imports neither TensorFlow nor
    matplotlib, so the image can leave them out."""
    code = ("import sys\n"
            "from kserve.predictor_config import PredictorConfig\n"
            "import serving.__main__, serving.server\n"
            "from serving.model import ShoprankModel\n"
            "from serving.transformer import ShoprankTransformer\n"
            "for backend in ('tflite', 'onnx'):\n"
            "    m = ShoprankModel('m', sys.argv[1], backend=backend)\n"
            "    m.load()\n"
            "    assert m.ready, backend\n"
            "t = ShoprankTransformer('t', sys.argv[1], PredictorConfig('127.0.0.1:1', 'v2'), 'm')\n"
            "assert t.load()\n"
            "print(sorted(m for m in ('tensorflow', 'tf_keras', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_bundle["bundle_dir"])], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
