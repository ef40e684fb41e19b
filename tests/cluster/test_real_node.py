"""What a pod does, on the test bed's REAL node (kubelet + containerd + runc, kimi_testbed.realnode).

Node kind: every test here needs the real node (``real_node`` fixture, ``real_node`` marker); the kwok nodes are
only looked at. Real: the kubelet, its probes, preStop and SIGTERM, the container runtime, CNI, EndpointSlices,
logs/exec/port-forward through the API server. Simulated: the GPUs (our device plugin advertises 8 IDs and sets
NVIDIA_VISIBLE_DEVICES; there is no silicon) and SGLang (the standin-engine image runs the stand-in, a TEST DOUBLE,
behind ``python3 -m sglang.launch_server``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from typing import Any

import pytest
from kubernetes import client

from kimi_operator import planner
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.engine import sglang
from kimi_testbed.cluster import Cluster, ClusterError, cluster_dir
from kimi_testbed.realnode import NodeHandle
from kimi_testbed.wait import NotYet, pods_summary, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]

PORT = sglang.HTTP_PORT  # the port the operator renders (container port "http")
CONTROL_PORT = 18080  # the stand-in's control port (kimi_testbed.standin_server)


def core_api(api: client.ApiClient) -> Any:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def engine_image(real_node: NodeHandle) -> str:
    """The standin-engine image (TEST DOUBLE of SGLang), built if missing and imported into the node."""
    return real_node.ensure_image("standin-engine")


def engine_pod(
    name: str,
    image: str,
    node: NodeHandle,
    *,
    gpus: int = 0,
    env: dict[str, str] | None = None,
    probes: dict[str, Any] | None = None,
    lifecycle: dict[str, Any] | None = None,
    grace: int | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "engine",
        "image": image,
        "imagePullPolicy": "Never",  # no registry: the image was imported into the node's containerd
        "args": ["--host", "0.0.0.0", "--port", str(PORT), "--served-model-name", "kimi-k2.5"],
        "ports": [
            {"name": "http", "containerPort": PORT},
            {"name": "control", "containerPort": CONTROL_PORT},
        ],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        **(probes or {}),
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if lifecycle:
        container["lifecycle"] = lifecycle
    spec: dict[str, Any] = {"containers": [container], **node.placement()}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}}, "spec": spec}


def wait_ready(core: Any, namespace: str, name: str, timeout: float = 90) -> Any:
    def ready() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        conds = {c.type: c.status for c in pod.status.conditions or []}
        if conds.get("Ready") == "True":
            return pod
        waiting = [
            f"{s.name}: {s.state.waiting.reason}: {s.state.waiting.message}"
            for s in pod.status.container_statuses or []
            if s.state and s.state.waiting
        ]
        return NotYet(f"{pods_summary([pod])} {waiting}")

    return wait_for(ready, timeout, f"pod {namespace}/{name} Ready on the real node")


def kubectl(cluster: Cluster, *args: str, timeout: float = 60) -> str:
    out = cluster.kubectl(*args, check=False, timeout=timeout)
    assert out.returncode == 0, f"kubectl {' '.join(args)} failed ({out.returncode}): {out.stderr}"
    return out.stdout


def http(url: str, body: dict[str, Any] | None = None, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def engine_state(pod_ip: str) -> dict[str, Any]:
    status, _, body = http(f"http://{pod_ip}:{CONTROL_PORT}/engine")
    assert status == 200, f"stand-in control port on {pod_ip}: HTTP {status}"
    state: dict[str, Any] = json.loads(body)
    return state


# -- the node ----------------------------------------------------------------------------------------------------
def test_real_node_is_ready_with_8_gpus_beside_the_kwok_nodes(cluster: Cluster, real_node: NodeHandle) -> None:
    listing = kubectl(cluster, "get", "nodes", "-o", "wide")
    nodes = json.loads(kubectl(cluster, "get", "nodes", "-o", "json"))["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert real_node.name in by_name, f"no node {real_node.name} in:\n{listing}"
    assert any(n["metadata"]["labels"].get("type") == "kwok" for n in nodes), f"no kwok nodes beside it:\n{listing}"
    node = by_name[real_node.name]
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True", listing
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["kimi-testbed.dev/node-kind"] == "real"
    assert "type" not in labels and "kwok.x-k8s.io/node" not in (node["metadata"].get("annotations") or {})
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_node.node_ip
    taints = [(t["key"], t.get("value"), t["effect"]) for t in node["spec"].get("taints") or []]
    assert taints == [("kimi-testbed.dev/node-kind", "real", "NoSchedule")], "only pods that ask land here"


def test_a_second_cluster_asking_for_a_real_node_is_told_who_has_it(
    cluster: Cluster, kube_api: client.ApiClient, real_node: NodeHandle
) -> None:
    """One real node per machine: the kubelet's device-plugin directory is fixed whatever --root-dir says."""
    name = f"second-{os.getpid()}"
    with pytest.raises(ClusterError) as err:
        Cluster.start(name, nodes=1, owner_pid=os.getpid(), real_node=True, timeout=60)
    Cluster(name, cluster_dir(name)).stop(remove=True)
    message = str(err.value)
    assert "one real node per machine" in message and repr(cluster.name) in message, message
    node = core_api(kube_api).read_node(real_node.name)  # the first cluster's node is untouched
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"


