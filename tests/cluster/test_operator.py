"""The operator end to end on a real API server, controller manager, scheduler and kwok GPU nodes.

Simulated here: the GPUs (kwok nodes with nvidia.com/gpu: 8) and the pods' containers (kwok marks scheduled pods
Running/Ready and completes Job pods), so the weights download is simulated. Everything else is real.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kimi_testbed.wait import NotYet, wait_for

from .operator_proc import OperatorProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "kimi-operator.dev_kimideployments.yaml"
GROUP, VERSION, PLURAL = "kimi-operator.dev", "v1alpha1", "kimideployments"


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return out

    def apply(self, obj: dict[str, Any] | str, check: bool = True) -> subprocess.CompletedProcess[str]:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        return self.run("apply", "--server-side", "--field-manager=test-user", "-f", "-", stdin=text, check=check)


@pytest.fixture(scope="session")
def kubectl(cluster: Any) -> Kubectl:
    return Kubectl(Path(cluster.bin_dir) / "kubectl", Path(cluster.kubeconfig))


@pytest.fixture(scope="session")
def crd_installed(kubectl: Kubectl) -> None:
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")


@pytest.fixture(scope="session")
def operator(
    cluster: Any,
    crd_installed: None,  # noqa: ARG001 - ordering: the CRD exists before the operator watches it
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(Path(cluster.kubeconfig), tmp_path_factory.mktemp("operator"))
    proc.start()
    yield proc
    proc.stop()


def kd(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KimiDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def in_ns(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}


def weights_pv(core: client.CoreV1Api, namespace: str, claim: str) -> None:
    """A PV pre-bound to the claim the operator will create (the test cluster has no storage provisioner)."""
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{claim}", "labels": {"kimi-test": namespace}},
            "spec": {
                "capacity": {"storage": "2Ti"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/kimi-test/{namespace}/{claim}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )


class Env:
    def __init__(self, api: client.ApiClient, namespace: str, kubectl: Kubectl, op: OperatorProcess) -> None:
        self.ns = namespace
        self.kubectl = kubectl
        self.op = op
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def apply(self, obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl.apply(in_ns(obj, self.ns), check=check)

    def get(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return out

    def condition(self, name: str, ctype: str) -> dict[str, Any] | None:
        for c in self.get(name).get("status", {}).get("conditions", []):
            if c["type"] == ctype:
                return dict(c)
        return None

    def wait_condition(
        self, name: str, ctype: str, status: str, reason: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | NotYet:
            c = self.condition(name, ctype)
            if c is not None and c["status"] == status and (reason is None or c["reason"] == reason):
                return c
            return NotYet(self.get(name).get("status", {}).get("conditions"))

        return wait_for(
            check, timeout=timeout, what=f"KimiDeployment {self.ns}/{name} {ctype}={status} (reason {reason})"
        )

    def names(self, kind: str) -> set[str]:
        lists = {
            "Deployment": lambda: self.apps.list_namespaced_deployment(self.ns),
            "Job": lambda: self.batch.list_namespaced_job(self.ns),
            "Service": lambda: self.core.list_namespaced_service(self.ns),
            "PersistentVolumeClaim": lambda: self.core.list_namespaced_persistent_volume_claim(self.ns),
            "PodDisruptionBudget": lambda: self.policy.list_namespaced_pod_disruption_budget(self.ns),
        }
        return {i.metadata.name for i in lists[kind]().items}

    def events(self, name: str) -> list[tuple[str, str]]:
        evs = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [(e.type, e.reason) for e in evs if e.involved_object.kind == "KimiDeployment"]


@pytest.fixture()
def env(kube_api: client.ApiClient, namespace: str, kubectl: Kubectl, operator: OperatorProcess) -> Env:
    return Env(kube_api, namespace, kubectl, operator)


def go_ready(env: Env, name: str, **spec: Any) -> None:
    weights_pv(env.core, env.ns, f"{name}-weights")
    env.apply(kd(name, **spec))
    env.wait_condition(name, "Ready", "True", "Ready", timeout=120)


def test_apply_downloads_then_serves_and_reports_ready(env: Env) -> None:
    weights_pv(env.core, env.ns, "k25-weights")
    env.apply(yaml.safe_load((ROOT / "examples" / "kimi-k2.5-h200.yaml").read_text()) | {"metadata": {"name": "k25"}})
    env.wait_condition("k25", "WeightsReady", "True", timeout=120)
    ready = env.wait_condition("k25", "Ready", "True", "Ready", timeout=120)
    assert ready["observedGeneration"] == env.get("k25")["metadata"]["generation"]

    dep = env.apps.read_namespaced_deployment("k25", env.ns)
    c = dep.spec.template.spec.containers[0]
    assert c.resources.limits["nvidia.com/gpu"] == "8"
    assert c.command[c.command.index("--tp-size") + 1] == "8"
    assert dep.spec.template.spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    pods = env.core.list_namespaced_pod(
        env.ns, label_selector="app.kubernetes.io/instance=k25,app.kubernetes.io/component=server"
    ).items
    assert len(pods) == 1 and pods[0].spec.node_name

    status = env.get("k25")["status"]
    assert status["ready"] == "1/1" and status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://k25.{env.ns}.svc:8000/v1"
    assert status["plan"]["summary"] == "1x8 H200 TP8"
    assert status["weights"]["progress"] == "100%"
    assert env.names("Service") == {"k25", "k25-headless"}
    wait_for(lambda: "k25-fetch" not in env.names("Job") or None, timeout=30, what="finished fetch Job removed")
    reasons = {r for _, r in env.events("k25")}
    assert {"Downloading", "Downloaded", "Ready"} <= reasons

    printed = env.kubectl.run("get", "kd", "k25", "-n", env.ns, "-o", "wide").stdout
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


def test_children_edited_or_deleted_by_hand_are_restored(env: Env) -> None:
    go_ready(env, "drift")
    env.apps.patch_namespaced_deployment_scale("drift", env.ns, {"spec": {"replicas": 3}})
    wait_for(
        lambda: env.apps.read_namespaced_deployment("drift", env.ns).spec.replicas == 1 or None,
        timeout=60,
        what="Deployment replicas restored to 1",
    )
    env.core.delete_namespaced_service("drift", env.ns)
    wait_for(lambda: "drift" in env.names("Service") or None, timeout=60, what="Service recreated")


def test_scale_subresource_drives_replicas_and_pdb(env: Env) -> None:
    go_ready(env, "scaled")
    env.kubectl.run("scale", "kd", "scaled", "-n", env.ns, "--replicas=2")
    wait_for(
        lambda: env.apps.read_namespaced_deployment("scaled", env.ns).spec.replicas == 2 or None,
        timeout=60,
        what="Deployment scaled to 2",
    )
    wait_for(lambda: "scaled" in env.names("PodDisruptionBudget") or None, timeout=60, what="PDB created")
    env.wait_condition("scaled", "Ready", "True", "Ready", timeout=120)
    assert env.get("scaled")["status"]["selector"] == (
        "app.kubernetes.io/name=kimi,app.kubernetes.io/instance=scaled,app.kubernetes.io/component=server"
    )
    env.kubectl.run("scale", "kd", "scaled", "-n", env.ns, "--replicas=1")
    wait_for(lambda: "scaled" not in env.names("PodDisruptionBudget") or None, timeout=60, what="PDB removed")


def test_delete_removes_children_but_keeps_the_retained_weights_volume(env: Env) -> None:
    go_ready(env, "gone")
    env.custom.delete_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL, "gone")
    wait_for(lambda: not env.names("Deployment") or None, timeout=60, what="Deployment garbage-collected")
    wait_for(lambda: not env.names("Service") or None, timeout=60, what="Services garbage-collected")
    time.sleep(3)
    assert env.names("PersistentVolumeClaim") == {"gone-weights"}


def test_delete_with_retain_off_removes_the_weights_volume(env: Env) -> None:
    go_ready(env, "noretain", weights={"retainOnDelete": False})
    env.custom.delete_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL, "noretain")
    wait_for(lambda: not env.names("PersistentVolumeClaim") or None, timeout=60, what="PVC garbage-collected")


def test_invalid_specs_are_refused_at_apply_time_with_the_reason(env: Env) -> None:
    out = env.apply(kd("bad", engine={"extraArgs": ["--tp=4"]}), check=False)
    assert out.returncode != 0 and "--tp=4 is set by the operator" in out.stderr
    out = env.apply(kd("bad", topology={"accelerator": "TPU"}), check=False)
    assert out.returncode != 0 and "accelerator" in out.stderr
    out = env.apply(kd("bad", rollout={"maxSurge": 0, "maxUnavailable": 0}), check=False)
    assert out.returncode != 0 and "cannot both be 0" in out.stderr
    out = env.apply(kd("bad", replicaz=1), check=False)
    assert out.returncode != 0 and "replicaz" in out.stderr
    assert env.custom.list_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL)["items"] == []


def test_weights_volume_is_immutable(env: Env) -> None:
    env.apply(kd("imm", weights={"existingClaimName": "cache-a"}))
    out = env.apply(kd("imm", weights={"existingClaimName": "cache-b"}), check=False)
    assert out.returncode != 0 and "existingClaimName is immutable" in out.stderr


def test_a_spec_the_planner_refuses_gets_a_reason_and_no_workload(env: Env) -> None:
    env.apply(kd("h100", topology={"accelerator": "H100", "nodesPerReplica": 1}))
    cond = env.wait_condition("h100", "Ready", "False", "DoesNotFit")
    assert "nodesPerReplica: 2" in cond["message"] and "H200" in cond["message"]
    wait_for(lambda: ("Warning", "DoesNotFit") in env.events("h100") or None, timeout=30, what="Warning event")
    for kind in ("Deployment", "Job", "PersistentVolumeClaim", "Service"):
        assert env.names(kind) == set(), kind


def test_operator_killed_mid_reconcile_converges_without_duplicates(env: Env) -> None:
    weights_pv(env.core, env.ns, "crash-weights")
    env.apply(kd("crash"))
    wait_for(lambda: env.names("Job") or None, timeout=60, what="fetch Job created")
    env.op.kill()
    try:
        env.apply(kd("crash", replicas=2))
    finally:
        env.op.start()
    env.wait_condition("crash", "Ready", "True", "Ready", timeout=120)
    assert env.names("Deployment") == {"crash"}
    assert env.names("PodDisruptionBudget") == {"crash"}
    assert env.names("PersistentVolumeClaim") == {"crash-weights"}
    assert env.apps.read_namespaced_deployment("crash", env.ns).status.ready_replicas == 2


def test_a_fifth_replica_on_four_nodes_is_reported_unschedulable(env: Env) -> None:
    go_ready(env, "big")
    env.kubectl.run("scale", "kd", "big", "-n", env.ns, "--replicas=5")
    cond = env.wait_condition("big", "Ready", "False", "Unschedulable", timeout=90)
    assert "nvidia.com/gpu" in cond["message"]
    env.kubectl.run("scale", "kd", "big", "-n", env.ns, "--replicas=1")
    env.wait_condition("big", "Ready", "True", "Ready", timeout=90)
