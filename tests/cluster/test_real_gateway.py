"""The gateway for real: the kimi-gateway image (images/gateway/Dockerfile, the pinned sglang-router from PyPI) as a
container on the test bed's REAL node, in front of a serving pod, with an API key from a Secret, and a new key.

Node kind: needs the real node (``real_node`` fixture, ``real_node`` marker). Real: the gateway image `make images`
built and its container (non-root, the operator's rendered command and launcher), its pod discovery of the serving
pod through the API server with the ServiceAccount and Role the operator made, the kubelet, containerd, the pod
network, the Deployment rollouts a new key causes. Simulated: SGLang (the standin-engine image, a TEST DOUBLE that
checks the key like SGLang's --api-key) and the Hugging Face Hub (TEST DOUBLE on the host).

Every check waits for a state and says what it saw. Timings are printed for the issue note.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from kimi_operator import gateway, render
from kimi_testbed.realnode import REAL_TAINT, NodeHandle
from kimi_testbed.wait import NotYet, wait_for

from . import realbed
from .realbed import REAL, spec, volume
from .support import Env, kd

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.timeout(600)]

# the real node's fixtures (tests/cluster/realbed.py), found by pytest under these names
node_hub, fresh_hub, fetch_operator, env = realbed.node_hub, realbed.fresh_hub, realbed.fetch_operator, realbed.env

TOLERATION = {"key": REAL_TAINT["key"], "operator": "Equal", "value": REAL_TAINT["value"], "effect": "NoSchedule"}


def log(message: str) -> None:
    print(f"[real-gateway] {message}", flush=True)


def put_secret(env: Env, value: str) -> None:
    env.kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "kimi-key", "namespace": env.ns},
            "data": {"api-key": base64.b64encode(value.encode()).decode()},
        }
    )


def chat(ip: str, key: str | None) -> int | str:
    """The HTTP status of a chat completion through the gateway pod at `ip`, or why there was none."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    body = json.dumps({"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hello"}]}).encode()
    req = urllib.request.Request(f"http://{ip}:{gateway.HTTP_PORT}/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        return f"{type(err).__name__}: {err}"


def gateway_pods(env: Env, name: str) -> list[dict[str, Any]]:
    sel = ",".join(f"{k}={v}" for k, v in render.gateway_selector(name).items())
    return [p for p in env.items("Pod", sel) if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") == "True" and bool((pod.get("status") or {}).get("podIP"))


def fingerprint(template: dict[str, Any]) -> str | None:
    return ((template.get("metadata") or {}).get("annotations") or {}).get(render.API_KEY_ANNOTATION)


def test_the_gateway_image_routes_on_the_real_node_checks_the_key_and_a_new_key_rolls_it(
    env: Env, real_node: NodeHandle, images: dict[str, str]
) -> None:
    first, second = "sk-first-" + secrets.token_hex(12), "sk-second-" + secrets.token_hex(12)
    put_secret(env, first)
    volume(env, "gw-weights")
    gw_spec = {
        "enabled": True,
        "replicas": 1,
        "nodeSelector": REAL,
        "tolerations": [TOLERATION],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},  # beside the engine on a 2-core node
    }
    t0 = time.monotonic()
    env.apply(kd("gw", **spec(gateway=gw_spec, auth={"apiKeySecretRef": {"name": "kimi-key"}})))
    env.wait_condition("gw", "Ready", "True", "Ready", timeout=300)

    def serving() -> dict[str, Any] | NotYet:
        status = env.get("gw").get("status", {}).get("gateway") or {}
        pods = [p for p in gateway_pods(env, "gw") if ready(p)]
        return pods[0] if status.get("serving") and status.get("workers") == 1 and pods else NotYet(status)

    pod = wait_for(serving, 180, "the gateway serving with 1 worker and a Ready gateway pod")
    log(f"apply -> Ready with the gateway serving: {time.monotonic() - t0:.1f}s")
    assert pod["spec"]["nodeName"] == real_node.name
    (container,) = pod["spec"]["containers"]
    assert container["image"] == images["gateway"]
    assert pod["spec"]["serviceAccountName"] == "gw-gateway"
    ip = pod["status"]["podIP"]

    # the key: refused without it or with a wrong one, accepted with it (the gateway forwards it to the stand-in,
    # which checks it as SGLang does); never on a command line or in the pod spec
    wait_for(lambda: chat(ip, first) == 200 or NotYet(chat(ip, first)), 60, "a chat completion with the key")
    assert chat(ip, None) == 401 and chat(ip, "sk-wrong") == 401
    cmdline = env.kubectl.run("exec", "-n", env.ns, pod["metadata"]["name"], "--", "cat", "/proc/1/cmdline").stdout
    # sglang-router retitles its process (setproctitle: "sglang::router"); the key is in neither argv nor title
    assert "sglang::router" in cmdline and first not in cmdline, cmdline[:200]
    assert "--service-discovery" in container["command"] and first not in json.dumps(container)
    uid = env.kubectl.run("exec", "-n", env.ns, pod["metadata"]["name"], "--", "id", "-u").stdout.strip()
    assert uid == "65532"
    for obj in (env.read("Deployment", "gw-gateway"), env.read("Deployment", "gw"), env.get("gw")):
        assert first not in json.dumps(obj)
    gw_template = env.read("Deployment", "gw-gateway")["spec"]["template"]
    engine_template = env.read("Deployment", "gw")["spec"]["template"]
    old = fingerprint(gw_template)
    assert old and old == fingerprint(engine_template), (gw_template["metadata"], engine_template["metadata"])
    log(f"gateway pod {pod['metadata']['name']} ({ip}): 401 without/with a wrong key, 200 with it")

    # a new key: the operator sees the Secret change, both templates roll, and only the new key works
    t1 = time.monotonic()
    put_secret(env, second)

    def rolled() -> str | NotYet:
        seen = {
            "gateway": fingerprint(env.read("Deployment", "gw-gateway")["spec"]["template"]),
            "engines": fingerprint(env.read("Deployment", "gw")["spec"]["template"]),
        }
        new = seen["gateway"]
        return new if new and new != old and seen["engines"] == new else NotYet(seen)

    new = wait_for(rolled, 120, "a new key fingerprint in the gateway's and the engines' pod templates")
    t_templates = time.monotonic() - t1
    answers: list[Any] = []

    def new_key_served() -> str | NotYet:
        pods = [p for p in gateway_pods(env, "gw") if ready(p) and fingerprint(p) == new]
        if not pods:
            return NotYet([(p["metadata"]["name"], ready(p), fingerprint(p)) for p in gateway_pods(env, "gw")])
        got = chat(pods[0]["status"]["podIP"], second)
        answers.append(got)
        return pods[0]["status"]["podIP"] if got == 200 else NotYet(answers[-3:])

    new_ip = wait_for(new_key_served, 300, "the rolled gateway accepting the new key end to end", interval=1.0)
    t_served = time.monotonic() - t1
    assert chat(new_ip, first) == 401, "the old key no longer works"
    env.wait_condition("gw", "Ready", "True", "Ready", timeout=180)
    log(
        f"new key: templates rolled {t_templates:.1f}s after the Secret's update; the new gateway pod answered it "
        f"(through the restarted engine) {t_served:.1f}s after; the old key refused"
    )
