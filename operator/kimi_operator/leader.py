"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics: one holder at a time, renewed
every `retry` seconds, taken over only once `duration` seconds passed without a renewal, every write to the Lease
conditional on the resourceVersion it was read at (two candidates never both win).

`step` decides (pure, unit-tested); `Elector` runs it against the API server and says whether this process may
write *now*: only while its last successful renewal is younger than `renew_deadline` (< `duration`). A process
frozen (SIGSTOP, a stalled node, a partition) for longer than that stops writing the moment it wakes, before it
even learns whether another took over; the other waits the full `duration` before it takes over, so the two never
write at the same time. The loops (work queue, autoscalers) check it before every write (kube.Kube's guard).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

LEASE_SECONDS = 15  # a holder that has not renewed for this long may be replaced
RENEW_DEADLINE_SECONDS = 10.0  # a holder that could not renew for this long stops writing (< LEASE_SECONDS)
RETRY_SECONDS = 2.0  # how often a holder renews and a candidate looks


@dataclass(frozen=True)
class Step:
    """What to do with the Lease: "create" or "update" it to `spec` (conditional on what was read), or "none"."""

    write: str
    spec: dict[str, Any]
    leader: str  # who holds it after this step, if the write succeeds


def _micro(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def step(
    lease: dict[str, Any] | None, me: str, now: float, unchanged_for: float, duration: int = LEASE_SECONDS
) -> Step:
    """The next move of candidate `me` given the Lease as read (None: absent), the wall clock `now` (what goes into
    renewTime) and how long this candidate has seen the Lease's record unchanged, on its own monotonic clock: as in
    client-go, a takeover never compares another machine's clock with ours."""
    stamp = _micro(now)
    spec: dict[str, Any]
    if lease is None:
        spec = {
            "holderIdentity": me,
            "leaseDurationSeconds": duration,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 0,
        }
        return Step("create", spec, me)
    spec = dict(lease.get("spec") or {})
    holder = str(spec.get("holderIdentity") or "")
    if holder == me:
        return Step("update", {**spec, "renewTime": stamp, "leaseDurationSeconds": duration}, me)
    held_for = int(spec.get("leaseDurationSeconds") or duration)
    if holder and unchanged_for < held_for:
        return Step("none", spec, holder)  # another holds it and has renewed it within its lease duration
    taken = {
        **spec,
        "holderIdentity": me,
        "leaseDurationSeconds": duration,
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (1 if holder else 0),
    }
    return Step("update", taken, me)


def record_of(lease: dict[str, Any] | None) -> tuple[str, str]:
    """What changes when a holder renews: (holder, renewTime)."""
    spec = (lease or {}).get("spec") or {}
    return str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")


def released(lease: dict[str, Any], me: str) -> dict[str, Any] | None:
    """The Lease spec that hands it over at once on a graceful exit (client-go's ReleaseOnCancel), or None when
    `me` does not hold it."""
    spec = dict(lease.get("spec") or {})
    if spec.get("holderIdentity") != me:
        return None
    return {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}


class LeaseStore(Protocol):
    """What the Elector needs of the API server (kube.Kube implements it)."""

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        raise NotImplementedError

    def update_lease(self, lease: dict[str, Any], spec: dict[str, Any]) -> None:
        """Replace the spec, conditional on lease's resourceVersion (kube.Conflict if it changed)."""
        raise NotImplementedError


class Elector:
    def __init__(
        self,
        store: LeaseStore,
        namespace: str,
        name: str,
        identity: str,
        *,
        on_started: Callable[[], None] = lambda: None,
        on_stopped: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.namespace, self.name, self.identity = store, namespace, name, identity
        self.on_started, self.on_stopped = on_started, on_stopped
        self._monotonic, self._wall = monotonic, wall
        self._renewed: float | None = None  # monotonic time of the last successful acquire or renewal
        self._record: tuple[str, str] | None = None  # the Lease's (holder, renewTime) as last seen
        self._record_since = 0.0  # monotonic time it was first seen so
        self._was_leading = False
        self.leader = ""  # who held the Lease when it was last read

    def leading(self) -> bool:
        """May this process write now: it holds the Lease and renewed it within the renew deadline."""
        return self._renewed is not None and self._monotonic() - self._renewed < RENEW_DEADLINE_SECONDS

    def try_once(self) -> bool:
        """One look at the Lease (and a write when it is ours to renew or take). Returns leading()."""
        try:
            lease = self.store.get_lease(self.namespace, self.name)
            now = self._monotonic()
            if record_of(lease) != self._record:
                self._record, self._record_since = record_of(lease), now
            move = step(lease, self.identity, self._wall(), now - self._record_since)
            if move.write == "create":
                self.store.create_lease(self.namespace, self.name, move.spec)
            elif move.write == "update" and lease is not None:
                self.store.update_lease(lease, move.spec)
            self.leader = move.leader
            if move.leader == self.identity:
                self._renewed = self._monotonic()
        except Exception as err:  # a conflict (another won), the API server away: not renewed this time
            log.debug("lease %s/%s: %s", self.namespace, self.name, err)
        self._transition()
        return self.leading()

    def _transition(self) -> None:
        now = self.leading()
        if now and not self._was_leading:
            log.info("leader election: %s holds lease %s/%s and works", self.identity, self.namespace, self.name)
            self._was_leading = True
            self.on_started()
        elif not now and self._was_leading:
            log.warning(
                "leader election: %s lost lease %s/%s (not renewed for %.0fs; held by %s): standing by",
                self.identity,
                self.namespace,
                self.name,
                RENEW_DEADLINE_SECONDS,
                self.leader or "nobody",
            )
            self._was_leading = False
            self.on_stopped()

    async def run(self) -> None:
        """Renew or look every RETRY_SECONDS until cancelled; on cancel, hand the Lease over at once."""
        try:
            while True:
                await asyncio.to_thread(self.try_once)
                await asyncio.sleep(RETRY_SECONDS)
        finally:
            await asyncio.to_thread(self.release)

    def release(self) -> None:
        if self._renewed is None:
            return
        self._renewed = None
        try:
            lease = self.store.get_lease(self.namespace, self.name)
            spec = released(lease, self.identity) if lease is not None else None
            if lease is not None and spec is not None:
                self.store.update_lease(lease, spec)
                log.info("leader election: %s released lease %s/%s", self.identity, self.namespace, self.name)
        except Exception as err:
            log.debug("lease %s/%s not released: %s", self.namespace, self.name, err)
        self._transition()
