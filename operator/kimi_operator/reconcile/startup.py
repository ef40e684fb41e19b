"""A starting replica's phase, progress, ETA and stall, from its pod and its engine's own log lines (pure).

Sources, cheapest first: the pod's status (scheduling, init containers, the image pull, the container's start and
restarts), then the engine's startup lines in a bounded tail of its log (read by the controller only while the pod
is not Ready, with kubelet timestamps: the phase changes are dated by the engine's own lines, not by when the
operator looked). The status is the memory: each replica's timeline (phase, since) is carried from one reconcile to
the next, and when a replica goes Ready the duration of each of its phases joins the history of its checkpoint on its
kind of volume and accelerator, which the next start's ETA and stall detection use. Before any history: the planner's
estimate (planner.startup_estimates).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kimi_operator import render
from kimi_operator.api.models import (
    PhaseSeconds,
    ReplicaStartup,
    StartupHistory,
    StartupStatus,
    StartupStep,
)
from kimi_operator.engine import sglang_startup
from kimi_operator.engine.sglang_startup import LogPattern
from kimi_operator.reasons import STARTUP_PHASES, Reason
from kimi_operator.reconcile.types import Event, Manifest
from kimi_operator.timeutil import FORMAT, parse_rfc3339

POLL_SECONDS = 5.0  # a starting replica is looked at again this soon (its log is read at most this often)
HISTORY_STARTS = 5  # durations kept per phase and key
HISTORY_KEYS = 4  # keys kept per KimiDeployment (checkpoint x volume kind x accelerator)
TIMELINE_STEPS = 20  # a crash-looping replica's timeline keeps its last steps
STALL_FACTOR = 2.0  # a phase is stalled when it shows no progress for this many times its longest earlier run
LAST_LOG_CHARS = 300
ENGINE_PHASES = (Reason.LOADING_WEIGHTS, Reason.COMPILING, Reason.CAPTURING_GRAPHS, Reason.WARMING_UP)
WATCHED = (Reason.PULLING_IMAGE, *ENGINE_PHASES)  # phases the stall detector watches
WORDS = {
    Reason.PENDING: "Pending",
    Reason.SCHEDULED: "Scheduled",
    Reason.PULLING_IMAGE: "Pulling image",
    Reason.LOADING_WEIGHTS: "Loading",
    Reason.COMPILING: "Compiling",
    Reason.CAPTURING_GRAPHS: "Capturing graphs",
    Reason.WARMING_UP: "Warming up",
    Reason.STARTUP_FAILED: "Failed",
    Reason.READY: "Ready",
}
_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?Z ?")
_SECRETS = (
    re.compile(r"hf_[A-Za-z0-9]{8,}"),
    re.compile(r"sk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)\b(bearer)\s+\S+"),
    re.compile(r"(?i)((?:api[-_]?key|token|password|secret|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
)


def scrub(line: str) -> str:
    """A log line with anything that looks like a credential replaced (it is written into status and Events)."""
    for pattern in _SECRETS:
        line = pattern.sub(lambda m: (m.group(1) + " ***") if m.lastindex else "***", line)
    return line


def stamp(t: float) -> str:
    return time.strftime(FORMAT, time.gmtime(t))


def ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# -- the engine's log ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogReading:
    """What a log tail says: the phase changes (phase, unix time) in order, the current phase's progress, the time
    of its last line, the last line itself and the line that says the start failed (if any)."""

    steps: tuple[tuple[Reason, float], ...] = ()
    done: int | None = None
    total: int | None = None
    progress_at: float = 0.0
    last_line: str = ""
    failed_line: str = ""

    @property
    def phase(self) -> Reason | None:
        return self.steps[-1][0] if self.steps else None


def read_log(text: str, patterns: Iterable[LogPattern] = sglang_startup.LOG_PATTERNS) -> LogReading:
    """Parse a log tail whose lines carry the kubelet's timestamps (pods/log ?timestamps=true)."""
    rules = tuple(patterns)
    steps: list[tuple[Reason, float]] = []
    done = total = None
    progress_at = 0.0
    last_line = failed = ""
    for raw in text.split("\n"):  # not splitlines(): a "\r" is a tqdm redraw within the line
        m = _TS.match(raw)
        t = parse_rfc3339(m.group(1) + "Z") if m else 0.0
        body = raw[m.end() :] if m else raw
        segments = [s.strip() for s in body.split("\r") if s.strip()]
        if segments:
            last_line = segments[-1]
        for seg in segments:
            found = next(((r, m) for r in rules if (m := r.regex.search(seg)) is not None), None)
            if found is None:
                continue
            rule, match = found
            if rule.failed:
                failed = seg
            if not steps or steps[-1][0] != rule.phase:
                steps.append((rule.phase, t))
                done = total = None
            if "done" in match.groupdict():
                done, total = int(match.group("done")), int(match.group("total"))
            progress_at = t
    return LogReading(tuple(steps), done, total, progress_at, last_line, failed)


