"""The real node's configuration builders (kimi_testbed.realnode, kimi_testbed.pause): each setting that was a
failure first on this machine kind (shared/reference/real-node.md) stays set. Pure; no node runs here."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
import tarfile
import tomllib
from pathlib import Path

from kimi_testbed import realnode
from kimi_testbed.pause import docker_archive

PATHS = realnode.NodePaths(Path("/work/x/.cluster/c/node"))
NET = realnode.Network(ipaddress.IPv4Network("10.244.3.0/24"))


def test_containerd_keeps_everything_under_the_cluster_dir_and_never_lowers_oom_score() -> None:
    cfg = tomllib.loads(realnode.containerd_config(PATHS, "kimi-testbed.local/pause:3.10.2"))
    for key in ("root", "state"):
        assert cfg[key].startswith(str(PATHS.root) + "/")
    assert cfg["grpc"]["address"] == str(PATHS.containerd_socket)
    assert cfg["oom_score"] == 0
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # else runc: "can't get final child's PID from pipe: EOF"
    assert cri["sandbox_image"] == "kimi-testbed.local/pause:3.10.2"  # no registry is reachable
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"  # crun fails on hybrid cgroups
    assert runc["options"]["SystemdCgroup"] is False
    assert runc["options"]["Root"].startswith(str(PATHS.root))
    assert cri["cni"]["conf_dir"].startswith(str(PATHS.root))
    assert cri["stream_server_address"] == "127.0.0.1"


def test_kubelet_config_has_each_setting_this_machine_needs() -> None:
    cfg = realnode.kubelet_config(PATHS, NET, Path("/ca.crt"), port=40000, healthz_port=40001)
    assert cfg["failCgroupV1"] is False
    assert cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["oomScoreAdj"] == 0
    assert cfg["makeIPTablesUtilChains"] is False
    assert (cfg["imageGCHighThresholdPercent"], cfg["imageGCLowThresholdPercent"]) == (100, 99)
    for key in ("podLogsDir", "volumePluginDir"):
        assert cfg[key].startswith(str(PATHS.root) + "/")
    assert cfg["authentication"]["x509"]["clientCAFile"] == "/ca.crt"
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["address"] == "10.244.3.1"  # the bridge only, never every interface
    assert cfg["readOnlyPort"] == 0
    assert cfg["registerWithTaints"] == [realnode.REAL_TAINT]
    assert cfg["protectKernelDefaults"] is False  # true makes it refuse to start (it must set panic sysctls)


def test_node_labels_match_the_kwok_gpu_nodes_and_say_real() -> None:
    labels = realnode.node_labels()
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels[realnode.NODE_KIND_LABEL] == "real"
    assert "type" not in labels  # type=kwok selects the simulated nodes


def test_bridge_network_avoids_every_host_network_and_the_service_cidr() -> None:
    taken = [ipaddress.IPv4Network("10.244.0.0/24"), ipaddress.IPv4Network("10.244.1.128/25")]
    assert realnode.pick_network(taken).cidr == ipaddress.IPv4Network("10.244.2.0/24")
    assert realnode.pick_network([]).node_ip == "10.244.0.1"
    everything = [ipaddress.IPv4Network("10.0.0.0/8")]
    try:
        realnode.pick_network(everything)
    except realnode.RealNodeError as err:
        assert "no free /24" in str(err)
    else:
        raise AssertionError("a host route over all of 10.244.0.0/16 must leave no network")


def test_cni_uses_the_bridge_with_ipam_state_under_the_cluster_dir() -> None:
    conf = realnode.cni_conflist(PATHS, NET, "c")
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["bridge"] == realnode.BRIDGE
    assert bridge["ipMasq"] is False  # nothing leaves the machine
    assert bridge["ipam"]["dataDir"].startswith(str(PATHS.root))
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]


def test_every_iptables_rule_is_tagged_and_pod_traffic_cannot_leave_the_bridge() -> None:
    rules = realnode.iptables_rules("c", "10.96.0.1", 6443)
    for _table, _chain, rule in rules:
        assert rule[rule.index("--comment") + 1] == "kimi-testbed:c"
    forward = [r for t, c, r in rules if (t, c) == ("filter", "FORWARD")]
    assert forward[0][:5] == ["-i", realnode.BRIDGE, "!", "-o", realnode.BRIDGE] and forward[0][-1] == "DROP"
    (dnat,) = [r for t, c, r in rules if t == "nat"]
    assert dnat[dnat.index("-d") + 1] == "10.96.0.1/32"
    assert dnat[-1] == "127.0.0.1:6443"
    assert dnat[dnat.index("-i") + 1] == realnode.BRIDGE  # only pod traffic is rewritten


def test_device_plugin_hash_is_the_one_build_bins_stamps() -> None:
    src = realnode.DEVICE_PLUGIN_SRC
    shell = subprocess.run(
        ["bash", "-c", "LC_ALL=C cat go.mod go.sum *.go | sha256sum | cut -c1-16"],
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert realnode.device_plugin_source_hash(src) == shell


def test_pause_archive_is_a_one_layer_docker_archive_with_entrypoint_pause(tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    docker_archive(out, "kimi-testbed.local/pause:x", {"pause": (b"\x7fELF", 0o755)}, ["/pause"], user="65535:65535")
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        (entry,) = manifest
        assert entry["RepoTags"] == ["kimi-testbed.local/pause:x"]
        config = json.load(tar.extractfile(entry["Config"]))  # type: ignore[arg-type]
        layer_bytes = tar.extractfile(entry["Layers"][0]).read()  # type: ignore[union-attr]
    assert config["config"]["Entrypoint"] == ["/pause"] and config["config"]["User"] == "65535:65535"
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]
    first = out.read_bytes()
    docker_archive(out, "kimi-testbed.local/pause:x", {"pause": (b"\x7fELF", 0o755)}, ["/pause"], user="65535:65535")
    assert out.read_bytes() == first  # deterministic: same inputs, same image ID


def test_ledger_records_before_and_clears(tmp_path: Path) -> None:
    ledger = realnode.Ledger(tmp_path / "real-node.json")
    ledger.begin("c", tmp_path)
    ledger.record("sysctl", key="kernel.panic", before="1")
    ledger.record("bridge", name="x", cidr="10.244.0.0/24")
    assert [e["kind"] for e in ledger.read()["effects"]] == ["sysctl", "bridge"]
    ledger.clear()
    assert ledger.read() == {}
