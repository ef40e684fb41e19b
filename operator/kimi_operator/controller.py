"""Glue between the API (kube.py) and the decision (reconcile.py), plus a de-duplicating work queue.

Every trigger - a KimiDeployment event, a child's event, the periodic resync - only enqueues the
KimiDeployment's key; workers reconcile each key with the latest state from the API server. One key is never
reconciled by two workers at once, and a burst of events for one key collapses into one reconcile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from kimi_operator import catalog, metrics, quantity, reconcile, render
from kimi_operator import kube as kube_mod
from kimi_operator.api import resource
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.api.resource import KimiDeployment
from kimi_operator.config import OperatorConfig
from kimi_operator.engine import sglang_startup
from kimi_operator.hub import Resolver
from kimi_operator.kube import Conflict, Forbidden, Kube, KubeError, NotFound, NotLeader
from kimi_operator.timeutil import now_rfc3339, parse_rfc3339

Manifest = dict[str, Any]

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)


def _volume_problem(kube: Kube, namespace: str, pvc: Manifest | None, grace: int) -> str:
    """Why the weights PVC has not bound, once it has been Pending for `grace` seconds (from its events)."""
    if pvc is None or (pvc.get("status") or {}).get("phase") != "Pending":
        return ""
    created = parse_rfc3339(pvc["metadata"].get("creationTimestamp", ""))
    age = time.time() - created if created else 0.0
    if age < grace:
        return ""
    name = pvc["metadata"]["name"]
    events = sorted(
        kube.events_for(namespace, "PersistentVolumeClaim", name), key=lambda e: e.get("lastTimestamp") or ""
    )
    why = events[-1].get("message", "") if events else ""
    mode = ",".join(pvc.get("spec", {}).get("accessModes") or [])
    sc = pvc.get("spec", {}).get("storageClassName") or "(cluster default)"
    return (
        f"PersistentVolumeClaim {name} is still Pending after {int(age)}s (storageClassName {sc}, access mode "
        f"{mode}): {why or 'no PersistentVolume matches and no provisioner acted'}; check that the StorageClass "
        "exists and supports this access mode (ReadWriteMany needs a shared filesystem), or set "
        "spec.weights.existingClaimName"
    )


def _completed_by_others(kube: Kube, namespace: str, name: str, claim: str, uid: str | None) -> frozenset[str]:
    """repo@commit keys other KimiDeployments in the namespace completed on the same volume: the same claim name
    and, where they recorded it, the same claim UID (a namesake of a deleted claim is another volume)."""
    if uid is None:
        return frozenset()
    return frozenset(
        key
        for other, other_claim, other_uid, key in kube.weights_completions(namespace)
        if other != name and other_claim == claim and other_uid in (None, uid) and key
    )


NODE_SIZE_TTL_SECONDS = 300.0
_node_sizes: dict[str, tuple[float, tuple[int, int] | None]] = {}


def _smallest_node(kube: Kube, spec: KimiDeploymentSpec) -> tuple[int, int] | None:
    """(millicores, memory bytes) allocatable on the smallest node the spec's engine pods can land on, or None
    (no such node, or the operator may not list nodes). Cached per selector for 5 min."""
    acc = catalog.ACCELERATORS.get(spec.topology.accelerator)
    if acc is None:
        return None
    labels = {acc.product_label_key: acc.product_label, **spec.topology.node_selector}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    now = time.monotonic()
    cached = _node_sizes.get(selector)
    if cached is not None and now - cached[0] < NODE_SIZE_TTL_SECONDS:
        return cached[1]
    size: tuple[int, int] | None = None
    try:
        sizes = []
        for node in kube.list_nodes(selector):
            alloc = (node.get("status") or {}).get("allocatable") or {}
            try:
                sizes.append((int(quantity.parse(alloc["cpu"]) * 1000), int(quantity.parse(alloc["memory"]))))
            except (KeyError, ValueError):
                continue
        size = (min(c for c, _ in sizes), min(m for _, m in sizes)) if sizes else None
    except (Forbidden, NotFound):
        pass  # the operator may not list nodes (the namespaced chart) or the API is not served: unknown
    _node_sizes[selector] = (now, size)
    return size


FETCH_LOG_INTERVAL_SECONDS = reconcile.FETCH_REQUEUE_SECONDS
FETCH_CONTAINER = "fetch"
FETCH_LOG_LINES = 40  # a progress line every 10 s; the rest is the fetcher's own log (retries, warnings)
FETCH_LOG_BYTES = 64 << 10
_fetch_logs: dict[Key, tuple[float, str, str]] = {}  # KimiDeployment -> (read at, pod uid, tail)


def _fetch_log_tails(kube: Kube, namespace: str, name: str, fetch_pods: list[Manifest]) -> dict[str, str]:
    """The log tail of the running fetch pod (pods/log), where the fetcher prints its progress lines.

    Read only while a fetch pod runs, at most once per FETCH_LOG_INTERVAL_SECONDS per KimiDeployment (a new pod is
    read at once). A node that serves no logs (or a pod that just went away) gives an empty tail: no progress this
    time, never a failed reconcile."""
    key = (namespace, name)
    running = [p for p in fetch_pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        _fetch_logs.pop(key, None)
        return {}
    pod = max(running, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
    pod_name, uid = pod["metadata"]["name"], str(pod["metadata"].get("uid") or "")
    now = time.monotonic()
    cached = _fetch_logs.get(key)
    if cached is not None and cached[1] == uid and now - cached[0] < FETCH_LOG_INTERVAL_SECONDS:
        return {pod_name: cached[2]}
    try:
        tail = kube.pod_log_tail(
            namespace, pod_name, FETCH_CONTAINER, lines=FETCH_LOG_LINES, limit_bytes=FETCH_LOG_BYTES
        )
    except KubeError as err:
        log.debug("%s/%s: no log from fetch pod %s: %s", namespace, name, pod_name, err)
        tail = ""
    _fetch_logs[key] = (now, uid, tail)
    return {pod_name: tail}


ENGINE_LOG_LINES = 300  # SGLang's startup prints a few hundred lines; the phase is in the last of its markers
ENGINE_LOG_BYTES = 128 << 10
ENGINE_LOG_RETRY_SECONDS = 30.0  # a node that served no log (a simulated node) is asked again this late
# KD -> pod -> (read at, container run, tail or None when the node served no log)
_engine_logs: dict[Key, dict[str, tuple[float, str, str | None]]] = {}


def _engine_log_tails(kube: Kube, namespace: str, name: str, pods: list[Manifest]) -> dict[str, str]:
    """The timestamped log tails of the starting leader pods (pods/log), where the engine prints its startup.

    Read only while a replica starts (never once it is Ready), at most once per startup POLL_SECONDS per pod; a
    node that serves no logs gives an empty tail, asked again after ENGINE_LOG_RETRY_SECONDS."""
    key = (namespace, name)
    starting = reconcile.starting_leaders(pods)
    if not starting:
        _engine_logs.pop(key, None)
        return {}
    cache = _engine_logs.setdefault(key, {})
    for gone in set(cache) - {pod for pod, _ in starting}:
        del cache[gone]
    now = time.monotonic()
    out: dict[str, str] = {}
    for pod, run in starting:
        cached = cache.get(pod)
        if cached is not None and cached[1] == run:
            wait = reconcile.STARTUP_POLL_SECONDS if cached[2] is not None else ENGINE_LOG_RETRY_SECONDS
            if now - cached[0] < wait:
                out[pod] = cached[2] or ""
                continue
        tail: str | None
        try:
            tail = kube.pod_log_tail(
                namespace,
                pod,
                sglang_startup.CONTAINER,
                lines=ENGINE_LOG_LINES,
                limit_bytes=ENGINE_LOG_BYTES,
                timestamps=True,
            )
        except KubeError as err:
            log.debug("%s/%s: no log from engine pod %s: %s", namespace, name, pod, err)
            tail = None  # not the same as an empty log (an engine that has printed nothing yet is read again soon)
        cache[pod] = (now, run, tail)
        out[pod] = tail or ""
    return out


_unreadable_secrets: set[tuple[str, str]] = set()  # (namespace, Secret) the operator may not get: said once


def _api_key_fingerprint(kube: Kube, namespace: str, spec: KimiDeploymentSpec, rotation: bool) -> str | None:
    """The fingerprint of the API key (kube.secret_key_fingerprint), or None: no key, rotation off, the Secret or
    its key missing (the pods then say so: CreateContainerConfigError), or no RBAC to read it (said once)."""
    ref = spec.auth.api_key_secret_ref
    if ref is None or not rotation:
        return None
    try:
        return kube.secret_key_fingerprint(namespace, ref.name, ref.key)
    except Forbidden as err:
        if (namespace, ref.name) not in _unreadable_secrets:
            _unreadable_secrets.add((namespace, ref.name))
            log.warning(
                "%s: cannot read Secret %s (%s): a new API key takes effect only after `kubectl rollout restart`; "
                "grant get on secrets (chart value rbac.readApiKeySecrets) or set KIMI_API_KEY_ROTATION=false",
                namespace,
                ref.name,
                err.server_message,
            )
        return None


def observe(
    kube: Kube, resolver: Resolver, kd: KimiDeployment, volume_grace: int = 30, api_key_rotation: bool = True
) -> reconcile.Observed:
    """Everything decide() needs, read from the API server (and the Hub for an unpinned revision)."""
    namespace, name = kd.namespace, kd.name
    children, missing = kube.list_children(namespace, render.children_selector(name))
    pods = kube.list_pods(namespace, render.engine_pods_selector(name))
    fetch_pods = kube.list_pods(namespace, f"{render.INSTANCE_LABEL}={name},{render.COMPONENT_LABEL}=fetch")
    observed = reconcile.Observed(
        kd,
        children,
        pods,
        lws_installed="LeaderWorkerSet" not in missing,
        fetch_pods=fetch_pods,
        fetch_logs=_fetch_log_tails(kube, namespace, name, fetch_pods),
        engine_logs=_engine_log_tails(kube, namespace, name, pods),
    )
    spec = kd.spec
    if spec is None:  # decide() refuses it: nothing else to read
        return observed
    repo, revision = spec.model.repo, spec.model.revision
    commit, error = None, ""
    pinned = reconcile.pinned_commit(kd.status, revision)
    revision_missing = pending = False
    waiter = (namespace, name)  # reconciled again as soon as a background answer arrives
    if not pinned:
        commit, error = resolver.resolve(repo, revision, waiter=waiter)
        revision_missing = commit is None and resolver.missing(repo, revision)
        pending = commit is None and resolver.pending(repo, revision)
    draft = spec.engine.speculative.draft_repo if spec.engine.speculative is not None else None
    draft_commit = None
    if draft and not reconcile.pinned_draft_commit(kd.status, draft):
        draft_commit, draft_error = resolver.resolve(draft, "main", waiter=waiter)
        error = error or draft_error
        pending = pending or (draft_commit is None and resolver.pending(draft, "main"))
    names = render.names(name, spec)
    claim = names.pvc
    pvc, volume_problem = _claim(kube, namespace, spec, claim, children, volume_grace)
    uid = reconcile.claim_uid(pvc)
    done = kd.status.weights.completed_key if kd.status.weights else None
    if pinned and done == f"{repo}@{pinned}":
        completed: frozenset[str] = frozenset()  # already complete here: no need to look at the neighbours
    else:
        completed = _completed_by_others(kube, namespace, name, claim, uid)
    return dataclasses.replace(
        observed,
        resolved_commit=commit,
        draft_commit=draft_commit,
        resolve_error=error,
        revision_missing=revision_missing,
        resolve_pending=pending,
        completed_on_claim=completed,
        volume_problem=volume_problem,
        claim=pvc,
        node_allocatable=_smallest_node(kube, spec),
        api_key_fingerprint=_api_key_fingerprint(kube, namespace, spec, api_key_rotation),
        fetch_create_error=_fetch_create_error(kube, namespace, children.get(("Job", names.job)), fetch_pods),
    )


def _claim(
    kube: Kube,
    namespace: str,
    spec: KimiDeploymentSpec,
    claim: str,
    children: dict[tuple[str, str], Manifest],
    grace: int,
) -> tuple[Manifest | None, str]:
    """The weights PVC (None: absent) and why it cannot be used: a user's existing claim that does not exist (said
    at once), or any claim still Pending after `grace` seconds."""
    if not spec.weights.existing_claim_name:
        pvc = children.get(("PersistentVolumeClaim", claim))
        return pvc, _volume_problem(kube, namespace, pvc, grace)
    pvc = kube.get(kube_mod.CHILD_TYPES["PersistentVolumeClaim"], namespace, claim)
    if pvc is None:
        return None, (
            f"PersistentVolumeClaim {claim} (spec.weights.existingClaimName) does not exist in namespace {namespace}: "
            "create it, or unset existingClaimName and the operator creates one"
        )
    return pvc, _volume_problem(kube, namespace, pvc, grace)


def _fetch_create_error(kube: Kube, namespace: str, job: Manifest | None, fetch_pods: list[Manifest]) -> str:
    """The Job controller's FailedCreate message while the fetch Job has no pod (admission refused it: a missing
    PriorityClass, a ResourceQuota, Pod Security...). Read only in that case: one Event list per reconcile."""
    if job is None or fetch_pods or (job.get("status") or {}).get("active"):
        return ""
    events = [
        e
        for e in kube.events_for(namespace, "Job", job["metadata"]["name"])
        if e.get("reason") == "FailedCreate"
        and (e.get("involvedObject") or {}).get("uid") in (None, job["metadata"].get("uid"))
    ]
    events.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return str(events[-1].get("message") or "") if events else ""


WRITE_RETRY_SECONDS = 10.0
RETRY_MAX_SECONDS = 30.0  # the longest wait between retries of a failing reconcile (the API server down)
# Writes the API server refused, per KimiDeployment: (generation, messages). An edit (new generation) starts fresh.
_write_failures: dict[tuple[str, str], tuple[int, tuple[str, ...]]] = {}
_write_backoff: dict[tuple[str, str], int] = {}


def _write(kube: Kube, namespace: str, actions: reconcile.Actions) -> tuple[str, ...]:
    """Deletes and applies; the ones the API server refuses are returned as "Kind/name: message", the rest raise
    (a transient error: the work queue retries the whole reconcile)."""
    failures: list[str] = []

    def attempt(kind: str, name: str, write: Callable[[], object]) -> None:
        try:
            write()
        except KubeError as err:
            if not err.refused:
                raise
            failures.append(f"{kind}/{name}: {err.server_message}")

    for key in actions.delete:
        attempt(key[0], key[1], lambda key=key: kube.delete(key[0], namespace, key[1]))  # type: ignore[misc]
    for manifest in actions.apply:  # a Job too: decide applies it only while it is absent (its template is immutable)
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        attempt(kind, name, lambda m=manifest: kube.apply(m))  # type: ignore[misc]
    return tuple(failures)


def reconcile_one(
    kube: Kube, config: OperatorConfig, namespace: str, name: str, resolver: Resolver | None = None
) -> reconcile.Actions | None:
    """Read, decide, write. Returns the actions taken (None when the KimiDeployment is gone)."""
    started = time.monotonic()
    body = kube.get_kd(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # owner references let the garbage collector remove the children
    resolver = resolver or Resolver(config.hf_endpoint or None)
    kd = resource.parse(body)
    observed = observe(kube, resolver, kd, config.volume_grace_seconds, config.api_key_rotation)
    generation = kd.generation
    known = _write_failures.get((namespace, name))
    if known is not None and known[0] == generation:
        observed = dataclasses.replace(observed, write_failures=known[1])
    actions = reconcile.decide(observed, config, now_rfc3339())
    failures = _write(kube, namespace, actions)
    if failures != observed.write_failures:
        # New refusals (or none any more): one Warning Event per new one, and the status says what failed.
        for failure in failures:
            if failure not in observed.write_failures:
                kube.event(body, "Warning", "ApplyFailed", failure)
        if failures:
            _write_failures[(namespace, name)] = (generation, failures)
        else:
            _write_failures.pop((namespace, name), None)
        actions = reconcile.decide(dataclasses.replace(observed, write_failures=failures), config, now_rfc3339())
    if failures:
        attempt = _write_backoff.get((namespace, name), 0) + 1
        _write_backoff[(namespace, name)] = attempt
        actions.requeue_after = min(WRITE_RETRY_SECONDS * 2 ** (attempt - 1), 300.0)
        actions.explanation.append(f"{len(failures)} write(s) refused; retry in {actions.requeue_after:.0f}s")
    else:
        _write_backoff.pop((namespace, name), None)
    if actions.status is not None:
        try:
            kube.patch_status(namespace, name, actions.status, resource_version=kd.resource_version)
        except Conflict:
            # Changed (an edit, the autoscaler) or deleted and re-created under the same name since it was read: this
            # status and its Events were worked out from an object that is no more. The change queued it again; it
            # is reconciled from what is there now.
            log.info("%s/%s: changed while it was reconciled; its status is worked out again", namespace, name)
            actions.events.clear()
            return actions
        weights = actions.status.get("weights")
        if isinstance(weights, dict):
            ready = any(
                c.get("type") == "WeightsReady" and c.get("status") == "True"
                for c in actions.status.get("conditions") or []
            )
            metrics.observe_weights(namespace, name, weights, ready)
        for phase, seconds in actions.phase_seconds:
            metrics.STARTUP_PHASE_SECONDS.labels(phase=phase).observe(seconds)
    for ev in actions.events:
        kube.event(body, ev.type, ev.reason, ev.message)
    if actions.explanation:
        log.info("%s/%s: %s", namespace, name, "; ".join(actions.explanation))
    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    return actions


class FairQueue:
    """The keys waiting for a worker, by namespace, served round-robin: a burst of new KimiDeployments in one
    namespace (a GitOps sync of hundreds) never holds up another namespace's keys, and within a namespace they go in
    the order they came (a steady stream of Ready ones, not all at the end)."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, deque[Key]] = {}
        self._turns: deque[str] = deque()  # namespaces that have keys, in the order they are served
        self._items = asyncio.Semaphore(0)
        self._size = 0

    def put_nowait(self, key: Key) -> None:
        keys = self._by_namespace.get(key[0])
        if keys is None:
            keys = self._by_namespace[key[0]] = deque()
            self._turns.append(key[0])
        keys.append(key)
        self._size += 1
        self._items.release()

    async def get(self) -> Key:
        await self._items.acquire()
        namespace = self._turns.popleft()
        keys = self._by_namespace[namespace]
        key = keys.popleft()
        if keys:
            self._turns.append(namespace)  # its next key waits for every other namespace's turn
        else:
            del self._by_namespace[namespace]
        self._size -= 1
        return key

    def qsize(self) -> int:
        return self._size

    def task_done(self) -> None:
        """asyncio.Queue's counterpart: nothing waits on it here."""


