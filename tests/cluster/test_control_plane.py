"""The local control plane is real where it matters: scheduling, garbage collection, Jobs, LWS and its webhook.

Simulated: the GPUs (kwok nodes advertising nvidia.com/gpu: 8) and the containers (kwok marks scheduled pods
Running/Ready and completes Job pods). The stand-in engine is a test double for SGLang.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from kimi_testbed.cluster import Cluster
from kimi_testbed.harness import Harness
from kimi_testbed.procs import pid_alive, port_open
from kimi_testbed.wait import NotYet, pods_summary, wait_for, wait_for_pods

pytestmark = pytest.mark.cluster

LWS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")


# The kubernetes client's models type every field Optional; these tests read what the API returned, so they
# hold API handles (and hence models) as Any.
def core_api(api: client.ApiClient) -> Any:
    return client.CoreV1Api(api)


def apps_api(api: client.ApiClient) -> Any:
    return client.AppsV1Api(api)


def deployment(name: str, replicas: int, gpus: int = 0, port: int | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "engine", "image": "example.invalid/engine:1"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if port:
        container["ports"] = [{"name": "http", "containerPort": port}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
        },
    }


def test_nodes_are_ready_8_gpu_machines(kube_api: client.ApiClient) -> None:
    nodes = core_api(kube_api).list_node(label_selector="type=kwok").items
    assert len(nodes) == 4
    for node in nodes:
        conditions = {c.type: c.status for c in node.status.conditions}
        assert conditions["Ready"] == "True"
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H200"
        assert node.metadata.labels["nvidia.com/gpu.count"] == "8"
        assert not node.spec.taints
        assert ipaddress.IPv4Network(node.spec.pod_cidr).subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))


def test_8_gpu_pods_get_a_node_each_and_the_fifth_stays_pending(kube_api: client.ApiClient, namespace: str) -> None:
    core = core_api(kube_api)
    apps_api(kube_api).create_namespaced_deployment(namespace, deployment("gpu", replicas=5, gpus=8))
    running = wait_for_pods(core, namespace, "app=gpu", 4, "Running", timeout=60)
    assert len({p.spec.node_name for p in running}) == 4

    def pending_unschedulable() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="app=gpu").items
        for pod in pods:
            for cond in pod.status.conditions or []:
                if pod.status.phase == "Pending" and cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                    return cond
        return NotYet(pods_summary(pods))

    cond = wait_for(pending_unschedulable, 30, "the fifth pod Pending with reason Unschedulable")
    assert cond.status == "False"
    assert "Insufficient nvidia.com/gpu" in cond.message


def test_deleting_owners_garbage_collects_children(kube_api: client.ApiClient, namespace: str) -> None:
    core, apps = core_api(kube_api), apps_api(kube_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    child = {
        "metadata": {
            "name": "child",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}],
        }
    }
    core.create_namespaced_config_map(namespace, child)
    apps.create_namespaced_deployment(namespace, deployment("web", replicas=2))
    wait_for_pods(core, namespace, "app=web", 2, "Running")

    core.delete_namespaced_config_map("owner", namespace)
    apps.delete_namespaced_deployment("web", namespace)  # default propagation: background, by the GC

    def gone() -> bool | NotYet:
        left = [cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items]
        left += [rs.metadata.name for rs in apps.list_namespaced_replica_set(namespace).items]
        left += [p.metadata.name for p in core.list_namespaced_pod(namespace).items]
        left = [n for n in left if n != "kube-root-ca.crt"]
        return not left or NotYet(f"still there: {left}")

    wait_for(gone, 60, "the child ConfigMap, the ReplicaSet and its pods to be garbage-collected")


def test_leaderworkerset_pods_get_their_env_from_the_lws_webhook(kube_api: client.ApiClient, namespace: str) -> None:
    core = core_api(kube_api)
    lws = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "kimi"},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "workerTemplate": {"spec": {"containers": [{"name": "engine", "image": "example.invalid/e:1"}]}},
            },
        },
    }
    custom: Any = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(*LWS[:2], namespace, LWS[2], lws)
    pods = wait_for_pods(core, namespace, "leaderworkerset.sigs.k8s.io/name=kimi", 2, "Running")
    by_index = {p.metadata.labels["leaderworkerset.sigs.k8s.io/worker-index"]: p for p in pods}
    assert set(by_index) == {"0", "1"}
    for index, pod in by_index.items():
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        assert env["LWS_LEADER_ADDRESS"] == f"kimi-0.kimi.{namespace}"
        assert env["LWS_GROUP_SIZE"] == "2"
        assert env["LWS_WORKER_INDEX"] == index


def test_job_pods_complete(kube_api: client.ApiClient, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "fetch"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "fetch", "image": "example.invalid/fetch:1"}],
                }
            },
        },
    }
    batch: Any = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(namespace, job)

    def complete() -> Any:
        status = batch.read_namespaced_job_status("fetch", namespace).status
        done = any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])
        return status if done else NotYet(status)

    status = wait_for(complete, 60, "Job fetch Complete")
    assert status.succeeded == 1
    (pod,) = core_api(kube_api).list_namespaced_pod(namespace, label_selector="job-name=fetch").items
    assert pod.status.phase == "Succeeded"


def test_standin_engine_answers_on_the_pod_ip(kube_api: client.ApiClient, namespace: str, standins: Harness) -> None:
    core = core_api(kube_api)
    apps_api(kube_api).create_namespaced_deployment(namespace, deployment("kimi", 1, gpus=8, port=8000))
    (pod,) = wait_for_pods(core, namespace, "app=kimi", 1, "Running")
    ip = pod.status.pod_ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("127.0.0.0/8")
    engine = standins.engine(pod.metadata.name)
    assert (engine.host, engine.port) == (ip, 8000)

    with urllib.request.urlopen(f"http://{ip}:8000/health", timeout=5) as resp:
        assert resp.status == 200
    engine.queue_depth = 12
    with urllib.request.urlopen(f"http://{ip}:8000/metrics", timeout=5) as resp:
        text = resp.read().decode()
    queue = [
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "sglang:num_queue_reqs"
    ]
    assert queue == [12.0]
    engine.make_unhealthy()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{ip}:8000/health", timeout=5)
    assert err.value.code == 503

    # the pod goes away: so does its stand-in
    apps_api(kube_api).delete_namespaced_deployment("kimi", namespace)
    wait_for(lambda: not standins.engines() or None, 30, "the stand-in to stop with its pod")
    # its server thread closes the socket just after the harness forgets it: wait for that, never sample once
    wait_for(lambda: not port_open(ip, 8000) or None, 30, f"port {ip}:8000 to close after the stand-in stopped")


def test_two_clusters_run_side_by_side(cluster: Cluster) -> None:
    """A second, one-node cluster: its own ports and pod IPs; stopping it leaves nothing behind."""
    other = Cluster.start(f"test-{os.getpid()}-b", nodes=0, pools={"H100": 1}, owner_pid=os.getpid())
    try:
        mine, theirs = cluster.state, other.state
        if mine:  # a cluster found through KUBECONFIG elsewhere may have no local state
            assert set(mine["ports"].values()).isdisjoint(theirs["ports"].values())
            assert mine["pod_ip_range"] != theirs["pod_ip_range"]
        api = other.api_client()
        try:
            nodes = core_api(api).list_node().items
            assert [n.metadata.labels["nvidia.com/gpu.product"] for n in nodes] == ["NVIDIA-H100-80GB-HBM3"]
            try:
                core_api(api).read_namespace("t-from-the-first-cluster")
            except ApiException as err:
                assert err.status == 404
        finally:
            api.close()  # type: ignore[no-untyped-call]
        pids = [c["pid"] for c in theirs["components"].values()] + [theirs["supervisor_pid"]]
        ports = list(theirs["ports"].values())
    finally:
        other.stop(remove=True)
    assert not [p for p in pids if pid_alive(p)]
    assert not [p for p in ports if port_open("127.0.0.1", p)]
    assert cluster.kubeconfig.exists()
