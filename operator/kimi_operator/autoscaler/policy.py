"""Queue-depth autoscaling policy. Pure: an observation and the previous state in, a decision and new state out.

Rules, in order (docs/autoscaling.md explains each with the failure mode it prevents):
1. Nothing is read as zero load. A replica whose metrics could not be read counts as busy; when no ready replica
   could be read the autoscaler holds (it never scales down on silence).
2. Replicas still starting (requested, not yet ready: a 600 GB load takes tens of minutes) count as capacity on the
   way. A queue that needs more replicas than ready + starting scales up; while replicas start, a further scale-up
   happens only if the queue grows faster than it did at the last scale-up (demand rose again). A queue that merely
   keeps growing at the same rate is the load the starting replicas were requested for.
3. Tolerance band: while queue per ready replica stays within `tolerance` of the target, the count holds.
4. Scale-down only removes replicas that are idle (nothing queued or running), never busy ones, and only once the
   total queue is within the target band.
5. Stabilization (as the HPA does it): a scale-up to N needs every recommendation of the last up-window to be >= N;
   a scale-down to N needs every recommendation of the last down-window to be <= N. Steps are bounded, and the result
   is clamped to [min, max].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from kimi_operator.reasons import Reason


@dataclass(frozen=True)
class Config:
    min_replicas: int
    max_replicas: int
    target_queue_depth: int
    tolerance_percent: int = 10
    scale_up_stabilization_seconds: int = 30
    scale_down_stabilization_seconds: int = 600
    max_scale_up_step: int = 2
    max_scale_down_step: int = 1
    growth_percent: int = 20  # "the queue keeps growing": its growth rate is this much above the last scale-up's


@dataclass(frozen=True)
class ReplicaLoad:
    """One ready replica's load as read from its leader; None when its metrics could not be read."""

    name: str
    queue: float | None
    running: float | None

    @property
    def reachable(self) -> bool:
        return self.queue is not None

    @property
    def idle(self) -> bool:
        return self.queue == 0 and self.running == 0


@dataclass(frozen=True)
class Observation:
    now: float
    current: int  # replicas currently wanted (the last decision, or the starting point)
    ready: tuple[ReplicaLoad, ...]  # ready replicas, reachable or not
    source_error: str = ""  # the whole source failed (e.g. Prometheus down)

    @property
    def starting(self) -> int:
        return max(self.current - len(self.ready), 0)


@dataclass(frozen=True)
class State:
    recommendations: tuple[tuple[float, int], ...] = ()
    first_seen: float | None = None  # a window counts only once this autoscaler has watched for all of it
    last_scale_time: float | None = None
    last_queue: tuple[float, float] | None = None  # (time, queue) of the previous readable observation
    rate_at_last_scale_up: float | None = None  # queue growth (requests/s) when the last scale-up was decided


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: Reason
    message: str
    queue: float | None
    running: float | None
    state: State = field(default_factory=State)

    @property
    def changed(self) -> bool:
        return self.reason in (Reason.SCALE_UP, Reason.SCALE_DOWN, Reason.BELOW_MIN, Reason.ABOVE_MAX)


def _window(recs: tuple[tuple[float, int], ...], now: float, seconds: int) -> list[int]:
    return [r for t, r in recs if now - t <= seconds]


def queue_rate(state: State, now: float, queue: float | None) -> float:
    """Queue growth in requests per second since the previous readable observation (0 when unknown)."""
    if queue is None or state.last_queue is None or now <= state.last_queue[0]:
        return 0.0
    return (queue - state.last_queue[1]) / (now - state.last_queue[0])


def recommend(cfg: Config, state: State, obs: Observation, rate: float = 0.0) -> tuple[int, Reason, str]:
    """The raw recommendation (before stabilization and steps) with its reason."""
    current = obs.current
    reachable = [r for r in obs.ready if r.reachable]
    if obs.source_error:
        return current, Reason.METRICS_UNAVAILABLE, f"holding at {current}: {obs.source_error}"
    if not obs.ready:
        return current, Reason.NO_READY_REPLICAS, f"holding at {current}: no replica is ready to report its queue"
    if not reachable:
        return current, Reason.METRICS_UNAVAILABLE, f"holding at {current}: no ready replica answered /metrics"
    queue = sum(r.queue or 0 for r in reachable)
    target = cfg.target_queue_depth
    per_replica = queue / len(reachable)
    upper = target * (1 + cfg.tolerance_percent / 100)
    capacity = len(obs.ready) + obs.starting
    if per_replica > upper:
        # Every replica, ready or starting, should end up with at most `target` queued requests.
        need = max(math.ceil(queue / target), capacity)
        if need > capacity and obs.starting > 0:
            last = state.rate_at_last_scale_up
            growing = last is None or rate > max(last, 0.0) * (1 + cfg.growth_percent / 100) + 1e-9
            if not growing:
                return (
                    capacity,
                    Reason.WAITING_FOR_STARTING_REPLICAS,
                    (
                        f"queue {queue:.0f} ({per_replica:.1f}/replica > target {target}), but {obs.starting} "
                        "replica(s) "
                        "are still starting and the queue is not growing"
                    ),
                )
        if need > capacity:
            return need, Reason.QUEUE_ABOVE_TARGET, f"queue {queue:.0f} is {per_replica:.1f}/replica, target {target}"
        return (
            capacity,
            Reason.CAPACITY_ON_THE_WAY,
            (f"queue {queue:.0f} is {per_replica:.1f}/replica; {obs.starting} starting replica(s) cover it"),
        )
    if queue <= target * (cfg.tolerance_percent / 100) * len(reachable):
        idle = sum(1 for r in reachable if r.idle)
        if idle:
            return max(capacity - idle, 0), Reason.IDLE_REPLICAS, f"queue {queue:.0f}; {idle} replica(s) idle"
    return capacity, Reason.WITHIN_TARGET, f"queue {queue:.0f} is {per_replica:.1f}/replica, target {target}"