# -- GPUs --------------------------------------------------------------------------------------------------------
def test_8_gpu_pod_sees_8_device_ids_and_a_9th_gpu_is_refused(
    cluster: Cluster, kube_api: client.ApiClient, namespace: str, real_node: NodeHandle, engine_image: str
) -> None:
    core = core_api(kube_api)
    core.create_namespaced_pod(namespace, engine_pod("gpu8", engine_image, real_node, gpus=8))
    pod = wait_ready(core, namespace, "gpu8")
    assert pod.spec.node_name == real_node.name
    visible = kubectl(cluster, "exec", "-n", namespace, "gpu8", "--", "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES")
    ids = visible.strip().split(",")
    assert len(ids) == 8 and len(set(ids)) == 8 and all(i.startswith("GPU-") for i in ids), visible

    core.create_namespaced_pod(namespace, engine_pod("gpu9", engine_image, real_node, gpus=1))

    def refused() -> str | NotYet:
        p = core.read_namespaced_pod("gpu9", namespace)
        for cond in p.status.conditions or []:
            unschedulable = cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable"
            if unschedulable and "nvidia.com/gpu" in (cond.message or ""):
                return str(cond.message)
        return NotYet(pods_summary([p]))

    message = wait_for(refused, 30, "the 9th GPU to be refused (PodScheduled=False, Unschedulable)")
    assert "Insufficient nvidia.com/gpu" in message
    assert core.read_namespaced_pod("gpu9", namespace).status.phase == "Pending"


