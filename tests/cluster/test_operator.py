"""The operator end to end on a real API server, controller manager, scheduler and kwok GPU nodes.

Simulated here: the GPUs (kwok nodes with nvidia.com/gpu: 8) and the pods' containers (kwok marks scheduled pods
Running/Ready and completes Job pods), so the weights download is simulated. Everything else is real.
"""

from __future__ import annotations

import time

import pytest
import yaml

from kimi_operator import kube
from kimi_operator.render import RETAIN_ANNOTATION as RETAIN
from kimi_testbed.hub import HubStandIn
from kimi_testbed.wait import NotYet, wait_for

from .support import ROOT, Env, container, flag, go_ready, kd, weights_pv

pytestmark = pytest.mark.cluster


def test_apply_downloads_then_serves_and_reports_ready(env: Env) -> None:
    weights_pv(env.kubectl, env.ns, "k25-weights")
    env.apply(yaml.safe_load((ROOT / "examples" / "kimi-k2.5-h200.yaml").read_text()) | {"metadata": {"name": "k25"}})
    env.wait_condition("k25", "WeightsReady", "True", timeout=120)
    ready = env.wait_condition("k25", "Ready", "True", "Ready", timeout=120)
    assert ready["observedGeneration"] == env.get("k25")["metadata"]["generation"]

    pod_spec = env.read("Deployment", "k25")["spec"]["template"]["spec"]
    c = container(pod_spec)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert flag(c["command"], "--tp-size") == "8"
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    pods = env.items("Pod", "app.kubernetes.io/instance=k25,app.kubernetes.io/component=server")
    assert len(pods) == 1 and pods[0]["spec"]["nodeName"]

    status = env.get("k25")["status"]
    assert status["ready"] == "1/1" and status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://k25.{env.ns}.svc:8000/v1"
    assert status["plan"]["summary"] == "1x8 H200 TP8"
    assert status["weights"]["progress"] == "100%"
    assert env.names("Service") == {"k25", "k25-headless"}
    wait_for(lambda: "k25-fetch" not in env.names("Job") or None, timeout=30, what="finished fetch Job removed")
    for reason in ("Downloading", "Downloaded", "Ready"):
        env.wait_event("k25", "Normal", reason)

    metrics = env.op.metrics()
    assert f'kimi_operator_weights_ready{{name="k25",namespace="{env.ns}"}} 1.0' in metrics

    printed = env.run("get", "kd", "k25", "-o", "wide").stdout
    assert "1/1" in printed and "Ready" in printed and "100%" in printed and "1x8 H200 TP8" in printed


def test_idle_kimideployment_makes_zero_writes(env: Env) -> None:
    go_ready(env, "idle")
    time.sleep(2 * env.op.resync_seconds)  # let any in-flight status settle
    before_writes, before_reconciles = env.op.writes(), env.op.reconciles()
    wait_for(
        lambda: env.op.reconciles() >= before_reconciles + 3 or None,
        timeout=60,
        what="three resync reconciles",
    )
    assert env.op.writes() == before_writes


def test_quantities_the_server_normalises_do_not_cause_endless_reapplies(env: Env) -> None:
    """cpu 96000m, memory 1048576Mi and shmSize 65536Mi are stored as 96, 1Ti and 64Gi: compared by value."""
    go_ready(
        env,
        "quant",
        engine={"resources": {"requests": {"cpu": "96000m", "memory": "1048576Mi"}}},
        topology={"network": {"shmSize": "65536Mi"}},
    )
    stored = env.read("Deployment", "quant")["spec"]["template"]["spec"]
    assert stored["containers"][0]["resources"]["requests"]["cpu"] == "96"  # the server did normalise
    time.sleep(2 * env.op.resync_seconds)
    before_writes, before_reconciles = env.op.writes(), env.op.reconciles()
    wait_for(
        lambda: env.op.reconciles() >= before_reconciles + 3 or None,
        timeout=60,
        what="three resync reconciles",
    )
    assert env.op.writes() == before_writes, "the Deployment was re-applied although nothing changed"


def test_children_edited_or_deleted_by_hand_are_restored(env: Env) -> None:
    go_ready(env, "drift")
    env.run("scale", "deployment", "drift", "--replicas=3")
    wait_for(
        lambda: env.read("Deployment", "drift")["spec"]["replicas"] == 1 or None,
        timeout=60,
        what="Deployment replicas restored to 1",
    )
    env.run("delete", "service", "drift")
    wait_for(lambda: "drift" in env.names("Service") or None, timeout=60, what="Service recreated")


