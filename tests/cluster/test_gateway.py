"""The gateway, real: the pinned SGLang Model Gateway (PyPI sglang-router) runs on the host from the command line the
operator rendered, discovers the stand-in engines (SGLang test doubles on the kwok pods' IPs) through the local API
server, and routes, checks API keys, drops an unhealthy worker and picks up a new replica.

Every check waits for a state and says what it saw; nothing is timed.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kimi_operator import render
from kimi_testbed.gateway_proc import GatewayProcess
from kimi_testbed.harness import Harness
from kimi_testbed.standin import StandinEngine
from kimi_testbed.wait import NotYet, wait_for

from .support import Env, go_ready, kd

pytestmark = pytest.mark.cluster

KEY = "sk-test-" + secrets.token_hex(8)
AUTH = {"apiKeySecretRef": {"name": "kimi-key"}}


def post(url: str, body: dict[str, Any], key: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {"error": err.read().decode(errors="replace")[:300]}


def chat(gw: GatewayProcess, prompt: str, key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    return post(
        gw.url + "/v1/chat/completions", {"model": "kimi-k2.5", "messages": [{"role": "user", "content": prompt}]}, key
    )


def workers(gw: GatewayProcess) -> list[dict[str, Any]]:
    req = urllib.request.Request(gw.url + "/workers", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: list[dict[str, Any]] = json.loads(resp.read())["workers"]
        return out


def wait_workers(gw: GatewayProcess, n: int, healthy: int | None = None, timeout: float = 90) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | NotYet:
        seen = workers(gw)
        ok = len(seen) == n and (healthy is None or sum(bool(w["is_healthy"]) for w in seen) == healthy)
        return seen if ok else NotYet([(w["url"], w["is_healthy"]) for w in seen])

    return wait_for(check, timeout, f"the gateway to see {n} workers ({healthy} healthy)")


def unique(i: int) -> str:
    return f"session {secrets.token_hex(6)} request {i} " + " ".join(secrets.token_hex(3) for _ in range(40))


@pytest.fixture
def engines(kube_api: client.ApiClient, namespace: str) -> Iterator[Harness]:
    """Stand-ins on the engine pods only: the gateway pods' IPs are where the real gateway listens."""
    harness = Harness(kube_api, namespace, selector=f"{render.COMPONENT_LABEL}=server").start()
    try:
        yield harness
    finally:
        harness.stop()


def gateway_pod_ip(env: Env, name: str) -> str:
    def check() -> str | NotYet:
        pods = env.items("Pod", f"{render.INSTANCE_LABEL}={name},{render.COMPONENT_LABEL}=gateway")
        ips = sorted(p["status"].get("podIP", "") for p in pods if (p.get("status") or {}).get("podIP"))
        return ips[0] if ips else NotYet([p["metadata"]["name"] for p in pods])

    return wait_for(check, 60, f"a gateway pod of {name} with an IP")


def counts(engs: dict[str, StandinEngine]) -> dict[str, tuple[int, int]]:
    """(chat, completions) requests each stand-in answered."""
    return {p: (e.requests["/v1/chat/completions"], e.requests["/v1/completions"]) for p, e in engs.items()}


def burst(gw: GatewayProcess, prompts: list[tuple[str, str | None]], clients: int = 8) -> None:
    """Send the prompts from `clients` concurrent clients (chat, or the path given); all must succeed."""

    def one(item: tuple[str, str | None]) -> int:
        prompt, path = item
        if path is None:
            return chat(gw, prompt)[0]
        return post(gw.url + path, {"model": "kimi-k2.5", "prompt": prompt}, KEY)[0]

    with ThreadPoolExecutor(clients) as pool:
        codes = list(pool.map(one, prompts))
    assert set(codes) == {200}, codes


def spread(gw: GatewayProcess, engs: dict[str, StandinEngine]) -> dict[str, int] | NotYet:
    """One burst of unrelated prompts; done when every stand-in in `engs` has answered chat requests."""
    burst(gw, [(unique(i), None) for i in range(48)])
    got = {p: e.requests["/v1/chat/completions"] for p, e in engs.items()}
    return got if all(got.values()) else NotYet(got)


