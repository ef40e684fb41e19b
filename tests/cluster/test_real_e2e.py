"""The whole data plane for real, as a user installs it: `helm install` the chart, `kubectl apply` the example.

Node kind: needs the test bed's REAL node (``real_node`` fixture, ``real_node`` marker). Real: the chart installed
by the helm binary with the operator image `make images` built (its pods on the real node, under the chart's
ServiceAccount, non-root, read-only root filesystem, probed by the real kubelet), the weights fetch Job's pod
(`kimi-operator fetch` in that image) downloading into a hostPath volume on this machine, the serving pod mounting
what it wrote, the kubelet, containerd, runc, the pod network, logs and exec. Simulated: the Hugging Face Hub
(kimi_testbed.hub, a TEST DOUBLE on the host at the real node's bridge address, serving a generated checkpoint
under the example's repo id), SGLang (the standin-engine image, a TEST DOUBLE: `python3 -m sglang.launch_server`
answers like SGLang without a model) and the GPUs (the test bed's device plugin advertises 8).

The example is applied as written, plus only what the test bed needs: the real node's toleration and label.
Timings (helm install -> operator Ready, apply -> WeightsReady -> Ready) are printed for the note.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kimi_operator import render, weights
from kimi_testbed.hub import HubStandIn, RepoLayout
from kimi_testbed.realnode import NODE_KIND_LABEL, REAL_TAINT, NodeHandle
from kimi_testbed.storage import node_local_dir, node_local_pv
from kimi_testbed.wait import NotYet, wait_for

from .support import ROOT, Env, Kubectl, Release

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.timeout(900)]  # may build images

MIB = 1 << 20
EXAMPLE = ROOT / "examples" / "kimi-k2.5-h200.yaml"
REPO = "moonshotai/Kimi-K2.5"  # the example's repo: the Hub stand-in serves a generated checkpoint under that id
LAYOUT = RepoLayout(repo_id=REPO, shards=8, shard_bytes=4 * MIB)  # ~34 MB with configs
RATE = 1.5e6  # bytes/s: ~23 s of download, several progress reads by the operator between 0% and 100%
REAL = {NODE_KIND_LABEL: "real"}
CONTROL_PORT = 18080  # the stand-in's control port (kimi_testbed.standin_server): sets its queue depth
TOLERATION = {"key": REAL_TAINT["key"], "operator": "Equal", "value": REAL_TAINT["value"], "effect": "NoSchedule"}


def log(message: str) -> None:
    print(f"[real-e2e] {message}", flush=True)


@pytest.fixture(scope="module")
def node_hub(real_node: NodeHandle) -> Iterator[HubStandIn]:
    """The Hub stand-in (TEST DOUBLE) at the bridge address: the operator pods and the fetch pod reach it there."""
    hub = HubStandIn(LAYOUT, host=real_node.node_ip, public_host=real_node.node_ip).start()
    yield hub
    hub.stop()


def example(name_suffix: str = "") -> dict[str, Any]:
    """examples/kimi-k2.5-h200.yaml with the real node's toleration and label (nothing else changed)."""
    (obj,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    topology = obj["spec"].setdefault("topology", {})
    topology["tolerations"] = [*topology.get("tolerations", []), TOLERATION]
    topology["nodeSelector"] = {**topology.get("nodeSelector", {}), **REAL}
    assert obj["spec"]["model"]["repo"] == REPO
    out: dict[str, Any] = obj
    return out


def values_file(tmp_path: Path, namespace: str, images: dict[str, str], hub: HubStandIn) -> Path:
    repository, tag = images["operator"].rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},  # no registry: imported into containerd
        "crds": {"enabled": False},  # the session's CRD (crd_installed) is shared by every test
        "watchNamespaces": [namespace],  # the session cluster is shared: only this test's namespace
        "nodeSelector": REAL,
        "tolerations": [TOLERATION],
        "operator": {
            "engineImage": images["standin-engine"],
            "hfEndpoint": hub.endpoint,
            "extraEnv": [{"name": "KIMI_VOLUME_GRACE_SECONDS", "value": "3"}],
        },
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def kubectl_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kubectl.run(*args, "-o", "json").stdout)
    return out


