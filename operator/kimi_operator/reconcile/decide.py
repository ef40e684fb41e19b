"""decide(Observed, config, now) -> Actions: the one function every trigger runs for a KimiDeployment."""

from __future__ import annotations

from kimi_operator import render
from kimi_operator.config import OperatorConfig
from kimi_operator.planner import PlanError, plan
from kimi_operator.reasons import Reason
from kimi_operator.reconcile import diff, status
from kimi_operator.reconcile.types import Actions, ChildKey, Observed
from kimi_operator.reconcile.weights_state import (
    FETCH_REQUEUE_SECONDS,
    Weights,
    WeightsState,
    fetch_progress,
    fetched_commit,
    pinned_commit,
    pinned_draft_commit,
    weights,
)
from kimi_operator.weights import COMMIT_RE

LWS_MIN_VERSION = "v0.9.0"
LWS_MANIFESTS = f"https://github.com/kubernetes-sigs/lws/releases/download/{LWS_MIN_VERSION}/manifests.yaml"
WORKLOAD_KINDS = {"Deployment": "deployment", "LeaderWorkerSet": "leaderworkerset"}


def decide(observed: Observed, config: OperatorConfig, now: str) -> Actions:
    """Compute the actions that move one KimiDeployment's children and status to the desired state."""
    kd = observed.kd
    if kd.spec is None:
        return status.refused(kd, Reason.INVALID_SPEC, kd.spec_error, now)
    spec = kd.spec
    try:
        p = plan(spec)
    except PlanError as err:
        return status.refused(kd, err.reason, err.message, now)
    multi = p.nodes_per_replica > 1
    if multi and not observed.lws_installed:
        return status.refused(
            kd,
            Reason.LWS_NOT_INSTALLED,
            f"the plan needs {p.nodes_per_replica} nodes per replica ({p.summary}), which runs as a "
            "LeaderWorkerSet, but the leaderworkerset.x-k8s.io/v1 CRD is not installed; install LeaderWorkerSet "
            f"{LWS_MIN_VERSION} or later (kubectl apply --server-side -f {LWS_MANIFESTS}) or choose a layout that "
            "fits one node (kimi-operator plan)",
            now,
        )

    name = kd.name
    owner = render.Owner(name, kd.namespace, kd.uid)
    names = render.names(name, spec)
    rec = fetch_progress(observed.fetch_logs)
    commit = pinned_commit(kd.status, spec.model.revision) or observed.resolved_commit
    if commit is None:  # the fetcher resolved it (e.g. the operator cannot reach the Hub)
        commit = rec.commit if rec is not None and COMMIT_RE.match(rec.commit) else fetched_commit(observed.fetch_pods)
    job_key = render.job_key(p, spec)
    p = render.pin(p, spec, config, commit=commit)
    key = render.weights_key(p)
    job = observed.children.get(("Job", names.job))
    w = weights(kd.status, job, key, job_key, names.pvc, observed, rec, now)
    if commit is None and observed.resolve_pending and job is None and w.state.wants_fetch_job:
        # The Job's command names the commit: it waits for the Hub's answer (the answer queues this again).
        w = Weights(WeightsState.RESOLVING, f"asking the Hub which commit {job_key} is", "Resolving")
    if commit is None and observed.revision_missing:
        w = Weights(
            WeightsState.REVISION_NOT_FOUND,
            f"{observed.resolve_error}: set spec.model.revision to a branch, tag or 40-hex commit of {p.repo} "
            "(nothing is downloaded until it resolves)",
            "Failed",
        )
    if w.ready and not commit:
        why = observed.resolve_error or "the fetcher did not report the commit it downloaded"
        w = Weights(
            WeightsState.REVISION_UNRESOLVED, f"{job_key} is downloaded but its commit is unknown: {why}", "100%"
        )
    draft = spec.engine.speculative.draft_repo if spec.engine.speculative is not None else None
    draft_commit = (pinned_draft_commit(kd.status, draft) or observed.draft_commit) if draft else None
    if draft_commit:
        p = render.pin(p, spec, config, draft_commit=draft_commit)
    elif draft and w.ready and observed.resolve_pending:
        w = Weights(WeightsState.RESOLVING, f"asking the Hub which commit {draft}@main is", "Resolving")
    elif draft and w.ready:
        w = Weights(
            WeightsState.REVISION_UNRESOLVED,
            f"the draft model {draft} has no resolved commit: {observed.resolve_error or 'the Hub could not be asked'}",
            "100%",
        )
    replicas = spec.effective_replicas(kd.status.autoscaler.desired_replicas if kd.status.autoscaler else None)
    ctx = render.context(
        owner,
        spec,
        p,
        config,
        replicas=replicas,
        node_allocatable=observed.node_allocatable,
        api_key_fingerprint=observed.api_key_fingerprint,
    )

    workload_key: ChildKey = ("LeaderWorkerSet" if multi else "Deployment", names.deployment)
    other_key: ChildKey = ("Deployment" if multi else "LeaderWorkerSet", names.deployment)
    other_pods = [
        pod
        for pod in observed.pods
        if ((pod.get("metadata") or {}).get("labels") or {}).get(render.WORKLOAD_LABEL) == WORKLOAD_KINDS[other_key[0]]
    ]
    # Switching between one node and several: the old workload goes first and its pods must be gone before the
    # new one asks for GPUs, so the two never hold GPUs at the same time.
    switching = other_key in observed.children or bool(other_pods)
    gw = status.gateway_decision(observed, spec, name, names.service)
    stage = render.Stage(
        fetch=w.state.wants_fetch_job,
        serve=w.ready and not switching,
        service_to_gateway=gw.target == "gateway",
        gateway=gw.keep_gateway,
        network_policy=gw.target == "gateway" and spec.gateway.network_policy.enabled,
    )
    desired = render.children(ctx, stage)
    completed_key = kd.status.weights.completed_key if kd.status.weights else None

    def keep(k: ChildKey) -> bool:
        if k in (workload_key, other_key) and not w.ready:
            return True  # keep serving the previous snapshot while a new revision downloads
        if k[0] == "Job" and w.ready and completed_key != key:
            return True  # delete the finished Job only once its completion is recorded in status
        # a Job that exists while the Hub is asked (the draft's commit) is left for the answer
        return k[0] == "Job" and w.state.keeps_job

    actions = diff.writes(desired, observed.children, job_key=job_key, retry_job=w.retry_job, keep=keep)
    if not w.ready:
        actions.requeue_after = FETCH_REQUEUE_SECONDS  # progress, retries on time, the volume re-checked
    serving = status.Serving(spec, p, w, workload_key, switching, replicas, gw, config.startup_stall_seconds)
    return status.serving_status(observed, serving, actions, now)
