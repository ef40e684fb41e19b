"""engine.kind llamacpp on the test bed's REAL node: the REAL llama.cpp engine (llama-server) on a TOY model.

Node kind: the REAL node (``real_node`` fixture). Real: the operator (on the host) planning a KimiDeployment with
`engine.kind: llamacpp`, its fetch Job downloading only the chosen quantization's directory of a GGUF repo into a
volume on this machine, the serving pod (the kubelet, containerd, runc, the pod network) running llama.cpp's
`llama-server` from the `llamacpp` image `make images` builds from source (CPU-only), the kubelet's probes against
its /health, the autoscaler reading its real /metrics, and a chat completion through the Service's endpoint that
returns tokens llama.cpp generated. Simulated: the Hugging Face Hub (kimi_testbed.hub, a TEST DOUBLE serving the
GGUF repo under the catalog's id `unsloth/Kimi-K2.5-GGUF`), the model itself (a TOY: `kimi_testbed.toy_gguf`, a
2-block llama with random weights - we test serving, not answers) and the GPU (the device plugin's extended
resource; the CPU build runs every layer on the CPU).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from kimi_operator import render
from kimi_testbed.hub import HubStandIn, RepoLayout
from kimi_testbed.realnode import NodeHandle
from kimi_testbed.toy_gguf import write_toy_gguf
from kimi_testbed.wait import NotYet, wait_for

from . import realbed
from .realbed import LAYOUT, spec, volume
from .support import Env, kd

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.timeout(600)]

fresh_hub, fetch_operator, env = realbed.fresh_hub, realbed.fetch_operator, realbed.env
GGUF_REPO = "unsloth/Kimi-K2.5-GGUF"
QUANT = "UD-TQ1_0"


def log(message: str) -> None:
    print(f"[real-llamacpp] {message}", flush=True)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("toy") / "toy.gguf"
    write_toy_gguf(path, seed=7)
    return path.read_bytes()


@pytest.fixture(scope="module")
def node_hub(real_node: NodeHandle, toy_model: bytes) -> Iterator[HubStandIn]:
    """The Hub stand-in (TEST DOUBLE) serving the safetensors checkpoint and a GGUF repo laid out like Unsloth's:
    one directory per quantization (the toy model under the one the test asks for, a decoy under the other)."""
    gguf = RepoLayout(
        repo_id=GGUF_REPO,
        shards=0,
        decoys=False,
        extra_files=(
            (f"{QUANT}/Kimi-K2.5-toy-{QUANT}-00001-of-00001.gguf", toy_model),
            ("UD-Q2_K_XL/Kimi-K2.5-UD-Q2_K_XL-00001-of-00001.gguf", b"not for this deployment " * 4096),
        ),
    )
    hub = HubStandIn(LAYOUT, host=real_node.node_ip, public_host=real_node.node_ip, extra_repos=(gguf,)).start()
    yield hub
    hub.stop()


def llamacpp_spec(image: str) -> dict[str, Any]:
    base = spec()
    base["topology"]["hostMemory"] = "256Gi"  # what the planner sizes from; the toy needs far less, requested below
    return {
        **base,
        "model": {"repo": GGUF_REPO},
        "engine": {
            "kind": "llamacpp",
            "image": image,
            "quantization": QUANT,
            "languageModelOnly": True,  # the toy has no vision projector
            "contextLength": 2048,
            "resources": {"requests": {"cpu": "1", "memory": "512Mi"}},
        },
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 2, "intervalSeconds": 2},
        "gateway": {"enabled": False},  # the Service selects the engine pod (tests/cluster/test_real_gateway.py)
    }


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        out: dict[str, Any] = json.loads(resp.read())
    return out


def chat(url: str) -> dict[str, Any] | NotYet:
    body = {"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hello kimi"}], "max_tokens": 12}
    try:
        return post_json(f"{url}/v1/chat/completions", body)
    except OSError as err:
        return NotYet(f"{url}: {err}")


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def test_a_llamacpp_deployment_goes_ready_on_the_real_llama_server_and_generates_tokens(
    env: Env, fresh_hub: HubStandIn, images: dict[str, str], toy_model: bytes
) -> None:
    root = volume(env, "gguf-weights")
    t0 = time.monotonic()
    env.apply(kd("gguf", **llamacpp_spec(images["llamacpp"])))
    env.wait_condition("gguf", "WeightsReady", "True", timeout=180)
    t_weights = time.monotonic() - t0
    # only the chosen quantization's directory is on the volume
    (snap,) = [p for p in (root / GGUF_REPO).iterdir() if p.name != ".refs" and p.is_dir() and len(p.name) == 40]
    ggufs = sorted(str(p.relative_to(snap)) for p in snap.rglob("*.gguf"))
    assert ggufs == [f"{QUANT}/Kimi-K2.5-toy-{QUANT}-00001-of-00001.gguf"], ggufs
    assert (snap / ggufs[0]).read_bytes() == toy_model
    env.wait_condition("gguf", "Ready", "True", timeout=240)
    t_ready = time.monotonic() - t0
    log(f"apply -> WeightsReady {t_weights:.1f} s, -> Ready {t_ready:.1f} s")

    (pod,) = env.items("Pod", render.engine_pods_selector("gguf"))
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "llamacpp" and container["image"] == images["llamacpp"]
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] is True and status["restartCount"] == 0, status  # the kubelet's probes passed
    logs = env.run("logs", pod["metadata"]["name"], "-c", "llamacpp").stdout
    assert f"llama.cpp: serving /models/{GGUF_REPO}/{snap.name}/{ggufs[0]}" in logs, logs[-2000:]

    ip = pod["status"]["podIP"]
    models = json.loads(get_text(f"http://{ip}:8000/v1/models"))
    assert [m["id"] for m in models["data"]] == ["kimi-k2.5"], models
    (svc,) = [s for s in env.items("Service") if s["metadata"]["name"] == "gguf"]
    slices = json.loads(
        env.run(
            "get", "endpointslices", "-l", f"kubernetes.io/service-name={svc['metadata']['name']}", "-o", "json"
        ).stdout
    )["items"]
    addresses = [a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]]
    assert addresses == [ip], addresses
    # no kube-proxy in the test bed: ClusterIPs do not route; the Service's endpoint is what a proxy would reach
    port = next(p for s in slices for p in s.get("ports") or [])["port"]
    t1 = time.monotonic()
    answer = wait_for(lambda: chat(f"http://{addresses[0]}:{port}"), 60, "a chat completion via the Service's endpoint")
    log(f"chat completion in {time.monotonic() - t1:.2f} s: {answer['usage']}")
    assert answer["usage"]["completion_tokens"] > 0, answer
    assert answer["choices"][0]["message"]["role"] == "assistant", answer
    assert "llamacpp:requests_deferred" in get_text(f"http://{ip}:8000/metrics")

    def autoscaler_read() -> dict[str, Any] | NotYet:
        a = env.get("gguf").get("status", {}).get("autoscaler") or {}
        return a if a.get("source") == "pods" and a.get("queueDepth") == 0 and not a.get("scrapeErrors") else NotYet(a)

    seen = wait_for(autoscaler_read, 60, "status.autoscaler read from llama-server's /metrics")
    log(f"autoscaler: {seen}")
    row = env.run("get", "kd", "gguf").stdout
    log(f"kubectl get kd:\n{row}")
    assert "Ready" in row.splitlines()[1] and GGUF_REPO in row, row