# -- the pod ---------------------------------------------------------------------------------------------------
def leader(pod: Manifest) -> bool:
    """A replica's pod (a single-node pod, an LWS leader: component=server) that is not being deleted."""
    meta = pod.get("metadata") or {}
    return (meta.get("labels") or {}).get(render.COMPONENT_LABEL) == "server" and not meta.get("deletionTimestamp")


def starting_leaders(pods: Iterable[Manifest], container: str = sglang_startup.CONTAINER) -> list[tuple[str, str]]:
    """(pod, container run) of the leader pods whose engine runs but is not Ready: the ones whose log is read."""
    out = []
    for pod in pods:
        conditions = (pod.get("status") or {}).get("conditions") or []
        if not leader(pod) or any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            continue
        meta = pod.get("metadata") or {}
        running = (_container(pod, container).get("state") or {}).get("running")
        if running:
            out.append((str(meta.get("name")), f"{meta.get('uid')}/{running.get('startedAt')}"))
    return out


def _ready_at(pod: Manifest) -> float | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "True":
            return parse_rfc3339(str(cond.get("lastTransitionTime") or "")) or None
    return None


def _container(pod: Manifest, name: str) -> Manifest:
    for c in (pod.get("status") or {}).get("containerStatuses") or []:
        if c.get("name") == name:
            return dict(c)
    return {}


@dataclass(frozen=True)
class PodView:
    """A leader pod's startup as its status shows it: the steps it dates, and where it stands now."""

    steps: tuple[tuple[Reason, float], ...]
    failed: str  # why the start failed (a stuck container state, an exit), empty if it did not
    started_at: float  # the engine container's start (0: not started)
    message: str


