"""leader.py: client-go's Lease semantics, decided purely, and the Elector's promise that two replicas never write at
the same time - also when the holder freezes (SIGSTOP, a stalled node) and comes back after another took over."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kimi_operator import leader
from kimi_operator.kube import Conflict
from kimi_operator.leader import LEASE_SECONDS, RENEW_DEADLINE_SECONDS, Elector, step


def test_an_absent_lease_is_created_by_the_first_candidate() -> None:
    move = step(None, "a", 1000.0, 0.0)
    assert move.write == "create" and move.leader == "a"
    assert move.spec["holderIdentity"] == "a" and move.spec["leaseDurationSeconds"] == LEASE_SECONDS


def test_the_holder_renews_and_a_candidate_waits_while_the_record_changes() -> None:
    lease = {"spec": {"holderIdentity": "a", "renewTime": "2026-12-03T10:00:00.000000Z", "leaseDurationSeconds": 15}}
    renew = step(lease, "a", 1000.0, 14.0)
    assert renew.write == "update" and renew.spec["renewTime"] != lease["spec"]["renewTime"]
    assert step(lease, "b", 1000.0, 14.9).write == "none", "seen unchanged for less than its duration"


def test_a_candidate_takes_over_a_lease_unrenewed_for_its_duration_on_its_own_clock() -> None:
    """The holder's renewTime is never compared with this machine's clock (a skewed clock cannot steal it)."""
    far_future = {"spec": {"holderIdentity": "a", "renewTime": "2099-01-01T00:00:00.000000Z", "leaseTransitions": 3}}
    move = step(far_future, "b", 1000.0, 15.0)
    assert move.write == "update" and move.leader == "b"
    assert move.spec["leaseTransitions"] == 4 and move.spec["holderIdentity"] == "b"


def test_a_released_lease_is_taken_at_once() -> None:
    lease = {"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    spec = leader.released(lease, "a")
    assert spec is not None and spec["holderIdentity"] == ""
    assert step({"spec": spec}, "b", 1000.0, 0.0).leader == "b"
    assert leader.released(lease, "b") is None, "only the holder releases it"


class Store:
    """The API server's Lease: resourceVersion-conditional writes, as kube.Kube.update_lease."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:  # noqa: ARG002
        if self.down:
            raise ConnectionError("the API server is away")
        return copy.deepcopy(self.lease)

    def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        if self.lease is not None:
            raise Conflict(409, "AlreadyExists", "")
        self._write({"metadata": {"name": name, "namespace": namespace}, "spec": spec})

    def update_lease(self, lease: dict[str, Any], spec: dict[str, Any]) -> None:
        if self.down:
            raise ConnectionError("the API server is away")
        assert self.lease is not None
        if lease["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        self._write({**self.lease, "spec": spec})

    def _write(self, lease: dict[str, Any]) -> None:
        self.version += 1
        lease["metadata"]["resourceVersion"] = str(self.version)
        self.lease = lease


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _pair() -> tuple[Store, Clock, Elector, Clock, Elector]:
    store = Store()
    ca, cb = Clock(), Clock()
    a = Elector(store, "ops", "kimi", "a", monotonic=ca, wall=lambda: 1_800_000_000 + ca.t)
    b = Elector(store, "ops", "kimi", "b", monotonic=cb, wall=lambda: 1_800_000_000 + cb.t)
    return store, ca, a, cb, b


def _advance(seconds: float, *clocks: Clock) -> None:
    for c in clocks:
        c.t += seconds


def test_one_leader_the_other_stands_by_and_takes_over_after_the_lease_duration_when_the_leader_dies() -> None:
    store, ca, a, cb, b = _pair()
    started: list[str] = []
    a.on_started = lambda: started.append("a")
    b.on_started = lambda: started.append("b")
    assert a.try_once() and not b.try_once()
    for _ in range(20):  # both look every 2 s; a renews
        _advance(leader.RETRY_SECONDS, ca, cb)
        assert a.try_once() and not b.try_once()
    # a dies (no more renewals); b takes over once it has seen the record unchanged for the lease duration
    waited = 0.0
    while not b.try_once():
        _advance(leader.RETRY_SECONDS, cb)
        waited += leader.RETRY_SECONDS
        assert waited <= LEASE_SECONDS + leader.RETRY_SECONDS, "failover within the lease duration and one retry"
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    assert started == ["a", "b"]


def test_a_frozen_leader_stops_writing_when_it_wakes_before_it_reads_anything_and_never_overlaps() -> None:
    """The fault run: kopf peering let a frozen replica come back active beside the new one for ~50 s."""
    _, ca, a, cb, b = _pair()
    stopped: list[str] = []
    a.on_stopped = lambda: stopped.append("a")
    assert a.try_once()
    _advance(0.5, ca, cb)
    assert not b.try_once()
    frozen = 60.0  # SIGSTOP: a's monotonic clock runs on, its loop does not
    t = 0.0
    while t < frozen:  # b looks every 2 s while a is frozen
        _advance(leader.RETRY_SECONDS, cb)
        t += leader.RETRY_SECONDS
        if b.try_once():
            assert t >= LEASE_SECONDS, f"b took over after {t}s: a may still have been within its deadline"
            assert t - RENEW_DEADLINE_SECONDS >= LEASE_SECONDS - RENEW_DEADLINE_SECONDS
    assert b.leading()
    _advance(frozen, ca)  # a wakes: before its loop runs again, its writes are already refused
    assert not a.leading(), "a stopped writing the moment it woke (its last renewal is 60 s old)"
    assert not a.try_once(), "and its next look sees b's Lease"
    assert stopped == ["a"] and b.leading()


def test_a_leader_that_cannot_reach_the_api_server_stops_writing_after_the_renew_deadline() -> None:
    store, ca, a, _, _ = _pair()
    assert a.try_once()
    store.down = True
    t = 0.0
    while a.try_once():
        _advance(leader.RETRY_SECONDS, ca)
        t += leader.RETRY_SECONDS
    assert RENEW_DEADLINE_SECONDS - leader.RETRY_SECONDS <= t <= RENEW_DEADLINE_SECONDS + leader.RETRY_SECONDS
    assert RENEW_DEADLINE_SECONDS < LEASE_SECONDS, "it stops before anyone may take over"
    store.down = False
    assert a.try_once(), "nobody took it: renewed again"


def test_a_graceful_exit_hands_the_lease_over_at_once() -> None:
    _, _, a, cb, b = _pair()
    assert a.try_once() and not b.try_once()
    a.release()
    assert not a.leading()
    _advance(leader.RETRY_SECONDS, cb)
    assert b.try_once(), "the next look, not the lease duration"


@pytest.mark.parametrize("writes_first", ["a", "b"])
def test_two_candidates_racing_for_a_free_lease_one_wins(writes_first: str) -> None:
    store, _, a, _, b = _pair()
    first, second = (a, b) if writes_first == "a" else (b, a)
    assert first.try_once()
    assert not second.try_once()
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == first.identity
