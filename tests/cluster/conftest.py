"""Fixtures for the operator's cluster tests (the cluster itself comes from kimi_testbed.fixtures)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kimi_testbed.hub import HubStandIn, RepoLayout
from kimi_testbed.operator_proc import OperatorProcess
from kimi_testbed.realnode import NodeHandle

from .support import CRD, GROUP, PLURAL, Env, Helm, Kubectl, Release


@pytest.fixture(scope="session")
def kubectl(cluster: Any) -> Kubectl:
    return Kubectl(Path(cluster.bin_dir) / "kubectl", Path(cluster.kubeconfig))


@pytest.fixture(scope="session")
def crd_installed(kubectl: Kubectl) -> None:
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")


@pytest.fixture(scope="session")
def hub() -> Iterator[HubStandIn]:
    """The Hub stand-in (a test double) answering the operator's revision lookups for the catalog's repos."""
    tiny = {"shards": 2, "shard_bytes": 1 << 20, "decoys": False}
    stand_in = HubStandIn(
        RepoLayout(repo_id="moonshotai/Kimi-K2.5", **tiny),  # type: ignore[arg-type]
        extra_repos=(RepoLayout(repo_id="moonshotai/Kimi-K2-Thinking", seed=2, **tiny),),  # type: ignore[arg-type]
    ).start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="session")
def operator(
    cluster: Any,
    crd_installed: None,
    hub: HubStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        Path(cluster.kubeconfig),
        tmp_path_factory.mktemp("operator"),
        # a Hub call may hang 60 s (not 10): the test that hangs the Hub stand-in sees the wait, not the timeout
        extra_env={"HF_ENDPOINT": hub.endpoint, "KIMI_VOLUME_GRACE_SECONDS": "3", "KIMI_HUB_TIMEOUT_SECONDS": "60"},
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture()
def env(kube_api: client.ApiClient, namespace: str, kubectl: Kubectl, operator: OperatorProcess) -> Env:
    return Env(kube_api, namespace, kubectl, operator)


@pytest.fixture
def operator_paused(operator: OperatorProcess) -> Iterator[None]:
    """Stop the shared operator while a test runs its own (two unpaused operators on one namespace would race)."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


@pytest.fixture()
def release(cluster: Any, kubectl: Kubectl, namespace: str) -> Iterator[Release]:
    """One release of the chart in the test's namespace, uninstalled at the end of the test."""
    rel = Release(Helm(Path(cluster.bin_dir) / "helm", Path(cluster.kubeconfig), namespace), kubectl, namespace)
    try:
        yield rel
    finally:
        rel.cleanup()


@pytest.fixture(scope="session")
def images(real_node: NodeHandle) -> dict[str, str]:
    """The operator image, the gateway image, the stand-in engine (TEST DOUBLE) and llama.cpp's llama-server (the
    real engine, CPU-only) on the real node, built if missing and imported."""
    return {name: real_node.ensure_image(name) for name in ("operator", "gateway", "standin-engine", "llamacpp")}
