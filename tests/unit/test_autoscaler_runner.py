"""Autoscalers.tick end to end without a cluster: ready pods on the in-memory API server, their /metrics served by
local HTTP servers in SGLang's Prometheus text, the decision in status.autoscaler, and the reconcile sizing the
Deployment from it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kimi_operator import controller, render
from kimi_operator.autoscaler import runner
from kimi_operator.config import OperatorConfig
from tests.unit.fakekube import FakeHub, FakeKube, kimideployment

KEY = ("ns", "kd")
COMMIT = "a" * 40
AUTOSCALING = {
    "enabled": True,
    "minReplicas": 1,
    "maxReplicas": 4,
    "targetQueueDepth": 8,
    "scaleUpStabilizationSeconds": 0,
    "scaleDownStabilizationSeconds": 0,
}

pytestmark = pytest.mark.usefixtures("fresh_controller")


def sglang_metrics(queue: list[int], running: list[int]) -> str:
    """What SGLang's /metrics says, one sample per DP rank."""
    lines = [
        "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.",
        "# TYPE sglang:num_queue_reqs gauge",
        *(f'sglang:num_queue_reqs{{model_name="kimi",dp_rank="{i}"}} {q}.0' for i, q in enumerate(queue)),
        "# HELP sglang:num_running_reqs The number of running requests.",
        "# TYPE sglang:num_running_reqs gauge",
        *(f'sglang:num_running_reqs{{model_name="kimi",dp_rank="{i}"}} {r}.0' for i, r in enumerate(running)),
        "# TYPE sglang:gen_throughput gauge",
        'sglang:gen_throughput{model_name="kimi"} 812.5',
    ]
    return "\n".join(lines) + "\n"


@contextmanager
def metrics_servers(bodies: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """One HTTP server per loopback address, all on one port (the runner scrapes podIP:HTTP_PORT/metrics)."""
    paths: list[str] = []

    def handler_for(body: str) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(f"{self.connection.getsockname()[0]}{self.path}")
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    servers: list[ThreadingHTTPServer] = []
    port = 0
    for address, body in bodies.items():
        server = ThreadingHTTPServer((address, port), handler_for(body))
        port = server.server_address[1]
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    monkeypatch.setattr(runner, "HTTP_PORT", port)
    try:
        yield paths
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def serving_pod(name: str, ip: str, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "labels": render.labels("kd", "server") | render.selector("kd")},
        "status": {
            "podIP": ip if ready else "",
            "phase": "Running" if ready else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _serving(desired: int | None = None) -> FakeKube:
    """A KimiDeployment with autoscaling whose weights are downloaded and whose Deployment exists."""
    kube = FakeKube()
    kube.put(kimideployment("kd", {"autoscaling": AUTOSCALING}))
    hub = FakeHub({"main": COMMIT})
    config = OperatorConfig(operator_image="op:test")
    controller.reconcile_one(kube, config, "ns", "kd", hub)
    kube.set_status("Job", "kd-fetch", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    controller.reconcile_one(kube, config, "ns", "kd", hub)
    if desired is not None:
        kube.patch_status(
            "ns",
            "kd",
            {"autoscaler": {"desiredReplicas": desired}},
            resource_version=kube.obj("KimiDeployment", "kd")["metadata"]["resourceVersion"],
        )
    return kube


def _autoscaler(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.obj("KimiDeployment", "kd")["status"]["autoscaler"])


def test_a_long_queue_scales_up_and_the_reconcile_sizes_the_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = _serving()
    assert kube.obj("Deployment", "kd")["spec"]["replicas"] == 1
    kube.put(serving_pod("kd-a", "127.0.0.1"))
    kube.put(serving_pod("kd-b", "", ready=False))  # still scheduling: no IP, not asked
    with metrics_servers({"127.0.0.1": sglang_metrics(queue=[20, 10], running=[3, 2])}, monkeypatch) as scraped:
        interval = runner.Autoscalers(kube).tick(KEY, now=1000.0)
    assert scraped == ["127.0.0.1/metrics"]
    assert interval == 15.0
    status = _autoscaler(kube)
    assert status | {"lastScaleTime": "set"} == {
        "queueDepth": 30,
        "runningRequests": 5,
        "desiredReplicas": 3,  # ceil(30 / 8) = 4 wanted, at most 2 more per decision
        "lastDecision": "ScaleUp: 1 -> 3: queue 30 is 30.0/replica, target 8",
        "source": "pods",
        "scrapeErrors": 0,
        "lastScaleTime": "set",
    }
    assert status["lastScaleTime"]
    assert [e for e in kube.recorded_events("kd") if e[1] == "ScaledUp"] == [
        ("Normal", "ScaledUp", "1 -> 3: queue 30 is 30.0/replica, target 8")
    ]

    controller.reconcile_one(kube, OperatorConfig(operator_image="op:test"), "ns", "kd", FakeHub({"main": COMMIT}))
    assert kube.obj("Deployment", "kd")["spec"]["replicas"] == 3
    assert kube.obj("KimiDeployment", "kd")["spec"] == {"autoscaling": AUTOSCALING}, "GitOps sees no drift"


def test_a_scale_down_marks_the_idle_replica_to_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = _serving(desired=2)
    kube.put(serving_pod("kd-a", "127.0.0.1"))
    kube.put(serving_pod("kd-b", "127.0.0.2"))
    bodies = {"127.0.0.1": sglang_metrics([0], [0]), "127.0.0.2": sglang_metrics([0], [3])}
    with metrics_servers(bodies, monkeypatch):
        runner.Autoscalers(kube).tick(KEY, now=1000.0)
    assert _autoscaler(kube)["desiredReplicas"] == 1
    assert _autoscaler(kube)["lastDecision"].startswith("ScaleDown: 2 -> 1")
    costs = {n: kube.obj("Pod", n)["metadata"]["annotations"][runner.DELETION_COST] for n in ("kd-a", "kd-b")}
    assert costs == {"kd-a": "0", "kd-b": "3"}
    assert [e[:2] for e in kube.recorded_events("kd") if e[1].startswith("Scaled")] == [("Normal", "ScaledDown")]


def test_unreadable_metrics_hold_the_count_and_warn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = _serving()
    kube.put(serving_pod("kd-a", "127.0.0.3"))  # nothing listens there
    with metrics_servers({"127.0.0.1": sglang_metrics([50], [1])}, monkeypatch):
        autoscalers = runner.Autoscalers(kube)
        autoscalers.tick(KEY, now=1000.0)
        patches = len(kube.writes_of("patch_status"))
        autoscalers.tick(KEY, now=1015.0)
    status = _autoscaler(kube)
    assert status["desiredReplicas"] == 1 and status["scrapeErrors"] == 1
    assert "queueDepth" not in status, "unknown is no number (the merge patch's null removed it)"
    assert status["lastDecision"].startswith("MetricsUnavailable: holding at 1")
    warnings = [e for e in kube.recorded_events("kd") if e[1] == "MetricsUnavailable"]
    assert len(warnings) == 1 and warnings[0][0] == "Warning" and "kd-a: URLError" in warnings[0][2]
    assert len(kube.writes_of("patch_status")) == patches, "the same observation again: no status write"


def test_a_kimideployment_gone_or_no_longer_autoscaled_stops_its_loop() -> None:
    kube = FakeKube()
    assert runner.Autoscalers(kube).tick(KEY) is None
    kube.put(kimideployment("kd", {"autoscaling": {"enabled": False}}))
    assert runner.Autoscalers(kube).tick(KEY) is None
    assert kube.writes == []