def test_the_real_gateway_routes_by_prefix_checks_the_key_drops_unhealthy_and_finds_new_replicas(
    env: Env, engines: Harness, tmp_path: Path
) -> None:
    env.run("create", "secret", "generic", "kimi-key", f"--from-literal=api-key={KEY}")
    go_ready(env, "gw", replicas=3, auth=AUTH)
    dep = env.read("Deployment", "gw-gateway")
    with GatewayProcess(
        dep,
        env.kubectl.kubeconfig,
        tmp_path / "gateway.log",
        host=gateway_pod_ip(env, "gw"),
        port=8000,
        secrets={("kimi-key", "api-key"): KEY},
    ) as gw:
        assert gw.proc is not None
        cmdline = Path(f"/proc/{gw.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert KEY not in cmdline, "the API key must never be on a command line"
        wait_workers(gw, 3, healthy=3)
        engs = engines.wait_for_engines(3)

        # API key: refused without it or with a wrong one, accepted with it; health stays open
        assert chat(gw, "hello", key=None)[0] == 401
        assert chat(gw, "hello", key="wrong")[0] == 401
        assert chat(gw, "hello")[0] == 200
        with urllib.request.urlopen(gw.url + "/health", timeout=5) as resp:
            assert resp.status == 200

        # prompts with nothing in common spread over every worker (concurrent clients: cache_aware sends a miss
        # to the least-loaded worker, so one client asking one question at a time would always find the same one)
        wait_for(lambda: spread(gw, engs), 90, "unrelated prompts to reach every worker")

        # a long shared prefix (a system prompt, sent to /v1/completions to tell it apart) sticks to one worker
        # while the unrelated chat traffic around it keeps spreading
        system = "You are Kimi. " + " ".join(f"rule-{i}-{secrets.token_hex(2)}" for i in range(300))
        before = counts(engs)
        mixed: list[tuple[str, str | None]] = [(f"{system} question {i}", "/v1/completions") for i in range(24)]
        mixed += [(unique(i), None) for i in range(96)]
        secrets.SystemRandom().shuffle(mixed)
        burst(gw, mixed)
        shared = {p: n - before[p][1] for p, (_, n) in counts(engs).items()}
        other = {p: n - before[p][0] for p, (n, _) in counts(engs).items()}
        homes = [p for p, n in shared.items() if n]
        assert len(homes) == 1 and shared[homes[0]] == 24, f"the shared prefix went to {shared}"
        assert sum(1 for n in other.values() if n) >= 2, f"unrelated prompts did not spread: {other}"
        home = engs[homes[0]]
        assert home.cached_tokens_total >= 23 * 300, "the stand-in saw the prefix reused"

        # the worker turns unhealthy: the gateway stops sending it traffic, then takes it back
        home.make_unhealthy()
        wait_workers(gw, 3, healthy=2)
        held = home.completions
        burst(
            gw,
            [(f"{system} after failure {i}", "/v1/completions") for i in range(8)]
            + [(unique(i), None) for i in range(24)],
        )
        assert home.completions == held, "an unhealthy worker got requests"
        home.make_healthy()
        wait_workers(gw, 3, healthy=3)

        def recovered() -> bool | NotYet:
            burst(gw, [(unique(i), None) for i in range(48)])
            return home.completions > held or NotYet(counts(engs))

        wait_for(recovered, 90, "the recovered worker to get traffic again")

        # a scale-up's new replica is discovered and served without restarting the gateway
        pid = gw.proc.pid
        env.apply(kd("gw", replicas=4, auth=AUTH))
        engs = engines.wait_for_engines(4, timeout=60)
        wait_workers(gw, 4, healthy=4)

        wait_for(lambda: spread(gw, engs), 90, "the new replica to get traffic")
        assert gw.proc.pid == pid and gw.proc.poll() is None

        log = gw.tail(100000)
        assert KEY not in log, "the API key must never reach the gateway's log"
    body = env.get("gw")
    assert KEY not in json.dumps(body), "the API key must never reach status"
    assert all(KEY not in json.dumps(e) for e in env.items("Event"))
    status = body["status"]["gateway"]
    assert status["serving"] is True and status["workers"] == 4, status


def test_the_service_moves_to_the_gateway_and_back_without_losing_backends(env: Env) -> None:
    engine_sel = render.selector("sw")
    gateway_sel = render.gateway_selector("sw")
    go_ready(env, "sw", replicas=2)

    def service_on(sel: dict[str, str]) -> bool | NotYet:
        got = env.read("Service", "sw")["spec"]["selector"]
        return got == sel or NotYet(got)

    wait_for(lambda: service_on(gateway_sel), 60, "the Service to select the gateway pods")
    wait_for(lambda: "sw-engines" in env.names("NetworkPolicy") or NotYet(env.names("NetworkPolicy")), 30, "the NP")
    wait_for(
        lambda: (
            (env.get("sw")["status"].get("gateway") or {}).get("serving") is True
            or NotYet(env.get("sw")["status"].get("gateway"))
        ),
        30,
        "status.gateway.serving",
    )
    wide = env.run("get", "kd", "sw", "-o", "wide").stdout
    assert "cache_aware 2/2, 2 workers" in wide, wide

    env.apply(kd("sw", replicas=2, gateway={"enabled": False}))
    wait_for(lambda: service_on(engine_sel), 60, "the Service to select the engines again")
    wait_for(
        lambda: "sw-gateway" not in env.names("Deployment") or NotYet(env.names("Deployment")),
        60,
        "the gateway Deployment to go once the Service has moved",
    )
    assert "sw-engines" not in env.names("NetworkPolicy")
    assert not {"sw-gateway"} & (env.names("ServiceAccount") | env.names("Role") | env.names("RoleBinding"))
