"""Desired vs observed -> actions and status. Pure: no API calls here (kube.py makes them; controller.py glues).

One function, `decide`, is called for every trigger (create, update, resume, child change, periodic resync):
the operator is level-based. A reconcile that finds nothing to change returns no applies, no deletes, no status
and no events, so an idle KimiDeployment costs zero API writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kimi_operator import gateway, quantity, render
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.config import OperatorConfig
from kimi_operator.engine import sglang
from kimi_operator.planner import Plan, PlanError, plan
from kimi_operator.timeutil import parse_rfc3339
from kimi_operator.weights import COMMIT_RE, FetchProgress, format_progress, progress_from_log

Manifest = dict[str, Any]
ChildKey = tuple[str, str]  # (kind, name)

# Container states a pod does not leave by itself: each needs a person (a fixed image name, a Secret, a command).
FAILING_CONTAINER_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)


# Reasons that are worth a Warning event (something a person must act on, or wait for with concern).
WARNING_REASONS = frozenset(
    {
        "InvalidSpec",
        "UnknownCheckpoint",
        "UnknownAccelerator",
        "ContextTooLong",
        "DoesNotFit",
        "FetchFailed",
        "Unschedulable",
        "LeaderWorkerSetNotInstalled",
        "UnsupportedByCheckpoint",
        "MetricsUnavailable",
        "NoReadyReplicas",
        "VolumeNotBound",
        "RevisionUnresolved",
        "UnsupportedByEngine",
        "AcceleratorMismatch",
        "VolumeTooSmall",
        "InvalidTopology",
        "ApplyFailed",
    }
    | FAILING_CONTAINER_REASONS
)
CONDITION_TYPES = ("WeightsReady", "Available", "Progressing", "Ready", "ScalingActive")
LWS_MIN_VERSION = "v0.9.0"
LWS_MANIFESTS = f"https://github.com/kubernetes-sigs/lws/releases/download/{LWS_MIN_VERSION}/manifests.yaml"
WORKLOAD_KINDS = {"Deployment": "deployment", "LeaderWorkerSet": "leaderworkerset"}


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Actions:
    apply: list[Manifest] = field(default_factory=list)
    delete: list[ChildKey] = field(default_factory=list)
    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    explanation: list[str] = field(default_factory=list)
    requeue_after: float = 0.0  # look again this soon even without an event (download progress, retry backoff)

    @property
    def writes(self) -> int:
        return len(self.apply) + len(self.delete) + (self.status is not None) + len(self.events)


@dataclass(frozen=True)
class Observed:
    """What the API server holds for one KimiDeployment: its body, its children, its serving pods."""

    body: dict[str, Any]
    children: dict[ChildKey, Manifest]
    pods: list[Manifest] = field(default_factory=list)
    lws_installed: bool = True
    fetch_pods: list[Manifest] = field(default_factory=list)
    fetch_logs: dict[str, str] = field(default_factory=dict)  # running fetch pod name -> the tail of its log
    resolved_commit: str | None = None  # the Hub's answer for spec.model.revision (None: unknown)
    draft_commit: str | None = None  # the Hub's answer for the draft model's main branch, when there is one
    resolve_error: str = ""
    completed_on_claim: frozenset[str] = frozenset()  # repo@commit keys other KimiDeployments completed here
    volume_problem: str = ""  # why the weights PVC is not bound (empty: bound, or not long enough to tell)
    node_allocatable: tuple[int, int] | None = None  # (millicores, bytes) of the smallest matching node, if known
    write_failures: tuple[str, ...] = ()  # "Kind/name: server message" for writes the API server refused


# Fields whose values the API server stores as normalised quantities (cpu: 96000m -> "96", memory: 1048576Mi ->
# "1Ti", sizeLimit: 65536Mi -> "64Gi"): compared by value, or every resync would see drift and re-apply.
_QUANTITY_PARENTS = frozenset({"requests", "limits", "capacity"})
_QUANTITY_KEYS = frozenset({"sizeLimit", "storage"})


def _same_quantity(desired: Any, observed: Any) -> bool:
    try:
        return quantity.parse(str(desired)) == quantity.parse(str(observed))
    except ValueError:
        return False


def is_subset(desired: Any, observed: Any, *, _key: str = "", _parent: str = "") -> bool:
    """True when every field we set is present with the same value (the server may add defaults, and normalises
    quantities, which are compared by value)."""
    if isinstance(desired, dict):
        if not isinstance(observed, dict):
            return False
        return all(k in observed and is_subset(v, observed[k], _key=k, _parent=_key) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(desired) != len(observed):
            return False
        return all(is_subset(d, o, _parent=_key) for d, o in zip(desired, observed, strict=True))
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return desired == observed
    if str(desired) == str(observed):
        return True
    return (_parent in _QUANTITY_PARENTS or _key in _QUANTITY_KEYS) and _same_quantity(desired, observed)


def _pvc_change(desired: Manifest, current: Manifest) -> str:
    """Why the weights PVC must be re-applied ("" when it need not): the retain-on-delete annotation or owner
    reference differ, or the desired size is larger (a PVC never shrinks; a smaller size is left alone)."""
    want_meta, have_meta = desired["metadata"], current.get("metadata") or {}
    want_retain = (want_meta.get("annotations") or {}).get(render.RETAIN_ANNOTATION)
    have_retain = (have_meta.get("annotations") or {}).get(render.RETAIN_ANNOTATION)
    owned = any(r.get("kind") == "KimiDeployment" for r in have_meta.get("ownerReferences") or [])
    if want_retain != have_retain or bool(want_meta.get("ownerReferences")) != owned:
        return f"retain-on-delete {have_retain} -> {want_retain}"
    want = desired["spec"]["resources"]["requests"]["storage"]
    have = ((current.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
    try:
        if have is not None and quantity.parse(want) > quantity.parse(str(have)):
            return f"expand {have} -> {want}"
    except ValueError:
        return ""
    return ""


def _key(m: Manifest) -> ChildKey:
    return (m["kind"], m["metadata"]["name"])


def _condition(ctype: str, ok: bool | None, reason: str, message: str, generation: int) -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = "spec." + ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class _Weights:
    ready: bool
    reason: str
    message: str
    progress: str
    detail: dict[str, Any] = field(default_factory=dict)
    retry_job: bool = False  # delete the failed Job now: its backoff has passed


FETCH_BACKOFF_SECONDS = (60, 120, 300, 600, 1800, 3600)
FETCH_REQUEUE_SECONDS = 10.0  # while the weights are not ready; the fetch pod's log is read at most this often
PERMANENT_FETCH_FAILURE = "PodFailurePolicy"  # exit 2 (not found / unauthorized) or 3 (no space): no retry


def _job_state(job: Manifest | None) -> tuple[str, str, str, str]:
    """(succeeded|failed|running|absent, reason, message, failed-at) of the fetch Job."""
    if job is None:
        return "absent", "", "", ""
    st = job.get("status") or {}
    for cond in st.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", "", "", ""
        if cond.get("type") == "Failed":
            return (
                "failed",
                str(cond.get("reason", "Failed")),
                str(cond.get("message", "")),
                str(cond.get("lastTransitionTime", "")),
            )
    if (st.get("succeeded") or 0) >= 1:
        return "succeeded", "", "", ""
    return "running", "", "", ""


def fetch_progress(fetch_logs: dict[str, str]) -> FetchProgress | None:
    """The newest progress record in the log tails of the running fetch pods (weights.progress_from_log)."""
    best: FetchProgress | None = None
    for text in fetch_logs.values():
        rec = progress_from_log(text)
        if rec is not None and (best is None or rec.updated_at >= best.updated_at):
            best = rec
    return best


def _termination(pod: Manifest) -> dict[str, Any] | None:
    """The fetch container's termination message (the fetcher writes JSON there on exit), parsed, or None."""
    for st in (pod.get("status") or {}).get("containerStatuses") or []:
        if st.get("name") != "fetch":
            continue
        message = ((st.get("state") or {}).get("terminated") or {}).get("message")
        if not message:
            return None
        try:
            data = json.loads(message)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
    return None


