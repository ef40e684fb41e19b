"""The queue-depth policy on synthetic traces: bursts, noise, slow loads, silence, idle and busy replicas."""

from __future__ import annotations

from collections.abc import Callable

from kimi_operator.autoscaler.policy import Config, Decision, Observation, ReplicaLoad, State, decide, deletion_costs
from kimi_operator.reasons import Reason

CFG = Config(
    min_replicas=1,
    max_replicas=8,
    target_queue_depth=8,
    tolerance_percent=10,
    scale_up_stabilization_seconds=30,
    scale_down_stabilization_seconds=600,
    max_scale_up_step=2,
    max_scale_down_step=1,
)


def loads(n: int, queue: float, running: float = 4) -> tuple[ReplicaLoad, ...]:
    return tuple(ReplicaLoad(f"r{i}", queue / n if n else 0, running) for i in range(n))


def run(
    trace: Callable[[float, int], tuple[ReplicaLoad, ...]],
    seconds: int,
    cfg: Config = CFG,
    start: int = 1,
    step: int = 15,
    ready_after: int = 0,
) -> list[tuple[float, Decision]]:
    """Drive the policy every `step` seconds; new replicas become ready `ready_after` seconds after a scale-up."""
    state, current = State(), start
    ready_since: list[float] = [0.0] * start
    out = []
    for t in range(0, seconds, step):
        n_ready = sum(1 for s in ready_since[:current] if t >= s)
        obs = Observation(float(t), current, trace(float(t), n_ready))
        d = decide(cfg, state, obs)
        state = d.state
        if d.desired > current:
            ready_since += [t + ready_after] * (d.desired - current)
        ready_since = ready_since[: d.desired]
        current = d.desired
        out.append((float(t), d))
    return out


def changes(history: list[tuple[float, Decision]], start: int = 1) -> list[tuple[float, int]]:
    """(time, new count) for every decision that changed the replica count."""
    out, last = [], start
    for t, d in history:
        if d.desired != last:
            out.append((t, d.desired))
        last = d.desired
    return out


def test_a_burst_scales_up_after_the_up_window_in_bounded_steps() -> None:
    hist = run(lambda t, n: loads(n, 0 if t < 60 else 48), 300)
    ups = changes(hist)
    assert ups[0] == (90.0, 3), ups  # queue crosses at t=60; the 30 s window holds until t=90; step +2
    assert max(d for _, d in ups) == 6  # 48 queued / 8 per replica
    assert all(b - a <= 2 for (_, a), (_, b) in zip([(0, 1), *ups], ups, strict=False))


def test_noise_inside_the_tolerance_band_changes_nothing() -> None:
    noisy = [7.5, 8.6, 8.0, 7.2, 8.8, 6.9, 8.7, 8.1]
    hist = run(lambda t, n: loads(n, noisy[int(t // 15) % len(noisy)] * n), 1800, start=2)
    assert changes(hist, start=2) == []


def test_a_spike_shorter_than_the_up_window_is_ignored() -> None:
    hist = run(lambda t, n: loads(n, 80 if 60 <= t < 75 else 4), 600)
    assert changes(hist) == []


def test_a_slow_loading_replica_counts_as_capacity_and_blocks_a_second_scale_up() -> None:
    cfg = Config(
        min_replicas=1, max_replicas=8, target_queue_depth=8, scale_up_stabilization_seconds=0, max_scale_up_step=1
    )
    hist = run(lambda t, n: loads(n, 16), 1800, cfg=cfg, ready_after=1500)
    assert changes(hist) == [(0.0, 2)]
    assert any(d.reason == "WaitingForStartingReplicas" or d.reason == "CapacityOnTheWay" for _, d in hist[1:])


def test_a_growing_queue_scales_again_while_replicas_still_load() -> None:
    cfg = Config(
        min_replicas=1, max_replicas=8, target_queue_depth=8, scale_up_stabilization_seconds=0, max_scale_up_step=1
    )
    hist = run(lambda t, n: loads(n, 16 if t < 300 else 40), 900, cfg=cfg, ready_after=1500)
    assert [d for _, d in changes(hist)][:2] == [2, 3]


def test_every_replica_unreachable_holds_and_never_scales_down() -> None:
    silent = lambda t, n: tuple(ReplicaLoad(f"r{i}", None, None) for i in range(n))  # noqa: E731
    hist = run(silent, 3600, start=4)
    assert changes(hist, start=4) == []
    assert {d.reason for _, d in hist} == {"MetricsUnavailable"}
    assert all(d.queue is None for _, d in hist)


def test_a_failed_source_holds() -> None:
    d = decide(CFG, State(), Observation(0.0, 3, loads(3, 0, 0), source_error="prometheus: connection refused"))
    assert d.desired == 3 and d.reason == "MetricsUnavailable" and "connection refused" in d.message


def test_scale_down_waits_for_the_whole_window_and_removes_one_idle_replica_at_a_time() -> None:
    hist = run(lambda t, n: loads(n, 0, 0), 1500, start=3)
    downs = changes(hist, start=3)
    assert downs[0] == (600.0, 2), downs
    assert downs[1][1] == 1 and downs[1][0] >= 600.0


def test_busy_replicas_are_not_removed() -> None:
    def trace(t: float, n: int) -> tuple[ReplicaLoad, ...]:
        # the idle replica is the one removed (pod-deletion-cost), so the survivors are the busy ones
        return (ReplicaLoad("b", 0, 6), ReplicaLoad("c", 0, 3), ReplicaLoad("a", 0, 0))[:n]

    hist = run(trace, 3000, start=3)
    assert [d for _, d in changes(hist, start=3)] == [2]


def test_unreachable_replica_is_never_counted_as_idle() -> None:
    def trace(t: float, n: int) -> tuple[ReplicaLoad, ...]:
        return (ReplicaLoad("b", None, None), ReplicaLoad("a", 0, 0))[:n]

    hist = run(trace, 3000, start=2)
    assert [d for _, d in changes(hist, start=2)] == [1]  # only the idle one goes
    assert deletion_costs(trace(0, 2)) == {"a": 0, "b": 1_000_000}


def test_bounds_are_enforced_first() -> None:
    assert decide(CFG, State(), Observation(0.0, 0, ())).desired == 1
    assert decide(CFG, State(), Observation(0.0, 12, loads(12, 0))).desired == 8


def test_a_restarted_autoscaler_does_not_scale_down_before_watching_a_full_window() -> None:
    d = decide(CFG, State(), Observation(0.0, 3, loads(3, 0, 0)))
    assert d.desired == 3 and d.reason == "StabilizingDown"


def test_max_replicas_caps_a_huge_queue() -> None:
    cfg = Config(min_replicas=1, max_replicas=3, target_queue_depth=8, scale_up_stabilization_seconds=0)
    hist = run(lambda t, n: loads(n, 500), 300, cfg=cfg)
    assert hist[-1][1].desired == 3 and hist[-1][1].reason in (
        "AtMaxReplicas",
        "CapacityOnTheWay",
        "WithinTarget",
        "QueueAboveTarget",
    )


def test_every_decision_word_is_a_reason() -> None:
    """The words in status.autoscaler.lastDecision come from kimi_operator.reasons, like every other reason."""
    hist = run(lambda t, n: loads(n, 0 if t < 60 or t > 400 else 48), 1200) + run(lambda t, n: (), 60)
    words = {d.reason for _, d in hist}
    assert all(isinstance(w, Reason) for w in words), words
    assert {Reason.SCALE_UP, Reason.STABILIZING_UP, Reason.WITHIN_TARGET, Reason.NO_READY_REPLICAS} <= words, words
