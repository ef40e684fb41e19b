"""A starting replica's phase, progress, ETA and stall (kimi_operator.reconcile.startup), and what decide makes
of it: status.startup, the STATUS column, Progressing, one Event per phase change, StartupStalled."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kimi_operator import controller, metrics, render
from kimi_operator.api.models import StartupStatus
from kimi_operator.reasons import Reason
from kimi_operator.reconcile import startup
from kimi_operator.timeutil import parse_rfc3339
from tests.unit.test_reconcile import Server, _cond, _serving

pytestmark = pytest.mark.usefixtures("fresh_controller")

T0 = "2026-11-23T12:00:00Z"
KEY = "moonshotai/Kimi-K2.5@aaaaaaaaaaaa on default storage, H200"
ESTIMATES = {Reason.LOADING_WEIGHTS: 2400, Reason.PULLING_IMAGE: 300, Reason.COMPILING: 600,
             Reason.CAPTURING_GRAPHS: 90, Reason.WARMING_UP: 60}  # fmt: skip


def at(seconds: float) -> str:
    return startup.stamp(parse_rfc3339(T0) + seconds)


def line(seconds: float, text: str) -> str:
    return f"{at(seconds)[:-1]}.123456789Z {text}"


def shards(done: int, total: int) -> str:
    return f"Loading safetensors checkpoint shards: {done * 100 / total:3.0f}% Completed | {done}/{total} [00:01<00:07]"


def pod(
    name: str = "kd-0",
    *,
    scheduled: float | None = 1,
    init_done: float | None = 3,
    started: float | None = 10,
    ready: float | None = None,
    waiting: str = "",
) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = []
    status: dict[str, Any] = {"conditions": conditions}
    if scheduled is not None:
        conditions.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": at(scheduled)})
        init = {"name": "weights-check", "state": {"running": {"startedAt": at(scheduled + 1)}}}
        if init_done is not None:
            init = {"name": "weights-check", "state": {"terminated": {"exitCode": 0, "finishedAt": at(init_done)}}}
        status["initContainerStatuses"] = [init]
        engine: dict[str, Any] = {
            "name": "sglang",
            "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}},
        }
        if waiting:
            engine["state"] = {"waiting": {"reason": waiting, "message": "back-off 5m0s restarting failed container"}}
            engine["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error"}}
        elif started is not None and init_done is not None:
            engine["state"] = {"running": {"startedAt": at(started)}}
        status["containerStatuses"] = [engine]
    else:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes"}
        )
    if ready is not None:
        conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": at(ready)})
    return {
        "metadata": {"name": name, "creationTimestamp": T0, "labels": {render.COMPONENT_LABEL: "server"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "sglang", "image": "lmsysorg/sglang:v0.5.23"}]},
        "status": status,
    }


def run(
    pods: list[dict[str, Any]], logs: dict[str, str], previous: StartupStatus | None, now: float, floor: float = 300
) -> startup.Startup:
    return startup.startup(pods, logs, previous, KEY, ESTIMATES, floor, parse_rfc3339(T0) + now)


# -- the log -----------------------------------------------------------------------------------------------------
def test_the_last_marker_is_the_phase_and_the_last_tqdm_redraw_is_the_progress() -> None:
    log = "\n".join(
        [
            line(11, "[2026-11-23 12:00:11 TP0] Load weight begin. avail mem=139.50 GB"),
            line(40, "\r".join([shards(0, 64), shards(1, 64), shards(29, 64)])),
        ]
    )
    reading = startup.read_log(log)
    assert reading.steps == ((Reason.LOADING_WEIGHTS, parse_rfc3339(at(11))),)
    assert (reading.done, reading.total, reading.progress_at) == (29, 64, parse_rfc3339(at(40)))
    assert reading.last_line.startswith("Loading safetensors checkpoint shards:  45% Completed | 29/64")

    later = startup.read_log(
        log
        + "\n"
        + "\n".join(
            [
                line(90, "[TP0] Load weight end. elapsed=79.00 s, type=KimiK25ForConditionalGeneration"),
                line(95, "[TP0] Try DeepGEMM JIT Compiling for <GEMM_NT_F8F8BF16> N=7168, K=2048, num_groups=1."),
                line(200, "[TP0] Capture target decode CUDA graph begin. backend=fa3, avail mem=30.00 GB"),
                line(230, "Capturing batches (bs=256 avail_mem=29.10 GB):  50%|#####     | 18/36 [00:30<00:30]"),
            ]
        )
    )
    assert [p for p, _ in later.steps] == [Reason.LOADING_WEIGHTS, Reason.COMPILING, Reason.CAPTURING_GRAPHS]
    assert (later.done, later.total) == (18, 36)  # progress belongs to the current phase only


def test_a_failure_line_is_kept_and_secrets_in_lines_are_scrubbed() -> None:
    reading = startup.read_log(line(5, "[TP0] Scheduler hit an exception: RuntimeError: CUDA out of memory"))
    assert reading.phase is Reason.STARTUP_FAILED and "CUDA out of memory" in reading.failed_line
    text = "HF_TOKEN=hf_abcdefghijklmnopqrstuv Authorization: Bearer sk-secret123456789 api_key=xyz123"
    scrubbed = startup.scrub(text)
    assert "hf_abcdef" not in scrubbed and "sk-secret" not in scrubbed and "xyz123" not in scrubbed, scrubbed


# -- the pod -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "phase"),
    [
        (pod(scheduled=None), Reason.PENDING),
        (pod(init_done=None), Reason.SCHEDULED),
        (pod(started=None), Reason.PULLING_IMAGE),
        (pod(), Reason.LOADING_WEIGHTS),
        (pod(waiting="CrashLoopBackOff"), Reason.STARTUP_FAILED),
    ],
)
def test_the_pods_status_says_the_phase_before_the_engine_logs_anything(given: dict[str, Any], phase: Reason) -> None:
    result = run([given], {}, None, now=20)
    assert result.status is not None
    (r,) = result.status.replicas
    assert r.phase == phase, r
    assert r.message


def test_phases_are_dated_by_the_pod_and_the_engine_lines_not_by_when_the_operator_looked() -> None:
    log = "\n".join([line(12, "[TP0] Load weight begin."), line(60, "[TP0] Capture target decode CUDA graph begin.")])
    r = run([pod(started=10)], {"kd-0": log}, None, now=300).slowest
    assert r is not None
    assert [(s.phase, s.since) for s in r.timeline] == [
        ("Pending", at(0)),
        ("Scheduled", at(1)),
        ("PullingImage", at(3)),
        ("LoadingWeights", at(10)),
        ("CapturingGraphs", at(60)),
    ]


# -- progress, ETA, Events ------------------------------------------------------------------------------------------
def test_eta_falls_with_progress_and_one_event_per_phase_change_not_per_tick() -> None:
    begin = line(10, "[TP0] Load weight begin.")
    first = run([pod()], {"kd-0": begin + "\n" + line(30, shards(2, 8))}, None, now=30)
    assert first.status is not None and first.slowest is not None
    assert first.slowest.progress == "2/8" and first.slowest.percent == 25
    assert [e.reason for e in first.events] == [Reason.LOADING_WEIGHTS], first.events
    eta_first = first.slowest.eta_seconds
    second = run([pod()], {"kd-0": begin + "\n" + line(50, shards(6, 8))}, first.status, now=50)
    assert second.slowest is not None and second.slowest.percent == 75
    assert second.events == [], "progress ticks are not Events"
    assert eta_first is not None and second.slowest.eta_seconds is not None
    assert second.slowest.eta_seconds < eta_first, (eta_first, second.slowest.eta_seconds)
    assert second.status is not None and second.status.summary is not None
    assert second.status.summary.startswith("Loading 75% ETA"), second.status.summary
    third = run(
        [pod()], {"kd-0": begin + "\n" + line(62, "[TP0] Capture target decode CUDA graph begin.")}, second.status, 65
    )
    assert [e.reason for e in third.events] == [Reason.CAPTURING_GRAPHS]
    assert "after 52s loading" in third.events[0].message, third.events[0].message


def test_a_replica_going_ready_adds_its_phases_to_the_history_and_the_next_eta_uses_it() -> None:
    begin = line(10, "[TP0] Load weight begin.")
    warm = line(
        70, "[TP0] Using a 512x512 image for Kimi VLM startup warmup to compile MoonViT position interpolation."
    )
    seen = run([pod()], {"kd-0": begin + "\n" + warm}, None, now=75)
    done = run([pod(ready=80)], {}, seen.status, now=81)
    assert [e.reason for e in done.events] == [Reason.READY]
    assert "Ready after 1m20s" in done.events[0].message, done.events[0].message
    assert done.status is not None and done.status.replicas == [] and done.status.summary is None
    (h,) = done.status.history
    assert h.key == KEY and h.starts == 1
    assert {p.phase: p.seconds for p in h.phases} == {
        "Pending": [1],
        "Scheduled": [2],
        "PullingImage": [7],
        "LoadingWeights": [60],
        "WarmingUp": [10],
    }
    assert dict(done.finished)[Reason.LOADING_WEIGHTS] == 60
    # the next start: 20 s into loading, history says loading takes 60 s and warming up 10 s -> ETA 50 s
    nxt = run([pod("kd-1")], {"kd-1": begin}, done.status, now=30)
    assert nxt.slowest is not None and nxt.slowest.eta_seconds == 50, nxt.slowest


def test_no_progress_for_longer_than_earlier_starts_allow_is_a_stall_with_the_last_line() -> None:
    begin = line(10, "[TP0] Load weight begin.")
    history = run([pod(ready=80)], {}, run([pod()], {"kd-0": begin}, None, now=20).status, now=81).status
    log = begin + "\n" + line(20, shards(3, 8) + " HF_TOKEN=hf_abcdefghijklmnopqrstuv")
    quiet = run([pod("kd-1")], {"kd-1": log}, history, now=100, floor=5)
    assert quiet.stalled is None, "70 s quiet: history says loading took 70 s, twice that is allowed"
    stuck = run([pod("kd-1")], {"kd-1": log}, quiet.status, now=200, floor=5)
    assert stuck.stalled is not None and stuck.stalled.stalled
    message = str(stuck.stalled.message)
    assert "no progress in LoadingWeights at 3/8 (37%) for 3m00s (earlier starts took at most 1m10s)" in message
    assert stuck.stalled.last_log is not None and "3/8" in stuck.stalled.last_log
    assert "hf_abcdef" not in stuck.stalled.last_log
    assert stuck.status is not None and stuck.status.summary == "Stalled: Loading 37%"


def test_without_history_the_planner_estimate_and_the_floor_decide_a_stall() -> None:
    log = line(10, "[TP0] Load weight begin.")
    assert run([pod()], {"kd-0": log}, None, now=4000).stalled is None  # 2 x the 2400 s estimate not reached
    assert run([pod()], {"kd-0": log}, None, now=4811).stalled is not None


# -- through decide ---------------------------------------------------------------------------------------------
def _second_replica() -> Server:
    """A KimiDeployment serving one replica, scaled to two: the second one starts."""
    s = _serving()
    s.set_spec(replicas=2)
    s.step()
    s.deployment_ready(1)
    return s


def _starting(s: Server, log: str, pods: list[dict[str, Any]] | None = None) -> None:
    s.pods = [copy.deepcopy(p) for p in (pods or [pod()])]
    s.kube.set_log("kd-0", "sglang", log)


def test_a_starting_replica_shows_in_status_the_status_column_and_progressing() -> None:
    s = _second_replica()
    log = line(10, "[TP0] Load weight begin.") + "\n" + line(30, shards(3, 8))
    _starting(s, log, [pod(), {**pod("kd-ready", ready=5)}])
    actions = s.step(now=at(40))
    st = s.body["status"]
    assert st["state"].startswith("Loading 37% ETA"), st["state"]
    assert st["startup"]["replicas"][0]["pod"] == "kd-0" and st["startup"]["replicas"][0]["progress"] == "3/8"
    progressing = _cond(s, "Progressing")
    assert progressing["reason"] == "LoadingWeights" and "replica kd-0" in progressing["message"], progressing
    assert _cond(s, "Ready")["reason"] == "Loading"
    reasons = [r for _, r, _ in s.kube.recorded_events("kd")]
    assert reasons.count("LoadingWeights") == 1, reasons
    assert 0 < actions.requeue_after <= startup.POLL_SECONDS
    assert controller._engine_logs[("ns", "kd")]["kd-0"][2] == log  # read while it starts
    assert s.kube.log_timestamps, "the phases are dated by the kubelet's timestamps"

    s.step(now=at(45))  # nothing new: no Event, and the cached tail is not read again
    assert [r for _, r, _ in s.kube.recorded_events("kd")].count("LoadingWeights") == 1


def test_a_stalled_start_is_a_warning_and_ready_says_which_phase_and_the_last_line() -> None:
    s = _second_replica()
    _starting(s, line(10, "[TP0] Load weight begin.") + "\n" + line(30, shards(3, 8)))
    s.step(now=at(40))
    s.kube.set_log("kd-0", "sglang", line(10, "[TP0] Load weight begin.") + "\n" + line(30, shards(3, 8)))
    s.step(now=at(30 + 2 * 2400 + 60))  # quiet for longer than twice the planner's estimate of the load
    ready = _cond(s, "Ready")
    assert ready["reason"] == "StartupStalled", ready
    assert "no progress in LoadingWeights" in ready["message"] and "3/8" in ready["message"], ready["message"]
    assert s.body["status"]["state"] == "Stalled: Loading 37%"
    warnings = [(t, r) for t, r, _ in s.kube.recorded_events("kd") if r == "StartupStalled"]
    assert warnings == [("Warning", "StartupStalled")]


def test_once_ready_the_log_is_not_read_and_the_history_stays() -> None:
    s = _second_replica()
    _starting(s, line(10, "[TP0] Load weight begin."))
    s.step(now=at(40))
    s.pods = [pod(ready=70)]
    s.kube.logs.clear()  # a read now would fail the reconcile's log: it must not happen
    s.deployment_ready(2)
    s.step(now=at(75))
    st = s.body["status"]
    assert st["state"] == "Ready" and not st["startup"].get("replicas"), st["startup"]
    assert st["startup"]["history"][0]["starts"] == 1
    assert ("ns", "kd") not in controller._engine_logs


def test_phases_entered_in_the_same_second_are_each_one_step_and_one_event() -> None:
    same = pod(scheduled=0, init_done=0, started=None)  # Pending, Scheduled, PullingImage all at T0
    first = run([same], {}, None, now=1)
    assert first.slowest is not None
    assert [s.phase for s in first.slowest.timeline] == ["Pending", "Scheduled", "PullingImage"]
    again = run([same], {}, first.status, now=2)
    assert again.slowest is not None and again.slowest.timeline == first.slowest.timeline
    assert again.events == [], "a step already in the timeline is not a phase change"


def test_an_engine_that_has_logged_nothing_yet_is_read_again_soon_a_node_without_logs_later() -> None:
    s = _second_replica()
    _starting(s, "")  # the container just started: an empty log, not a node that serves none
    s.step(now=at(11))
    cache = controller._engine_logs[("ns", "kd")]
    read_at, run_id, tail = cache["kd-0"]
    assert tail == ""
    s.kube.set_log("kd-0", "sglang", line(12, "[TP0] Capture target decode CUDA graph begin."))
    cache["kd-0"] = (read_at - startup.POLL_SECONDS, run_id, tail)  # one poll interval later
    s.step(now=at(20))
    assert s.body["status"]["startup"]["replicas"][0]["phase"] == "CapturingGraphs"

    s.kube.logs.clear()  # now the node serves no log: not asked again for ENGINE_LOG_RETRY_SECONDS
    cache["kd-0"] = (read_at - startup.POLL_SECONDS, run_id, cache["kd-0"][2])
    s.step(now=at(25))
    read_at, _, tail = cache["kd-0"]
    assert tail is None
    cache["kd-0"] = (read_at - startup.POLL_SECONDS, run_id, None)
    s.kube.set_log("kd-0", "sglang", line(26, "[TP0] The server is fired up and ready to roll!"))
    s.step(now=at(27))
    assert cache["kd-0"][2] is None, "a node that served no log is asked again only after the retry interval"


def test_the_phases_of_a_replica_that_went_ready_are_observed_in_the_histogram() -> None:
    def count(phase: str) -> float:
        return metrics.STARTUP_PHASE_SECONDS.labels(phase=phase)._sum.get()  # type: ignore[no-any-return]

    before = count("LoadingWeights")
    s = _second_replica()
    _starting(s, line(10, "[TP0] Load weight begin."))
    s.step(now=at(40))
    s.pods = [pod(ready=70)]
    s.deployment_ready(2)
    s.step(now=at(75))
    assert count("LoadingWeights") - before == 60  # started at 10 s, Ready at 70 s


def test_only_leader_pods_are_replicas_and_a_deleted_pod_is_dropped_without_history() -> None:
    worker = pod("kd-0-1")
    worker["metadata"]["labels"] = {render.COMPONENT_LABEL: "worker"}  # an LWS worker: its leader speaks for it
    leader = pod("kd-0")
    seen = run([leader, worker], {}, None, now=20)
    assert seen.status is not None and [r.pod for r in seen.status.replicas] == ["kd-0"]
    leader["metadata"]["deletionTimestamp"] = at(21)
    gone = run([leader, worker], {}, seen.status, now=22)
    assert gone.status is None or (not gone.status.replicas and not gone.status.history), gone.status
    assert gone.events == [] and gone.finished == []