def test_scale_subresource_drives_replicas_and_pdb(env: Env) -> None:
    go_ready(env, "scaled")
    env.run("scale", "kd", "scaled", "--replicas=2")
    wait_for(
        lambda: env.read("Deployment", "scaled")["spec"]["replicas"] == 2 or None,
        timeout=60,
        what="Deployment scaled to 2",
    )
    wait_for(lambda: "scaled" in env.names("PodDisruptionBudget") or None, timeout=60, what="PDB created")
    env.wait_condition("scaled", "Ready", "True", "Ready", timeout=120)
    assert env.get("scaled")["status"]["selector"] == (
        "app.kubernetes.io/name=kimi,app.kubernetes.io/instance=scaled,app.kubernetes.io/component=server"
    )
    env.run("scale", "kd", "scaled", "--replicas=1")
    wait_for(lambda: "scaled" not in env.names("PodDisruptionBudget") or None, timeout=60, what="PDB removed")


def test_delete_removes_children_but_keeps_the_retained_weights_volume(env: Env) -> None:
    go_ready(env, "gone")
    env.run("delete", "kd", "gone", "--wait=false")
    wait_for(lambda: not env.names("Deployment") or None, timeout=60, what="Deployment garbage-collected")
    wait_for(lambda: not env.names("Service") or None, timeout=60, what="Services garbage-collected")
    time.sleep(3)
    assert env.names("PersistentVolumeClaim") == {"gone-weights"}


def test_delete_with_retain_off_removes_the_weights_volume(env: Env) -> None:
    go_ready(env, "noretain", weights={"retainOnDelete": False})
    env.run("delete", "kd", "noretain", "--wait=false")
    wait_for(lambda: not env.names("PersistentVolumeClaim") or None, timeout=60, what="PVC garbage-collected")


def test_invalid_specs_are_refused_at_apply_time_with_the_reason(env: Env) -> None:
    out = env.apply(kd("bad", engine={"extraArgs": ["--tp=4"]}), check=False)
    assert out.returncode != 0 and "--tp=4 is set by the operator" in out.stderr
    # An abbreviation SGLang's parser maps to an owned field is refused at admission too (generated CEL pattern).
    out = env.apply(kd("bad", engine={"extraArgs": ["--mem-frac=0.95"]}), check=False)
    assert out.returncode != 0 and "--mem-frac=0.95 is set by the operator" in out.stderr
    out = env.apply(kd("bad", topology={"accelerator": "TPU"}), check=False)
    assert out.returncode != 0 and "accelerator" in out.stderr
    out = env.apply(kd("bad", rollout={"maxSurge": 0, "maxUnavailable": 0}), check=False)
    assert out.returncode != 0 and "cannot both be 0" in out.stderr
    out = env.apply(kd("bad", replicaz=1), check=False)
    assert out.returncode != 0 and "replicaz" in out.stderr
    # Names whose children would be invalid (a dotted name is no Service name; -headless must fit 63 characters).
    for name in ("my.model", "a" * 50):
        out = env.apply(kd(name), check=False)
        assert out.returncode != 0 and "DNS-1035 label of at most 49 characters" in out.stderr, out.stderr
    out = env.apply(kd("bad", autoscaling={"enabled": True, "minReplicas": 3, "maxReplicas": 2}), check=False)
    assert out.returncode != 0 and "minReplicas must not exceed maxReplicas" in out.stderr
    out = env.apply(kd("bad", engine={"env": [{"name": "HF_TOKEN", "value": "hf_secret"}]}), check=False)
    assert out.returncode != 0 and "model.tokenSecretRef" in out.stderr and "hf_secret" not in out.stderr
    out = env.apply(kd("bad", engine={"env": [{"name": "HF_HUB_OFFLINE", "value": "0"}]}), check=False)
    assert out.returncode != 0 and "the operator sets HF_HUB_OFFLINE" in out.stderr
    out = env.apply(kd("bad", engine={"resources": {"requests": "lots"}}), check=False)
    assert out.returncode != 0 and "resources.requests" in out.stderr
    assert env.items("KimiDeployment") == []


def test_weights_volume_is_immutable(env: Env) -> None:
    env.apply(kd("imm", weights={"existingClaimName": "cache-a"}))
    out = env.apply(kd("imm", weights={"existingClaimName": "cache-b"}), check=False)
    assert out.returncode != 0 and "existingClaimName is immutable" in out.stderr


