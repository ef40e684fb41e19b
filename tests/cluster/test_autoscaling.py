"""Built-in autoscaling against stand-in engines (SGLang test doubles) listening on the simulated pods' IPs.

The windows are shortened (seconds instead of minutes) so the tests run quickly; the policy's behaviour over real
windows is covered on traces in tests/unit/test_autoscaler_policy.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kimi_testbed.harness import Harness
from kimi_testbed.procs import free_port, port_open
from kimi_testbed.standin import StandinEngine
from kimi_testbed.wait import NotYet, wait_for

from .support import Env, go_ready

pytestmark = pytest.mark.cluster

FAST = {
    "enabled": True,
    "minReplicas": 1,
    "maxReplicas": 3,
    "targetQueueDepth": 4,
    "scaleUpStabilizationSeconds": 0,
    "scaleDownStabilizationSeconds": 4,
    "maxScaleUpStep": 2,
    "intervalSeconds": 1,
}


def server_pods(env: Env, name: str) -> list[dict[str, Any]]:
    sel = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=server"
    return [p for p in env.items("Pod", sel) if not p["metadata"].get("deletionTimestamp")]


def replicas(env: Env, name: str) -> int:
    return int(env.read("Deployment", name)["spec"]["replicas"])


def wait_replicas(env: Env, name: str, n: int, timeout: float = 60) -> None:
    def check() -> bool | NotYet:
        got = replicas(env, name)
        return got == n or NotYet({"deployment": got, "autoscaler": env.get(name)["status"].get("autoscaler")})

    wait_for(check, timeout=timeout, what=f"Deployment {name} at {n} replicas")


def test_queue_depth_scales_up_then_draining_scales_down_without_touching_spec(env: Env, standins: Harness) -> None:
    go_ready(env, "auto", autoscaling=FAST)
    generation = env.get("auto")["metadata"]["generation"]
    first = server_pods(env, "auto")[0]["metadata"]["name"]
    standins.engine(first).queue_depth = 20  # 20 queued / target 4 -> wants 5, max 3, step 2: 1 -> 3
    wait_replicas(env, "auto", 3)
    status = env.get("auto")["status"]["autoscaler"]
    assert status["desiredReplicas"] == 3 and status["queueDepth"] >= 20
    kd = env.get("auto")
    assert kd["spec"]["replicas"] == 1 and kd["metadata"]["generation"] == generation, "the spec must not change"
    env.wait_event("auto", "Normal", "ScaledUp")
    env.wait_condition("auto", "Ready", "True", "Ready", timeout=60)

    # drain: the busy one keeps running requests, the other two go idle -> one at a time, idle first
    engines = standins.wait_for_engines(3)
    for pod, eng in engines.items():
        eng.queue_depth = 0
        eng.running_requests = 5 if pod.endswith(first) else 0
    wait_replicas(env, "auto", 1, timeout=90)

    # the Deployment's spec goes to 1 before its ReplicaSet deletes the pods: wait for the pods, then see which stayed
    def one_left() -> list[str] | NotYet:
        names = [p["metadata"]["name"] for p in server_pods(env, "auto")]
        return names if len(names) == 1 else NotYet(names)

    left = wait_for(one_left, timeout=60, what="one server pod left")
    assert left == [first], "an idle replica survived"
    env.wait_event("auto", "Normal", "ScaledDown")
    cond = env.condition("auto", "ScalingActive")
    assert cond is not None and cond["status"] == "True"


def test_a_silent_engine_is_not_read_as_idle(env: Env, standins: Harness) -> None:
    go_ready(env, "quiet", autoscaling={**FAST, "minReplicas": 1})
    pod = server_pods(env, "quiet")[0]["metadata"]["name"]
    standins.engine(pod).queue_depth = 6  # above target: 1 -> 2
    wait_replicas(env, "quiet", 2)
    for eng in standins.wait_for_engines(2).values():
        eng.queue_depth = 0
        eng.running_requests = 0
        eng.make_silent()
    env.wait_condition("quiet", "ScalingActive", "False", "MetricsUnavailable", timeout=30)
    # well past the 4 s scale-down window: silence never reads as zero load
    for _ in range(3):
        wait_for(lambda: env.get("quiet")["status"]["autoscaler"].get("scrapeErrors", 0) > 0 or None, 10, "errors")
    assert replicas(env, "quiet") == 2
    env.wait_event("quiet", "Warning", "MetricsUnavailable")
    assert "queueDepth" not in env.get("quiet")["status"]["autoscaler"]
    m = env.op.metrics()
    assert 'kimi_operator_autoscaler_scrape_errors_total{name="quiet"' in m


class Prometheus:
    """A real Prometheus server (Debian's package) scraping the stand-ins through file-based discovery."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: apt-get install prometheus (.ci/run does this)"
        self.dir = workdir
        self.port = free_port()
        self.targets = workdir / "targets.json"
        self.targets.write_text("[]")
        (workdir / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "sglang",
                            "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}],
                        }
                    ],
                }
            )
        )
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=(workdir / "prometheus.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: port_open("127.0.0.1", self.port) or None, 30, "prometheus listening")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_targets(self, namespace: str, engines: dict[str, StandinEngine]) -> None:
        groups = [
            {"targets": [f"{eng.host}:{eng.port}"], "labels": {"namespace": namespace, "pod": key.split("/")[-1]}}
            for key, eng in engines.items()
        ]
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path)
    yield prom
    prom.stop()


def test_prometheus_source_scales_on_the_queue_prometheus_scraped(
    env: Env, standins: Harness, prometheus: Prometheus
) -> None:
    go_ready(env, "promq", autoscaling={**FAST, "source": {"prometheus": {"url": prometheus.url}}})
    pod = server_pods(env, "promq")[0]["metadata"]["name"]
    standins.engine(pod).queue_depth = 20
    stop = threading.Event()

    def discover() -> None:  # what a kubernetes_sd_config would do in a real cluster
        while not stop.is_set():
            prometheus.set_targets(env.ns, standins.engines())
            stop.wait(0.5)

    sd = threading.Thread(target=discover, daemon=True)
    sd.start()
    try:
        wait_replicas(env, "promq", 3, timeout=90)
        scaler = env.get("promq")["status"]["autoscaler"]
        assert scaler["source"] == "prometheus" and scaler["queueDepth"] >= 20
        prometheus.stop()
        env.wait_condition("promq", "ScalingActive", "False", "MetricsUnavailable", timeout=30)
        assert replicas(env, "promq") == 3, "an unreachable Prometheus must not scale anything down"
    finally:
        stop.set()
        sd.join(5)
