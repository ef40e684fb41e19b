"""Conditions, Events and the status patch: built through the status models, written as their wire form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kimi_operator import gateway, planner, render
from kimi_operator.api.models import (
    AutoscalerStatus,
    Condition,
    GatewayStatus,
    KimiDeploymentSpec,
    KimiDeploymentStatus,
    ModelStatus,
    PlanStatus,
    WeightsStatus,
)
from kimi_operator.api.resource import KimiDeployment
from kimi_operator.engine import sglang
from kimi_operator.planner import Plan
from kimi_operator.reasons import FAILING_CONTAINER_REASONS, STARTUP_PHASES, Reason
from kimi_operator.reconcile import startup
from kimi_operator.reconcile.types import Actions, ChildKey, Event, Manifest, Observed, key_of
from kimi_operator.reconcile.weights_state import Weights
from kimi_operator.timeutil import parse_rfc3339
from kimi_operator.weights import COMMIT_RE

CONDITION_TYPES = ("WeightsReady", "Available", "Progressing", "Ready", "ScalingActive")


def condition(ctype: str, ok: bool | None, reason: Reason, message: str, generation: int, now: str) -> Condition:
    """A condition as computed now; `merge_conditions` keeps the old transition time when the status is the same."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=now,
    )


def merge_conditions(old: list[Condition], new: list[Condition]) -> list[Condition]:
    """Keep lastTransitionTime when a condition's status did not change (metav1.Condition semantics)."""
    by_type = {c.type: c for c in old}
    out = []
    for cond in new:
        prev = by_type.get(cond.type)
        if prev is not None and prev.status == cond.status:
            cond = cond.model_copy(update={"last_transition_time": prev.last_transition_time})
        out.append(cond)
    return out


def events(old: list[Condition], new: list[Condition]) -> list[Event]:
    """An Event per condition whose status or reason changed (one per reason: Ready's message wins)."""
    by_type = {c.type: c for c in old}
    out: list[Event] = []
    seen: set[str] = set()
    for cond in reversed(new):  # Ready last in the list, first here: its message wins for a shared reason
        if cond.reason in seen:
            continue
        seen.add(cond.reason)
        prev = by_type.get(cond.type)
        if prev and prev.status == cond.status and prev.reason == cond.reason:
            continue
        if cond.type == "Progressing" and cond.status == "False" and cond.reason == Reason.COMPLETE:
            continue
        if cond.type == "Progressing" and Reason.of(cond.reason) in _STARTUP_REASONS:
            continue  # the startup's own Events say each phase change, with the replica
        warning = (Reason.of(cond.reason) or Reason.READY).warning
        out.append(Event("Warning" if warning else "Normal", cond.reason, f"{cond.type}={cond.status}: {cond.message}"))
    return out[::-1]


_STARTUP_REASONS = frozenset(STARTUP_PHASES) | {Reason.STARTUP_FAILED}


def merge_patch(old: Any, new: Any) -> Any:
    """A JSON merge patch from old to new: keys that disappeared are set to null so the server removes them."""
    if isinstance(old, dict) and isinstance(new, dict):
        patch = {k: merge_patch(old.get(k), v) for k, v in new.items()}
        patch.update({k: None for k in old if k not in new})
        return patch
    return new


def finish(kd: KimiDeployment, computed: KimiDeploymentStatus, actions: Actions) -> Actions:
    """The status patch (only the fields this status owns, and only when one differs) and the Events."""
    conditions = merge_conditions(kd.status.conditions, computed.conditions)
    computed = computed.model_copy(update={"conditions": conditions, "observed_generation": kd.generation})
    wanted = computed.wire()
    old = kd.raw_status
    if any(old.get(k) != v for k, v in wanted.items()):
        actions.status = {k: merge_patch(old.get(k), v) for k, v in wanted.items()}
        actions.events = events(kd.status.conditions, conditions)
    return actions


def refused(kd: KimiDeployment, reason: Reason, message: str, now: str) -> Actions:
    """A spec the operator cannot serve: say why; create nothing, change nothing already running."""
    g = kd.generation
    conds = [
        condition("Ready", False, reason, message, g, now),
        condition("Progressing", False, reason, "the spec was not applied", g, now),
    ]
    for ctype in ("WeightsReady", "Available"):
        kept = kd.condition(ctype)
        if kept is not None:
            conds.insert(0, kept)
    conds.sort(key=lambda c: CONDITION_TYPES.index(c.type))
    actions = Actions(explanation=[f"refused: {reason}: {message}"])
    return finish(kd, KimiDeploymentStatus(conditions=conds), actions)