def test_a_spec_the_planner_refuses_gets_a_reason_and_no_workload(env: Env) -> None:
    env.apply(kd("h100", topology={"accelerator": "H100", "nodesPerReplica": 1}))
    cond = env.wait_condition("h100", "Ready", "False", "DoesNotFit")
    assert "nodesPerReplica: 2" in cond["message"] and "H200" in cond["message"]
    env.wait_event("h100", "Warning", "DoesNotFit")
    for kind in ("Deployment", "Job", "PersistentVolumeClaim", "Service"):
        assert env.names(kind) == set(), kind


def test_operator_killed_mid_reconcile_converges_without_duplicates(env: Env) -> None:
    weights_pv(env.kubectl, env.ns, "crash-weights")
    env.apply(kd("crash"))
    wait_for(lambda: env.names("Job") or None, timeout=60, what="fetch Job created")
    env.op.kill()
    try:
        env.apply(kd("crash", replicas=2))
    finally:
        env.op.start()
    env.wait_condition("crash", "Ready", "True", "Ready", timeout=120)
    assert env.names("Deployment") == {"crash", "crash-gateway"}  # two replicas: the gateway is on by default
    assert env.names("PodDisruptionBudget") == {"crash", "crash-gateway"}
    assert env.names("PersistentVolumeClaim") == {"crash-weights"}
    assert env.read("Deployment", "crash")["status"]["readyReplicas"] == 2


def test_a_fifth_replica_on_four_nodes_is_reported_unschedulable(env: Env) -> None:
    go_ready(env, "big")
    env.run("scale", "kd", "big", "--replicas=5")
    cond = env.wait_condition("big", "Ready", "False", "Unschedulable", timeout=90)
    assert "nvidia.com/gpu" in cond["message"]
    env.run("scale", "kd", "big", "--replicas=1")
    env.wait_condition("big", "Ready", "True", "Ready", timeout=90)


def test_toggling_retain_on_delete_re_owns_the_weights_volume_so_a_delete_keeps_it(env: Env) -> None:
    """retainOnDelete false -> true -> delete: the PVC stays (before, it kept its owner reference and was deleted)."""
    go_ready(env, "toggle", weights={"retainOnDelete": False})
    pvc = env.read("PersistentVolumeClaim", "toggle-weights")
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "KimiDeployment"
    env.apply(kd("toggle", weights={"retainOnDelete": True}))

    def released() -> bool | NotYet:
        meta = env.read("PersistentVolumeClaim", "toggle-weights")["metadata"]
        return (not meta.get("ownerReferences") and meta["annotations"][RETAIN] == "true") or NotYet(meta)

    wait_for(released, timeout=60, what="the weights PVC without an owner reference, retain-on-delete true")
    env.run("delete", "kd", "toggle", "--wait=true")
    time.sleep(3)  # give the garbage collector the chance it must not take
    assert "toggle-weights" in env.names("PersistentVolumeClaim")
    env.apply(kd("toggle", weights={"retainOnDelete": False}))

    def owned() -> bool | NotYet:
        meta = env.read("PersistentVolumeClaim", "toggle-weights")["metadata"]
        refs = meta.get("ownerReferences") or []
        return (len(refs) == 1 and refs[0]["uid"] == env.get("toggle")["metadata"]["uid"]) or NotYet(meta)

    wait_for(owned, timeout=60, what="the re-created KimiDeployment owning its weights PVC again")


def test_a_child_the_api_server_refuses_is_reported_with_its_reason_and_an_event(env: Env) -> None:
    """A toleration with tolerationSeconds but effect NoSchedule passes the CRD but the Deployment is invalid."""
    bad = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}]
    go_ready(env, "refused")
    env.apply(kd("refused", topology={"tolerations": bad}))
    cond = env.wait_condition("refused", "Ready", "False", "ApplyFailed", timeout=60)
    assert "Deployment/refused" in cond["message"] and "tolerationSeconds" in cond["message"], cond
    env.wait_event("refused", "Warning", "ApplyFailed")
    env.apply(kd("refused"))  # fixed: the failure clears with the next generation
    env.wait_condition("refused", "Ready", "True", "Ready", timeout=60)


def test_an_existing_claim_that_does_not_exist_is_reported_at_once_and_nothing_downloads(env: Env) -> None:
    env.apply(kd("noclaim", weights={"existingClaimName": "no-such-claim"}))
    cond = env.wait_condition("noclaim", "Ready", "False", "VolumeNotBound", timeout=30)
    assert "no-such-claim" in cond["message"] and "does not exist" in cond["message"], cond
    assert "Job" not in {k for k, _ in env.kube.list_children(env.ns, "app.kubernetes.io/instance=noclaim")[0]}
    env.wait_event("noclaim", "Warning", "VolumeNotBound")


