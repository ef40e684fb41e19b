"""controller.reconcile_one and the WorkQueue on the in-memory API server (tests/unit/fakekube.py): the read, decide,
write loop, what a refused write becomes, and the queue's de-duplication, exclusivity and backoff. Milliseconds."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from kimi_operator import controller, reconcile
from kimi_operator import kube as kube_mod
from kimi_operator.config import OperatorConfig
from kimi_operator.hub import Resolver
from kimi_operator.kube import Kube, Unavailable
from tests.unit.fakekube import FakeHub, FakeKube, kimideployment, status_error

CONFIG = OperatorConfig(operator_image="op:test")
COMMIT = "a" * 40
REFUSAL = 'Deployment.apps "kd" is invalid: spec.template.spec.containers[0].image: Required value'

pytestmark = pytest.mark.usefixtures("fresh_controller")


def _kube() -> FakeKube:
    kube = FakeKube()
    kube.put(kimideployment("kd", {}))
    return kube


def _reconcile(kube: FakeKube) -> reconcile.Actions:
    actions = controller.reconcile_one(kube, CONFIG, "ns", "kd", FakeHub({"main": COMMIT}))
    assert actions is not None
    return actions


def _condition(kube: FakeKube, ctype: str) -> dict[str, Any]:
    return next(c for c in kube.obj("KimiDeployment", "kd")["status"]["conditions"] if c["type"] == ctype)


def _job_completes(kube: FakeKube) -> None:
    kube.set_status("Job", "kd-fetch", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})


def test_a_new_kimideployment_downloads_then_serves_and_then_writes_nothing() -> None:
    kube = _kube()
    _reconcile(kube)
    assert sorted(kube.writes_of("apply")) == [
        ("Job", "kd-fetch"),
        ("PersistentVolumeClaim", "kd-weights"),
        ("Service", "kd"),
        ("Service", "kd-headless"),
    ]
    job = kube.obj("Job", "kd-fetch")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--revision") + 1] == COMMIT
    assert ("Deployment", "kd") not in {(k, n) for k, _, n in kube.objects}, "no GPUs before the weights are there"
    assert _condition(kube, "WeightsReady")["reason"] == "Downloading"
    assert ("Normal", "Downloading") in {(t, r) for t, r, _ in kube.recorded_events("kd")}

    writes = len(kube.writes)
    _reconcile(kube)
    assert len(kube.writes) == writes, "nothing changed: not one API write"

    _job_completes(kube)
    _reconcile(kube)
    assert kube.writes_of("apply")[-1] == ("Deployment", "kd")
    dep = kube.obj("Deployment", "kd")
    assert dep["metadata"]["generation"] == 1 and dep["spec"]["replicas"] == 1
    assert dep["spec"]["revisionHistoryLimit"] == 10, "what the server defaulted stays"
    assert kube.obj("KimiDeployment", "kd")["status"]["weights"]["completedKey"] == f"moonshotai/Kimi-K2.5@{COMMIT}"

    _reconcile(kube)
    assert kube.writes_of("delete") == [("Job", "kd-fetch")], "the Job goes once its completion is recorded"
    assert ("Job", "ns", "kd-fetch") not in kube.objects


def test_a_refused_write_is_a_warning_and_applyfailed_then_a_retry_succeeds() -> None:
    kube = _kube()
    _reconcile(kube)
    _job_completes(kube)
    kube.fail("apply", "Deployment", "kd", status_error(422, REFUSAL), times=2)

    first = _reconcile(kube)
    ready = _condition(kube, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert REFUSAL in ready["message"], "the server's own message, as kubectl prints it"
    assert _condition(kube, "Progressing")["status"] == "False"
    warnings = [(r, m) for t, r, m in kube.recorded_events("kd") if t == "Warning"]
    assert warnings[0] == ("ApplyFailed", f"Deployment/kd: {REFUSAL}"), "one per refused write, naming it"
    assert warnings[1][1].startswith(f"Ready=False: the API server refused: Deployment/kd: {REFUSAL}")
    assert len(warnings) == 2, "and the Ready transition's"
    assert first.requeue_after == controller.WRITE_RETRY_SECONDS
    assert "1 write(s) refused" in first.explanation[-1]
    assert ("Service", "ns", "kd") in kube.objects, "the writes that were accepted stand"

    second = _reconcile(kube)
    assert second.requeue_after == 2 * controller.WRITE_RETRY_SECONDS, "refused again: the retry backs off"
    assert len([e for e in kube.recorded_events("kd") if e[1] == "ApplyFailed"]) == 2, "no further Warning"

    third = _reconcile(kube)  # the refusal is over (a webhook fixed, a quota raised...)
    assert ("Deployment", "ns", "kd") in kube.objects
    assert _condition(kube, "Ready")["reason"] != "ApplyFailed"
    assert third.requeue_after != 2 * controller.WRITE_RETRY_SECONDS
    assert controller._write_backoff == {} and controller._write_failures == {}


def test_a_new_generation_forgets_the_old_refusal() -> None:
    kube = _kube()
    _reconcile(kube)
    _job_completes(kube)
    kube.fail("apply", "Deployment", "kd", status_error(422, REFUSAL), times=None)
    _reconcile(kube)
    assert ("ns", "kd") in controller._write_failures
    kube.faults.clear()
    kube.update("KimiDeployment", "kd", lambda o: o["spec"].update(replicas=1))  # an edit: generation 2
    assert kube.obj("KimiDeployment", "kd")["metadata"]["generation"] == 2
    _reconcile(kube)
    assert _condition(kube, "Ready")["reason"] != "ApplyFailed"
    assert ("Deployment", "ns", "kd") in kube.objects


def test_a_transient_error_fails_the_reconcile_for_the_queue_to_retry() -> None:
    kube = _kube()
    kube.fail("apply", "Service", "kd", status_error(503, "etcdserver: leader changed"))
    with pytest.raises(Unavailable):
        _reconcile(kube)
    assert not any(e[1] == "ApplyFailed" for e in kube.recorded_events("kd"))
    _reconcile(kube)
    assert ("Service", "ns", "kd") in kube.objects


def test_a_status_worked_out_for_a_deleted_kimideployment_is_never_written_onto_its_namesake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CI saw it on the real node: a reconcile of the old object (its status records the completed download) was in
    flight while the test deleted and re-created the KimiDeployment; its status patch landed on the new one, which
    then trusted the old download record and never fetched. The patch now carries the resourceVersion it was worked
    out from, and the API server refuses it for any other version of the object."""
    kube = _kube()
    _reconcile(kube)
    _job_completes(kube)
    _reconcile(kube)
    _reconcile(kube)  # the Job goes once the completion is recorded
    assert kube.obj("KimiDeployment", "kd")["status"]["weights"]["completedKey"]
    old_uid = kube.obj("KimiDeployment", "kd")["metadata"]["uid"]
    real_observe = controller.observe

    def replaced_meanwhile(*args: Any, **kwargs: Any) -> reconcile.Observed:
        observed = real_observe(*args, **kwargs)
        del kube.objects[("KimiDeployment", "ns", "kd")]  # kubectl delete, then apply: another object
        kube.put(kimideployment("kd", {}))
        return observed

    monkeypatch.setattr(controller, "observe", replaced_meanwhile)
    events = len(kube.recorded_events("kd"))
    _reconcile(kube)
    new = kube.obj("KimiDeployment", "kd")
    assert new["metadata"]["uid"] != old_uid
    assert "status" not in new or not new["status"].get("weights"), new.get("status")
    assert len(kube.recorded_events("kd")) == events, "no Events for the old object's decision"

    monkeypatch.setattr(controller, "observe", real_observe)
    _reconcile(kube)
    assert _condition(kube, "WeightsReady")["reason"] == "Downloading", "the new object checks its volume again"
    assert ("Job", "ns", "kd-fetch") in kube.objects