def fetched_commit(fetch_pods: list[Manifest]) -> str | None:
    """The commit a fetch pod that finished reported in its result ({"snapshots": [{"commit": ...}, ...]})."""
    for pod in fetch_pods:
        snapshots = (_termination(pod) or {}).get("snapshots")
        if isinstance(snapshots, list) and snapshots and isinstance(snapshots[0], dict):
            commit = str(snapshots[0].get("commit") or "")
            if COMMIT_RE.match(commit):
                return commit
    return None


def fetch_error(fetch_pods: list[Manifest]) -> str:
    """What the newest failed fetch pod said when it exited ({"exitCode": N, "error": "..."}), or ""."""
    failed = [p for p in fetch_pods if (p.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
    for pod in reversed(failed):
        data = _termination(pod) or {}
        if data.get("error"):
            return f"exit {data.get('exitCode')}: {data['error']}"
    return ""


def _progress_detail(rec: FetchProgress | None) -> dict[str, Any]:
    if rec is None:
        return {}
    out: dict[str, Any] = {
        "bytesDone": rec.bytes_done,
        "bytesTotal": rec.bytes_total,
        "filesDone": rec.files_done,
        "filesTotal": rec.files_total,
        "message": format_progress(rec),
    }
    if rec.bytes_per_second:
        out["bytesPerSecond"] = rec.bytes_per_second
    if rec.eta_seconds is not None:
        out["etaSeconds"] = rec.eta_seconds
    return out


def _weights(
    old_weights: dict[str, Any],
    job: Manifest | None,
    key: str,
    job_key: str,
    claim: str,
    observed: Observed,
    rec: FetchProgress | None,
    now: str,
) -> _Weights:
    remembered = old_weights.get("completedKey") == key and old_weights.get("claimName") == claim
    reused = f"{key} is already complete on volume {claim} (no download needed)"
    if remembered:
        if old_weights.get("message") == reused:
            return _Weights(True, "Reused", reused, "100%")
        return _Weights(True, "Downloaded", f"{key} is complete on volume {claim}", "100%")
    if key in observed.completed_on_claim:
        return _Weights(True, "Reused", reused, "100%")
    if observed.volume_problem:
        return _Weights(False, "VolumeNotBound", observed.volume_problem, "Pending")
    annotated = ((job or {}).get("metadata", {}).get("annotations") or {}).get(render.WEIGHTS_KEY_ANNOTATION)
    state, why, detail, failed_at = _job_state(job) if annotated in (None, job_key) else ("absent", "", "", "")
    if state == "succeeded":
        return _Weights(True, "Downloaded", f"{key} is complete on volume {claim}", "100%")
    if state == "failed":
        attempts = int(old_weights.get("attempts") or 0) + 1
        text = f"downloading {job_key} failed ({why}: {detail})".replace(": )", ")")
        said = fetch_error(observed.fetch_pods)
        if said:
            text += f"; the fetcher said: {said}"
        if why == PERMANENT_FETCH_FAILURE:
            return _Weights(
                False,
                "FetchFailed",
                f"{text}; this will not pass on a retry: fix the cause (see the Job's pod log), then delete the Job",
                "Failed",
            )
        wait = FETCH_BACKOFF_SECONDS[min(attempts - 1, len(FETCH_BACKOFF_SECONDS) - 1)]
        due = parse_rfc3339(failed_at) + wait <= parse_rfc3339(now) if failed_at else True
        return _Weights(
            False,
            "FetchFailed",
            f"{text}; attempt {attempts}, retrying {'now' if due else f'after {wait}s'}",
            "Failed",
            {"attempts": attempts} if due else {},
            retry_job=due,
        )
    if rec is not None:
        return _Weights(
            False,
            "Downloading",
            f"downloading {job_key} into volume {claim}: {format_progress(rec)}",
            f"{rec.percent}%",
            _progress_detail(rec),
        )
    return _Weights(False, "Downloading", f"downloading {job_key} into volume {claim}", "Downloading")


def pinned_draft_commit(status: dict[str, Any], draft_repo: str | None) -> str | None:
    """The draft model's commit pinned in status, while the spec still names the same draft repo."""
    model = status.get("model") or {}
    pinned = model.get("draftResolvedRevision")
    if draft_repo and model.get("draftRepo") == draft_repo and isinstance(pinned, str) and COMMIT_RE.match(pinned):
        return pinned
    return None


def pinned_commit(status: dict[str, Any], revision: str) -> str | None:
    """The commit status pinned for this spec revision: a moving branch never re-downloads by surprise."""
    model = status.get("model") or {}
    pinned = model.get("resolvedRevision")
    if model.get("revision") == revision and isinstance(pinned, str) and COMMIT_RE.match(pinned):
        return pinned
    return None


def _unschedulable(pods: list[Manifest]) -> str | None:
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return str(cond.get("message", "no node fits the pod"))
    return None


def failing_pod(pods: list[Manifest]) -> tuple[str, str] | None:
    """(reason, message) of the first pod whose container is stuck in a state it will not leave by itself, e.g.
    ("ImagePullBackOff", "pod kd-7d9 container sglang: Back-off pulling image ...")."""
    for pod in pods:
        status = pod.get("status") or {}
        for c in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (c.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in FAILING_CONTAINER_REASONS:
                last = ((c.get("lastState") or {}).get("terminated") or {}).get("message") or ""
                detail = waiting.get("message") or last or reason
                name = pod.get("metadata", {}).get("name", "?")
                return str(reason), f"pod {name} container {c.get('name', '?')}: {detail}"
    return None


def _plan_status(p: Plan) -> dict[str, Any]:
    return {
        "summary": p.summary,
        "nodesPerReplica": p.nodes_per_replica,
        "gpusPerReplica": p.gpus_per_replica,
        "tp": p.tp,
        "pp": p.pp,
        "ep": p.ep,
        "dp": p.dp,
        "memFractionStatic": f"{p.mem_fraction_static:.3f}",
        "contextLength": p.context_length,
        "kvCacheTokens": p.kv_cache_tokens,
        "maxFullContextSequences": p.max_full_context_sequences,
        "weightsGiBPerGpu": f"{p.weights_bytes_per_gpu / 1024**3:.1f}",
        "startupBudgetSeconds": p.startup_budget_seconds,
    }


def _merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]], now: str) -> list[dict[str, Any]]:
    """Keep lastTransitionTime when a condition's status did not change (metav1.Condition semantics)."""
    by_type = {c.get("type"): c for c in old}
    out = []
    for cond in new:
        prev = by_type.get(cond["type"])
        changed = prev is None or prev.get("status") != cond["status"]
        stamp = now if changed or not prev else prev.get("lastTransitionTime", now)
        out.append({**cond, "lastTransitionTime": stamp})
    return out