# -- the API server reaches the kubelet, pods reach the API server ----------------------------------------------
def test_logs_exec_and_port_forward_reach_the_container(
    cluster: Cluster, kube_api: client.ApiClient, namespace: str, real_node: NodeHandle, engine_image: str
) -> None:
    core = core_api(kube_api)
    core.create_namespaced_pod(namespace, engine_pod("engine", engine_image, real_node))
    wait_ready(core, namespace, "engine")

    def listening_logged() -> str | NotYet:
        out = kubectl(cluster, "logs", "-n", namespace, "engine")
        return out if "listening" in out else NotYet(out[-300:])

    logs = wait_for(listening_logged, 30, "the stand-in's start-up lines in kubectl logs")
    assert "TEST DOUBLE" in logs

    whoami = kubectl(cluster, "exec", "-n", namespace, "engine", "--", "id", "-u").strip()
    assert whoami == "65532", f"the image's non-root user runs the process, got uid {whoami}"

    argv = [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", "port-forward", "-n"]
    proc = subprocess.Popen(
        [*argv, namespace, "pod/engine", f":{PORT}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNNN -> 8000"
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, f"kubectl port-forward said {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        local = f"http://127.0.0.1:{match.group(1)}/health"

        def forwarded() -> tuple[int, dict[str, str]] | NotYet:
            try:
                status, headers, _ = http(local)
            except OSError as err:  # the stand-in may not listen yet: the pod has no readiness probe
                return NotYet(str(err))
            return (status, headers) if status == 200 else NotYet(f"HTTP {status}")

        status, headers = wait_for(forwarded, 60, f"{local} answering through kubectl port-forward")
        assert "kimi-testbed-standin" in headers.get("Server", ""), (status, headers)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


IN_CLUSTER_WHOAMI = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
req = urllib.request.Request(url, data=json.dumps({"apiVersion": "authentication.k8s.io/v1",
    "kind": "SelfSubjectReview"}).encode(), headers={"Authorization": "Bearer " + open(sa + "/token").read(),
    "Content-Type": "application/json"})
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["status"]["userInfo"]["username"])
"""


def test_pod_reaches_the_api_server_with_its_in_cluster_config(
    cluster: Cluster, kube_api: client.ApiClient, namespace: str, real_node: NodeHandle, engine_image: str
) -> None:
    core = core_api(kube_api)
    core.create_namespaced_pod(namespace, engine_pod("client", engine_image, real_node))
    wait_ready(core, namespace, "client")
    service_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    env = kubectl(cluster, "exec", "-n", namespace, "client", "--", "sh", "-c", "echo $KUBERNETES_SERVICE_HOST")
    assert env.strip() == service_ip
    user = kubectl(cluster, "exec", "-n", namespace, "client", "--", "python3", "-c", IN_CLUSTER_WHOAMI)
    assert user.strip() == f"system:serviceaccount:{namespace}:default"


def test_service_gets_an_endpointslice_with_the_real_pod_ip(
    kube_api: client.ApiClient, namespace: str, real_node: NodeHandle, engine_image: str
) -> None:
    core = core_api(kube_api)
    core.create_namespaced_pod(namespace, engine_pod("engine", engine_image, real_node))
    core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "engine"},
            "spec": {"selector": {"app": "engine"}, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
        },
    )
    pod = wait_ready(core, namespace, "engine")
    assert pod.status.pod_ip in {str(a) for a in real_node.pod_cidr}, (pod.status.pod_ip, real_node.pod_cidr)
    discovery: Any = client.DiscoveryV1Api(kube_api)

    def ready_endpoint() -> list[str] | NotYet:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=engine"
        ).items
        seen = [(e.addresses, e.conditions.ready) for s in slices for e in s.endpoints or []]
        ready = [a for s in slices for e in s.endpoints or [] if e.conditions.ready for a in e.addresses]
        return ready or NotYet(f"slices {[s.metadata.name for s in slices]}, endpoints {seen}")

    addresses = wait_for(ready_endpoint, 30, "a ready endpoint in the Service's EndpointSlice")
    assert addresses == [pod.status.pod_ip]

    def answers() -> bool | NotYet:
        # the pod has no readiness probe, so Ready comes before the stand-in listens: wait for it to answer
        try:
            status, _, _ = http(f"http://{pod.status.pod_ip}:{PORT}/health")
        except OSError as err:
            return NotYet(str(err))
        return status == 200 or NotYet(f"HTTP {status}")

    wait_for(answers, 60, f"the pod IP {pod.status.pod_ip} answering /health from this machine")


# -- the probes, preStop and termination grace the operator renders, run by the real kubelet --------------------
def rendered(**spec: Any) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(probes, lifecycle, terminationGracePeriodSeconds) as the operator renders them for a Kimi K2.5 spec."""
    s = KimiDeploymentSpec.model_validate(spec)
    return sglang.probes(planner.plan(s)), sglang.lifecycle(), sglang.TERMINATION_GRACE_SECONDS


def test_a_load_longer_than_readiness_patience_is_not_killed(
    kube_api: client.ApiClient, namespace: str, real_node: NodeHandle, engine_image: str
) -> None:
    probes, _, _ = rendered()
    ready = probes["readinessProbe"]
    patience = ready["periodSeconds"] * ready["failureThreshold"]
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > patience + 15
    load = patience + 15  # the port stays closed this long, as while SGLang loads weights
    core = core_api(kube_api)
    t0 = time.monotonic()
    core.create_namespaced_pod(
        namespace,
        engine_pod("slow", engine_image, real_node, env={"KIMI_STANDIN_LOAD_SECONDS": str(load)}, probes=probes),
    )

    def startup_probe_failing() -> bool | NotYet:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=slow").items
        msgs = [f"{e.reason}: {e.message}" for e in events]
        return any("Startup probe failed" in m for m in msgs) or NotYet(msgs)

    wait_for(startup_probe_failing, load + 30, "the kubelet's startup probe to fail while the engine loads")
    pod = wait_ready(core, namespace, "slow", timeout=load + 2 * startup["periodSeconds"] + 60)
    took = time.monotonic() - t0
    restarts = pod.status.container_statuses[0].restart_count
    assert restarts == 0, f"the engine was restarted {restarts}x during a {load}s load (startup budget not honoured)"
    assert took >= load, f"Ready after {took:.0f}s, before the {load}s load ended"


def test_health_failing_after_ready_restarts_the_engine_by_liveness(
    kube_api: client.ApiClient, namespace: str, real_node: NodeHandle, engine_image: str
) -> None:
    probes, _, _ = rendered()
    live = probes["livenessProbe"]
    # The kubelet's own liveness machinery with our probe's path, port and failureThreshold; the period is scaled
    # from the rendered value to 1 s so that the test takes seconds instead of periodSeconds x failureThreshold
    # (test_engine covers the rendered budget itself).
    scaled = {**probes, "livenessProbe": {**live, "periodSeconds": 1, "timeoutSeconds": 1}}
    scaled["readinessProbe"] = {**probes["readinessProbe"], "periodSeconds": 1, "timeoutSeconds": 1}
    scaled["startupProbe"] = {**probes["startupProbe"], "periodSeconds": 1, "timeoutSeconds": 1}
    core = core_api(kube_api)
    core.create_namespaced_pod(namespace, engine_pod("sick", engine_image, real_node, probes=scaled))
    pod = wait_ready(core, namespace, "sick")
    ip = pod.status.pod_ip
    status, _, _ = http(f"http://{ip}:{CONTROL_PORT}/engine", {"healthy": False})
    assert status == 200
    t0 = time.monotonic()

    def not_ready() -> bool | NotYet:
        p = core.read_namespaced_pod("sick", namespace)
        conds = {c.type: c.status for c in p.status.conditions or []}
        return conds.get("Ready") == "False" or NotYet(conds)

    wait_for(not_ready, 30, "readiness to drop once /health answers 503")

    def restarted() -> Any:
        p = core.read_namespaced_pod("sick", namespace)
        st = p.status.container_statuses[0]
        return p if st.restart_count >= 1 else NotYet(f"restartCount={st.restart_count} state={st.state}")

    wait_for(restarted, live["failureThreshold"] * 1 + 60, "the kubelet to restart the engine (liveness)")
    took = time.monotonic() - t0
    assert took >= live["failureThreshold"] * 1 - 1, f"restarted after {took:.1f}s, before the liveness budget"
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=sick").items
    assert any("Liveness probe failed" in (e.message or "") for e in events)
    wait_ready(core, namespace, "sick")  # the restarted engine is healthy again (its state is fresh)


def test_an_answer_in_flight_completes_across_pod_delete(
    kube_api: client.ApiClient, namespace: str, real_node: NodeHandle, engine_image: str
) -> None:
    probes, lifecycle, grace = rendered()
    pre_stop = int(lifecycle["preStop"]["exec"]["command"][-1])
    answer_seconds = pre_stop + 10  # still running when preStop ends and SIGTERM arrives
    core = core_api(kube_api)
    core.create_namespaced_pod(
        namespace,
        engine_pod(
            "drain",
            engine_image,
            real_node,
            env={"KIMI_STANDIN_COMPLETION_SECONDS": str(answer_seconds)},
            probes={k: {**v, "periodSeconds": 1} for k, v in probes.items()},
            lifecycle=lifecycle,
            grace=grace,
        ),
    )
    ip = wait_ready(core, namespace, "drain").status.pod_ip
    result: dict[str, Any] = {}

    def ask() -> None:
        body = {"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hi"}]}
        try:
            result["status"], _, result["body"] = http(f"http://{ip}:{PORT}/v1/chat/completions", body, timeout=120)
        except OSError as err:
            result["error"] = repr(err)
        result["at"] = time.monotonic()

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    wait_for(lambda: engine_state(ip)["in_flight"] == 1 or NotYet(engine_state(ip)), 15, "the answer in flight")
    t_delete = time.monotonic()
    core.delete_namespaced_pod("drain", namespace)  # the pod's own grace period (the operator's)
    asker.join(timeout=answer_seconds + 60)
    assert "error" not in result, f"the answer in flight was cut off: {result}"
    assert result.get("status") == 200, result
    assert b"choices" in result["body"]
    assert result["at"] - t_delete >= pre_stop - 1, "the answer came back before preStop could have ended"

    def gone() -> bool | NotYet:
        pods = core.list_namespaced_pod(namespace, field_selector="metadata.name=drain").items
        return not pods or NotYet(pods_summary(pods))

    wait_for(gone, 60, "the engine to exit after draining (well inside its grace period)")
    took = time.monotonic() - t_delete
    assert took < grace, f"the pod lived {took:.0f}s after delete: it was killed at the end of grace, not drained"