def test_a_gone_kimideployment_is_none_and_writes_nothing() -> None:
    kube = FakeKube()
    assert controller.reconcile_one(kube, CONFIG, "ns", "kd", FakeHub()) is None
    assert kube.writes == []


# ---------------------------------------------------------------------------------------------- the work queue
Reconcile = Callable[[Kube, OperatorConfig, str, str, Resolver], "reconcile.Actions | None"]


def _run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


async def _until(predicate: Callable[[], bool], sleep: Callable[[float], Any] = asyncio.sleep) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await sleep(0.001)


def _queue(monkeypatch: pytest.MonkeyPatch, fake: Reconcile, workers: int = 4) -> controller.WorkQueue:
    monkeypatch.setattr(controller, "reconcile_one", fake)
    return controller.WorkQueue(FakeKube(), OperatorConfig(operator_image="op:test", workers=workers))


def test_a_burst_for_one_key_is_one_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def fake(kube: Kube, config: OperatorConfig, ns: str, name: str, resolver: Resolver) -> reconcile.Actions | None:
        calls.append((ns, name))
        return None if name == "gone" else reconcile.Actions()

    queue = _queue(monkeypatch, fake)

    async def test() -> None:
        for _ in range(50):
            queue.enqueue(("ns", "kd"))
        queue.enqueue(("ns", "other"))
        queue.enqueue(("ns", "gone"))
        assert queue.queue.qsize() == 3
        queue.start()
        await _until(lambda: len(calls) == 3 and queue.queue.qsize() == 0 and not queue.active)
        await queue.stop()

    _run(test)
    assert sorted(calls) == [("ns", "gone"), ("ns", "kd"), ("ns", "other")]
    assert queue.known == {("ns", "kd"), ("ns", "other")}, "a KimiDeployment that is gone is forgotten"