class WorkQueue:
    """asyncio work queue keyed by KimiDeployment, with de-duplication and per-key exclusivity."""

    def __init__(self, kube: Kube, config: OperatorConfig) -> None:
        self.kube = kube
        self.config = config
        self.resolver = Resolver(config.hf_endpoint or None, background=True, notify=self._resolved)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.leading = asyncio.Event()  # workers take keys only while set (always, without leader election)
        self.leading.set()
        self.queue = FairQueue()
        self.queued: set[Key] = set()
        self.active: set[Key] = set()
        self.dirty: set[Key] = set()
        self.known: set[Key] = set()
        self.failures: dict[Key, int] = {}  # failed reconciles in a row, per key (any trigger)
        self.retries: dict[Key, int] = {}  # retry timers set in the current run of failures: the backoff exponent
        self.retrying: set[Key] = set()  # a retry timer is set: a failure meanwhile (an event) sets no other
        self.tasks: list[asyncio.Task[None]] = []

    def enqueue(self, key: Key) -> None:
        self.known.add(key)
        metrics.MANAGED.set(len(self.known))
        if key in self.active:
            self.dirty.add(key)
        elif key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)
        metrics.QUEUE_DEPTH.set(self.queue.qsize())

    def forget(self, key: Key) -> None:
        self.known.discard(key)
        _fetch_logs.pop(key, None)
        _engine_logs.pop(key, None)
        metrics.forget_weights(*key)
        self.failures.pop(key, None)
        self.retries.pop(key, None)
        metrics.MANAGED.set(len(self.known))

    def enqueue_all(self, keys: Iterable[Key]) -> None:
        for key in list(keys):
            self.enqueue(key)

    def _resolved(self, revision: tuple[str, str], waiters: set[Hashable]) -> None:
        """The Hub answered for repo@revision (on a resolver thread): the KimiDeployments that asked go again."""
        log.debug("the Hub answered for %s@%s; reconciling %d KimiDeployment(s)", *revision, len(waiters))
        if self.loop is not None and waiters:
            self.loop.call_soon_threadsafe(self._enqueue_known, list(waiters))

    def _enqueue_known(self, waiters: list[Hashable]) -> None:
        self.enqueue_all(w for w in waiters if isinstance(w, tuple) and w in self.known)  # not one deleted since

    async def _later(self, key: Key, delay: float, retry: bool = False) -> None:
        await asyncio.sleep(delay)
        if retry:
            self.retrying.discard(key)
        self.enqueue(key)

    def _schedule(self, key: Key, delay: float, retry: bool = False) -> None:
        """Enqueue `key` again after `delay` seconds (finished timers are dropped from the task list)."""
        self.tasks = [t for t in self.tasks if not t.done()]
        self.tasks.append(asyncio.create_task(self._later(key, delay, retry)))

    def _failed(self, key: Key, err: Exception) -> None:
        """One failed reconcile. The first of a run is one line (a traceback only for what is not the API server's
        answer: a bug); the rest are debug. The backoff (1, 2, 4 ... 30 s) grows only with the retries it set
        itself: reconciles that events trigger meanwhile and fail too neither set another timer nor double it."""
        count = self.failures[key] = self.failures.get(key, 0) + 1
        metrics.RECONCILES.labels(result="error").inc()
        api = isinstance(err, KubeError)
        if count == 1:
            log.log(
                logging.WARNING if api else logging.ERROR,
                "reconcile %s/%s failed: %s; retrying with backoff (up to every %.0fs) until it succeeds",
                *key,
                err,
                RETRY_MAX_SECONDS,
                exc_info=not api,
            )
        else:
            log.debug("reconcile %s/%s failed again (%d in a row): %s", *key, count, err)
        if key in self.retrying:
            return
        attempt = self.retries[key] = self.retries.get(key, 0) + 1
        self.retrying.add(key)
        self._schedule(key, min(2.0 ** (attempt - 1), RETRY_MAX_SECONDS), retry=True)

    def _succeeded(self, key: Key) -> None:
        count = self.failures.pop(key, 0)
        self.retries.pop(key, None)
        if count:
            log.info("reconcile %s/%s succeeded again after %d failed attempt(s)", *key, count)
        metrics.RECONCILES.labels(result="ok").inc()

    def lead(self, leading: bool) -> None:
        """Leader election says this replica works (or no longer does); callable from any thread. Keys keep being
        queued while standing by (events, resync), and every known one is reconciled once it leads."""
        if self.loop is None:
            return
        self.loop.call_soon_threadsafe(self._lead, leading)

    def _lead(self, leading: bool) -> None:
        if leading:
            self.leading.set()
            self.enqueue_all(self.known)
        else:
            self.leading.clear()

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            await self.leading.wait()  # standing by: the key waits (still queued) for this replica's next term
            self.queued.discard(key)
            self.active.add(key)
            metrics.QUEUE_DEPTH.set(self.queue.qsize())
            try:
                result = await asyncio.to_thread(reconcile_one, self.kube, self.config, *key, self.resolver)
                if result is not None and result.requeue_after:
                    self._schedule(key, result.requeue_after)
                self._succeeded(key)
                if result is None:
                    self.forget(key)
            except NotLeader:
                log.debug("%s/%s: not the leader any more; the key waits for the next term", *key)
            except Exception as err:
                self._failed(key, err)
            finally:
                self.active.discard(key)
                self.queue.task_done()
                if key in self.dirty:
                    self.dirty.discard(key)
                    self.enqueue(key)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            self.enqueue_all(self.known)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        for _ in range(self.config.workers):
            self.tasks.append(asyncio.create_task(self._worker()))
        self.tasks.append(asyncio.create_task(self._resync()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.resolver.close()
