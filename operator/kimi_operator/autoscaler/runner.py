"""The built-in autoscaler loop: one asyncio task per KimiDeployment with autoscaling enabled.

Each tick reads the KimiDeployment and its ready leaders, gets their load (pods' /metrics or Prometheus), asks the
pure policy for a decision, and records it in status.autoscaler (plus an Event when the count changes or metrics
go missing). It never writes spec: the reconcile reads status.autoscaler.desiredReplicas and sizes the workload,
so GitOps tools see no drift. Before a scale-down of a Deployment it sets pod-deletion-cost so idle replicas go
first (a LeaderWorkerSet removes its highest-index groups; see docs/autoscaling.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from kimi_operator import metrics, planner, render
from kimi_operator.api import resource
from kimi_operator.api.models import AutoscalerStatus, KimiDeploymentSpec
from kimi_operator.autoscaler import policy, sources
from kimi_operator.engine.sglang import HTTP_PORT
from kimi_operator.kube import Conflict, Kube, NotLeader
from kimi_operator.reasons import Reason
from kimi_operator.timeutil import now_rfc3339

log = logging.getLogger(__name__)
Key = tuple[str, str]
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def config_of(spec: KimiDeploymentSpec) -> policy.Config:
    a = spec.autoscaling
    return policy.Config(
        min_replicas=a.min_replicas,
        max_replicas=a.max_replicas,
        target_queue_depth=a.target_queue_depth,
        tolerance_percent=a.tolerance_percent,
        scale_up_stabilization_seconds=a.scale_up_stabilization_seconds,
        scale_down_stabilization_seconds=a.scale_down_stabilization_seconds,
        max_scale_up_step=a.max_scale_up_step,
        max_scale_down_step=a.max_scale_down_step,
    )


def ready_leaders(pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(pod name, pod IP) of serving pods that are Ready and not terminating."""
    out = []
    for pod in pods:
        st = pod.get("status") or {}
        if pod["metadata"].get("deletionTimestamp") or not st.get("podIP"):
            continue
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []):
            out.append((pod["metadata"]["name"], st["podIP"]))
    return sorted(out)


def _single_node(spec: KimiDeploymentSpec) -> bool:
    try:
        return planner.plan(spec).nodes_per_replica == 1
    except planner.PlanError:
        return False


def status_patch(
    decision: policy.Decision, source: str, errors: int, old: AutoscalerStatus | None, now: str
) -> dict[str, Any]:
    """The fields of status.autoscaler that changed, as a merge patch (null removes a value that went unknown)."""
    before = old or AutoscalerStatus()
    new = AutoscalerStatus(
        queue_depth=None if decision.queue is None else round(decision.queue),
        running_requests=None if decision.running is None else round(decision.running),
        desired_replicas=decision.desired,
        last_decision=f"{decision.reason}: {decision.message}",
        source=source,
        scrape_errors=errors,
        last_scale_time=now if decision.changed else before.last_scale_time,
    )
    old_wire = before.model_dump(by_alias=True, mode="json")
    return {k: v for k, v in new.model_dump(by_alias=True, mode="json").items() if old_wire.get(k) != v}


STANDBY_POLL_SECONDS = 2.0  # a standby replica looks this often whether it leads now


