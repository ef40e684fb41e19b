"""Gateway benchmark: one multi-turn trace through round-robin routing vs the gateway's cache_aware policy.

Prints numbers; asserts nothing. The gateway is the pinned sglang-router (the SGLang Model Gateway, a real Rust
binary from PyPI) with the policy and health flags the operator renders; it is given the workers by URL instead of
Kubernetes discovery (discovery is covered by tests/cluster/test_gateway.py). The workers are 4 stand-in engines
(SGLang TEST DOUBLES) that model a prefix cache on the prompt's words (one word = one token, never evicted), so the
numbers say how much of each prompt a worker already held - not how fast a GPU would prefill it.

Trace: SESSIONS conversations share one system prompt of SYSTEM_TOKENS tokens; each runs TURNS turns, every turn
resending the whole history (system, earlier questions and answers) plus a new question, as chat clients do;
CLIENTS requests in flight. Round-robin is the gateway with --policy round_robin (what a Service's IPVS
round-robin does; kube-proxy's iptables mode picks at random, which caches no better).

Added latency: the same small request sent one at a time straight to a stand-in and through the gateway
(cache_aware); p50/p99 of each and the difference, on this machine (loopback, Python stand-in).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kimi_operator import gateway
from kimi_testbed.procs import free_port
from kimi_testbed.standin import StandinEngine

REPLICAS = 4
SESSIONS = 48
TURNS = 6
SYSTEM_TOKENS = 1500
QUESTION_TOKENS = 60
CLIENTS = 8
BALANCED = ("--balance-abs-threshold", "4", "--balance-rel-threshold", "1.2")


def words(rng: random.Random, n: int, tag: str) -> str:
    return " ".join(f"{tag}{rng.randrange(10**6)}" for _ in range(n))


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def gateway_args(policy: str, urls: list[str], port: int, metrics_port: int) -> list[str]:
    """The operator's rendered gateway arguments, with workers by URL instead of pod discovery."""
    spec_args = gateway.args(_spec(policy), "bench", {"app.kubernetes.io/component": "server"})
    keep: list[str] = []
    skip = {"--service-discovery", "--selector", "--service-discovery-port", "--service-discovery-namespace"}
    i = 0
    while i < len(spec_args):
        arg = spec_args[i]
        if arg in skip:
            i += 1
            while i < len(spec_args) and not spec_args[i].startswith("--"):
                i += 1
            continue
        keep.append(arg)
        i += 1
    for flag, value in (("--port", str(port)), ("--prometheus-port", str(metrics_port)), ("--host", "127.0.0.1")):
        keep[keep.index(flag) + 1] = value
    return [*keep, "--worker-urls", *urls, "--log-level", "warn"]


def _spec(policy: str) -> Any:
    from kimi_operator.api.models import KimiDeploymentSpec

    return KimiDeploymentSpec.model_validate({"replicas": REPLICAS, "gateway": {"policy": policy}})


class Gateway:
    def __init__(self, policy: str, urls: list[str], log: Path, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        args = gateway_args(policy, urls, self.port, free_port())
        cmd = [sys.executable, "-m", "sglang_router.launch_router", *args, *extra]
        self.proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={"NO_COLOR": "1"})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/readiness", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the gateway did not become ready; see {log}")
            time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