def test_a_missing_priority_class_is_reported_with_the_admission_message(env: Env) -> None:
    """The API server's Priority admission refuses the fetch pod; the Job controller says so only in an Event."""
    weights_pv(env.kubectl, env.ns, "noprio-weights")
    env.apply(kd("noprio", topology={"priorityClassName": "no-such-priority"}))
    cond = env.wait_condition("noprio", "Ready", "False", "FailedCreate", timeout=60)
    assert "fetch Job" in cond["message"] and "no-such-priority" in cond["message"], cond
    env.wait_event("noprio", "Warning", "FailedCreate")
    progressing = env.condition("noprio", "Progressing")
    assert progressing is not None and progressing["status"] == "False", progressing
    # fixed: the PriorityClass appears, the Job's next attempt creates the pod and the download proceeds
    env.kubectl.apply(
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": "no-such-priority"},
            "value": 10,
        }
    )
    try:
        env.wait_condition("noprio", "Ready", "True", "Ready", timeout=180)
    finally:
        env.kubectl.run("delete", "priorityclass", "no-such-priority", "--ignore-not-found", check=False)


def test_a_status_patch_worked_out_from_an_older_read_is_refused_by_the_api_server(env: Env) -> None:
    """The contract reconcile_one relies on (tests/unit/test_controller_loop.py): a merge patch of /status that
    carries the resourceVersion it was worked out from lands only while the object is still that version; a
    re-created namesake (or any change since) gets 409. A UID in the patch is no such guard: the status subresource
    copies metadata from the stored object before comparing (measured here: a wrong UID was accepted)."""
    env.apply(kd("incarnation"))
    env.wait_condition("incarnation", "WeightsReady", "False", timeout=60)
    first = env.get("incarnation")
    env.run("delete", "kd", "incarnation", "--wait=true")
    env.apply(kd("incarnation"))
    again = env.get("incarnation")
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    with pytest.raises(kube.Conflict) as refused:
        env.kube.patch_status(
            env.ns, "incarnation", {"endpoint": "stale"}, resource_version=first["metadata"]["resourceVersion"]
        )
    assert "modified" in str(refused.value), refused.value

    def patched() -> bool | NotYet:
        body = env.get("incarnation")
        try:  # the operator writes this status too: retried on a fresh read until one lands
            env.kube.patch_status(
                env.ns, "incarnation", {"observedGeneration": 0}, resource_version=body["metadata"]["resourceVersion"]
            )
        except kube.Conflict as err:
            return NotYet(str(err))
        return True

    wait_for(patched, timeout=30, what="a status patch with the current resourceVersion to be accepted")


def test_a_hanging_hub_delays_no_other_kimideployment_and_its_answer_is_used_at_once(env: Env, hub: HubStandIn) -> None:
    """Issue 16, defect 3: a Hub that hung held a worker 10 s per call and delayed unrelated edits 3 s -> 23 s. The
    Hub stand-in holds every model-info request; a KimiDeployment on a branch waits for it (Resolving, no Job), one
    pinned to a commit goes ahead; released, the branch's answer queues its KimiDeployment at once."""
    branch = f"hang-{env.ns[-6:]}"  # a revision no earlier test resolved (the resolver caches answers)
    repo = hub.repos["moonshotai/Kimi-K2.5"]
    repo.refs[branch] = repo.main_commit
    for name in ("hung", "pinned"):
        weights_pv(env.kubectl, env.ns, f"{name}-weights")
    hub.hang_model_info()
    try:
        asked = hub.info_requests
        env.apply(kd("hung", model={"repo": "moonshotai/Kimi-K2.5", "revision": branch}))
        env.wait_condition("hung", "WeightsReady", "False", "Resolving", timeout=30)
        assert hub.info_requests > asked, "the operator is asking the Hub"
        env.apply(kd("pinned", model={"repo": "moonshotai/Kimi-K2.5", "revision": repo.main_commit}))
        env.wait_condition("pinned", "WeightsReady", "False", "Downloading", timeout=30)
        assert "pinned-fetch" in env.names("Job") and "hung-fetch" not in env.names("Job")
        assert (env.condition("hung", "WeightsReady") or {}).get("reason") == "Resolving", "still waiting"
    finally:
        hub.hang_model_info(False)
    env.wait_condition("hung", "WeightsReady", "False", "Downloading", timeout=30)
    command = container(env.read("Job", "hung-fetch")["spec"]["template"]["spec"])["command"]
    assert flag(command, "--revision") == repo.main_commit, command