class Autoscalers:
    def __init__(self, kube: Kube, leading: Callable[[], bool] = lambda: True) -> None:
        self.kube = kube
        self.leading = leading  # a standby replica observes nothing and scales nothing
        self.tasks: dict[Key, asyncio.Task[None]] = {}
        self.states: dict[Key, policy.State] = {}

    def sync(self, key: Key, body: dict[str, Any] | None) -> None:
        """Start or stop the loop for a KimiDeployment after any event about it."""
        spec = (body or {}).get("spec") or {}
        enabled = bool((spec.get("autoscaling") or {}).get("enabled"))
        if enabled and key not in self.tasks:
            self.tasks[key] = asyncio.create_task(self._run(key))
        elif not enabled and key in self.tasks:
            self.tasks.pop(key).cancel()
            self.states.pop(key, None)
            metrics.forget_autoscaler(*key)

    async def _run(self, key: Key) -> None:
        try:
            while True:
                if not self.leading():
                    await asyncio.sleep(STANDBY_POLL_SECONDS)
                    continue
                try:
                    interval = await asyncio.to_thread(self.tick, key)
                except NotLeader:
                    interval = STANDBY_POLL_SECONDS
                except Exception as err:
                    log.warning("autoscaler %s/%s: %s", *key, err)
                    interval = 30.0
                if interval is None:
                    break
                await asyncio.sleep(interval)
        finally:
            self.tasks.pop(key, None)
            metrics.forget_autoscaler(*key)

    def tick(self, key: Key, now: float | None = None) -> float | None:
        """One observation and decision. Returns seconds until the next tick, None to stop."""
        namespace, name = key
        body = self.kube.get_kd(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        kd = resource.parse(body)
        spec = kd.spec
        if spec is None:
            return 30.0  # the reconcile reports the invalid spec
        if not spec.autoscaling.enabled:
            return None
        old = kd.status.autoscaler
        current = spec.effective_replicas(old.desired_replicas if old else None)
        leaders = ready_leaders(self.kube.list_pods(namespace, render.selector_string(name)))
        prom = spec.autoscaling.source.prometheus
        source_error, errors = "", list[str]()
        loads: tuple[policy.ReplicaLoad, ...]
        if prom is not None:
            source = "prometheus"
            try:
                loads = sources.prometheus_loads(
                    prom.url,
                    sources.default_query(prom.queue_query, spec.engine.kind),
                    sources.default_query(prom.running_query, spec.engine.kind),
                    namespace,
                    name,
                    [n for n, _ in leaders],
                )
            except sources.SourceError as err:
                loads, source_error = tuple(policy.ReplicaLoad(n, None, None) for n, _ in leaders), str(err)
        else:
            source = "pods"
            loads, errors = sources.scrape_all(
                ((n, f"http://{ip}:{HTTP_PORT}/metrics") for n, ip in leaders), spec.engine.kind
            )
        t = time.time() if now is None else now
        decision = policy.decide(
            config_of(spec), self.states.get(key, policy.State()), policy.Observation(t, current, loads, source_error)
        )
        self.states[key] = decision.state
        failures = len(errors) + (len(leaders) if source_error else 0)
        metrics.observe_autoscaler(namespace, name, decision, len(leaders), failures)
        if decision.desired < current and _single_node(spec):
            self._prefer_idle_for_deletion(namespace, loads)
        patch = status_patch(decision, source, failures, old, now_rfc3339())
        if patch:
            try:
                self.kube.patch_status(namespace, name, {"autoscaler": patch}, resource_version=kd.resource_version)
            except Conflict:  # changed (or re-created) since the read: observe again what is there now
                log.info("autoscaler %s/%s: changed while it was observed; it looks again", *key)
                return 1.0
        previous_reason = ((old.last_decision if old else None) or "").split(":", 1)[0]
        if decision.changed:
            kind = Reason.SCALED_UP if decision.desired > current else Reason.SCALED_DOWN
            self.kube.event(body, "Normal", kind, decision.message)
        elif decision.reason == Reason.METRICS_UNAVAILABLE and previous_reason != Reason.METRICS_UNAVAILABLE:
            detail = source_error or "; ".join(errors[:3])
            self.kube.event(body, "Warning", Reason.METRICS_UNAVAILABLE, f"{decision.message} ({detail})")
        return float(spec.autoscaling.interval_seconds)

    def _prefer_idle_for_deletion(self, namespace: str, loads: tuple[policy.ReplicaLoad, ...]) -> None:
        for pod, cost in policy.deletion_costs(loads).items():
            self.kube.annotate_pod(namespace, pod, {DELETION_COST: str(cost)})

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