def plan_status(p: Plan) -> PlanStatus:
    return PlanStatus(
        summary=p.summary,
        nodes_per_replica=p.nodes_per_replica,
        gpus_per_replica=p.gpus_per_replica,
        tp=p.tp,
        pp=p.pp,
        ep=p.ep,
        dp=p.dp,
        mem_fraction_static=f"{p.mem_fraction_static:.3f}",
        context_length=p.context_length,
        kv_cache_tokens=p.kv_cache_tokens,
        max_full_context_sequences=p.max_full_context_sequences,
        weights_gi_b_per_gpu=f"{p.weights_bytes_per_gpu / 1024**3:.1f}",
        startup_budget_seconds=p.startup_budget_seconds,
    )


def _unschedulable(pods: list[Manifest]) -> str | None:
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return str(cond.get("message", "no node fits the pod"))
    return None


def _replica_failure(workload: Manifest | None) -> str | None:
    """The Deployment's ReplicaFailure message (its ReplicaSet cannot create pods: admission refused them)."""
    for cond in ((workload or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return str(cond.get("message") or cond.get("reason") or "pods cannot be created")
    return None


def failing_pod(pods: list[Manifest]) -> tuple[Reason, str] | None:
    """(reason, message) of the first pod whose container is stuck in a state it will not leave by itself, e.g.
    (ImagePullBackOff, "pod kd-7d9 container sglang: Back-off pulling image ...")."""
    for pod in pods:
        status = pod.get("status") or {}
        for c in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (c.get("state") or {}).get("waiting") or {}
            reason = Reason.of(str(waiting.get("reason") or ""))
            if reason is not None and reason.stuck_container:
                last = ((c.get("lastState") or {}).get("terminated") or {}).get("message") or ""
                detail = waiting.get("message") or last or reason
                name = pod.get("metadata", {}).get("name", "?")
                return reason, f"pod {name} container {c.get('name', '?')}: {detail}"
    return None


def gateway_ready(observed: Observed, name: str) -> tuple[int, int]:
    """(ready, desired) pods of the gateway Deployment observed on the server."""
    dep = observed.children.get(("Deployment", gateway.names(name)["gateway"]))
    if dep is None:
        return 0, 0
    st = dep.get("status") or {}
    return int(st.get("readyReplicas") or 0), int((dep.get("spec") or {}).get("replicas") or 0)


def gateway_decision(observed: Observed, spec: KimiDeploymentSpec, name: str, service: str) -> gateway.ServiceDecision:
    ready, _ = gateway_ready(observed, name)
    current = gateway.observed_target(observed.children.get(("Service", service)), render.gateway_selector(name))
    return gateway.service_target(spec.gateway_enabled(), ready, current)


def ready_leaders(pods: list[Manifest]) -> int:
    """Serving pods (single-node pods, LWS leaders) that are Ready: the workers the gateway's discovery admits."""
    count = 0
    for pod in pods:
        if not startup.leader(pod):
            continue
        st = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        if ready and st.get("phase") == "Running" and st.get("podIP"):
            count += 1
    return count


def gateway_status(
    observed: Observed, spec: KimiDeploymentSpec, name: str, service: str, decision: gateway.ServiceDecision
) -> GatewayStatus:
    """status.gateway: does a gateway serve the Service, how many of its pods are ready, how many workers
    (`decision`: gateway_decision's answer, which decide already took)."""
    current = gateway.observed_target(observed.children.get(("Service", service)), render.gateway_selector(name))
    serving = current == "gateway" and decision.target == "gateway"
    if not spec.gateway_enabled() and not decision.keep_gateway:
        return GatewayStatus(enabled=False, serving=False, summary="off")
    ready, desired = gateway_ready(observed, name)
    workers = ready_leaders(observed.pods)
    state = spec.gateway.policy if serving else ("starting" if spec.gateway_enabled() else "stopping")
    return GatewayStatus(
        enabled=spec.gateway_enabled(),
        serving=serving,
        policy=spec.gateway.policy,
        ready=f"{ready}/{desired or spec.gateway.replicas}",
        workers=workers,
        summary=f"{state} {ready}/{desired or spec.gateway.replicas}, {workers} worker{'s' * (workers != 1)}",
    )


def scaling_condition(scaler: AutoscalerStatus | None, generation: int, now: str) -> Condition:
    """ScalingActive (as the HPA names it): can the autoscaler read the load it scales on?"""
    decision = (scaler.last_decision if scaler else None) or ""
    reason = Reason.of(decision.split(":", 1)[0])
    if reason in (Reason.METRICS_UNAVAILABLE, Reason.NO_READY_REPLICAS):
        return condition("ScalingActive", False, reason, decision, generation, now)
    if not decision:
        return condition("ScalingActive", None, Reason.STARTING, "no autoscaler decision yet", generation, now)
    return condition("ScalingActive", True, Reason.QUEUE_DEPTH_READ, decision, generation, now)


@dataclass(frozen=True)
class Serving:
    """What the decision settled before the status is computed."""

    spec: KimiDeploymentSpec
    plan: Plan  # pinned
    weights: Weights
    workload: ChildKey  # the serving workload's kind and name
    switching: bool  # the other workload kind is still draining
    replicas: int  # desired: the autoscaler's count when it is on, else spec.replicas
    gateway: gateway.ServiceDecision  # where the Service points, and whether the gateway's objects stay
    stall_seconds: float = 300.0  # the shortest quiet time in a startup phase that counts as stalled


def serving_status(observed: Observed, s: Serving, actions: Actions, now: str) -> Actions:
    """The whole status for a spec being served: replica counts, conditions, model, weights, plan, gateway."""
    kd = observed.kd
    name, namespace, generation = kd.name, kd.namespace, kd.generation
    spec, p, weights = s.spec, s.plan, s.weights
    old_weights = kd.status.weights or WeightsStatus()
    names = render.names(name, spec)
    dep = observed.children.get(s.workload)
    dep_status = (dep or {}).get("status") or {}
    desired = s.replicas
    current = int(dep_status.get("replicas") or 0)
    ready = int(dep_status.get("readyReplicas") or 0)
    updated = int(dep_status.get("updatedReplicas") or 0)
    dep_changing = any(key_of(m) == s.workload for m in actions.apply)
    # The workload controller has seen the latest spec (a status without observedGeneration is taken as current;
    # this reconcile's own apply is tracked by dep_changing).
    generation_seen = dep_status.get("observedGeneration", (dep or {}).get("metadata", {}).get("generation") or 0)
    dep_current = dep is not None and generation_seen >= (dep["metadata"].get("generation") or 0)
    rolled_out = (
        weights.ready
        and dep_current
        and not dep_changing
        and updated == desired
        and ready == desired
        and current == desired
    )

    weights_cond = condition("WeightsReady", weights.ready, weights.state.reason, weights.message, generation, now)
    if ready > 0:
        available = condition(
            "Available", True, Reason.MINIMUM_REPLICAS_AVAILABLE, f"{ready} replica(s) serve", generation, now
        )
    elif desired == 0:
        available = condition("Available", False, Reason.SCALED_TO_ZERO, "replicas is 0", generation, now)
    else:
        available = condition("Available", False, Reason.NO_REPLICA_READY, "no replica is serving yet", generation, now)

    starts = None
    if weights.ready and not s.switching:
        key = startup.history_key(p.repo, p.revision, spec.weights.storage_class_name, p.accelerator)
        starts = startup.startup(
            observed.pods,
            observed.engine_logs,
            kd.status.startup,
            key,
            planner.startup_estimates(p),
            s.stall_seconds,
            parse_rfc3339(now),
        )
    slowest = starts.slowest if starts is not None else None
    unschedulable = _unschedulable(observed.pods)
    replica_failure = _replica_failure(dep)
    failing = failing_pod(observed.pods) or (None if weights.ready else failing_pod(observed.fetch_pods))
    reason: Reason
    if observed.write_failures:
        reason, msg = (
            Reason.APPLY_FAILED,
            "the API server refused: "
            + "; ".join(observed.write_failures)
            + " (fix the spec; the operator retries with backoff)",
        )
    elif failing is not None and not rolled_out:
        reason, msg = failing[0], failing[1] + " (the pod will not recover by itself)"
    elif not weights.ready and observed.fetch_create_error:
        reason, msg = (
            Reason.FAILED_CREATE,
            f"the fetch Job cannot create its pod: {observed.fetch_create_error} (fix the cause; the Job retries)",
        )
    elif weights.ready and replica_failure is not None and not rolled_out:
        reason, msg = (
            Reason.FAILED_CREATE,
            f"{s.workload[0]} {s.workload[1]} cannot create pods: {replica_failure} (fix the cause; it retries)",
        )
    elif not weights.ready:
        reason, msg = weights.state.ready_reason, weights.message
    elif rolled_out:
        reason, msg = (
            (Reason.READY, f"{ready}/{desired} replicas ready") if desired else (Reason.SCALED_TO_ZERO, "replicas is 0")
        )
    elif s.switching:
        reason, msg = (
            Reason.SWITCHING_TOPOLOGY,
            (
                f"moving to {p.summary}: the previous workload is removed and its pods drain before the new one "
                "requests GPUs"
            ),
        )
    elif unschedulable:
        reason, msg = Reason.UNSCHEDULABLE, f"serving pods cannot be scheduled: {unschedulable}"
    elif updated < desired or dep_changing or not dep_current:
        reason, msg = Reason.ROLLING_OUT, f"{updated}/{desired} replicas run the current spec, {ready} ready"
    elif starts is not None and starts.stalled is not None:
        r = starts.stalled
        reason, msg = (
            Reason.STARTUP_STALLED,
            f"replica {r.pod}: {r.message}; last log line: {r.last_log or '(none)'} (docs/startup.md)",
        )
    else:
        reason, msg = (
            Reason.LOADING,
            (
                f"{ready}/{desired} replicas ready; the rest are starting (startup budget "
                f"{p.startup_budget_seconds // 60} min)"
            ),
        )
    done = reason in (Reason.READY, Reason.SCALED_TO_ZERO)
    stalled = reason in (
        Reason.FETCH_FAILED,
        Reason.VOLUME_NOT_BOUND,
        Reason.VOLUME_TERMINATING,
        Reason.REVISION_UNRESOLVED,
        Reason.REVISION_NOT_FOUND,
        Reason.APPLY_FAILED,
        Reason.FAILED_CREATE,
        Reason.STARTUP_STALLED,
    )
    progress_reason, progress_msg = (Reason.COMPLETE if done else reason), msg
    if reason is Reason.LOADING and slowest is not None:  # the least advanced replica's phase
        progress_reason = Reason.of(slowest.phase) or Reason.LOADING
        eta = f", ready in about {startup.ago(slowest.eta_seconds)}" if slowest.eta_seconds else ""
        progress_msg = f"replica {slowest.pod}: {slowest.message}{eta}"
    progressing = condition(
        "Progressing",
        not done and not stalled and reason not in FAILING_CONTAINER_REASONS,
        progress_reason,
        progress_msg,
        generation,
        now,
    )
    ready_cond = condition("Ready", done, reason, msg, generation, now)

    key = render.weights_key(p)
    resolved = bool(COMMIT_RE.match(p.revision))
    weights_fields: dict[str, Any] = {
        "claim_name": names.pvc,
        "path": sglang.snapshot_path(p.repo, p.revision) if resolved else None,
        "progress": weights.progress,
        "message": weights.message,
        "attempts": old_weights.attempts,
        **weights.detail,
    }
    if weights.ready:
        known = old_weights.completed_key == key and old_weights.completed_at
        weights_fields["completed_at"] = old_weights.completed_at if known else now
        weights_fields["completed_key"] = key
    conditions = [weights_cond, available, progressing, ready_cond]
    if spec.autoscaling.enabled:
        conditions.append(scaling_condition(kd.status.autoscaler, generation, now))
    computed = KimiDeploymentStatus(
        replicas=current,
        ready_replicas=ready,
        updated_replicas=updated,
        desired_replicas=desired,
        ready=f"{ready}/{desired}",
        selector=render.selector_string(name),
        endpoint=f"http://{names.service}.{namespace}.svc:{spec.service.port}/v1",
        model=ModelStatus(
            repo=p.repo,
            served_model_name=p.served_model_name,
            revision=spec.model.revision,
            resolved_revision=p.revision if resolved else None,
            draft_repo=spec.engine.speculative.draft_repo if spec.engine.speculative is not None else None,
            draft_resolved_revision=p.draft_commit or None,
        ),
        weights=WeightsStatus(**weights_fields),
        plan=plan_status(p),
        gateway=gateway_status(observed, spec, name, names.service, s.gateway),
        startup=starts.status if starts is not None else kd.status.startup,
        state=starts.status.summary
        if starts is not None
        and starts.status is not None
        and starts.starting
        and reason in (Reason.LOADING, Reason.STARTUP_STALLED)
        else str(reason),
        conditions=conditions,
    )
    actions = finish(kd, computed, actions)
    if starts is not None:
        if actions.status is not None:
            actions.events.extend(starts.events)
            actions.phase_seconds.extend((str(phase), seconds) for phase, seconds in starts.finished)
        if starts.starting:
            actions.requeue_after = min(t for t in (actions.requeue_after, startup.POLL_SECONDS) if t > 0)
    return actions