def test_a_key_enqueued_while_it_is_reconciled_runs_once_more_after_and_never_twice_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = ("ns", "kd")
    calls: list[tuple[str, str]] = []
    running, most = [0], [0]
    started, release = threading.Event(), threading.Event()
    lock = threading.Lock()

    def fake(kube: Kube, config: OperatorConfig, ns: str, name: str, resolver: Resolver) -> reconcile.Actions | None:
        with lock:
            calls.append((ns, name))
            running[0] += 1
            most[0] = max(most[0], running[0])
        if len(calls) == 1:
            started.set()
            release.wait(5)
        with lock:
            running[0] -= 1
        return reconcile.Actions()

    queue = _queue(monkeypatch, fake)

    async def test() -> None:
        queue.start()
        queue.enqueue(key)
        await _until(started.is_set)
        for _ in range(5):  # events while the first reconcile still runs
            queue.enqueue(key)
        assert key in queue.dirty and queue.queue.qsize() == 0, "held back, not handed to another worker"
        release.set()
        await _until(lambda: len(calls) == 2 and not queue.active)
        await asyncio.sleep(0.01)
        await queue.stop()

    _run(test)
    assert calls == [key, key], "the five events became one more reconcile"
    assert most[0] == 1


def test_a_failing_reconcile_is_retried_with_exponential_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    key = ("ns", "kd")
    calls: list[float] = []
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def no_wait(delay: float, result: Any = None) -> Any:
        """The queue's timers fire at once; their delays are recorded (the resync timer is left to wait)."""
        if delay >= OperatorConfig().resync_seconds:
            return await real_sleep(3600)
        slept.append(delay)
        return await real_sleep(0)

    def fake(kube: Kube, config: OperatorConfig, ns: str, name: str, resolver: Resolver) -> reconcile.Actions | None:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise status_error(503, "etcdserver: request timed out")
        if len(calls) == 4:
            raise RuntimeError("a bug, not the API server")
        return reconcile.Actions(requeue_after=10.0 if len(calls) == 5 else 0.0)

    queue = _queue(monkeypatch, fake, workers=1)
    monkeypatch.setattr(asyncio, "sleep", no_wait)

    async def test() -> None:
        queue.start()
        queue.enqueue(key)
        await _until(lambda: len(calls) == 6 and not queue.active, sleep=real_sleep)
        await queue.stop()

    _run(test)
    assert slept == [1.0, 2.0, 4.0, 8.0, 10.0], "1, 2, 4, 8 s after failures in a row, then the requested requeue"
    assert queue.failures == {} and queue.retries == {}, "a success resets the backoff"
    assert time.monotonic() - calls[0] < 5, "no real waiting"


