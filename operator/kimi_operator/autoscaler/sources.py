"""Where queue depth comes from: each ready leader's /metrics, or a Prometheus query. Network I/O only.

SGLang exports `sglang:num_queue_reqs` and `sglang:num_running_reqs` per scheduler (labels tp_rank, dp_rank, ...);
with DP attention every DP rank reports, so a replica's load is the sum over its samples. vLLM and llama-server
export their own names (engine/kinds.py); the engine.kind decides which are read.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from kimi_operator.autoscaler.policy import ReplicaLoad
from kimi_operator.engine.kinds import FACTS, Kind

QUEUE_METRIC = FACTS["sglang"].queue_metric
RUNNING_METRIC = FACTS["sglang"].running_metric
SCRAPE_TIMEOUT_SECONDS = 5.0


class SourceError(Exception):
    pass


def parse_load(text: str, kind: Kind = "sglang") -> tuple[float, float]:
    """(queued, running) summed over every sample of the engine's queue and running gauges in its /metrics text:
    SGLang's per scheduler, vLLM's `vllm:num_requests_waiting`/`_running` per engine, llama-server's
    `llamacpp:requests_deferred`/`_processing`."""
    queue_metric, running_metric = FACTS[kind].queue_metric, FACTS[kind].running_metric
    queue = running = 0.0
    seen_queue = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == queue_metric:
                queue += sample.value
                seen_queue = True
            elif sample.name == running_metric:
                running += sample.value
    if not seen_queue:
        hint = {"sglang": "is --enable-metrics set?", "llamacpp": "is --metrics set?"}.get(kind, "")
        raise SourceError(f"no {queue_metric} in /metrics" + (f" ({hint})" if hint else ""))
    return queue, running


def scrape(
    name: str, url: str, timeout: float = SCRAPE_TIMEOUT_SECONDS, kind: Kind = "sglang"
) -> tuple[ReplicaLoad, str]:
    """One replica's load, or unknown load plus the error (never zero)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            queue, running = parse_load(resp.read().decode(), kind)
        return ReplicaLoad(name, queue, running), ""
    except Exception as err:
        return ReplicaLoad(name, None, None), f"{name}: {type(err).__name__}: {err}"


def scrape_all(targets: Iterable[tuple[str, str]], kind: Kind = "sglang") -> tuple[tuple[ReplicaLoad, ...], list[str]]:
    """Scrape (pod name, metrics URL) pairs concurrently."""
    items = list(targets)
    if not items:
        return (), []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        results = list(pool.map(lambda t: scrape(t[0], t[1], kind=kind), items))
    return tuple(r for r, _ in results), [e for _, e in results if e]


def default_query(query: str, kind: Kind) -> str:
    """The API's default Prometheus queries name SGLang's gauges; for another engine, its own gauges."""
    for sglang_name, own in (
        (QUEUE_METRIC, FACTS[kind].queue_metric),
        (RUNNING_METRIC, FACTS[kind].running_metric),
    ):
        query = query.replace(sglang_name, own)
    return query


def _prom_vector(base: str, query: str, timeout: float) -> dict[str, float]:
    url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = json.loads(resp.read().decode())
    if body.get("status") != "success":
        raise SourceError(f"prometheus: {body.get('error', body)}")
    out: dict[str, float] = {}
    for item in body["data"]["result"]:
        pod = item.get("metric", {}).get("pod")
        if pod:
            out[pod] = out.get(pod, 0.0) + float(item["value"][1])
    return out


def prometheus_loads(
    base: str,
    queue_query: str,
    running_query: str,
    namespace: str,
    name: str,
    pods: list[str],
    timeout: float = SCRAPE_TIMEOUT_SECONDS,
) -> tuple[ReplicaLoad, ...]:
    """Per-pod load from Prometheus for these ready pods; a pod Prometheus has no sample for is unknown."""

    def fill(q: str) -> str:
        return q.replace("$NAMESPACE", namespace).replace("$NAME", name)

    try:
        queues = _prom_vector(base, fill(queue_query), timeout)
        running = _prom_vector(base, fill(running_query), timeout)
    except SourceError:
        raise
    except Exception as err:
        raise SourceError(f"prometheus at {base}: {type(err).__name__}: {err}") from err
    return tuple(ReplicaLoad(p, queues.get(p), running.get(p, 0.0) if p in queues else None) for p in pods)
