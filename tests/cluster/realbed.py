"""What the tests on the test bed's REAL node share: the Hub stand-in (TEST DOUBLE) on the bridge, the operator
run on the host with the images `make images` built, a per-test Env, and node-local weights volumes.

Import the fixtures into a test module (`from .realbed import env, fetch_operator, fresh_hub, node_hub`) to use
them; module-scoped ones are then per module (each module starts its own operator).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kimi_operator import render
from kimi_testbed.hub import HubStandIn, RepoLayout
from kimi_testbed.operator_proc import OperatorProcess
from kimi_testbed.realnode import REAL_TAINT, NodeHandle
from kimi_testbed.storage import HOSTPATH_ROOT, node_local_dir, node_local_pv

from .support import Env, Kubectl

MIB = 1 << 20
REPO = "moonshotai/Kimi-K2.5"  # the catalog's checkpoint; the Hub stand-in serves a generated one under that id
LAYOUT = RepoLayout(repo_id=REPO, shards=12, shard_bytes=4 * MIB)  # 12 shards: more than the fetcher's 8 threads
FETCH_UID = render.FETCH_UID
REAL = {"kimi-testbed.dev/node-kind": "real"}


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def node_hub(real_node: NodeHandle) -> Iterator[HubStandIn]:
    """The Hub stand-in (TEST DOUBLE) on the host, at the real node's bridge address: pods and the operator reach it."""
    hub = HubStandIn(LAYOUT, host=real_node.node_ip, public_host=real_node.node_ip).start()
    yield hub
    hub.stop()


@pytest.fixture(autouse=True)
def fresh_hub(node_hub: HubStandIn) -> Iterator[HubStandIn]:
    node_hub.throttle(None)
    node_hub.clear_faults()
    node_hub.token = None
    node_hub.reset_stats()
    yield node_hub
    node_hub.throttle(None)
    node_hub.token = None


@pytest.fixture(scope="module")
def fetch_operator(
    cluster: Any,
    operator: OperatorProcess,
    node_hub: HubStandIn,
    images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator with the images `make images` built and the Hub stand-in on the bridge. The session's operator
    (kwok tests: a fake image, a loopback Hub) is paused meanwhile: two operators must not race on one KD."""
    operator.stop()
    proc = OperatorProcess(
        Path(cluster.kubeconfig),
        tmp_path_factory.mktemp("fetch-operator"),
        extra_env={
            "HF_ENDPOINT": node_hub.endpoint,
            "KIMI_OPERATOR_IMAGE": images["operator"],
            "KIMI_ENGINE_IMAGE": images["standin-engine"],
            "KIMI_GATEWAY_IMAGE": images["gateway"],
            "KIMI_VOLUME_GRACE_SECONDS": "3",
            "KIMI_STARTUP_STALL_SECONDS": "5",  # the stall test's load stalls for 20 s, not 5 min
        },
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        operator.start()


@pytest.fixture
def env(kube_api: client.ApiClient, namespace: str, kubectl: Kubectl, fetch_operator: OperatorProcess) -> Iterator[Env]:
    yield Env(kube_api, namespace, kubectl, fetch_operator)
    shutil.rmtree(HOSTPATH_ROOT / namespace, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ helpers
def volume(env: Env, claim: str) -> Path:
    """A real directory on this machine behind the claim the operator will create, writable by the fetcher."""
    path = node_local_dir(env.ns, claim, FETCH_UID)
    env.kubectl.apply(node_local_pv(env.ns, claim, REAL, path))
    return path


def spec(**extra: Any) -> dict[str, Any]:
    """A KimiDeployment spec whose pods may land on the real node (its taint tolerated, like a GPU node's)."""
    toleration = {"key": REAL_TAINT["key"], "operator": "Equal", "value": REAL_TAINT["value"], "effect": "NoSchedule"}
    return {"topology": {"accelerator": "H200", "tolerations": [toleration]}, **extra}