def view_pod(pod: Manifest, container: str) -> PodView:
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    steps: list[tuple[Reason, float]] = [(Reason.PENDING, parse_rfc3339(str(meta.get("creationTimestamp") or "")))]
    scheduled = next(
        (c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled" and c.get("status") == "True"), None
    )
    if scheduled is None:
        why = next((c.get("message") for c in st.get("conditions") or [] if c.get("reason") == "Unschedulable"), None)
        return PodView(tuple(steps), "", 0.0, f"waiting for a node{': ' + str(why) if why else ''}")
    t_scheduled = parse_rfc3339(str(scheduled.get("lastTransitionTime") or "")) or steps[0][1]
    steps.append((Reason.SCHEDULED, t_scheduled))
    node = spec.get("nodeName") or "a node"
    inits = st.get("initContainerStatuses") or []
    finished = [((c.get("state") or {}).get("terminated") or {}) for c in inits]
    if inits and not all(f and f.get("exitCode") == 0 for f in finished):
        busy = [c.get("name") for c in inits if (c.get("state") or {}).get("running")]
        what = f"init container {busy[0]} runs" if busy else "waiting for its init containers"
        return PodView(tuple(steps), _stuck(inits), 0.0, f"on {node}: {what}")
    t_init = max((parse_rfc3339(str(f.get("finishedAt") or "")) for f in finished), default=t_scheduled)
    engine = _container(pod, container)
    state = dict(engine.get("state") or {})
    running = dict(state.get("running") or {})
    image = next((c.get("image") for c in spec.get("containers") or [] if c.get("name") == container), "")
    if running:
        started = parse_rfc3339(str(running.get("startedAt") or "")) or t_init
        if started - t_init >= 1:
            steps.append((Reason.PULLING_IMAGE, t_init))
        steps.append((Reason.LOADING_WEIGHTS, started))
        restarts = int(engine.get("restartCount") or 0)
        again = f" (restart {restarts})" if restarts else ""
        return PodView(tuple(steps), "", started, f"on {node}: the engine runs{again}")
    steps.append((Reason.PULLING_IMAGE, t_init or t_scheduled))
    failed = _stuck([engine]) if engine else ""
    return PodView(tuple(steps), failed, 0.0, failed if failed else f"on {node}: pulling {image}")


def _stuck(statuses: Iterable[Manifest]) -> str:
    """Why a container will not start by itself: a stuck waiting reason, or its last exit."""
    for c in statuses:
        state = dict(c.get("state") or {})
        waiting = dict(state.get("waiting") or {})
        reason = Reason.of(str(waiting.get("reason") or ""))
        if reason is not None and reason.stuck_container:
            last = dict((c.get("lastState") or {}).get("terminated") or {})
            exit_code = f" (last exit {last.get('exitCode')}: {last.get('reason')})" if last else ""
            return f"{c.get('name')}: {reason}{exit_code}"
        terminated = dict(state.get("terminated") or {})
        if terminated and terminated.get("exitCode") not in (None, 0):
            return f"{c.get('name')}: exited {terminated.get('exitCode')} ({terminated.get('reason')})"
    return ""


# -- history -----------------------------------------------------------------------------------------------------
def history_key(repo: str, commit: str, storage_class: str | None, accelerator: str) -> str:
    return f"{repo}@{commit[:12]} on {storage_class or 'default storage'}, {accelerator}"


def past(history: Iterable[StartupHistory], key: str) -> dict[Reason, list[int]]:
    for h in history:
        if h.key == key:
            return {r: list(p.seconds) for p in h.phases if (r := Reason.of(p.phase)) is not None}
    return {}


def remember(history: list[StartupHistory], key: str, durations: Mapping[Reason, float]) -> list[StartupHistory]:
    """The history with one more start of `key` (its phases' durations); the newest key first, HISTORY_KEYS kept."""
    old = next((h for h in history if h.key == key), StartupHistory(key=key))
    seconds = {p.phase: list(p.seconds) for p in old.phases}
    for phase, d in durations.items():
        seconds[str(phase)] = ([*seconds.get(str(phase), []), round(d)])[-HISTORY_STARTS:]
    order = [str(p) for p in STARTUP_PHASES]
    phases = [
        PhaseSeconds(phase=p, seconds=s)
        for p, s in sorted(seconds.items(), key=lambda i: order.index(i[0]) if i[0] in order else len(order))
    ]
    new = StartupHistory(key=key, starts=old.starts + 1, phases=phases)
    return [new, *[h for h in history if h.key != key]][:HISTORY_KEYS]


def durations(timeline: Iterable[StartupStep], until: float) -> dict[Reason, float]:
    """Seconds spent in each phase of a timeline that ended at `until` (a phase entered twice counts both)."""
    steps = [(Reason.of(s.phase), parse_rfc3339(s.since)) for s in timeline]
    out: dict[Reason, float] = {}
    for i, (phase, since) in enumerate(steps):
        end = steps[i + 1][1] if i + 1 < len(steps) else until
        if phase is not None and phase is not Reason.STARTUP_FAILED and end >= since:
            out[phase] = out.get(phase, 0.0) + end - since
    return out


# -- one replica -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expectation:
    """What a phase should take: from this cluster's earlier starts (history) or else the planner's estimate."""

    estimates: Mapping[Reason, int]
    history: Mapping[Reason, list[int]]
    stall_floor: float

    def typical(self, phase: Reason) -> float:
        seen = self.history.get(phase)
        return sum(seen) / len(seen) if seen else float(self.estimates.get(phase, 0) if not self.history else 0)

    def longest(self, phase: Reason) -> tuple[float, str]:
        seen = self.history.get(phase)
        if seen:
            return float(max(seen)), f"earlier starts took at most {ago(max(seen))}"
        return float(self.estimates.get(phase, 0)), f"the planner's estimate is {ago(self.estimates.get(phase, 0))}"

    def later(self, phase: Reason) -> float:
        """The phases after `phase` until Ready."""
        order = list(STARTUP_PHASES)
        if phase not in order:
            return 0.0
        return sum(self.typical(p) for p in order[order.index(phase) + 1 : -1])


def _round_eta(seconds: float) -> int:
    step = 5 if seconds < 60 else (10 if seconds < 600 else 60)
    return int(round(seconds / step) * step)


def replica(
    pod: Manifest, log: str | None, previous: ReplicaStartup | None, expect: Expectation, container: str, now: float
) -> ReplicaStartup:
    """Where one not-yet-Ready leader pod stands (previous: its entry in the last status, same pod)."""
    name = str((pod.get("metadata") or {}).get("name"))
    view = view_pod(pod, container)
    reading = read_log(log) if log and view.started_at else LogReading()
    candidates = list(view.steps) + [(p, t) for p, t in reading.steps if t >= view.started_at]
    failed = view.failed or (f"the engine logged: {reading.failed_line}" if reading.failed_line else "")
    if failed:
        candidates.append((Reason.STARTUP_FAILED, now))
    timeline = list(previous.timeline) if previous is not None else []
    known = {(s.phase, s.since) for s in timeline}
    last_t = parse_rfc3339(timeline[-1].since) if timeline else 0.0
    for phase, t in sorted(candidates, key=lambda c: c[1]):  # stable: steps of one second keep their order
        step = StartupStep(phase=str(phase), since=stamp(t))
        if t <= 0 or (step.phase, step.since) in known or t < last_t or (timeline and phase == timeline[-1].phase):
            continue  # already in the timeline, older than its last step, or no change
        timeline.append(step)
        known.add((step.phase, step.since))
        last_t = t
    timeline = timeline[-TIMELINE_STEPS:]
    if not timeline:  # no usable timestamp at all
        timeline.append(StartupStep(phase=str(Reason.PENDING), since=stamp(now)))
    phase = Reason.of(timeline[-1].phase) or Reason.LOADING_WEIGHTS
    since = parse_rfc3339(timeline[-1].since)
    progress = percent = None
    progress_at = since
    if reading.phase == phase:
        progress_at = max(since, reading.progress_at)
        if reading.done is not None and reading.total:
            progress, percent = f"{reading.done}/{reading.total}", reading.done * 100 // reading.total
    elapsed = now - since
    if percent is not None and reading.done:
        remaining = elapsed * ((reading.total or 0) - reading.done) / reading.done
    else:
        remaining = max(0.0, expect.typical(phase) - elapsed)
    eta = None if phase is Reason.STARTUP_FAILED else _round_eta(remaining + expect.later(phase))
    stalled = False
    words = WORDS.get(phase, str(phase))
    detail = f"{words}{f' {progress} ({percent}%)' if progress else ''}, {ago(elapsed)} in phase"
    if phase in WATCHED:
        longest, why = expect.longest(phase)
        allowed = max(expect.stall_floor, STALL_FACTOR * longest)
        quiet = now - progress_at
        if quiet > allowed:
            stalled = True
            at = f" at {progress} ({percent}%)" if progress else ""
            detail = f"no progress in {phase}{at} for {ago(quiet)} ({why})"
    if failed:
        message = failed
    elif stalled or reading.steps:
        message = detail
    else:
        message = f"{detail}; {view.message}"
    return ReplicaStartup(
        pod=name,
        phase=str(phase),
        since=stamp(since),
        progress=progress,
        percent=percent,
        progress_at=stamp(progress_at),
        eta_seconds=eta,
        stalled=stalled or None,
        message=message,
        last_log=scrub(reading.last_line)[:LAST_LOG_CHARS] or None,
        timeline=timeline,
    )


# -- the KimiDeployment -------------------------------------------------------------------------------------------
@dataclass
class Startup:
    """What the starts of a KimiDeployment's replicas add to its status and Events."""

    status: StartupStatus | None
    events: list[Event] = field(default_factory=list)
    finished: list[tuple[Reason, float]] = field(default_factory=list)  # phase durations of replicas now Ready
    slowest: ReplicaStartup | None = None
    stalled: ReplicaStartup | None = None

    @property
    def starting(self) -> bool:
        return bool(self.status is not None and self.status.replicas)


def _rank(r: ReplicaStartup) -> tuple[int, int]:
    """Sort key: failed and stalled first, then the least advanced phase, then the least progress."""
    phase = Reason.of(r.phase)
    order = list(STARTUP_PHASES)
    if phase is Reason.STARTUP_FAILED:
        return (-2, 0)
    if r.stalled:
        return (-1, 0)
    return (order.index(phase) if phase in order else 0, r.percent or 0)


def summary(r: ReplicaStartup, starting: int) -> str:
    phase = Reason.of(r.phase) or Reason.LOADING_WEIGHTS
    text = WORDS.get(phase, r.phase) + (f" {r.percent}%" if r.percent is not None else "")
    if phase is Reason.STARTUP_FAILED:
        return "Failed"
    if r.stalled:
        return f"Stalled: {text}"
    eta = f" ETA {ago(r.eta_seconds)}" if r.eta_seconds else ""
    more = f" (+{starting - 1})" if starting > 1 else ""
    return f"{text}{eta}{more}".replace("m00s", "m")


def startup(
    pods: Iterable[Manifest],
    logs: Mapping[str, str],
    previous: StartupStatus | None,
    key: str,
    estimates: Mapping[Reason, int],
    stall_floor: float,
    now: float,
    container: str = sglang_startup.CONTAINER,
) -> Startup:
    """The startup status of a KimiDeployment's leader pods (component=server), the Events of each phase change,
    and the history grown by the replicas that went Ready since the last status."""
    prev = previous or StartupStatus()
    before = {r.pod: r for r in prev.replicas}
    history = list(prev.history)
    expect = Expectation(estimates, past(history, key), stall_floor)
    events: list[Event] = []
    finished: list[tuple[Reason, float]] = []
    replicas: list[ReplicaStartup] = []
    for pod in pods:
        if not leader(pod):
            continue
        name = str((pod.get("metadata") or {}).get("name"))
        old = before.get(name)
        ready_at = _ready_at(pod)
        if ready_at is not None:
            if old is not None:  # went Ready since the last status: one more start in the history
                took = durations(old.timeline, ready_at)
                history = remember(history, key, took)
                finished.extend(took.items())
                total = ready_at - parse_rfc3339(old.timeline[0].since) if old.timeline else 0.0
                parts = ", ".join(f"{WORDS.get(p, p)} {ago(s)}" for p, s in took.items() if s >= 1)
                events.append(Event("Normal", Reason.READY, f"replica {name}: Ready after {ago(total)} ({parts})"))
            continue
        now_r = replica(pod, logs.get(name), old, expect, container, now)
        known = len(old.timeline) if old is not None else max(0, len(now_r.timeline) - 1)
        for i, step in enumerate(now_r.timeline[known:], start=known):
            phase = Reason.of(step.phase) or Reason.LOADING_WEIGHTS
            after = ""
            if i > 0:
                prior = now_r.timeline[i - 1]
                spent = parse_rfc3339(step.since) - parse_rfc3339(prior.since)
                after = f" after {ago(spent)} {WORDS.get(Reason.of(prior.phase) or phase, prior.phase).lower()}"
            kind = "Warning" if phase is Reason.STARTUP_FAILED else "Normal"
            text = now_r.message if step is now_r.timeline[-1] else ""
            events.append(Event(kind, phase, f"replica {name}: {phase}{after}{'; ' + text if text else ''}"))
        replicas.append(now_r)
    replicas.sort(key=_rank)
    slowest = replicas[0] if replicas else None
    stalled = next((r for r in replicas if r.stalled), None)
    text = summary(slowest, len(replicas)) if slowest is not None else None
    status = StartupStatus(summary=text, replicas=replicas, history=history) if replicas or history else None
    return Startup(status, events, finished, slowest, stalled)
