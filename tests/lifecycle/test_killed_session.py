"""What a killed session leaves on the host, and the next cluster-up on this machine.

These tests start and kill clusters of their own with the machine's one real node, so they cannot run while another
cluster holds it: `make test` runs them in a pytest run of their own, after the rest (whose session cluster holds
the real node until that run ends). Needs root and the host parts `make node-deps` installs, like every real-node
test; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kimi_testbed import procs, realnode
from kimi_testbed.cluster import Cluster, cluster_dir

pytestmark = pytest.mark.real_node


@pytest.fixture(autouse=True)
def machine_real_node_free() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the real node needs root")
    missing = realnode.missing_host_parts()
    if missing:
        pytest.skip(f"the real node needs {', '.join(missing)}: {realnode.HOST_PACKAGES_HINT}")
    lock = realnode.NodeLock.acquire()
    if lock is None:
        why = f"the machine's real node is held by {realnode.lock_holder()}: these tests run on their own"
        if os.environ.get("KIMI_LIFECYCLE_TESTS"):  # `make test` / `make test-lifecycle`: nothing else may hold it
            pytest.fail(why)
        pytest.skip(why + " (make test-lifecycle)")
    lock.release()
    yield


def kubectl(cl: Cluster, *args: str, stdin: str = "") -> str:
    argv = [str(Path(cl.bin_dir) / "kubectl"), f"--kubeconfig={cl.kubeconfig}", *args]
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, f"kubectl {' '.join(args)}: {res.stderr.strip()}"
    return res.stdout


def run_pod_on_real_node(cl: Cluster) -> str:
    """A pod on the real node (the sandbox image's /pause): a shim, a netns, a veth and a cgroup on the host."""
    info = cl.real_node
    assert info is not None, "the cluster has no real node"
    handle = realnode.NodeHandle(info)
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "left-behind", "namespace": "default"},
        "spec": {
            **handle.placement(),
            "containers": [{"name": "pause", "image": info["sandbox_image"], "imagePullPolicy": "Never"}],
        },
    }
    kubectl(cl, "apply", "-f", "-", stdin=json.dumps(manifest))
    kubectl(cl, "wait", "--for=condition=Ready", "--timeout=90s", "pod/left-behind")
    return str(info.get("node_dir", ""))


def host_leftovers(node_dir: str) -> dict[str, Any]:
    """What a real node puts on the host, as the host shows it (not as the ledger says)."""
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    netns = sorted(p.name for p in realnode.NETNS_DIR.glob("cni-*")) if realnode.NETNS_DIR.is_dir() else []
    return {
        "bridge": Path(f"/sys/class/net/{realnode.BRIDGE}").exists(),
        "iptables": sum("kimi-testbed:" in line for line in rules.splitlines()),
        "shims": len(realnode.shim_pids(Path(node_dir))) if node_dir else 0,
        "netns": netns,
        "ledger": realnode.LEDGER_FILE.exists(),
        "device_plugin_socket": (realnode.DEVICE_PLUGIN_DIR / "kubelet.sock").exists(),
    }


def kill_supervisor(cl: Cluster) -> None:
    """SIGKILL, as a killed session (OOM, kill -9, a lost VM session): no handler runs, nothing is undone."""
    sup = cl.supervisor_pid
    assert sup and procs.pid_alive(sup), f"no live supervisor for {cl.name}"
    os.kill(sup, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        components = [int(c.get("pid") or 0) for c in cl.state.get("components", {}).values()]
        if not procs.pid_alive(sup) and not any(procs.pid_alive(p) for p in components if p):
            return
        time.sleep(0.2)
    raise AssertionError(f"the components of {cl.name} outlived their supervisor (PR_SET_PDEATHSIG)")


def test_the_next_cluster_up_after_a_killed_session_sweeps_its_real_node_and_starts() -> None:
    before = host_leftovers("")
    first = Cluster.start(f"killed-{os.getpid()}", nodes=1, real_node=True)
    try:
        node_dir = run_pod_on_real_node(first)
        kill_supervisor(first)
    except BaseException:
        first.stop(remove=True)
        raise
    left = host_leftovers(node_dir)
    # the killed session really left things behind: the sweep below has something to undo
    assert left["ledger"] and left["bridge"] and left["iptables"] > 0 and left["shims"] >= 1, left
    assert set(left["netns"]) - set(before["netns"]), left

    started = time.monotonic()
    second = Cluster.start(f"next-{os.getpid()}", nodes=1, real_node=True)
    took = time.monotonic() - started
    try:
        log = (second.dir / "supervisor.log").read_text(errors="replace")
        assert "a killed session left real-node host effects" in log, log[-2000:]
        assert realnode.shim_pids(Path(node_dir)) == [], "the killed session's pod still runs"
        info = second.real_node
        assert info is not None
        gpus = kubectl(
            second, "get", "node", str(info["node"]), "-o", "jsonpath={.status.allocatable.nvidia\\.com/gpu}"
        )
        assert gpus == "8", f"the real node of the next cluster allocates {gpus!r} GPUs"
        print(f"cluster-up after a killed session: {took:.1f} s")
    finally:
        second.stop(remove=True)
        Cluster(first.name, cluster_dir(first.name)).stop(remove=True)
    after = host_leftovers(node_dir)
    assert after == {**before, "shims": 0}, f"left on the host after cluster-down: {after} (before: {before})"


def test_a_killed_test_session_stops_its_cluster_and_undoes_the_real_node() -> None:
    """pytest killed: the supervisor watches its owner's pid and stops the cluster, real node included."""
    before = host_leftovers("")
    owner = subprocess.Popen(["sleep", "600"])
    cl = Cluster.start(f"owned-{os.getpid()}", nodes=1, owner_pid=owner.pid, real_node=True)
    try:
        node_dir = run_pod_on_real_node(cl)
        sup = cl.supervisor_pid
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 90
        while procs.pid_alive(sup) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not procs.pid_alive(sup), "the supervisor outlived its owner by 90 s"
        after = host_leftovers(node_dir)
        assert after == {**before, "shims": 0}, f"left on the host: {after} (before: {before})"
        lock = realnode.NodeLock.acquire()
        assert lock is not None, f"the real-node lock is still held by {realnode.lock_holder()}"
        lock.release()
    finally:
        cl.stop(remove=True)