def test_an_outage_is_one_warning_per_kimideployment_and_events_meanwhile_do_not_compound_the_backoff(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fault run: 453 tracebacks in 95 s for 22 KDs, and every event-triggered failure doubled the delay and
    added a timer ("retry in 128s" 20 s into the outage). Now: one line per KimiDeployment per outage, one timer,
    and the exponent grows only with the retries themselves."""
    key = ("ns", "kd")
    outage = True
    calls = 0
    fired = asyncio.Event()
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def timer(delay: float, result: Any = None) -> Any:
        if delay >= OperatorConfig().resync_seconds:
            return await real_sleep(3600)
        delays.append(delay)
        await fired.wait()  # a retry timer fires only when the test says so
        fired.clear()
        return result

    def fake(kube: Kube, config: OperatorConfig, ns: str, name: str, resolver: Resolver) -> reconcile.Actions | None:
        nonlocal calls
        calls += 1
        if outage:
            raise kube_mod.Unreachable(ConnectionRefusedError(111, "Connection refused"))
        return reconcile.Actions()

    queue = _queue(monkeypatch, fake, workers=1)
    monkeypatch.setattr(asyncio, "sleep", timer)

    async def test() -> None:
        nonlocal outage
        queue.start()
        queue.enqueue(key)
        await _until(lambda: calls == 1 and not queue.active, sleep=real_sleep)
        for n in range(2, 12):  # events during the outage (pods, the resync): each reconcile fails again
            queue.enqueue(key)
            await _until(lambda n=n: calls == n and not queue.active, sleep=real_sleep)  # type: ignore[misc]
        assert delays == [1.0], f"one timer, not one per failure: {delays}"
        fired.set()  # the retry fires and fails: the next wait doubles
        await _until(lambda: calls == 12 and len(delays) == 2 and not queue.active, sleep=real_sleep)
        assert delays == [1.0, 2.0]
        outage = False
        fired.set()
        await _until(lambda: calls == 13 and not queue.active, sleep=real_sleep)
        await queue.stop()

    with caplog.at_level(logging.DEBUG, logger="kimi_operator.controller"):
        _run(test)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert not warnings[0].exc_info, "no traceback for an unreachable API server"
    assert "the API server could not be reached" in warnings[0].getMessage()
    assert any("succeeded again after 12 failed attempt(s)" in r.getMessage() for r in caplog.records)
    assert queue.failures == {} and queue.retries == {} and not queue.retrying


class HangingHub(Resolver):
    """The Hub in the background mode, hanging until the test lets it answer (the fault run: a Hub that hung held
    a worker for 10 s per call and delayed unrelated edits from 3 s to 23 s)."""

    def __init__(self, notify: Callable[..., None]) -> None:
        super().__init__(None, background=True, notify=notify)
        self.answer = threading.Event()
        self.asks: list[str] = []

    def _ask(self, repo: str, revision: str, token: str | None) -> tuple[str | None, str, bool]:  # noqa: ARG002
        self.asks.append(f"{repo}@{revision}")
        assert self.answer.wait(10)
        return COMMIT, "", False


def test_a_hanging_hub_holds_up_no_other_kimideployment_and_its_answer_queues_the_one_that_asked() -> None:
    kube = FakeKube()
    kube.put(kimideployment("slow", {}))  # revision main: the Hub must say which commit
    kube.put(kimideployment("fast", {"model": {"revision": "f" * 40}}))  # a commit: no Hub call

    def job(name: str) -> dict[str, Any] | None:
        return kube.objects.get(("Job", "ns", f"{name}-fetch"))

    def reason(name: str) -> str:
        conds = (kube.obj("KimiDeployment", name).get("status") or {}).get("conditions") or []
        return next((str(c["reason"]) for c in conds if c["type"] == "WeightsReady"), "")

    async def body() -> None:
        queue = controller.WorkQueue(kube, OperatorConfig(operator_image="op:test", workers=1))
        hub = queue.resolver = HangingHub(queue._resolved)
        queue.start()
        queue.enqueue(("ns", "slow"))
        queue.enqueue(("ns", "fast"))  # one worker: it runs after slow's reconcile
        await _until(lambda: job("fast") is not None and reason("slow") == "Resolving")
        assert job("slow") is None, "no Job before the commit is known"
        assert hub.asks == ["moonshotai/Kimi-K2.5@main"]
        hub.answer.set()
        await _until(lambda: job("slow") is not None)  # nothing else enqueued it: the answer did
        command = job("slow")["spec"]["template"]["spec"]["containers"][0]["command"]  # type: ignore[index]
        assert command[command.index("--revision") + 1] == COMMIT
        assert hub.asks == ["moonshotai/Kimi-K2.5@main"], "asked once"
        await queue.stop()

    _run(body)


def test_a_standby_queue_reconciles_nothing_and_everything_it_knows_once_it_leads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str]] = []

    def fake(kube: Kube, config: OperatorConfig, ns: str, name: str, resolver: Resolver) -> reconcile.Actions | None:
        calls.append((ns, name))
        return reconcile.Actions()

    queue = _queue(monkeypatch, fake)

    async def test() -> None:
        queue.leading.clear()
        queue.start()
        for name in ("a", "b", "c"):
            queue.enqueue(("ns", name))  # kopf's events keep arriving on a standby
        await asyncio.sleep(0.05)
        assert calls == [], "a standby reconciles nothing"
        queue.lead(True)
        await _until(lambda: len(calls) == 3 and not queue.active)
        assert sorted(calls) == [("ns", "a"), ("ns", "b"), ("ns", "c")], "each once"
        queue.lead(False)
        await asyncio.sleep(0)
        queue.enqueue(("ns", "a"))
        await asyncio.sleep(0.05)
        assert len(calls) == 3, "standing by again"
        await queue.stop()

    _run(test)


def test_a_burst_in_one_namespace_does_not_hold_up_another_and_each_namespace_keeps_its_order() -> None:
    async def drain() -> list[tuple[str, str]]:
        q = controller.FairQueue()
        for i in range(100):
            q.put_nowait(("burst", f"kd-{i}"))
        q.put_nowait(("team-b", "one"))
        q.put_nowait(("team-c", "x"))
        q.put_nowait(("team-c", "y"))
        assert q.qsize() == 103
        return [await q.get() for _ in range(103)]

    out = asyncio.run(drain())
    assert out[:6] == [("burst", "kd-0"), ("team-b", "one"), ("team-c", "x"), ("burst", "kd-1"), ("team-c", "y"),
                       ("burst", "kd-2")]  # fmt: skip
    assert [k for k in out if k[0] == "burst"] == [("burst", f"kd-{i}") for i in range(100)]


def test_a_worker_waits_for_a_key_put_later() -> None:
    async def later() -> tuple[str, str]:
        q = controller.FairQueue()
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0.01)
        assert not getter.done()
        q.put_nowait(("ns", "late"))
        return await asyncio.wait_for(getter, 5)

    assert asyncio.run(later()) == ("ns", "late")
