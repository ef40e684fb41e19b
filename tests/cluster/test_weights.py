"""The weights cache on the real API server: revision pinning, reuse by a second deployment, unbindable volumes.

The download itself is simulated here (kwok completes the fetch Job's pod); the fetcher's own behaviour - resume,
verification, space check, token hygiene - is tested against the Hub stand-in in tests/unit/test_fetch.py.
"""

from __future__ import annotations

import pytest

from kimi_testbed.hub import HubStandIn

from .support import Env, container, flag, go_ready, kd, weights_pv

pytestmark = pytest.mark.cluster


def test_the_branch_is_resolved_through_the_hub_and_pinned(env: Env, hub: HubStandIn) -> None:
    go_ready(env, "pin")
    status = env.get("pin")["status"]
    commit = hub.commit("main", "moonshotai/Kimi-K2.5")
    assert status["model"] == {
        "repo": "moonshotai/Kimi-K2.5",
        "servedModelName": "kimi-k2.5",
        "revision": "main",
        "resolvedRevision": commit,
    }
    assert status["weights"]["completedKey"] == f"moonshotai/Kimi-K2.5@{commit}"
    cmd = container(env.read("Deployment", "pin")["spec"]["template"]["spec"])["command"]
    assert flag(cmd, "--model-path") == f"/models/moonshotai/Kimi-K2.5/{commit}"


def test_a_second_deployment_on_the_same_volume_reuses_the_snapshot(env: Env) -> None:
    weights_pv(env.kubectl, env.ns, "shared-cache")
    env.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "shared-cache"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}},
        }
    )
    env.apply(kd("first", weights={"existingClaimName": "shared-cache"}))
    env.wait_condition("first", "Ready", "True", "Ready", timeout=120)
    env.apply(kd("second", weights={"existingClaimName": "shared-cache"}))
    cond = env.wait_condition("second", "WeightsReady", "True", "Reused", timeout=60)
    assert "no download needed" in cond["message"]
    env.wait_condition("second", "Ready", "True", "Ready", timeout=120)
    assert "second-fetch" not in env.names("Job")
    jobs_for_second = [e for e in env.items("Event") if e["involvedObject"].get("name", "").startswith("second-fetch")]
    assert jobs_for_second == [], "no fetch Job (and so no bytes) for the second deployment"


def test_a_volume_that_cannot_bind_is_reported_not_waited_on(env: Env) -> None:
    env.apply(kd("nobind", weights={"storageClassName": "does-not-exist"}))
    cond = env.wait_condition("nobind", "WeightsReady", "False", "VolumeNotBound", timeout=60)
    assert "does-not-exist" in cond["message"] and "Pending" in cond["message"]
    assert (env.condition("nobind", "Ready") or {}).get("reason") == "VolumeNotBound"
    env.wait_event("nobind", "Warning", "VolumeNotBound")
    assert env.names("Deployment") == set(), "no GPU workload without weights"
