"""The training operator's build recipe (hack/cluster/training.py) without Go: the main.go patches and the webhook
registration. Building and running it is `make test-cluster` (tests/cluster/test_training.py)."""

from __future__ import annotations

import base64

import pytest

from hack.cluster import localcluster as lc
from hack.cluster import training

MAIN_GO = """
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		WebhookServer: webhook.NewServer(webhook.Options{
			Port: webhookServerPort,
		}),
	})
	certsReady := make(chan struct{})
	defer close(certsReady)
	if err = cert.ManageCerts(mgr, certGenerationConfig, certsReady); err != nil {
		setupLog.Error(err, "Unable to set up cert rotation")
		os.Exit(1)
	}
"""


def test_the_patch_binds_loopback_and_replaces_the_certificate_rotator():
    patched = training._patched_main(MAIN_GO)
    assert 'Port: webhookServerPort, Host: "127.0.0.1",' in patched
    assert "cert.ManageCerts" not in patched and "defer close(certsReady)" not in patched
    assert patched.count("close(certsReady)") == 1  # closed once, at start: the webhook serves the local CA's cert
    assert "if err = error(nil); err != nil {" in patched


def test_a_moved_upstream_line_fails_the_build_with_the_line_named():
    with pytest.raises(lc.ClusterError, match="defer close"):
        training._patched_main(MAIN_GO.replace("defer close(certsReady)", ""))


def test_the_webhook_is_registered_by_url_on_loopback_with_the_cluster_ca(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(b"CA")
    hook = training.webhook_configuration({"dir": str(tmp_path), "ports": {"training_webhook": 9999}})
    assert hook["metadata"]["name"] == "validator.training-operator.kubeflow.org"
    (webhook,) = hook["webhooks"]
    assert webhook["clientConfig"] == {"url": "https://127.0.0.1:9999/validate-kubeflow-org-v1-tfjob",
                                       "caBundle": base64.b64encode(b"CA").decode()}
    assert webhook["rules"][0]["resources"] == ["tfjobs"] and webhook["failurePolicy"] == "Fail"


def test_the_recipe_pins_the_operator_as_a_tool():
    text = (training.GOMOD_DIR / "go.mod").read_text()
    assert f"tool {training.PACKAGE}" in text
    assert training.version() == "v1.8.1"
