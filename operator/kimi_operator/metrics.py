"""The operator's own Prometheus metrics (served on KIMI_METRICS_PORT, default 8080)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

API_WRITES = Counter(
    "kimi_operator_api_writes",
    "Write calls (apply, patch, delete, create) the operator made to the API server",
    ["verb", "outcome"],
)
RECONCILES = Counter("kimi_operator_reconciles", "Reconciles run, by result", ["result"])
RECONCILE_SECONDS = Histogram(
    "kimi_operator_reconcile_duration_seconds",
    "Time to reconcile one KimiDeployment (reads, decision, writes)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Gauge("kimi_operator_workqueue_depth", "KimiDeployments waiting to be reconciled")
MANAGED = Gauge("kimi_operator_kimideployments", "KimiDeployments known to the operator")
