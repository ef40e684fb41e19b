"""Thin kopf handlers: every event only enqueues the owning KimiDeployment; controller.py does the work.

No handler here is change-detecting (on.create/update/delete), so kopf keeps no progress annotations and adds no
finalizer: deleting a KimiDeployment never waits on the operator, and an idle KimiDeployment costs no writes.
The handlers are async on purpose: they touch the asyncio work queue, which is not thread-safe (kopf runs sync
handlers in a thread pool), and they do no I/O.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

import kopf
from prometheus_client import start_http_server

from kimi_operator import render
from kimi_operator.api.models import GROUP, KIND, PLURAL, VERSION
from kimi_operator.autoscaler.runner import Autoscalers
from kimi_operator.cache import Cache
from kimi_operator.config import OperatorConfig
from kimi_operator.controller import WorkQueue
from kimi_operator.kube import CachedKube, Kube, load_client
from kimi_operator.leader import Elector

MANAGED = {render.MANAGED_BY_LABEL: render.MANAGED_BY}


class WatchBackoffs:
    """kopf's delays between attempts of one failed API request (its watches, above all): 0.5 s, 1 s, then every
    2 s for as long as it takes. kopf's default (1, 1, 2, 3, 5, 8, 13, 21 s, then the watch fails) left the operator
    blind up to 21 s after the API server came back; this resumes a watch within 2 s of it. An iterable, not a
    sequence: a fresh iterator per request, never exhausted."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((0.5, 1.0), itertools.repeat(2.0))


class FirstRetryOnly(logging.Filter):
    """kopf logs every failed attempt of a request as an ERROR ("Request attempt #7 failed; will retry"): during an
    outage, one line every 2 s per watch. The first attempt of each request stays an ERROR line; the rest are
    DEBUG. The outage is also one WARNING per KimiDeployment from the work queue."""

    def filter(self, record: logging.LogRecord) -> bool:
        attempt = re.match(r"Request attempt #(\d+)", record.getMessage())
        if attempt is not None and int(attempt.group(1)) > 1:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


KOPF_CLIENT_LOGGERS = tuple(
    f"kopf._cogs.clients.{m}" for m in ("api", "watching", "scanning", "fetching", "patching", "creating", "events")
)


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    config = OperatorConfig.from_env()
    settings.posting.enabled = False  # our Events are written by kube.py, one per condition transition
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = WatchBackoffs()
    for name in KOPF_CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(FirstRetryOnly())
    if config.metrics_port:
        start_http_server(config.metrics_port)
    api = load_client()
    elector: Elector | None = None
    if config.leader_election_lease:
        elector = Elector(Kube(api), config.leader_election_namespace, config.leader_election_lease, config.identity)
    cache = memo["cache"] = Cache()  # fed by every handler below before it queues the owner
    kube = CachedKube(api, cache, may_write=elector.leading if elector is not None else None)
    queue = WorkQueue(kube, config)
    if elector is not None:
        queue.leading.clear()  # stand by until the Lease is ours
    queue.start()
    memo["queue"] = queue
    memo["autoscalers"] = Autoscalers(kube, elector.leading if elector is not None else lambda: True)
    if elector is not None:
        elector.on_started, elector.on_stopped = (lambda: queue.lead(True)), (lambda: queue.lead(False))
        memo["elector"] = asyncio.create_task(elector.run())
    logger.info(
        "kimi-operator started: %s workers, resync every %ss, %s",
        config.workers,
        config.resync_seconds,
        f"leader election on Lease {config.leader_election_namespace}/{config.leader_election_lease} as "
        f"{config.identity}"
        if elector is not None
        else "no leader election (one replica)",
    )


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    elector: asyncio.Task[None] | None = memo.get("elector")
    if elector is not None:  # hands the Lease over at once: a standby takes over within 2 s
        elector.cancel()
        await asyncio.gather(elector, return_exceptions=True)
    queue: WorkQueue | None = memo.get("queue")
    if queue is not None:
        await queue.stop()
    autoscalers: Autoscalers | None = memo.get("autoscalers")
    if autoscalers is not None:
        await autoscalers.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def kimideployment_event(
    type: str, name: str, namespace: str | None, body: Mapping[str, Any], memo: Any, **_: Any
) -> None:
    queue: WorkQueue = memo["queue"]
    autoscalers: Autoscalers = memo["autoscalers"]
    if namespace is None:
        return
    memo["cache"].event(KIND, type, body)
    key = (namespace, name)
    if type == "DELETED":
        queue.forget(key)
        autoscalers.sync(key, None)
    else:
        queue.enqueue(key)
        autoscalers.sync(key, dict(body))


def _owner(labels: Mapping[str, str], namespace: str | None, memo: Any) -> None:
    owner = labels.get(render.INSTANCE_LABEL)
    if owner and namespace:
        queue: WorkQueue = memo["queue"]
        queue.enqueue((namespace, owner))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("", "v1", "services", labels=MANAGED)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=MANAGED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
@kopf.on.event("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=MANAGED)
@kopf.on.event("", "v1", "serviceaccounts", labels=MANAGED)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", labels=MANAGED)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings", labels=MANAGED)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)  # engine, fetch and gateway pods
async def child_event(
    type: str,
    labels: Mapping[str, str],
    namespace: str | None,
    body: Mapping[str, Any],
    resource: kopf.Resource,
    memo: Any,
    **_: Any,
) -> None:
    if resource.kind:  # the cache first: the reconcile this queues reads at least this event
        memo["cache"].event(resource.kind, type, body)
    _owner(labels, namespace, memo)