def pods(kubectl: Kubectl, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl_json(kubectl, "get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def weights_column(kubectl: Kubectl, namespace: str, name: str) -> str:
    header, row = kubectl.run("get", "kd", name, "-n", namespace).stdout.splitlines()[:2]
    return (row[header.index("WEIGHTS") :].split() or [""])[0]


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: dict[str, Any] = json.loads(resp.read())
    return out


def chat(url: str) -> dict[str, Any] | NotYet:
    try:
        return post_json(
            f"{url}/v1/chat/completions", {"model": REPO, "messages": [{"role": "user", "content": "hello"}]}
        )
    except OSError as err:
        return NotYet(f"{url}: {err}")


def test_helm_install_and_the_example_go_ready_with_every_pod_running_on_the_real_node(
    release: Release,
    kubectl: Kubectl,
    kube_api: client.ApiClient,
    namespace: str,
    real_node: NodeHandle,
    images: dict[str, str],
    node_hub: HubStandIn,
    crd_installed: None,
    operator_paused: None,
    tmp_path: Path,
) -> None:
    hub = node_hub
    hub.throttle(RATE)
    ns = namespace

    # -- helm install: the operator on the real node
    t0 = time.monotonic()
    release.install("-f", str(values_file(tmp_path, ns, images, hub)))
    t_operator = time.monotonic() - t0
    op_pods = pods(kubectl, ns, f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=operator")
    assert len(op_pods) == 2, [p["metadata"]["name"] for p in op_pods]
    for pod in op_pods:
        assert pod["spec"]["nodeName"] == real_node.name
        assert pod["spec"]["serviceAccountName"] == release.fullname
        assert pod["spec"]["containers"][0]["image"] == images["operator"]
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] is True and "running" in status["state"], status  # the kubelet's probes passed
        assert status["restartCount"] == 0, status
    op_name = op_pods[0]["metadata"]["name"]
    # inside the container: the uid, and a root filesystem that refuses writes
    probe = (
        "import os\ntry:\n    open('/probe', 'w')\n    w = 'writable'\nexcept OSError as e:\n    w = e.strerror\n"
        "print(os.getuid(), os.getgid(), w)"
    )
    inside = kubectl.run("exec", "-n", ns, op_name, "--", "python", "-c", probe).stdout.split(maxsplit=2)
    assert inside[:2] == ["65532", "65532"] and inside[2].strip() == "Read-only file system", inside
    log(f"helm install -> operator Deployment Ready (2 pods on {real_node.name}): {t_operator:.1f}s")

    # -- kubectl apply the example
    kd_obj = example()
    name = kd_obj["metadata"]["name"]
    volume = node_local_dir(ns, f"{name}-weights", render.FETCH_UID)
    kubectl.apply(node_local_pv(ns, f"{name}-weights", REAL, volume))  # the test bed has no storage provisioner
    t1 = time.monotonic()
    kubectl.run("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(kd_obj))
    env = Env(kube_api, ns, kubectl, None)  # type: ignore[arg-type]  # reads only; the operator is the chart's
    columns: list[str] = []
    fetch_logs: dict[str, str] = {}
    fetch_pods_seen: dict[str, dict[str, Any]] = {}
    fetch_selector = f"{render.INSTANCE_LABEL}={name},{render.COMPONENT_LABEL}=fetch"

    def weights_ready() -> bool | NotYet:
        columns.append(weights_column(kubectl, ns, name))
        for pod in pods(kubectl, ns, fetch_selector):
            pod_name = pod["metadata"]["name"]
            fetch_pods_seen[pod_name] = pod
            if pod["status"].get("phase") in ("Running", "Succeeded"):
                got = kubectl.run("logs", "-n", ns, pod_name, "-c", "fetch", check=False).stdout
                if got:
                    fetch_logs[pod_name] = got
        cond = env.condition(name, "WeightsReady") or {}
        return cond.get("status") == "True" or NotYet({"WEIGHTS": columns[-3:], "WeightsReady": cond})

    wait_for(weights_ready, 300, f"{ns}/{name} WeightsReady=True (watching the WEIGHTS column)", interval=1.0)
    t_weights = time.monotonic() - t1
    env.wait_condition(name, "Ready", "True", "Ready", timeout=240)
    t_ready = time.monotonic() - t1
    percents = [int(c[:-1]) for c in columns if c.endswith("%")]
    log(f"WEIGHTS column seen: {sorted(set(percents))}")
    assert any(0 < p < 100 for p in percents), f"the WEIGHTS column never showed a download in progress: {columns}"
    total = sum(f.size for n, f in hub.files("main").items() if weights.wanted(n))
    log(
        f"kubectl apply -> WeightsReady {t_weights:.1f}s ({total / 1e6:.1f} MB at {RATE / 1e6:.1f} MB/s, "
        f"throttled) -> Ready {t_ready:.1f}s"
    )

    # -- the fetch pod ran the operator image on the real node, and its log is its own
    assert fetch_pods_seen, "never saw the fetch pod"
    for pod in fetch_pods_seen.values():
        assert pod["spec"]["nodeName"] == real_node.name
        assert pod["spec"]["containers"][0]["image"] == images["operator"]
    assert fetch_logs, "never read the fetch pod's log"
    fetch_text = "\n".join(fetch_logs.values())
    assert " fetch: " in fetch_text and "downloading: " in fetch_text, fetch_text[-2000:]

    # -- the serving pod: the stand-in engine image on the real node, mounting what the fetcher wrote
    (server,) = env.items("Pod", render.engine_pods_selector(name))
    server_name = server["metadata"]["name"]
    assert server["spec"]["nodeName"] == real_node.name
    assert server["spec"]["containers"][0]["image"] == images["standin-engine"]
    model_path = f"/models/{REPO}/{hub.commit('main')}"
    files = {n: f for n, f in hub.files("main").items() if weights.wanted(n)}
    out = kubectl.run(
        "exec", "-n", ns, server_name, "--", "sha256sum", *(f"{model_path}/{n}" for n in sorted(files))
    ).stdout
    sums = {line.split(maxsplit=1)[1].strip()[len(model_path) + 1 :]: line.split()[0] for line in out.splitlines()}
    assert sums == {n: f.sha256 for n, f in files.items()}, "the bytes on the volume differ from the Hub stand-in's"
    log(f"sha256 of {len(files)} files in the serving pod's /models equal the Hub stand-in's")

    # -- kubectl logs of each: its own output
    op_logs = "".join(kubectl.run("logs", "-n", ns, p["metadata"]["name"], check=False).stdout for p in op_pods)
    assert name in op_logs, op_logs[-2000:]
    engine_logs = kubectl.run("logs", "-n", ns, server_name).stdout
    assert "stand-in engine" in engine_logs and "listening on" in engine_logs, engine_logs[-2000:]

    # -- a chat completion through the serving pod (its IP, from the host) and through the Service's endpoints
    port = next(
        p["containerPort"]
        for c in server["spec"]["containers"]
        for p in c.get("ports", [])
        if p.get("name") in ("http", "serving")
    )
    answer = wait_for(lambda: chat(f"http://{server['status']['podIP']}:{port}"), 60, "a chat completion")
    assert answer["choices"][0]["message"]["content"], answer
    (svc,) = [s for s in env.items("Service") if s["metadata"]["name"] == name] or env.items("Service")[:1]
    slices = kubectl_json(
        kubectl, "get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={svc['metadata']['name']}"
    )
    addresses = [a for s in slices["items"] for e in s.get("endpoints") or [] for a in e["addresses"]]
    assert addresses == [server["status"]["podIP"]], addresses
    # no kube-proxy in the test bed: ClusterIPs do not route; the Service's endpoint is what a proxy would reach
    svc_port = next(p for s in slices["items"] for p in s.get("ports") or [])["port"]
    answer = wait_for(
        lambda: chat(f"http://{addresses[0]}:{svc_port}"), 60, "a chat completion via the Service's endpoint"
    )
    assert answer["choices"][0]["message"]["content"], answer
    log(f"chat completion answered by {server_name} (pod IP) and via Service {svc['metadata']['name']}'s endpoint")

    # -- helm test: the chart's test pod runs for real on the real node (the operator's tolerations and
    # nodeSelector) and reads the operator's /metrics. No cluster DNS and no kube-proxy here, so it is pointed at
    # the metrics Service's endpoint address (tests.metricsUrl), what DNS + a proxy would resolve to.
    metrics_svc = f"{release.fullname}-metrics"

    def metrics_endpoint() -> str | NotYet:
        got = kubectl_json(
            kubectl, "get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={metrics_svc}"
        )
        addrs = [a for s in got["items"] for e in s.get("endpoints") or [] for a in e["addresses"]]
        ports = [p["port"] for s in got["items"] for p in s.get("ports") or []]
        return f"http://{addrs[0]}:{ports[0]}/metrics" if addrs and ports else NotYet(got["items"])

    url = wait_for(metrics_endpoint, 60, f"an endpoint of Service {metrics_svc}")
    release.upgrade("--reuse-values", "--set", f"tests.metricsUrl={url}")
    t2 = time.monotonic()
    tested = release.helm.run("test", release.name, "--timeout", "120s", check=False)
    assert tested.returncode == 0 and re.search(r"Phase:\s+Succeeded", tested.stdout), tested.stdout + tested.stderr
    # the hook pod is deleted once it succeeded; the scheduler's Event says where it ran
    test_pod = f"{release.fullname}-test-metrics"

    def scheduled_on() -> str | NotYet:
        got = kubectl_json(kubectl, "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={test_pod}")
        msgs = [e.get("message", "") for e in got["items"] if e.get("reason") == "Scheduled"]
        return msgs[-1] if msgs else NotYet([e.get("reason") for e in got["items"]])

    assert f"to {real_node.name}" in wait_for(scheduled_on, 30, f"the Scheduled event of {test_pod}")
    log(f"helm test passed on {real_node.name} in {time.monotonic() - t2:.1f}s")

    # -- the autoscaler in the chart's operator pod scrapes the serving pod's real IP (SGLang's /metrics on the
    # stand-in): a queue set on the stand-in's control port reaches status.autoscaler and scales the Deployment
    # up. The second replica stays Pending (the node's 8 GPUs are taken),
    # which is what a full cluster does; the point is the scrape and the decision.
    server_ip = server["status"]["podIP"]
    autoscaling = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 2,
        "targetQueueDepth": 4,
        "scaleUpStabilizationSeconds": 0,
        "scaleDownStabilizationSeconds": 3,
        "intervalSeconds": 1,
    }
    patch = {"spec": {"autoscaling": autoscaling, "gateway": {"enabled": False}}}
    kubectl.run("patch", "kd", name, "-n", ns, "--type", "merge", "-p", json.dumps(patch))
    post_json(f"http://{server_ip}:{CONTROL_PORT}/engine", {"queue_depth": 12})
    t3 = time.monotonic()

    def autoscaler(queue: int, replicas: int) -> dict[str, Any] | NotYet:
        status = env.get(name).get("status", {}).get("autoscaler") or {}
        got = env.read("Deployment", name)["spec"]["replicas"]
        if status.get("queueDepth") == queue and got == replicas and status.get("source") == "pods":
            return status
        return NotYet({"deployment.replicas": got, "status.autoscaler": status})

    up = wait_for(lambda: autoscaler(12, 2), 90, f"the autoscaler to read queue 12 from {server_ip} and scale to 2")
    assert up["scrapeErrors"] == 0 and up["desiredReplicas"] == 2, up
    log(f"autoscaler read queue 12 from pod IP {server_ip} and scaled 1 -> 2 in {time.monotonic() - t3:.1f}s")
    # Scale-down is not asserted here: the second replica cannot be scheduled on the one real node (8 GPUs), and
    # the policy holds while a replica is not ready (covered on kwok nodes in tests/cluster/test_autoscaling.py).
