"""Autoscaler benchmark: the built-in queue-depth policy vs an HPA-style policy on the same synthetic traces.

Prints numbers; asserts nothing. Time is simulated (one observation every 15 s), so the results are exact and
repeatable. The HPA-style policy follows the HorizontalPodAutoscaler's documented algorithm on a per-pod average
metric: desired = ceil(ready * avg / target) outside a 10% tolerance, scale-up without stabilization limited to
max(4 pods, 100%) per step, scale-down stabilized over 300 s; like the HPA it only sees ready pods.

The queue is a fluid model: requests arrive at rate lam(t); each ready replica completes MU requests/s while it
has work; queued = what is left. Target 8 queued per replica. Traces:
  step      lam 0.5 MU, then 3 MU from t=5 min (1 replica, loads in 2 min)  -> reaction time, replicas at 30 min
  noisy     lam 2 MU with +-30% noise every 15 s (2 replicas)               -> replica changes in 2 h (flapping)
  slowload  lam 2.5 MU from t=0; a new replica needs 25 min to load          -> peak replicas requested (3 needed)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kimi_operator.autoscaler.policy import Config, Observation, ReplicaLoad, State, decide

STEP = 15
TARGET = 8
MU = 0.5  # requests/s one replica completes


@dataclass
class Hpa:
    min_replicas: int = 1
    max_replicas: int = 8
    tolerance: float = 0.1
    down_window: int = 300
    recs: list[tuple[float, int]] = field(default_factory=list)

    def decide(self, now: float, current: int, ready_queues: list[float]) -> int:
        if not ready_queues:
            return current
        avg = sum(ready_queues) / len(ready_queues)
        ratio = avg / TARGET
        raw = current if abs(ratio - 1) <= self.tolerance else math.ceil(len(ready_queues) * ratio)
        self.recs = [(t, r) for t, r in self.recs if now - t <= self.down_window] + [(now, raw)]
        if raw > current:
            desired = min(raw, max(current + 4, 2 * current))
        else:
            desired = max(r for _, r in self.recs)  # scale-down stabilization: highest recommendation in window
            desired = min(desired, current)
        return max(self.min_replicas, min(self.max_replicas, desired))


def simulate(
    lam: Callable[[float], float], seconds: int, load_seconds: int, policy: str, start: int = 1
) -> tuple[list[tuple[float, int]], float]:
    """Replica count over time and the first time queue per ready replica exceeded the target."""
    cfg = Config(min_replicas=1, max_replicas=8, target_queue_depth=TARGET)
    state, hpa = State(), Hpa()
    current, ready_at = start, [0.0] * start
    queue, crossed = 0.0, float("nan")
    out = []
    for t in range(0, seconds, STEP):
        now = float(t)
        ready = [r for r in ready_at[:current] if r <= now]
        queue = max(0.0, queue + (lam(now) - MU * len(ready)) * STEP)
        per = queue / len(ready) if ready else 0.0
        if math.isnan(crossed) and per > TARGET * 1.1:
            crossed = now
        if policy == "builtin":
            loads = tuple(ReplicaLoad(f"r{i}", per, min(per, 4.0)) for i in range(len(ready)))
            d = decide(cfg, state, Observation(now, current, loads))
            state, desired = d.state, d.desired
        else:
            desired = hpa.decide(now, current, [per] * len(ready))
        if desired > current:
            ready_at += [now + load_seconds] * (desired - current)
        ready_at = ready_at[:desired]
        current = desired
        out.append((now, current))
    return out, crossed


def changes(series: list[tuple[float, int]], start: int = 1) -> list[tuple[float, int]]:
    out, last = [], start
    for t, n in series:
        if n != last:
            out.append((t, n))
        last = n
    return out


def main() -> int:
    rows = []
    results: dict[str, dict[str, float]] = {"builtin": {}, "hpa": {}}
    for policy in ("builtin", "hpa"):
        series, crossed = simulate(lambda t: MU * (0.5 if t < 300 else 3.0), 1800, 120, policy)
        ups = [c for c in changes(series) if c[0] >= crossed]
        reaction = ups[0][0] - crossed if ups else float("nan")
        results[policy]["reaction"] = reaction
        rows.append(
            (policy, "step", f"first scale-up {reaction:.0f} s after crossing; {series[-1][1]} replicas at 30 min")
        )
    rng = random.Random(7)
    noise = [rng.uniform(0.7, 1.3) for _ in range(1000)]
    for policy in ("builtin", "hpa"):
        series, _ = simulate(lambda t: 2 * MU * noise[int(t // STEP) % len(noise)], 7200, 120, policy, start=2)
        results[policy]["flaps"] = len(changes(series, start=2))
        rows.append((policy, "noisy", f"{results[policy]['flaps']:.0f} replica changes in 2 h"))
    for policy in ("builtin", "hpa"):
        series, _ = simulate(lambda _t: 2.5 * MU, 3600, 1500, policy)
        results[policy]["peak"] = max(n for _, n in series)
        rows.append((policy, "slowload", f"peak {results[policy]['peak']:.0f} replicas requested (3 needed)"))
    print(f"{'policy':<8} {'trace':<9} result")
    for r in rows:
        print(f"{r[0]:<8} {r[1]:<9} {r[2]}")
    b, h = results["builtin"], results["hpa"]
    print(
        f"\nratios built-in / HPA-style: reaction {b['reaction']:.0f}/{h['reaction']:.0f} s, "
        f"noisy changes {b['flaps']:.0f}/{h['flaps']:.0f}, slow-load peak {b['peak']:.0f}/{h['peak']:.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
