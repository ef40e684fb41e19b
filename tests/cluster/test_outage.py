"""The API server goes away and comes back: the operator keeps its watches, misses no change and logs the outage
briefly. Real: the test bed's kube-apiserver process, stopped and started again by the supervisor with the same
arguments (what a control-plane upgrade or a crash does), every other component left running.

Every check waits for a state and says what it saw. The outage's length is printed for the issue note.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kimi_testbed.cluster import Cluster
from kimi_testbed.wait import NotYet, wait_for

from .support import Env, go_ready, kd, weights_pv

pytestmark = pytest.mark.cluster

DOWN_SECONDS = 8.0  # longer than kopf's first backoffs (0.5, 1, 2 s): the watches must retry several times


def test_an_api_server_restart_loses_no_change_and_logs_no_traceback(env: Env, cluster: Cluster) -> None:
    go_ready(env, "steady")
    assert env.op is not None
    log_before = env.op.log_path.read_text(errors="replace")
    t0 = time.monotonic()
    down = cluster.restart_apiserver(down_seconds=DOWN_SECONDS)
    back = time.monotonic() - t0
    assert down >= DOWN_SECONDS, down
    assert env.op.proc is not None and env.op.proc.poll() is None, "the operator survived the outage"

    # changes made after the API server came back reach the operator through its re-established watches
    weights_pv(env.kubectl, env.ns, "after-weights")
    t1 = time.monotonic()
    env.apply(kd("after"))
    env.wait_condition("after", "Ready", "True", "Ready", timeout=120)
    t_new = time.monotonic() - t1
    env.apply(kd("steady", service={"annotations": {"outage-test/edited": "after"}}))

    def edited() -> bool | NotYet:
        got: Any = (env.read("Service", "steady")["metadata"].get("annotations") or {}).get("outage-test/edited")
        return got == "after" or NotYet({"service annotation": got})

    wait_for(edited, 60, "the edit made after the outage applied to the Service")

    log = env.op.log_path.read_text(errors="replace")[len(log_before) :]
    assert "Traceback" not in log, log[-3000:]
    print(
        f"[outage] kube-apiserver unavailable {down:.1f}s (asked {DOWN_SECONDS:g}s; restart call {back:.1f}s); a "
        f"KimiDeployment applied after it Ready in {t_new:.1f}s; operator log during and after: "
        f"{len(log.splitlines())} lines, {log.count('ERROR')} ERROR, {log.count('WARNING')} WARNING, no traceback",
        flush=True,
    )