def run_trace(policy: str, seed: int, log: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    rng = random.Random(seed)
    engines = [StandinEngine("127.0.0.1", 0).start() for _ in range(REPLICAS)]
    gw = Gateway(policy, [e.url for e in engines], log, extra)
    system = "You are Kimi, a helpful assistant. " + words(rng, SYSTEM_TOKENS, "s")
    histories: list[list[dict[str, str]]] = [[{"role": "system", "content": system}] for _ in range(SESSIONS)]
    try:
        for turn in range(TURNS):
            order = list(range(SESSIONS))
            rng.shuffle(order)
            for s in order:
                histories[s].append({"role": "user", "content": words(rng, QUESTION_TOKENS, f"q{s}t{turn}x")})

            def ask(s: int) -> tuple[int, str]:
                answer = post(gw.url + "/v1/chat/completions", {"model": "kimi-k2.5", "messages": histories[s]})
                return s, str(answer["choices"][0]["message"]["content"])

            with ThreadPoolExecutor(CLIENTS) as pool:
                for s, text in pool.map(ask, order):
                    histories[s].append({"role": "assistant", "content": text})
    finally:
        gw.stop()
        for e in engines:
            e.stop()
    prompt = sum(e.prompt_tokens_total for e in engines)
    cached = sum(e.cached_tokens_total for e in engines)
    return {
        "policy": policy + (" " + " ".join(extra) if extra else ""),
        "requests": sum(e.completions for e in engines),
        "per_worker": [e.completions for e in engines],
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "hit_rate": cached / prompt,
        "prefill_tokens": prompt - cached,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def added_latency(n: int, log: Path) -> dict[str, float]:
    engine = StandinEngine("127.0.0.1", 0).start()
    gw = Gateway("cache_aware", [engine.url], log)
    body = {"model": "kimi-k2.5", "messages": [{"role": "user", "content": "ping " * 200}]}
    direct: list[float] = []
    routed: list[float] = []
    try:
        for _ in range(20):  # warm both paths (connections, caches)
            post(engine.url + "/v1/chat/completions", body)
            post(gw.url + "/v1/chat/completions", body)
        for _ in range(n):
            t0 = time.perf_counter()
            post(engine.url + "/v1/chat/completions", body)
            t1 = time.perf_counter()
            post(gw.url + "/v1/chat/completions", body)
            t2 = time.perf_counter()
            direct.append((t1 - t0) * 1000)
            routed.append((t2 - t1) * 1000)
    finally:
        gw.stop()
        engine.stop()
    return {
        "direct_p50": percentile(direct, 0.5),
        "direct_p99": percentile(direct, 0.99),
        "gateway_p50": percentile(routed, 0.5),
        "gateway_p99": percentile(routed, 0.99),
        "added_p50": percentile(routed, 0.5) - percentile(direct, 0.5),
        "added_p99": percentile(routed, 0.99) - percentile(direct, 0.99),
        "added_mean": statistics.fmean(routed) - statistics.fmean(direct),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-requests", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "gateway.log"
        print(
            f"gateway bench: sglang-router {gateway.ROUTER_VERSION}, {REPLICAS} stand-in replicas "
            f"(prefix-cache model), {SESSIONS} sessions x {TURNS} turns, system prompt {SYSTEM_TOKENS} tokens, "
            f"{CLIENTS} clients"
        )
        results = [run_trace(policy, args.seed, log) for policy in ("round_robin", "cache_aware")]
        # the same policy told to balance as soon as one worker has 4 more requests in flight than another (the
        # default, 64, is never reached by 8 clients: every request lands on the worker that has the prefix)
        balanced = run_trace("cache_aware", args.seed, log, BALANCED)
        for r in [*results, balanced]:
            print(
                f"  {r['policy']:<12} hit rate {r['hit_rate']:6.1%}  prefill tokens {r['prefill_tokens']:>8} of "
                f"{r['prompt_tokens']}  requests per worker {r['per_worker']}"
            )
        rr, ca = results
        print(
            f"  cache_aware vs round_robin: prefill tokens computed {ca['prefill_tokens'] / rr['prefill_tokens']:.2f}x "
            f"({1 - ca['prefill_tokens'] / rr['prefill_tokens']:.1%} saved), hit rate "
            f"{rr['hit_rate']:.1%} -> {ca['hit_rate']:.1%}"
        )
        lat = added_latency(args.latency_requests, log)
        print(
            f"  added latency per request ({args.latency_requests} sequential requests, this machine): "
            f"p50 {lat['added_p50']:.2f} ms, p99 {lat['added_p99']:.2f} ms (direct p50/p99 "
            f"{lat['direct_p50']:.2f}/{lat['direct_p99']:.2f} ms, through the gateway "
            f"{lat['gateway_p50']:.2f}/{lat['gateway_p99']:.2f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