def decide(cfg: Config, state: State, obs: Observation) -> Decision:
    reachable = [r for r in obs.ready if r.reachable]
    queue = sum(r.queue or 0 for r in reachable) if reachable and not obs.source_error else None
    running = sum(r.running or 0 for r in reachable) if reachable and not obs.source_error else None
    now, current = obs.now, obs.current
    rate = queue_rate(state, now, queue)
    raw, reason, message = recommend(cfg, state, obs, rate)
    if queue is not None:
        state = replace(state, last_queue=(now, queue))
    keep = max(cfg.scale_up_stabilization_seconds, cfg.scale_down_stabilization_seconds)
    recs = (*tuple((t, r) for t, r in state.recommendations if now - t <= keep), (now, raw))
    first_seen = now if state.first_seen is None else state.first_seen
    state = replace(state, recommendations=recs, first_seen=first_seen)
    watched = now - first_seen

    if current < cfg.min_replicas or current > cfg.max_replicas:
        bounded = max(cfg.min_replicas, min(cfg.max_replicas, current))
        why = Reason.BELOW_MIN if current < cfg.min_replicas else Reason.ABOVE_MAX
        return Decision(
            bounded,
            why,
            f"{current} -> {bounded}: bounds [{cfg.min_replicas}, {cfg.max_replicas}]",
            queue,
            running,
            replace(state, last_scale_time=now),
        )

    # Until the autoscaler has watched a whole window (e.g. right after the operator restarted), the window's
    # verdict is "hold": a restart must never turn into an immediate scale-down.
    up_floor = min(_window(recs, now, cfg.scale_up_stabilization_seconds))
    if watched < cfg.scale_up_stabilization_seconds:
        up_floor = min(up_floor, current)
    down_ceiling = max(_window(recs, now, cfg.scale_down_stabilization_seconds))
    if watched < cfg.scale_down_stabilization_seconds:
        down_ceiling = max(down_ceiling, current)
    desired = current
    if up_floor > current:
        desired = min(up_floor, current + cfg.max_scale_up_step, cfg.max_replicas)
    elif down_ceiling < current:
        desired = max(down_ceiling, current - cfg.max_scale_down_step, cfg.min_replicas)
    if desired > current:
        return Decision(
            desired,
            Reason.SCALE_UP,
            f"{current} -> {desired}: {message}",
            queue,
            running,
            replace(state, last_scale_time=now, rate_at_last_scale_up=rate),
        )
    if desired < current:
        return Decision(
            desired,
            Reason.SCALE_DOWN,
            f"{current} -> {desired}: {message}",
            queue,
            running,
            replace(state, last_scale_time=now),
        )
    if raw > current and up_floor <= current and reason == Reason.QUEUE_ABOVE_TARGET:
        reason, message = Reason.STABILIZING_UP, f"{message}; waiting {cfg.scale_up_stabilization_seconds}s window"
    elif raw < current and reason == Reason.IDLE_REPLICAS:
        reason, message = Reason.STABILIZING_DOWN, f"{message}; waiting {cfg.scale_down_stabilization_seconds}s window"
    elif raw >= cfg.max_replicas and reason == Reason.QUEUE_ABOVE_TARGET:
        reason, message = Reason.AT_MAX_REPLICAS, f"{message}; at maxReplicas {cfg.max_replicas}"
    return Decision(current, reason, message, queue, running, state)


def deletion_costs(loads: tuple[ReplicaLoad, ...]) -> dict[str, int]:
    """controller.kubernetes.io/pod-deletion-cost per pod: idle replicas go first, the busiest last."""
    out = {}
    for r in loads:
        if not r.reachable:
            out[r.name] = 1_000_000  # unknown load is never assumed idle
        else:
            out[r.name] = int((r.running or 0) + (r.queue or 0))
    return out
