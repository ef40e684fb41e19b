"""Polling helpers whose failures say what was expected and what was last seen.

    pod = wait_for(lambda: running_pod(core, ns, "app=x") or NotYet(describe_pods(core, ns)),
                   timeout=30, what="a Running pod labelled app=x")

``fn`` returns something truthy when done (that value is returned), or something falsy: ``None``/``False``, or
``NotYet("why")`` to say what it saw. Exceptions raised by ``fn`` count as "not yet" and are reported too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class NotYet:
    """A falsy result carrying a description of what was seen."""

    def __init__(self, seen: object) -> None:
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return str(self.seen)


class WaitTimeoutError(AssertionError):
    """Raised by wait_for; an AssertionError so pytest shows it as a test failure, not an error."""


def wait_for(
    fn: Callable[[], T | NotYet | None],
    timeout: float = 30.0,
    what: str = "the condition",
    interval: float = 0.2,
) -> T:
    """Call ``fn`` until it returns something truthy; return that, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = "nothing (never called)"
    calls = 0
    while True:
        calls += 1
        try:
            result = fn()
        except Exception as err:
            last = f"{type(err).__name__}: {err}"
        else:
            if result:
                return result  # type: ignore[return-value]
            last = result
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"timed out after {timeout:g}s ({calls} checks) waiting for {what}; last seen: {last!r}"
            )
        time.sleep(interval)


def pods_summary(pods: list[Any]) -> str:
    """One line per pod: name phase node ip [reason of a false condition]."""
    out = []
    for pod in pods:
        status = pod.status
        why = ""
        for cond in status.conditions or []:
            if cond.status != "True" and (cond.reason or cond.message):
                why = f" {cond.type}={cond.status}:{cond.reason}:{(cond.message or '')[:120]}"
                break
        out.append(f"{pod.metadata.name} {status.phase} node={pod.spec.node_name} ip={status.pod_ip}{why}")
    return "; ".join(out) or "no pods"


def wait_for_pods(
    core: Any,
    namespace: str,
    selector: str,
    count: int,
    phase: str = "Running",
    timeout: float = 60.0,
) -> list[Any]:
    """Wait until exactly ``count`` pods matching ``selector`` are in ``phase``; return them (sorted by name)."""

    def check() -> tuple[list[Any]] | NotYet:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        matching = [p for p in pods if p.status.phase == phase and p.metadata.deletion_timestamp is None]
        if len(matching) == count:
            return (sorted(matching, key=lambda p: p.metadata.name),)  # a 1-tuple is truthy even for count 0
        return NotYet(pods_summary(pods))

    return wait_for(check, timeout, f"{count} pod(s) {selector!r} {phase} in namespace {namespace}")[0]
