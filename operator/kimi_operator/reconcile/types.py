"""What the decision reads (Observed: one KimiDeployment and what the API server holds for it) and returns
(Actions: applies, deletes, a status patch, Events)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kimi_operator.api.resource import KimiDeployment

Manifest = dict[str, Any]
ChildKey = tuple[str, str]  # (kind, name)


def key_of(m: Manifest) -> ChildKey:
    return (m["kind"], m["metadata"]["name"])


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Actions:
    apply: list[Manifest] = field(default_factory=list)
    delete: list[ChildKey] = field(default_factory=list)
    status: dict[str, Any] | None = None  # a JSON merge patch of .status
    events: list[Event] = field(default_factory=list)
    explanation: list[str] = field(default_factory=list)
    requeue_after: float = 0.0  # look again this soon even without an event (download progress, retry backoff)
    phase_seconds: list[tuple[str, float]] = field(default_factory=list)  # startup phases of replicas now Ready

    @property
    def writes(self) -> int:
        return len(self.apply) + len(self.delete) + (self.status is not None) + len(self.events)


@dataclass(frozen=True)
class Observed:
    """What the API server holds for one KimiDeployment: the parsed object, its children, its serving pods."""

    kd: KimiDeployment
    children: dict[ChildKey, Manifest]
    pods: list[Manifest] = field(default_factory=list)
    lws_installed: bool = True
    fetch_pods: list[Manifest] = field(default_factory=list)
    fetch_logs: dict[str, str] = field(default_factory=dict)  # running fetch pod name -> the tail of its log
    engine_logs: dict[str, str] = field(default_factory=dict)  # starting leader pod -> its log tail (timestamped)
    resolved_commit: str | None = None  # the Hub's answer for spec.model.revision (None: unknown)
    draft_commit: str | None = None  # the Hub's answer for the draft model's main branch, when there is one
    resolve_error: str = ""
    revision_missing: bool = False  # the Hub answered that spec.model.revision does not exist (definitive)
    resolve_pending: bool = False  # the Hub is being asked (in the background) and there is no answer yet
    completed_on_claim: frozenset[str] = frozenset()  # repo@commit keys other KimiDeployments completed here
    volume_problem: str = ""  # why the weights PVC is not bound (empty: bound, or not long enough to tell)
    claim: Manifest | None = None  # the weights PVC as read (None: absent); its UID is the volume's identity
    node_allocatable: tuple[int, int] | None = None  # (millicores, bytes) of the smallest matching node, if known
    api_key_fingerprint: str | None = None  # of the API key's current value (None: no key, or not readable)
    write_failures: tuple[str, ...] = ()  # "Kind/name: server message" for writes the API server refused
    fetch_create_error: str = ""  # the Job controller's FailedCreate message while the fetch Job has no pod

    @property
    def body(self) -> dict[str, Any]:
        return self.kd.body
