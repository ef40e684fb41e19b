"""Glue between the API (kube.py) and the decision (reconcile.py), plus a de-duplicating work queue.

Every trigger - a KimiDeployment event, a child's event, the periodic resync - only enqueues the
KimiDeployment's key; workers reconcile each key with the latest state from the API server. One key is never
reconciled by two workers at once, and a burst of events for one key collapses into one reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from kimi_operator import metrics, reconcile, render
from kimi_operator.config import OperatorConfig
from kimi_operator.kube import Kube, KubeError

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def reconcile_one(kube: Kube, config: OperatorConfig, namespace: str, name: str) -> reconcile.Actions | None:
    """Read, decide, write. Returns the actions taken (None when the KimiDeployment is gone)."""
    started = time.monotonic()
    body = kube.get_kd(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # owner references let the garbage collector remove the children
    children, missing = kube.list_children(namespace, render.children_selector(name))
    pods = kube.list_pods(namespace, render.engine_pods_selector(name))
    observed = reconcile.Observed(body, children, pods, lws_installed="LeaderWorkerSet" not in missing)
    actions = reconcile.decide(observed, config, now_rfc3339())
    for key in actions.delete:
        kube.delete(key[0], namespace, key[1])
    for manifest in actions.apply:
        kube.apply(manifest)
    if actions.status is not None:
        kube.patch_status(namespace, name, actions.status)
    for ev in actions.events:
        kube.event(body, ev.type, ev.reason, ev.message)
    if actions.explanation:
        log.info("%s/%s: %s", namespace, name, "; ".join(actions.explanation))
    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    return actions


class WorkQueue:
    """asyncio work queue keyed by KimiDeployment, with de-duplication and per-key exclusivity."""

    def __init__(self, kube: Kube, config: OperatorConfig) -> None:
        self.kube = kube
        self.config = config
        self.queue: asyncio.Queue[Key] = asyncio.Queue()
        self.queued: set[Key] = set()
        self.active: set[Key] = set()
        self.dirty: set[Key] = set()
        self.known: set[Key] = set()
        self.failures: dict[Key, int] = {}
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
        self.failures.pop(key, None)
        metrics.MANAGED.set(len(self.known))

    def enqueue_all(self, keys: Iterable[Key]) -> None:
        for key in list(keys):
            self.enqueue(key)

    async def _later(self, key: Key, delay: float) -> None:
        await asyncio.sleep(delay)
        self.enqueue(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.queued.discard(key)
            self.active.add(key)
            metrics.QUEUE_DEPTH.set(self.queue.qsize())
            try:
                result = await asyncio.to_thread(reconcile_one, self.kube, self.config, *key)
                if result is None:
                    self.forget(key)
                self.failures.pop(key, None)
                metrics.RECONCILES.labels(result="ok").inc()
            except Exception as err:
                count = self.failures.get(key, 0) + 1
                self.failures[key] = count
                delay = min(2.0**count, 300.0)
                metrics.RECONCILES.labels(result="error").inc()
                level = logging.WARNING if isinstance(err, KubeError) else logging.ERROR
                log.log(
                    level,
                    "reconcile %s/%s failed (retry in %.0fs): %s",
                    *key,
                    delay,
                    err,
                    exc_info=level == logging.ERROR,
                )
                self.tasks = [t for t in self.tasks if not t.done()]
                self.tasks.append(asyncio.create_task(self._later(key, delay)))
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
        for _ in range(self.config.workers):
            self.tasks.append(asyncio.create_task(self._worker()))
        self.tasks.append(asyncio.create_task(self._resync()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