def _events(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[Event]:
    by_type = {c.get("type"): c for c in old}
    events: list[Event] = []
    seen: set[str] = set()
    for cond in reversed(new):  # Ready last in the list, first here: its message wins for a shared reason
        if cond["reason"] in seen:
            continue
        seen.add(cond["reason"])
        prev = by_type.get(cond["type"])
        if prev and prev.get("status") == cond["status"] and prev.get("reason") == cond["reason"]:
            continue
        if cond["type"] == "Progressing" and cond["status"] == "False" and cond["reason"] == "Complete":
            continue
        kind = "Warning" if cond["reason"] in WARNING_REASONS else "Normal"
        events.append(Event(kind, cond["reason"], f"{cond['type']}={cond['status']}: {cond['message']}"))
    return events[::-1]


def _finish(
    body: dict[str, Any],
    computed: dict[str, Any],
    conditions: list[dict[str, Any]],
    now: str,
    actions: Actions,
) -> Actions:
    old_status = body.get("status") or {}
    old_conditions = old_status.get("conditions") or []
    computed["conditions"] = _merge_conditions(old_conditions, conditions, now)
    computed["observedGeneration"] = body["metadata"].get("generation", 0)
    wanted = {k: _without_none(v) for k, v in computed.items()}
    if any(old_status.get(k) != v for k, v in wanted.items()):
        actions.status = {k: _merge_patch(old_status.get(k), v) for k, v in wanted.items()}
        actions.events = _events(old_conditions, computed["conditions"])
    return actions


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _merge_patch(old: Any, new: Any) -> Any:
    """A JSON merge patch from old to new: keys that disappeared are set to null so the server removes them."""
    if isinstance(old, dict) and isinstance(new, dict):
        patch = {k: _merge_patch(old.get(k), v) for k, v in new.items()}
        patch.update({k: None for k in old if k not in new})
        return patch
    return new


def _refused(body: dict[str, Any], reason: str, message: str, now: str, generation: int) -> Actions:
    """A spec the operator cannot serve: say why; create nothing, change nothing already running."""
    conds = [
        _condition("Ready", False, reason, message, generation),
        _condition("Progressing", False, reason, "the spec was not applied", generation),
    ]
    old = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
    for ctype in ("WeightsReady", "Available"):
        if ctype in old:
            kept = {k: v for k, v in old[ctype].items() if k != "lastTransitionTime"}
            conds.insert(0, kept)
    conds.sort(key=lambda c: CONDITION_TYPES.index(c["type"]))
    actions = Actions(explanation=[f"refused: {reason}: {message}"])
    return _finish(body, {}, conds, now, actions)


def decide(observed: Observed, config: OperatorConfig, now: str) -> Actions:
    """Compute the actions that move one KimiDeployment's children and status to the desired state."""
    body = observed.body
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation", 0)
    try:
        spec = KimiDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        return _refused(body, "InvalidSpec", _validation_message(err), now, generation)
    try:
        p = plan(spec)
    except PlanError as err:
        return _refused(body, err.reason, err.message, now, generation)
    multi = p.nodes_per_replica > 1
    if multi and not observed.lws_installed:
        return _refused(
            body,
            "LeaderWorkerSetNotInstalled",
            f"the plan needs {p.nodes_per_replica} nodes per replica ({p.summary}), which runs as a "
            "LeaderWorkerSet, but the leaderworkerset.x-k8s.io/v1 CRD is not installed; install LeaderWorkerSet "
            f"{LWS_MIN_VERSION} or later (kubectl apply --server-side -f {LWS_MANIFESTS}) or choose a layout that "
            "fits one node (kimi-operator plan)",
            now,
            generation,
        )

    owner = render.Owner(name, namespace, meta["uid"])
    names = render.names(name, spec)
    old_status = body.get("status") or {}
    rec = fetch_progress(observed.fetch_logs)
    commit = pinned_commit(old_status, spec.model.revision) or observed.resolved_commit
    if commit is None:  # the fetcher resolved it (e.g. the operator cannot reach the Hub)
        commit = rec.commit if rec is not None and COMMIT_RE.match(rec.commit) else fetched_commit(observed.fetch_pods)
    job_key = f"{p.repo}@{spec.model.revision}"
    p = render.pin(p, spec, config, commit=commit)
    key = render.weights_key(p)
    job = observed.children.get(("Job", names.job))
    weights = _weights(old_status.get("weights") or {}, job, key, job_key, names.pvc, observed, rec, now)
    if weights.ready and not commit:
        why = observed.resolve_error or "the fetcher did not report the commit it downloaded"
        weights = _Weights(
            False, "RevisionUnresolved", f"{job_key} is downloaded but its commit is unknown: {why}", "100%"
        )
    draft = spec.engine.speculative.draft_repo if spec.engine.speculative is not None else None
    draft_commit = (pinned_draft_commit(old_status, draft) or observed.draft_commit) if draft else None
    if draft_commit:
        p = render.pin(p, spec, config, draft_commit=draft_commit)
    elif draft and weights.ready:
        weights = _Weights(
            False,
            "RevisionUnresolved",
            f"the draft model {draft} has no resolved commit: {observed.resolve_error or 'the Hub could not be asked'}",
            "100%",
        )
    scaler = old_status.get("autoscaler") or {}
    replicas = spec.effective_replicas(scaler.get("desiredReplicas"))
    ctx = render.context(owner, spec, p, config, replicas=replicas, node_allocatable=observed.node_allocatable)
    ctx["weights_key"] = job_key
    desired: list[Manifest] = []
    if not spec.weights.existing_claim_name:
        desired.append(render.pvc(ctx))
    if not weights.ready and weights.reason not in ("VolumeNotBound", "Reused", "RevisionUnresolved"):
        desired.append(render.fetch_job(ctx))
    workload_key = ("LeaderWorkerSet" if multi else "Deployment", names.deployment)
    other_key = ("Deployment" if multi else "LeaderWorkerSet", names.deployment)
    other_pods = [
        pod
        for pod in observed.pods
        if ((pod.get("metadata") or {}).get("labels") or {}).get(render.WORKLOAD_LABEL) == WORKLOAD_KINDS[other_key[0]]
    ]
    # Switching between one node and several: the old workload goes first and its pods must be gone before the
    # new one asks for GPUs, so the two never hold GPUs at the same time.
    switching = other_key in observed.children or bool(other_pods)
    if weights.ready and not switching:
        desired.append(render.workload(ctx))
    gw = _gateway_decision(observed, spec, name, names.service)
    if gw.target == "gateway":
        ctx["service_selector"] = render.gateway_selector(name)
    desired += render.services(ctx)
    if replicas > 1:
        desired.append(render.pdb(ctx))
    if gw.keep_gateway:
        desired += render.gateway_manifests(ctx)
    if gw.target == "gateway" and spec.gateway.network_policy.enabled:
        desired.append(render.network_policy(ctx))

    actions = Actions()
    desired_keys = {_key(m) for m in desired}
    for m in desired:
        k = _key(m)
        current = observed.children.get(k)
        if current is None:
            actions.apply.append(m)
            actions.explanation.append(f"create {k[0]}/{k[1]}")
        elif k[0] == "PersistentVolumeClaim":
            # A PVC's spec is immutable but for its size: re-applied only to follow retainOnDelete (its annotation
            # and owner reference: without that a toggle deletes or leaks 600 GB) or a larger weights.size.
            why = _pvc_change(m, current)
            if why:
                actions.apply.append(m)
                actions.explanation.append(f"update {k[0]}/{k[1]}: {why}")
        elif k[0] == "Job":
            current_key = (current["metadata"].get("annotations") or {}).get(render.WEIGHTS_KEY_ANNOTATION)
            if current_key != job_key:
                actions.delete.append(k)  # a Job's template is immutable: replace it for the new snapshot
                actions.explanation.append(f"replace Job/{k[1]}: {current_key} -> {job_key}")
            elif weights.retry_job:
                actions.delete.append(k)  # recreated on the next reconcile: a fresh set of attempts
                actions.explanation.append(f"retry Job/{k[1]} after its backoff")
        elif not is_subset(m, current):
            actions.apply.append(m)
            actions.explanation.append(f"update {k[0]}/{k[1]} (drifted from the plan)")

    for k in observed.children:
        if k in desired_keys or k[0] == "PersistentVolumeClaim":
            continue
        if k in (workload_key, other_key) and not weights.ready:
            continue  # keep serving the previous snapshot while a new revision downloads
        if k[0] == "Job" and weights.ready and old_status.get("weights", {}).get("completedKey") != key:
            continue  # delete the finished Job only once its completion is recorded in status
        if k[0] == "Job" and weights.reason in ("VolumeNotBound", "RevisionUnresolved"):
            continue
        actions.delete.append(k)
        actions.explanation.append(f"delete {k[0]}/{k[1]} (no longer wanted)")

    if not weights.ready:
        actions.requeue_after = FETCH_REQUEUE_SECONDS  # progress, retries on time, the volume re-checked
    return _status(body, spec, p, observed, weights, actions, workload_key, switching, replicas, now)


def _gateway_ready(observed: Observed, name: str) -> tuple[int, int]:
    """(ready, desired) pods of the gateway Deployment observed on the server."""
    dep = observed.children.get(("Deployment", gateway.names(name)["gateway"]))
    if dep is None:
        return 0, 0
    st = dep.get("status") or {}
    return int(st.get("readyReplicas") or 0), int((dep.get("spec") or {}).get("replicas") or 0)


def _gateway_decision(observed: Observed, spec: KimiDeploymentSpec, name: str, service: str) -> gateway.ServiceDecision:
    ready, _ = _gateway_ready(observed, name)
    current = gateway.observed_target(observed.children.get(("Service", service)), render.gateway_selector(name))
    return gateway.service_target(spec.gateway_enabled(), ready, current)


def ready_leaders(pods: list[Manifest]) -> int:
    """Serving pods (single-node pods, LWS leaders) that are Ready: the workers the gateway's discovery admits."""
    count = 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (meta.get("labels") or {}).get(render.COMPONENT_LABEL) != "server" or meta.get("deletionTimestamp"):
            continue
        st = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        if ready and st.get("phase") == "Running" and st.get("podIP"):
            count += 1
    return count


def gateway_status(observed: Observed, spec: KimiDeploymentSpec, name: str, service: str) -> dict[str, Any]:
    """status.gateway: does a gateway serve the Service, how many of its pods are ready, how many workers."""
    decision = _gateway_decision(observed, spec, name, service)
    current = gateway.observed_target(observed.children.get(("Service", service)), render.gateway_selector(name))
    serving = current == "gateway" and decision.target == "gateway"
    if not spec.gateway_enabled() and not decision.keep_gateway:
        return {"enabled": False, "serving": False, "summary": "off"}
    ready, desired = _gateway_ready(observed, name)
    workers = ready_leaders(observed.pods)
    state = spec.gateway.policy if serving else ("starting" if spec.gateway_enabled() else "stopping")
    return {
        "enabled": spec.gateway_enabled(),
        "serving": serving,
        "policy": spec.gateway.policy,
        "ready": f"{ready}/{desired or spec.gateway.replicas}",
        "workers": workers,
        "summary": f"{state} {ready}/{desired or spec.gateway.replicas}, {workers} worker{'s' * (workers != 1)}",
    }


def _status(
    body: dict[str, Any],
    spec: KimiDeploymentSpec,
    p: Plan,
    observed: Observed,
    weights: _Weights,
    actions: Actions,
    workload_key: ChildKey,
    switching: bool,
    replicas: int,
    now: str,
) -> Actions:
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation", 0)
    old_weights = (body.get("status") or {}).get("weights") or {}
    names = render.names(name, spec)
    dep = observed.children.get(workload_key)
    dep_status = (dep or {}).get("status") or {}
    desired = replicas
    current = int(dep_status.get("replicas") or 0)
    ready = int(dep_status.get("readyReplicas") or 0)
    updated = int(dep_status.get("updatedReplicas") or 0)
    dep_changing = any(_key(m) == workload_key for m in actions.apply)
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

    weights_cond = _condition("WeightsReady", weights.ready, weights.reason, weights.message, generation)
    if ready > 0:
        available = _condition("Available", True, "MinimumReplicasAvailable", f"{ready} replica(s) serve", generation)
    elif desired == 0:
        available = _condition("Available", False, "ScaledToZero", "replicas is 0", generation)
    else:
        available = _condition("Available", False, "NoReplicaReady", "no replica is serving yet", generation)

    unschedulable = _unschedulable(observed.pods)
    failing = failing_pod(observed.pods) or (None if weights.ready else failing_pod(observed.fetch_pods))
    if observed.write_failures:
        reason, msg = (
            "ApplyFailed",
            "the API server refused: "
            + "; ".join(observed.write_failures)
            + " (fix the spec; the operator retries with backoff)",
        )
    elif failing is not None and not rolled_out:
        reason, msg = failing[0], failing[1] + " (the pod will not recover by itself)"
    elif not weights.ready and weights.reason in ("VolumeNotBound", "RevisionUnresolved"):
        reason, msg = weights.reason, weights.message
    elif not weights.ready:
        reason, msg = (
            ("FetchFailed", weights.message)
            if weights.reason == "FetchFailed"
            else ("DownloadingWeights", weights.message)
        )
    elif rolled_out:
        reason, msg = ("Ready", f"{ready}/{desired} replicas ready") if desired else ("ScaledToZero", "replicas is 0")
    elif switching:
        reason, msg = (
            "SwitchingTopology",
            (
                f"moving to {p.summary}: the previous workload is removed and its pods drain before the new one "
                "requests GPUs"
            ),
        )
    elif unschedulable:
        reason, msg = "Unschedulable", f"serving pods cannot be scheduled: {unschedulable}"
    elif updated < desired or dep_changing or not dep_current:
        reason, msg = "RollingOut", f"{updated}/{desired} replicas run the current spec, {ready} ready"
    else:
        reason, msg = (
            "Loading",
            (
                f"{ready}/{desired} replicas ready; the rest are loading weights (startup budget "
                f"{p.startup_budget_seconds // 60} min)"
            ),
        )
    done = reason in ("Ready", "ScaledToZero")
    progressing = _condition(
        "Progressing",
        not done
        and reason not in ("FetchFailed", "VolumeNotBound", "RevisionUnresolved", "ApplyFailed")
        and reason not in FAILING_CONTAINER_REASONS,
        "Complete" if done else reason,
        msg,
        generation,
    )
    ready_cond = _condition("Ready", done, reason, msg, generation)

    key = render.weights_key(p)
    resolved = bool(COMMIT_RE.match(p.revision))
    weights_status: dict[str, Any] = {
        "claimName": names.pvc,
        "path": sglang.snapshot_path(p.repo, p.revision) if resolved else None,
        "progress": weights.progress,
        "bytesDone": None,
        "bytesTotal": None,
        "filesDone": None,
        "filesTotal": None,
        "bytesPerSecond": None,
        "etaSeconds": None,
        "message": weights.message,
        "attempts": old_weights.get("attempts"),
        **weights.detail,
    }
    if weights.ready:
        known = old_weights.get("completedKey") == key and old_weights.get("completedAt")
        weights_status["completedAt"] = old_weights["completedAt"] if known else now
        weights_status["completedKey"] = key
    computed: dict[str, Any] = {
        "replicas": current,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "desiredReplicas": desired,
        "ready": f"{ready}/{desired}",
        "selector": render.selector_string(name),
        "endpoint": f"http://{names.service}.{namespace}.svc:{spec.service.port}/v1",
        "model": {
            "repo": p.repo,
            "servedModelName": p.served_model_name,
            "revision": spec.model.revision,
            "resolvedRevision": p.revision if resolved else None,
            "draftRepo": spec.engine.speculative.draft_repo if spec.engine.speculative is not None else None,
            "draftResolvedRevision": p.draft_commit or None,
        },
        "weights": weights_status,
        "plan": _plan_status(p),
        "gateway": gateway_status(observed, spec, name, names.service),
    }
    conditions = [weights_cond, available, progressing, ready_cond]
    if spec.autoscaling.enabled:
        conditions.append(_scaling_condition((body.get("status") or {}).get("autoscaler") or {}, generation))
    return _finish(body, computed, conditions, now, actions)


def _scaling_condition(scaler: dict[str, Any], generation: int) -> dict[str, Any]:
    """ScalingActive (as the HPA names it): can the autoscaler read the load it scales on?"""
    decision = str(scaler.get("lastDecision") or "")
    reason = decision.split(":", 1)[0] or "Starting"
    if reason in ("MetricsUnavailable", "NoReadyReplicas"):
        return _condition("ScalingActive", False, reason, decision, generation)
    if not decision:
        return _condition("ScalingActive", None, "Starting", "no autoscaler decision yet", generation)
    return _condition("ScalingActive", True, "QueueDepthRead", decision, generation)
