"""The operator's own Prometheus metrics (served on KIMI_METRICS_PORT, default 8080)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from kimi_operator.autoscaler.policy import Decision

API_WRITES = Counter(
    "kimi_operator_api_writes",
    "Write calls (apply, patch, delete, create) the operator made to the API server",
    ["verb", "outcome"],
)
API_READS = Counter(
    "kimi_operator_api_reads",
    "Read calls (get, list, logs) the operator made to the API server, by resource (the Lease's aside)",
    ["resource", "verb"],
)
CACHED_OBJECTS = Gauge("kimi_operator_cached_objects", "Objects in the watch-fed read cache")
RECONCILES = Counter("kimi_operator_reconciles", "Reconciles run, by result", ["result"])
RECONCILE_SECONDS = Histogram(
    "kimi_operator_reconcile_duration_seconds",
    "Time to reconcile one KimiDeployment (reads, decision, writes)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STARTUP_PHASE_SECONDS = Histogram(
    "kimi_operator_startup_phase_seconds",
    "How long each startup phase of a replica took (observed when the replica goes Ready; status.startup.history)",
    ["phase"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
QUEUE_DEPTH = Gauge("kimi_operator_workqueue_depth", "KimiDeployments waiting to be reconciled")
MANAGED = Gauge("kimi_operator_kimideployments", "KimiDeployments known to the operator")

_KD = ["namespace", "name"]
WEIGHTS_BYTES_DONE = Gauge("kimi_operator_weights_bytes_done", "Bytes of the checkpoint on the volume", _KD)
WEIGHTS_BYTES_TOTAL = Gauge("kimi_operator_weights_bytes_total", "Bytes of the checkpoint to download", _KD)
WEIGHTS_READY = Gauge("kimi_operator_weights_ready", "1 when the snapshot is complete and verified", _KD)


def observe_weights(namespace: str, name: str, weights: dict[str, object], ready: bool) -> None:
    """Download progress as the fetcher last reported it (set whenever status.weights is written)."""
    done, total = weights.get("bytesDone"), weights.get("bytesTotal")
    if isinstance(total, int):
        WEIGHTS_BYTES_TOTAL.labels(namespace, name).set(total)
        WEIGHTS_BYTES_DONE.labels(namespace, name).set(total if ready else (done if isinstance(done, int) else 0))
    elif ready:
        WEIGHTS_BYTES_DONE.labels(namespace, name).set(0)
    WEIGHTS_READY.labels(namespace, name).set(1 if ready else 0)


def forget_weights(namespace: str, name: str) -> None:
    for gauge in (WEIGHTS_BYTES_DONE, WEIGHTS_BYTES_TOTAL, WEIGHTS_READY):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)


AUTOSCALER_QUEUE = Gauge("kimi_operator_autoscaler_queue_depth", "Queued requests summed over ready replicas", _KD)
AUTOSCALER_RUNNING = Gauge("kimi_operator_autoscaler_running_requests", "Running requests over ready replicas", _KD)
AUTOSCALER_DESIRED = Gauge("kimi_operator_autoscaler_desired_replicas", "Replicas the autoscaler wants", _KD)
AUTOSCALER_READY = Gauge("kimi_operator_autoscaler_ready_replicas", "Ready replicas the autoscaler read", _KD)
AUTOSCALER_SCRAPE_ERRORS = Counter(
    "kimi_operator_autoscaler_scrape_errors", "Replica metrics that could not be read (never read as zero)", _KD
)
AUTOSCALER_DECISIONS = Counter("kimi_operator_autoscaler_decisions", "Autoscaler decisions by reason", [*_KD, "reason"])


def observe_autoscaler(namespace: str, name: str, decision: Decision, ready: int, failures: int) -> None:
    if decision.queue is not None:
        AUTOSCALER_QUEUE.labels(namespace, name).set(decision.queue)
    if decision.running is not None:
        AUTOSCALER_RUNNING.labels(namespace, name).set(decision.running)
    AUTOSCALER_DESIRED.labels(namespace, name).set(decision.desired)
    AUTOSCALER_READY.labels(namespace, name).set(ready)
    if failures:
        AUTOSCALER_SCRAPE_ERRORS.labels(namespace, name).inc(failures)
    AUTOSCALER_DECISIONS.labels(namespace, name, decision.reason).inc()


def forget_autoscaler(namespace: str, name: str) -> None:
    """Series vanish with their KimiDeployment (or when its autoscaling is turned off)."""
    for gauge in (AUTOSCALER_QUEUE, AUTOSCALER_RUNNING, AUTOSCALER_DESIRED, AUTOSCALER_READY, AUTOSCALER_SCRAPE_ERRORS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
