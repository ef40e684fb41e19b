"""The controller's reads that decide() does not see: how often the fetch pod's log is read."""

from __future__ import annotations

from typing import Any, cast

import pytest

from kimi_operator import controller
from kimi_operator.kube import Kube, KubeError, kube_error


class FakeKube:
    def __init__(self) -> None:
        self.reads: list[tuple[str, str, str, int, int]] = []
        self.fail: KubeError | None = None

    def pod_log_tail(self, namespace: str, name: str, container: str, *, lines: int, limit_bytes: int) -> str:
        self.reads.append((namespace, name, container, lines, limit_bytes))
        if self.fail is not None:
            raise self.fail
        return f"log of {name} #{len(self.reads)}"


def tails(kube: FakeKube, name: str, pods: list[dict[str, Any]]) -> dict[str, str]:
    return controller._fetch_log_tails(cast(Kube, kube), "ns", name, pods)


def pod(name: str, phase: str, uid: str = "", created: str = "2026-11-23T12:00:00Z") -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid or name, "creationTimestamp": created}, "status": {"phase": phase}}


@pytest.fixture(autouse=True)
def clean_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller, "_fetch_logs", {})


def test_the_fetch_log_is_read_only_while_a_fetch_pod_runs_and_at_most_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube()
    clock = [1000.0]
    monkeypatch.setattr("kimi_operator.controller.time.monotonic", lambda: clock[0])
    assert tails(kube, "kd", []) == {}
    assert tails(kube, "kd", [pod("kd-fetch-a", "Pending")]) == {}
    assert kube.reads == []

    running = [pod("kd-fetch-a", "Running")]
    assert tails(kube, "kd", running) == {"kd-fetch-a": "log of kd-fetch-a #1"}
    assert kube.reads == [("ns", "kd-fetch-a", "fetch", controller.FETCH_LOG_LINES, controller.FETCH_LOG_BYTES)]
    clock[0] += controller.FETCH_LOG_INTERVAL_SECONDS - 1
    assert tails(kube, "kd", running) == {"kd-fetch-a": "log of kd-fetch-a #1"}
    assert len(kube.reads) == 1, "within the interval the last tail is reused"
    clock[0] += 1
    assert tails(kube, "kd", running)["kd-fetch-a"].endswith("#2")

    # the pod was killed and the Job made another: read the new one at once
    again = [pod("kd-fetch-a", "Failed"), pod("kd-fetch-b", "Running", created="2026-11-23T12:05:00Z")]
    assert tails(kube, "kd", again) == {"kd-fetch-b": "log of kd-fetch-b #3"}
    # another KimiDeployment has its own interval
    assert tails(kube, "other", [pod("other-fetch-c", "Running")])
    assert len(kube.reads) == 4


def test_a_node_without_logs_gives_no_progress_not_a_failed_reconcile() -> None:
    kube = FakeKube()
    kube.fail = kube_error(500, "Internal Server Error", "dial tcp 127.0.0.1:10250: connect: connection refused")
    assert tails(kube, "kd", [pod("kd-fetch-a", "Running")]) == {"kd-fetch-a": ""}
    assert tails(kube, "kd", [pod("kd-fetch-a", "Running")]) == {"kd-fetch-a": ""}
    assert len(kube.reads) == 1, "a failed read counts against the interval too"


class Refs:
    """Answers get (PVCs by name) and events_for (a Job's events) like the API server would."""

    def __init__(self, pvcs: dict[str, dict[str, Any]], events: list[dict[str, Any]]) -> None:
        self.pvcs, self.events, self.event_reads = pvcs, events, 0

    def get(self, rtype: Any, namespace: str, name: str) -> dict[str, Any] | None:
        assert rtype.kind == "PersistentVolumeClaim" and namespace == "ns"
        return self.pvcs.get(name)

    def events_for(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        assert (namespace, kind, name) == ("ns", "Job", "kd-fetch")
        self.event_reads += 1
        return self.events


def test_an_existing_claim_that_is_missing_is_a_problem_at_once_and_a_bound_one_is_none() -> None:
    from kimi_operator.api.models import KimiDeploymentSpec

    spec = KimiDeploymentSpec.model_validate({"weights": {"existingClaimName": "mine"}})
    pvc, missing = controller._claim(cast(Kube, Refs({}, [])), "ns", spec, "mine", {}, 30)
    assert pvc is None and "mine (spec.weights.existingClaimName) does not exist in namespace ns" in missing
    bound = {"metadata": {"name": "mine", "uid": "u1"}, "status": {"phase": "Bound"}}
    assert controller._claim(cast(Kube, Refs({"mine": bound}, [])), "ns", spec, "mine", {}, 30) == (bound, "")


def test_the_fetch_jobs_failed_create_event_is_read_only_while_it_has_no_pod() -> None:
    job = {"metadata": {"name": "kd-fetch", "uid": "j1"}, "status": {}}
    events = [
        {"reason": "FailedCreate", "message": "old", "lastTimestamp": "2026-11-23T12:00:00Z"},
        {"reason": "SuccessfulCreate", "message": "created", "lastTimestamp": "2026-11-23T12:00:30Z"},
        {"reason": "FailedCreate", "message": "no PriorityClass", "lastTimestamp": "2026-11-23T12:01:00Z"},
    ]
    kube = Refs({}, events)
    assert controller._fetch_create_error(cast(Kube, kube), "ns", job, []) == "no PriorityClass"
    assert controller._fetch_create_error(cast(Kube, kube), "ns", job, [pod("kd-fetch-a", "Running")]) == ""
    assert controller._fetch_create_error(cast(Kube, kube), "ns", None, []) == ""
    assert kube.event_reads == 1, "events are listed only for a Job without pods"
