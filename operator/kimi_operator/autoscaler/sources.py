"""Where queue depth comes from: each ready leader's /metrics, or a Prometheus query. Network I/O only.

SGLang exports `sglang:num_queue_reqs` and `sglang:num_running_reqs` per scheduler (labels tp_rank, dp_rank, ...);
with DP attention every DP rank reports, so a replica's load is the sum over its samples.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from kimi_operator.autoscaler.policy import ReplicaLoad

QUEUE_METRIC = "sglang:num_queue_reqs"
RUNNING_METRIC = "sglang:num_running_reqs"
SCRAPE_TIMEOUT_SECONDS = 5.0


class SourceError(Exception):
    pass


def parse_load(text: str) -> tuple[float, float]:
    """(queued, running) summed over every scheduler sample in SGLang's /metrics text."""
    queue = running = 0.0
    seen_queue = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == QUEUE_METRIC:
                queue += sample.value
                seen_queue = True
            elif sample.name == RUNNING_METRIC:
                running += sample.value
    if not seen_queue:
        raise SourceError(f"no {QUEUE_METRIC} in /metrics (is --enable-metrics set?)")
    return queue, running


def scrape(name: str, url: str, timeout: float = SCRAPE_TIMEOUT_SECONDS) -> tuple[ReplicaLoad, str]:
    """One replica's load, or unknown load plus the error (never zero)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            queue, running = parse_load(resp.read().decode())
        return ReplicaLoad(name, queue, running), ""
    except Exception as err:
        return ReplicaLoad(name, None, None), f"{name}: {type(err).__name__}: {err}"


def scrape_all(targets: Iterable[tuple[str, str]]) -> tuple[tuple[ReplicaLoad, ...], list[str]]:
    """Scrape (pod name, metrics URL) pairs concurrently."""
    items = list(targets)
    if not items:
        return (), []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        results = list(pool.map(lambda t: scrape(*t), items))
    return tuple(r for r, _ in results), [e for _, e in results if e]


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
