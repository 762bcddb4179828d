"""The local cluster's recipe without starting it: the real node's configuration (what this sandbox needs, what
keeps traffic inside the node's namespace), the images' tags and the pause image archive, KServe's webhooks.
Starting it for real is `make test-cluster` (tests/cluster)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from hack.cluster import images, localcluster, node


def test_kubelet_config_has_what_this_machine_needs(tmp_path):
    pki = tmp_path / "pki"
    config = json.loads(node.write_kubelet_config(tmp_path, pki, 10248).read_text())
    # Hybrid cgroup v1/v2 machine: 1.35 refuses cgroup v1 unless told; no QoS cgroups (../shared/STACK.md).
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupsPerQOS"] is False and config["enforceNodeAllocatable"] == []
    assert config["address"] == node.NODE_IP and config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["resolvConf"] == ""  # pods get no DNS server
    assert config["imageGCHighThresholdPercent"] == 100  # images cannot be pulled back
    assert config["containerRuntimeEndpoint"] == f"unix://{node.containerd_socket(tmp_path)}"
    assert str(tmp_path) in config["podLogsDir"] and str(tmp_path) in config["volumePluginDir"]


def test_containerd_config_and_pod_network_stay_inside(tmp_path):
    pause = "localhost/shoprank-cluster/pause:abc"
    text = node.write_containerd_config(tmp_path, pause, tmp_path / "cache").read_text()
    assert "restrict_oom_score_adj = true" in text and "SystemdCgroup = false" in text
    assert 'sandbox_image = "localhost/shoprank-cluster/pause:abc"' in text
    assert f'root = "{tmp_path / "cache"}"' in text and f'state = "{tmp_path}' in text
    [conflist] = (tmp_path / "node" / "cni" / "net.d").glob("*.conflist")
    bridge = json.loads(conflist.read_text())["plugins"][0]
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["routes"] == [{"dst": node.NODE_RANGE}]  # no default route for pods
    assert bridge["ipam"]["ranges"] == [[{"subnet": node.POD_CIDR, "gateway": node.POD_GATEWAY}]]


def test_metrics_server_scrapes_only_the_real_node(tmp_path):
    args = node.metrics_server_args(tmp_path, tmp_path / "pki", tmp_path / "kubeconfig")
    selector = next(a for a in args if a.startswith("--node-selector="))
    assert "shoprank.dev/real-node=true" in selector  # never the simulated nodes' addresses
    assert f"--bind-address={node.NODE_IP}" in args


def test_pause_archive_is_a_docker_archive(tmp_path):
    binary = tmp_path / "pause-bin"
    binary.write_bytes(b"\x7fELF fake")
    ref, archive = images.pause_archive(tmp_path, binary)
    assert ref.startswith(f"{images.PREFIX}/pause:")
    with tarfile.open(archive) as tar:
        [manifest] = json.loads(tar.extractfile("manifest.json").read())
        assert manifest["RepoTags"] == [ref]
        config = json.loads(tar.extractfile(manifest["Config"]).read())
        assert config["config"]["Entrypoint"] == ["/pause"]
        with tarfile.open(fileobj=tar.extractfile("layer.tar")) as layer:
            member = layer.getmember("pause")
            assert member.mode == 0o755 and layer.extractfile(member).read() == b"\x7fELF fake"
    assert images.pause_archive(tmp_path, binary) == (ref, archive)  # the same content, the same tag


def test_image_tags_follow_the_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("1")
    before = images._tree_digest(tmp_path, ("a",))
    (tmp_path / "a" / "__pycache__").mkdir()
    (tmp_path / "a" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert images._tree_digest(tmp_path, ("a",)) == before
    (tmp_path / "a" / "x.py").write_text("2")
    assert images._tree_digest(tmp_path, ("a",)) != before


def test_older_images_and_their_cri_aliases_leave_the_node():
    # As `ctr images list` showed on this machine: the kubelet's image service adds a `sha256:<id>` alias for
    # each image; an alias of an older image kept 3 GB of layers alive after its tag was removed.
    serving_new, serving_old = f"{images.PREFIX}/serving:new", f"{images.PREFIX}/serving:old"
    listed = {serving_new: "sha256:d1", "sha256:aaa": "sha256:d1",  # the wanted image and its alias
              serving_old: "sha256:d0", "sha256:bbb": "sha256:d0", "sha256:ccc": "sha256:d9",
              "docker.io/library/other:1": "sha256:d5"}  # not ours: kept
    assert images.stale_references(listed, {serving_new}) == [serving_old, "sha256:bbb", "sha256:ccc"]
    assert images.stale_references({serving_new: "sha256:d1"}, {serving_new}) == []


def test_kserve_pod_mutator_is_registered_as_kserve_registers_it(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_text("CA")
    state = {"dir": str(tmp_path), "ports": {"kserve_webhook": 9443}}
    mutating = next(w for w in localcluster.kserve_webhooks(state) if w["kind"] == "MutatingWebhookConfiguration")
    pod = next(h for h in mutating["webhooks"] if h["name"].endswith("pod-mutator"))
    assert pod["clientConfig"]["url"] == "https://127.0.0.1:9443/mutate-pods"
    assert pod["rules"][0]["resources"] == ["pods"] and pod["failurePolicy"] == "Fail"
    assert pod["objectSelector"]["matchExpressions"][0]["key"] == "serving.kserve.io/inferenceservice"


def test_storage_secret_points_kserve_at_the_clusters_store():
    state = {"s3": {"endpoint": "http://10.213.0.2:9000", "access_key": "k", "secret_key": "s",
                    "region": "us-east-1"}}
    secret = localcluster.storage_secret(state, "ns")
    assert secret["metadata"]["name"] == "shoprank-storage" and secret["metadata"]["namespace"] == "ns"
    annotations = secret["metadata"]["annotations"]
    assert annotations["serving.kserve.io/s3-endpoint"] == "10.213.0.2:9000"
    assert annotations["serving.kserve.io/s3-usehttps"] == "0"
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}


def test_every_tool_module_is_pinned():
    here = Path(localcluster.HERE)
    for folder, (_, package) in localcluster.TOOL_MODULES.items():
        gomod = (here / folder / "go.mod").read_text()
        if folder != "pause":
            assert f"tool {package}" in gomod, folder
            assert (here / folder / "go.sum").is_file(), folder
            assert localcluster.versions()[folder].startswith("v")
        else:
            assert "require" not in gomod  # the standard library only
