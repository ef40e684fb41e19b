"""Multi-node replicas on the real LeaderWorkerSet controller (and its webhook) with simulated 8-GPU nodes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kimi_testbed.wait import NotYet, wait_for

from .support import Env, container, flag, go_ready, kd

pytestmark = pytest.mark.cluster

TWO_NODES = {"topology": {"accelerator": "H200", "nodesPerReplica": 2}}


def engine_pods(env: Env, name: str) -> list[dict[str, Any]]:
    sel = f"app.kubernetes.io/instance={name},app.kubernetes.io/component in (server,worker)"
    return [p for p in env.items("Pod", sel) if not p["metadata"].get("deletionTimestamp")]


def by_role(pods: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p in pods:
        out.setdefault(p["metadata"]["labels"]["app.kubernetes.io/component"], []).append(p)
    return out


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(pod["spec"]).get("env", []) if "value" in e}


def workloads(pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["labels"].get("kimi-operator.dev/workload", "?") for p in pods}


def test_a_two_node_replica_forms_with_lws_env_from_the_webhook(env: Env) -> None:
    go_ready(env, "duo", **TWO_NODES)
    lws = env.read("LeaderWorkerSet", "duo")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    roles = by_role(engine_pods(env, "duo"))
    assert len(roles["server"]) == 1 and len(roles["worker"]) == 1
    leader, worker = roles["server"][0], roles["worker"][0]
    assert leader["spec"]["nodeName"] != worker["spec"]["nodeName"]
    for pod, index in ((leader, "0"), (worker, "1")):
        e = env_of(pod)
        assert e["LWS_GROUP_SIZE"] == "2" and e["LWS_WORKER_INDEX"] == index, e
        assert e["LWS_LEADER_ADDRESS"].startswith("duo-0.")
        cmd = container(pod["spec"])["command"]
        assert flag(cmd, "--nnodes") == "$(LWS_GROUP_SIZE)" and flag(cmd, "--node-rank") == "$(LWS_WORKER_INDEX)"
        assert flag(cmd, "--tp-size") == "8" and flag(cmd, "--pp-size") == "2"  # no RDMA: one stage per node
        assert flag(cmd, "--dist-timeout") == "3600"
    assert "readinessProbe" in container(leader["spec"])
    assert "readinessProbe" not in container(worker["spec"]) and "ports" not in container(worker["spec"])
    svc = env.read("Service", "duo")
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "server"  # only leaders serve HTTP
    status = env.get("duo")["status"]
    assert status["plan"]["summary"] == "2x8 H200 TP8 PP2" and status["ready"] == "1/1"


def test_deleting_the_worker_recreates_the_whole_group(env: Env) -> None:
    go_ready(env, "grp", **TWO_NODES)
    roles = by_role(engine_pods(env, "grp"))
    leader_uid = roles["server"][0]["metadata"]["uid"]
    env.run("delete", "pod", roles["worker"][0]["metadata"]["name"], "--wait=false")

    def leader_replaced() -> bool | NotYet:
        uids = [p["metadata"]["uid"] for p in by_role(engine_pods(env, "grp")).get("server", [])]
        return (bool(uids) and leader_uid not in uids) or NotYet(uids)

    wait_for(leader_replaced, timeout=60, what="the leader recreated with its group (RecreateGroupOnPodRestart)")
    env.wait_condition("grp", "Ready", "True", "Ready", timeout=90)


def test_scaling_one_group_to_two(env: Env) -> None:
    go_ready(env, "two", **TWO_NODES)
    env.run("scale", "kd", "two", "--replicas=2")
    env.wait_condition("two", "Ready", "True", "Ready", timeout=120)
    roles = by_role(engine_pods(env, "two"))
    assert len(roles["server"]) == 2 and len(roles["worker"]) == 2
    assert env.get("two")["status"]["ready"] == "2/2"
    assert env.read("LeaderWorkerSet", "two")["spec"]["replicas"] == 2


def test_switching_one_node_to_two_and_back_leaves_no_orphans_and_never_overlaps(env: Env) -> None:
    go_ready(env, "flip")
    seen: list[set[str]] = []
    stop = threading.Event()

    def sample() -> None:  # which workloads hold pods, as often as the API answers
        while not stop.is_set():
            seen.append(workloads(engine_pods(env, "flip")))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        env.apply(kd("flip", **TWO_NODES))
        wait_for(lambda: env.get("flip")["status"]["plan"]["nodesPerReplica"] == 2 or None, timeout=30, what="plan")
        env.wait_condition("flip", "Ready", "True", "Ready", timeout=120)
        assert env.names("Deployment") == set()
        assert workloads(engine_pods(env, "flip")) == {"leaderworkerset"}

        env.apply(kd("flip", topology={"accelerator": "H200", "nodesPerReplica": 1}))
        wait_for(lambda: env.get("flip")["status"]["plan"]["nodesPerReplica"] == 1 or None, timeout=30, what="plan")
        env.wait_condition("flip", "Ready", "True", "Ready", timeout=120)
        assert env.names("LeaderWorkerSet") == set()
        assert workloads(engine_pods(env, "flip")) == {"deployment"}
    finally:
        stop.set()
        sampler.join(5)
    overlaps = [s for s in seen if {"deployment", "leaderworkerset"} <= s]
    assert len(seen) > 10 and not overlaps, f"{len(overlaps)} of {len(seen)} samples had both workloads' pods"
