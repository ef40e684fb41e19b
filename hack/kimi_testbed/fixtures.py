"""pytest fixtures for tests against the local control plane (registered by tests/conftest.py).

- ``cluster`` (session): reuses the testbed cluster that ``KUBECONFIG`` points at when one answers there;
  otherwise starts ``test-<pid>`` and stops it at the end of the session (also on Ctrl-C; and should pytest be
  killed, the cluster's supervisor notices its owner is gone and stops by itself). Sets ``KUBECONFIG`` for the
  session so kopf, kubectl and helm started by tests talk to it. Missing binaries FAIL the tests that need a
  cluster, with the command that builds them; they never skip.
- ``kube_api`` (session): a ``kubernetes.client.ApiClient`` for that cluster (admin).
- ``namespace``: a fresh namespace per test, deleted afterwards (teardown waits until its pods are gone, so
  GPUs are free for the next test). When the test fails, the report gets the namespace's pods and events.
- ``standins``: a started stand-in engine harness (SGLang TEST DOUBLES) for the test's namespace (not on gateway
  pods).
- ``real_node`` (session): the cluster's real node (kimi_testbed.realnode.NodeHandle: its name, IP, the
  nodeSelector and toleration that put a pod there, images). The session cluster gets one when this machine can
  run it (``KIMI_TESTBED_REAL_NODE``: ``auto``, the default; ``1``: required; ``0``: never); tests that need it
  FAIL with the reason when it has none.

Tests that use ``cluster`` (directly or through the others) get the ``cluster`` marker: ``-m "not cluster"``
deselects them.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kimi_testbed import realnode
from kimi_testbed.bins import BinariesMissingError
from kimi_testbed.cluster import Cluster, ClusterError
from kimi_testbed.harness import Harness
from kimi_testbed.wait import NotYet, pods_summary, wait_for

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_NO_REAL_NODE = pytest.StashKey[str]()  # why the session cluster has no real node
TEST_NS_LABEL = "kimi-testbed.dev/test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_node: needs the test bed's real node (kubelet + containerd + runc; kimi_testbed.realnode)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "cluster" in fixtures:
            item.add_marker(pytest.mark.cluster)
        if "real_node" in fixtures:
            item.add_marker(pytest.mark.real_node)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    item.stash.setdefault(_REPORTS, {})[rep.when] = rep
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    if rep.failed and rep.when == "call" and "namespace" in funcargs and "kube_api" in funcargs:
        rep.sections.append(
            (
                f"kimi-testbed: namespace {funcargs['namespace']}",
                describe_namespace(funcargs["kube_api"], funcargs["namespace"]),
            )
        )


def describe_namespace(api: Any, namespace: str) -> str:
    """Pods and recent events of a namespace, for failure reports."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    try:
        pods = core.list_namespaced_pod(namespace).items
        events = core.list_namespaced_event(namespace).items
    except Exception as err:
        return f"(could not read namespace {namespace}: {err})"
    lines = ["pods: " + pods_summary(pods), "events:"]
    for ev in sorted(events, key=lambda e: str(e.last_timestamp or e.event_time or ""))[-30:]:
        obj = ev.involved_object
        lines.append(f"  {ev.type} {obj.kind}/{obj.name} {ev.reason}: {ev.message}")
    return "\n".join(lines)


def _terminal_line(config: pytest.Config, text: str) -> None:
    """Show a line on the terminal now, even while pytest captures the test's output."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capman is None:
        reporter.write_line(f"kimi-testbed: {text}")
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line(f"kimi-testbed: {text}")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    previous = os.environ.get("KUBECONFIG")
    if previous and Path(previous).is_file():
        problem = ""
        found = None
        try:
            found = Cluster.from_kubeconfig(Path(previous))
        except ClusterError as err:
            problem = str(err)
        if problem:  # outside the except block: no chained traceback in the report
            pytest.fail(problem, pytrace=False)
        if found is not None:
            _terminal_line(request.config, f"reusing the cluster at KUBECONFIG={previous}")
            yield found
            return
        _terminal_line(request.config, f"nothing answers at KUBECONFIG={previous}; starting a cluster")
    name = f"test-{os.getpid()}"
    started: Cluster | None = None
    problem = ""
    with_node, why_not = _want_real_node()
    request.config.stash[_NO_REAL_NODE] = why_not
    try:
        started = Cluster.start(name, owner_pid=os.getpid(), real_node=with_node)
    except (BinariesMissingError, ClusterError) as err:
        problem = f"cannot start the test cluster: {err}"
    if started is None:
        pytest.fail(problem, pytrace=False)
    st = started.state
    node_note = f"real node {realnode.NODE_NAME}" if started.real_node else f"no real node ({why_not})"
    _terminal_line(
        request.config,
        f"started cluster {name} in {st.get('startup_seconds')}s with {node_note}, "
        f"control plane RSS {int(st.get('peak_rss_kib', 0)) / 1024:.0f} MiB, logs in {started.dir / 'logs'}",
    )
    os.environ["KUBECONFIG"] = str(started.kubeconfig)
    try:
        yield started
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        keep = request.session.testsfailed > 0 or bool(os.environ.get("KIMI_TESTBED_KEEP"))
        started.stop(remove=not keep)
        if keep:
            _terminal_line(request.config, f"stopped cluster {name}; logs kept in {started.dir / 'logs'}")


def _want_real_node() -> tuple[bool, str]:
    """Whether the session cluster gets the real node, and if not, why (for the tests that need it)."""
    mode = os.environ.get("KIMI_TESTBED_REAL_NODE", "auto").strip().lower()
    if mode in ("0", "no", "false", "off"):
        return False, "KIMI_TESTBED_REAL_NODE=0"
    if mode in ("1", "yes", "true", "on"):
        return True, ""
    missing = realnode.missing_host_parts()
    if missing:
        return False, f"this machine lacks {', '.join(missing)}: {realnode.HOST_PACKAGES_HINT}"
    lock = realnode.NodeLock.acquire()
    if lock is None:
        return False, f"this machine's real node is in use by {realnode.lock_holder()} (one per machine)"
    lock.release()
    return True, ""


@pytest.fixture(scope="session")
def real_node(cluster: Cluster, request: pytest.FixtureRequest) -> realnode.NodeHandle:
    info = cluster.real_node
    if info is None:
        why = request.config.stash.get(_NO_REAL_NODE, "") or (
            f"cluster {cluster.name!r} was started without one (up --real-node, or make cluster-up)"
        )
        pytest.fail(f"this test needs the real node, and the test cluster has none: {why}", pytrace=False)
    return realnode.NodeHandle(info)


@pytest.fixture(scope="session")
def kube_api(cluster: Cluster) -> Iterator[Any]:
    api = cluster.api_client()
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(kube_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(kube_api)
    name = _namespace_name(request.node.name)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={TEST_NS_LABEL: "true"})))

    def default_sa() -> bool:
        core.read_namespaced_service_account("default", name)
        return True

    # the ServiceAccount admission plugin rejects pods until the controller has made the default account
    wait_for(default_sa, 30, f"the default ServiceAccount of namespace {name}")
    yield name
    try:
        core.delete_namespace(name)  # Terminating: no new pods; the namespace controller deletes the rest
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)  # free the GPUs now
    except ApiException as err:
        if err.status != 404:
            raise

    def pods_gone() -> bool | NotYet:
        pods = core.list_namespaced_pod(name).items
        return not pods or NotYet(pods_summary(pods))

    wait_for(pods_gone, 60, f"the pods of namespace {name} to go away")


@pytest.fixture
def standins(kube_api: Any, namespace: str) -> Iterator[Harness]:
    # not on gateway pods: their IPs are where a test runs the real gateway (kimi_testbed.gateway_proc)
    harness = Harness(kube_api, namespace, selector="app.kubernetes.io/component!=gateway").start()
    try:
        yield harness
    finally:
        harness.stop()
