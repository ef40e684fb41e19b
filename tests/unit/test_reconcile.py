"""The reconcile decision, driven through a KimiDeployment's whole life without an API server.

`Server` below is a KimiDeployment on the in-memory API server of tests/unit/fakekube.py, reconciled by the real
`controller.reconcile_one` (read, decide, write): each step sees what the previous one wrote, with the fields a real
API server adds (uid, generation, defaults, status). The cluster tests repeat the important paths against a real
API server.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from kimi_operator import controller, gateway, planner, reasons, reconcile, render
from kimi_operator.api import resource
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.config import OperatorConfig
from kimi_operator.reasons import Reason
from kimi_operator.reconcile import WeightsState
from kimi_operator.weights import FetchProgress, progress_line
from tests.unit.fakekube import Children, FakeHub, FakeKube, kimideployment

CONFIG = OperatorConfig(operator_image="op:test")
NOW = "2026-11-23T12:00:00Z"
COMMIT = "a" * 40
COMMIT_V2 = "b" * 40

pytestmark = pytest.mark.usefixtures("fresh_controller")


class Server:
    def __init__(self, spec: dict[str, Any], *, lws_installed: bool = True) -> None:
        self.kube = FakeKube(lws_installed=lws_installed)
        body = kimideployment("kd", spec)
        body["metadata"]["uid"] = "u-1"
        self.kube.put(body)
        self.resolver = FakeHub({"main": COMMIT, "v2": COMMIT_V2})  # what the Hub resolves revisions to
        self.children = Children(self.kube)  # live: edits to them are what the next reconcile reads

    @property
    def body(self) -> dict[str, Any]:
        return self.kube.obj("KimiDeployment", "kd")

    @property
    def hub(self) -> dict[str, str]:
        return self.resolver.hub

    @hub.setter
    def hub(self, revisions: dict[str, str]) -> None:
        self.resolver.hub = revisions

    def _replace_pods(self, component: str | tuple[str, ...], pods: list[dict[str, Any]], label: str) -> None:
        components = (component,) if isinstance(component, str) else component
        for kind, ns, name in list(self.kube.objects):
            labels = self.kube.objects[(kind, ns, name)]["metadata"].get("labels") or {}
            if kind == "Pod" and labels.get(render.COMPONENT_LABEL) in components:
                self.kube.drop(kind, name)
        for i, given in enumerate(pods):
            pod = copy.deepcopy(given) | {"apiVersion": "v1", "kind": "Pod"}
            meta = pod.setdefault("metadata", {})
            meta.setdefault("name", f"kd-{label}-{i}")
            meta["namespace"] = "ns"
            meta["labels"] = render.labels("kd", components[0]) | (meta.get("labels") or {})
            self.kube.put(pod)

    @property
    def pods(self) -> list[dict[str, Any]]:
        return self.kube.list_pods("ns", render.engine_pods_selector("kd"))

    @pods.setter
    def pods(self, pods: list[dict[str, Any]]) -> None:
        """The engine pods (what the workload's controller made)."""
        self._replace_pods(render.ENGINE_COMPONENTS, pods, "engine")

    @property
    def fetch_pods(self) -> list[dict[str, Any]]:
        return self.kube.list_pods("ns", f"{render.INSTANCE_LABEL}=kd,{render.COMPONENT_LABEL}=fetch")

    @fetch_pods.setter
    def fetch_pods(self, pods: list[dict[str, Any]]) -> None:
        """The fetch Job's pods."""
        self._replace_pods("fetch", pods, "fetch")

    @property
    def fetch_logs(self) -> dict[str, str]:
        return {pod: text for (_, pod, _), text in self.kube.logs.items()}

    @fetch_logs.setter
    def fetch_logs(self, logs: dict[str, str]) -> None:
        """Running fetch pods, by name, with what their container logged."""
        self.kube.logs.clear()
        self.fetch_pods = [
            {"metadata": {"name": name, "creationTimestamp": NOW}, "status": {"phase": "Running"}} for name in logs
        ]
        for name, text in logs.items():
            self.kube.set_log(name, controller.FETCH_CONTAINER, text)

    @property
    def fetch_create_error(self) -> str:
        events = self.kube.events_for("ns", "Job", "kd-fetch")
        return next((str(e["message"]) for e in events if e.get("reason") == "FailedCreate"), "")

    @fetch_create_error.setter
    def fetch_create_error(self, message: str) -> None:
        """The Job controller's FailedCreate Event about the fetch Job (admission refused its pod); "" removes it."""
        self.kube.drop("Event", "kd-fetch.failedcreate")
        if message:
            job = self.children[("Job", "kd-fetch")]
            involved = {"kind": "Job", "name": "kd-fetch", "uid": job["metadata"]["uid"]}
            self.kube.put(
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": "kd-fetch.failedcreate", "namespace": "ns"},
                    "involvedObject": involved,
                    "type": "Warning",
                    "reason": "FailedCreate",
                    "message": message,
                    "lastTimestamp": NOW,
                }
            )

    def observed(self) -> reconcile.Observed:
        return controller.observe(self.kube, self.resolver, resource.parse(copy.deepcopy(self.body)))

    def step(self, now: str = NOW) -> reconcile.Actions:
        with mock.patch.object(controller, "now_rfc3339", lambda: now):
            actions = controller.reconcile_one(self.kube, CONFIG, "ns", "kd", self.resolver)
        assert actions is not None
        return actions

    def set_spec(self, **patch: Any) -> None:
        self.kube.update("KimiDeployment", "kd", lambda kd: kd.update(spec={**kd["spec"], **patch}))

    def job_succeeds(self) -> None:
        self.children[("Job", "kd-fetch")]["status"] = {
            "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}],
        }

    def deployment_ready(self, ready: int) -> None:
        dep = self.children[("Deployment", "kd")]
        n = dep["spec"]["replicas"]
        dep["status"] = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": ready,
        }


def _cond(server: Server, ctype: str) -> dict[str, Any]:
    return next(c for c in server.body["status"]["conditions"] if c["type"] == ctype)


def _kinds(actions: reconcile.Actions) -> list[tuple[str, str]]:
    return sorted((m["kind"], m["metadata"]["name"]) for m in actions.apply)


def test_lifecycle_download_then_serve_then_idle_with_zero_writes() -> None:
    s = Server({})
    first = s.step()
    assert _kinds(first) == [
        ("Job", "kd-fetch"),
        ("PersistentVolumeClaim", "kd-weights"),
        ("Service", "kd"),
        ("Service", "kd-headless"),
    ]
    assert _cond(s, "WeightsReady")["reason"] == "Downloading"
    assert _cond(s, "Ready") | {"lastTransitionTime": ""} == _cond(s, "Ready") | {"lastTransitionTime": ""}
    assert _cond(s, "Ready")["reason"] == "DownloadingWeights"
    assert {e.reason for e in first.events} >= {"Downloading", "DownloadingWeights"}

    assert s.step().writes == 0, "nothing changed: a reconcile must not write"

    s.job_succeeds()
    serve = s.step()
    assert _kinds(serve) == [("Deployment", "kd")]
    assert serve.delete == [], "the Job is removed only after its completion is recorded"
    assert s.body["status"]["weights"]["completedKey"] == f"moonshotai/Kimi-K2.5@{COMMIT}"
    assert s.body["status"]["model"]["resolvedRevision"] == COMMIT
    cmd = serve.apply[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--model-path") + 1] == f"/models/moonshotai/Kimi-K2.5/{COMMIT}"
    assert _cond(s, "WeightsReady")["status"] == "True"

    cleanup = s.step()
    assert cleanup.delete == [("Job", "kd-fetch")]
    assert cleanup.apply == []

    s.deployment_ready(0)
    assert s.step().status is not None  # Deployment status now current: RollingOut -> Loading
    assert _cond(s, "Ready")["reason"] == "Loading"
    s.deployment_ready(1)
    s.step()
    assert _cond(s, "Ready")["status"] == "True"
    assert _cond(s, "Available")["status"] == "True"
    assert _cond(s, "Progressing") == _cond(s, "Progressing") | {"status": "False", "reason": "Complete"}
    assert s.body["status"]["ready"] == "1/1"
    assert s.body["status"]["endpoint"] == "http://kd.ns.svc:8000/v1"

    writes = len(s.kube.writes)
    for _ in range(3):
        assert s.step("2026-11-23T13:00:00Z").writes == 0
    assert len(s.kube.writes) == writes, "and not one request that writes reached the API server"


def _serving() -> Server:
    s = Server({})
    s.step()
    s.job_succeeds()
    s.step()
    s.step()
    s.deployment_ready(1)
    s.step()
    return s


def test_a_child_edited_by_hand_is_restored_and_one_deleted_is_recreated() -> None:
    s = _serving()
    s.children[("Deployment", "kd")]["spec"]["replicas"] = 5
    assert _kinds(s.step()) == [("Deployment", "kd")]
    assert s.children[("Deployment", "kd")]["spec"]["replicas"] == 1
    del s.children[("Service", "kd")]
    assert _kinds(s.step()) == [("Service", "kd")]


def test_an_extra_label_added_by_a_user_is_not_drift() -> None:
    s = _serving()
    s.children[("Service", "kd")]["metadata"]["labels"]["team"] = "ml"
    assert s.step().writes == 0


def test_scaling_adds_a_pdb_and_removes_it_again() -> None:
    s = _serving()
    s.set_spec(replicas=2, gateway={"enabled": False})
    assert _kinds(s.step()) == [("Deployment", "kd"), ("PodDisruptionBudget", "kd")]
    assert _cond(s, "Ready")["status"] == "False"
    s.set_spec(replicas=1)
    actions = s.step()
    assert actions.delete == [("PodDisruptionBudget", "kd")]


def test_a_spec_the_planner_refuses_creates_nothing_and_warns() -> None:
    s = Server({"topology": {"accelerator": "H100", "nodesPerReplica": 1}})
    actions = s.step()
    assert actions.apply == [] and actions.delete == []
    ready = _cond(s, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "DoesNotFit"
    assert "nodesPerReplica: 2" in ready["message"]
    assert [e.type for e in actions.events if e.reason == "DoesNotFit"] == ["Warning"]
    assert s.step().writes == 0


def test_a_refused_update_leaves_the_running_replica_alone() -> None:
    s = _serving()
    s.set_spec(topology={"accelerator": "H100", "nodesPerReplica": 1})
    actions = s.step()
    assert actions.apply == [] and actions.delete == []
    assert _cond(s, "Ready")["reason"] == "DoesNotFit"
    assert _cond(s, "WeightsReady")["status"] == "True"


def test_a_new_revision_downloads_while_the_old_one_keeps_serving() -> None:
    s = _serving()
    s.set_spec(model={"repo": "moonshotai/Kimi-K2.5", "revision": "v2"})
    actions = s.step()
    assert ("Deployment", "kd") in s.children and ("Deployment", "kd") not in actions.delete
    assert _kinds(actions) == [("Job", "kd-fetch")]
    job = s.children[("Job", "kd-fetch")]
    assert job["metadata"]["annotations"][render.WEIGHTS_KEY_ANNOTATION] == "moonshotai/Kimi-K2.5@v2"
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--revision") + 1] == COMMIT_V2
    assert _cond(s, "WeightsReady")["reason"] == "Downloading"
    assert _cond(s, "Available")["status"] == "True"


def test_unschedulable_pods_surface_in_ready() -> None:
    s = _serving()
    s.set_spec(replicas=2)
    s.step()
    s.deployment_ready(1)
    s.pods = [
        {
            "metadata": {"labels": {render.WORKLOAD_LABEL: "deployment"}},
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
                    }
                ]
            },
        }
    ]
    s.step()
    ready = _cond(s, "Ready")
    assert ready["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in ready["message"]


def _job_fails(s: Server, reason: str, at: str = NOW) -> None:
    s.children[("Job", "kd-fetch")]["status"] = {
        "failed": 7,
        "conditions": [
            {"type": "Failed", "status": "True", "reason": reason, "message": "x", "lastTransitionTime": at}
        ],
    }


def test_a_failed_download_is_retried_after_a_growing_backoff() -> None:
    s = Server({})
    s.step()
    _job_fails(s, "BackoffLimitExceeded", at="2026-11-23T12:00:00Z")
    waiting = s.step("2026-11-23T12:00:30Z")
    assert waiting.delete == [] and _cond(s, "Ready")["reason"] == "FetchFailed"
    assert "retrying after 60s" in _cond(s, "WeightsReady")["message"]
    assert any(e.type == "Warning" for e in waiting.events)
    retry = s.step("2026-11-23T12:01:01Z")
    assert retry.delete == [("Job", "kd-fetch")]
    assert s.body["status"]["weights"]["attempts"] == 1
    assert _kinds(s.step("2026-11-23T12:01:02Z")) == [("Job", "kd-fetch")]
    _job_fails(s, "BackoffLimitExceeded", at="2026-11-23T12:05:00Z")
    s.step("2026-11-23T12:05:30Z")
    assert "attempt 2, retrying after 120s" in _cond(s, "WeightsReady")["message"]


def test_a_permanent_download_failure_is_not_retried() -> None:
    s = Server({})
    s.step()
    _job_fails(s, "PodFailurePolicy")
    actions = s.step("2026-11-23T15:00:00Z")
    assert actions.delete == []
    assert "will not pass on a retry" in _cond(s, "WeightsReady")["message"]


def test_progress_in_the_fetch_pods_log_reaches_status() -> None:
    s = Server({})
    s.step()
    record = FetchProgress(
        phase="downloading",
        bytes_done=220 * 10**9,
        bytes_total=595 * 10**9,
        files_done=23,
        files_total=72,
        bytes_per_second=412 * 10**6,
        eta_seconds=900,
        commit=COMMIT,
        updated_at=1,
    )
    older = FetchProgress(phase="downloading", bytes_done=10**9, bytes_total=595 * 10**9, updated_at=0)
    s.fetch_logs = {
        "kd-fetch-abcde": "\n".join(
            [
                "2026-11-23 12:00:00 INFO resolved ...",
                progress_line(older),
                "2026-11-23 12:00:10 INFO downloading: 36% (220/595 GB, 412 MB/s, ETA 15m), files 23/72",
                progress_line(record),
                "2026-11-23 12:00:11 WARNING model-00003: retrying",
            ]
        )
    }
    s.step()
    w = s.body["status"]["weights"]
    assert w["progress"] == "36%" and w["bytesDone"] == 220 * 10**9 and w["filesTotal"] == 72
    assert "ETA" in w["message"]
    assert s.step().writes == 0, "the same log tail again: nothing to write"
    s.job_succeeds()
    s.fetch_logs = {}
    s.step()
    s.step()
    w = s.body["status"]["weights"]
    assert w["progress"] == "100%" and "bytesDone" not in w, "download counters are removed once complete"


def _finished_fetch_pod(phase: str, message: dict[str, Any]) -> dict[str, Any]:
    terminated = {"exitCode": 0 if phase == "Succeeded" else 1, "message": json.dumps(message)}
    return {
        "metadata": {"name": "kd-fetch-x", "creationTimestamp": NOW},
        "status": {"phase": phase, "containerStatuses": [{"name": "fetch", "state": {"terminated": terminated}}]},
    }


def test_the_commit_of_a_fetch_still_running_comes_from_its_progress_line() -> None:
    s = Server({})
    s.hub = {}
    s.step()
    s.fetch_logs = {"kd-fetch-y": progress_line(FetchProgress(phase="downloading", commit=COMMIT, bytes_total=9))}
    s.step()
    assert s.body["status"]["model"]["resolvedRevision"] == COMMIT


def test_what_a_failed_fetcher_said_is_in_the_condition() -> None:
    s = Server({})
    s.step()
    s.children[("Job", "kd-fetch")]["status"] = {
        "failed": 1,
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "PodFailurePolicy",
                "message": "Container fetch for pod ns/kd-fetch-x failed with exit code 3 matching FailJob rule",
                "lastTransitionTime": NOW,
            }
        ],
    }
    said = {"exitCode": 3, "error": "not enough space on /models: needs 595 GB more but only 10 GB is free"}
    s.fetch_pods = [_finished_fetch_pod("Failed", said)]
    s.step()
    cond = _cond(s, "WeightsReady")
    assert cond["reason"] == "FetchFailed"
    assert "exit code 3" in cond["message"] and "the fetcher said: exit 3: not enough space" in cond["message"]
    assert "will not pass on a retry" in cond["message"]


def test_the_fetchers_commit_is_used_when_the_hub_cannot_be_reached() -> None:
    s = Server({})
    s.hub = {}
    s.step()
    s.job_succeeds()
    s.step()
    assert _cond(s, "WeightsReady")["reason"] == "RevisionUnresolved"
    result = {"snapshots": [{"repo": "moonshotai/Kimi-K2.5", "revision": "main", "commit": COMMIT}]}
    s.fetch_pods = [_finished_fetch_pod("Succeeded", result)]  # its termination message: the fetcher's result
    assert _kinds(s.step()) == [("Deployment", "kd")]
    assert s.body["status"]["model"]["resolvedRevision"] == COMMIT


def test_a_pinned_commit_survives_the_branch_moving() -> None:
    s = _serving()
    s.hub = {"main": COMMIT_V2}
    assert s.step().writes == 0
    assert s.body["status"]["model"]["resolvedRevision"] == COMMIT


def _shared_claim(s: Server) -> str:
    """The user's claim "shared" (spec.weights.existingClaimName), Bound; returns its UID."""
    pvc = s.kube.put(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "shared", "namespace": "ns", "creationTimestamp": NOW},
            "spec": {"accessModes": ["ReadWriteMany"]},
            "status": {"phase": "Bound"},
        }
    )
    return str(pvc["metadata"]["uid"])


def test_a_snapshot_completed_by_another_deployment_on_the_same_volume_is_reused() -> None:
    s = Server({"weights": {"existingClaimName": "shared"}})
    uid = _shared_claim(s)
    other = kimideployment("other", {"weights": {"existingClaimName": "shared"}})
    done = {"claimName": "shared", "claimUID": uid, "completedKey": f"moonshotai/Kimi-K2.5@{COMMIT}"}
    s.kube.put(other | {"status": {"weights": done}})
    actions = s.step()
    assert _kinds(actions) == [("Deployment", "kd"), ("Service", "kd"), ("Service", "kd-headless")]
    assert _cond(s, "WeightsReady")["reason"] == "Reused"
    assert s.body["status"]["weights"]["claimUID"] == uid


def test_a_snapshot_another_deployment_completed_on_an_earlier_claim_of_that_name_is_not_reused() -> None:
    s = Server({"weights": {"existingClaimName": "shared"}})
    _shared_claim(s)
    other = kimideployment("other", {"weights": {"existingClaimName": "shared"}})
    done = {"claimName": "shared", "claimUID": "a-deleted-claim", "completedKey": f"moonshotai/Kimi-K2.5@{COMMIT}"}
    s.kube.put(other | {"status": {"weights": done}})
    actions = s.step()
    assert ("Job", "kd-fetch") in _kinds(actions) and ("Deployment", "kd") not in _kinds(actions)
    assert _cond(s, "WeightsReady")["reason"] == "Downloading"


def test_an_unbound_volume_is_a_condition_not_a_silent_wait() -> None:
    s = Server({"weights": {"storageClassName": "missing"}})
    # the claim from an earlier reconcile, Pending past the grace period, and what the PV controller said about it
    labels = {render.INSTANCE_LABEL: "kd", render.MANAGED_BY_LABEL: render.MANAGED_BY}
    s.kube.put(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "kd-weights", "namespace": "ns", "labels": labels, "creationTimestamp": NOW},
            "spec": {"storageClassName": "missing", "accessModes": ["ReadWriteMany"]},
            "status": {"phase": "Pending"},
        }
    )
    s.kube.put(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "kd-weights.1", "namespace": "ns"},
            "involvedObject": {"kind": "PersistentVolumeClaim", "name": "kd-weights"},
            "type": "Warning",
            "reason": "ProvisioningFailed",
            "message": 'storageclass.storage.k8s.io "missing" not found',
            "lastTimestamp": NOW,
        }
    )
    actions = s.step()
    assert ("Job", "kd-fetch") not in [(m["kind"], m["metadata"]["name"]) for m in actions.apply]
    cond = _cond(s, "WeightsReady")
    assert cond["reason"] == "VolumeNotBound" and "missing" in cond["message"]


def test_subset_comparison() -> None:
    assert reconcile.is_subset({"a": 1, "b": [{"c": "x"}]}, {"a": 1, "b": [{"c": "x", "d": 2}], "e": 3})
    assert not reconcile.is_subset({"a": [1, 2]}, {"a": [1]})
    assert not reconcile.is_subset({"a": True}, {"a": 1})
    assert reconcile.is_subset({"a": "8"}, {"a": "8"})


def _lws_ready(s: Server, ready: int) -> None:
    lws = s.children[("LeaderWorkerSet", "kd")]
    n = lws["spec"]["replicas"]
    lws["status"] = {"replicas": n, "updatedReplicas": n, "readyReplicas": ready}


def test_h100_runs_as_a_two_node_leaderworkerset() -> None:
    s = Server({"topology": {"accelerator": "H100"}})
    s.step()
    s.job_succeeds()
    actions = s.step()
    assert _kinds(actions) == [("LeaderWorkerSet", "kd")]
    lws = actions.apply[0]
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert lws["spec"]["startupPolicy"] == "LeaderCreated"
    s.step()
    _lws_ready(s, 1)
    s.step()
    assert _cond(s, "Ready")["status"] == "True"
    assert s.body["status"]["plan"]["summary"] == "2x8 H100 TP8 PP2"  # no RDMA: one pipeline stage per node
    assert s.step().writes == 0


def test_without_the_lws_crd_a_multi_node_plan_is_refused_and_nothing_is_created() -> None:
    s = Server({"topology": {"accelerator": "H100"}}, lws_installed=False)  # the API server has no LWS API
    actions = s.step()
    assert actions.apply == [] and actions.delete == []
    ready = next(c for c in actions.status["conditions"] if c["type"] == "Ready") if actions.status else {}
    assert ready["reason"] == "LeaderWorkerSetNotInstalled"
    assert "kubectl apply --server-side -f" in ready["message"]


def _pod(workload: str) -> dict[str, Any]:
    return {"metadata": {"labels": {render.WORKLOAD_LABEL: workload}}, "status": {}}


def test_switching_one_node_to_two_removes_the_old_workload_before_the_new_one_asks_for_gpus() -> None:
    s = _serving()
    s.pods = [_pod("deployment")]
    s.set_spec(topology={"accelerator": "H200", "nodesPerReplica": 2})
    first = s.step()
    assert first.delete == [("Deployment", "kd")]
    assert ("LeaderWorkerSet", "kd") not in [(m["kind"], m["metadata"]["name"]) for m in first.apply]
    assert _cond(s, "Ready")["reason"] == "SwitchingTopology"
    waiting = s.step()  # the Deployment is gone but its pod is still terminating
    assert waiting.apply == []
    s.pods = []
    assert _kinds(s.step()) == [("LeaderWorkerSet", "kd")]

    s.pods = [_pod("leaderworkerset")]
    s.set_spec(topology={"accelerator": "H200", "nodesPerReplica": 1})
    back = s.step()
    assert back.delete == [("LeaderWorkerSet", "kd")] and back.apply == []
    s.pods = []
    assert _kinds(s.step()) == [("Deployment", "kd")]


def test_the_operators_default_engine_image_applies_unless_the_spec_sets_one() -> None:
    config = OperatorConfig(operator_image="op:test", engine_image="registry.local/sglang:pinned")
    for spec, image in (({}, "registry.local/sglang:pinned"), ({"engine": {"image": "mine:1"}}, "mine:1")):
        s = Server(spec)
        s.step()
        s.job_succeeds()
        actions = reconcile.decide(s.observed(), config, NOW)
        dep = next(m for m in actions.apply if m["kind"] == "Deployment")
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_the_draft_model_is_served_from_the_commit_the_fetcher_downloads() -> None:
    s = Server({"engine": {"speculative": {"draftRepo": "lightseekorg/kimi-k2.5-eagle3"}}})
    s.hub["draft"] = "d" * 40
    first = s.step()
    job = next(m for m in first.apply if m["kind"] == "Job")
    fetch = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert fetch[fetch.index("--draft-revision") + 1] == "d" * 40
    s.job_succeeds()
    dep = next(m for m in s.step().apply if m["kind"] == "Deployment")
    cmd = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--speculative-draft-model-path") + 1] == f"/models/lightseekorg/kimi-k2.5-eagle3/{'d' * 40}"
    assert s.body["status"]["model"]["draftResolvedRevision"] == "d" * 40
    s.hub["draft"] = "e" * 40  # the draft's branch moves: the pinned commit stays
    s.step()
    assert s.step().writes == 0


def test_an_unresolvable_draft_model_holds_the_rollout() -> None:
    s = Server({"engine": {"speculative": {"draftRepo": "lightseekorg/kimi-k2.5-eagle3"}}})
    s.step()
    s.job_succeeds()
    actions = s.step()
    assert all(m["kind"] != "Deployment" for m in actions.apply)
    cond = _cond(s, "WeightsReady")
    assert cond["reason"] == "RevisionUnresolved" and "kimi-k2.5-eagle3" in cond["message"]


def test_quantities_the_api_server_normalises_are_not_drift() -> None:
    from kimi_operator.reconcile import is_subset

    desired = {"resources": {"requests": {"cpu": "96000m", "memory": "1048576Mi"}}, "sizeLimit": "65536Mi"}
    stored = {"resources": {"requests": {"cpu": "96", "memory": "1Ti"}}, "sizeLimit": "64Gi"}
    assert is_subset(desired, stored)
    assert not is_subset({"resources": {"requests": {"cpu": "97"}}}, {"resources": {"requests": {"cpu": "96"}}})
    assert not is_subset({"env": [{"value": "1"}]}, {"env": [{"value": "1.0"}]}), "only quantity fields by value"


def test_a_container_stuck_pulling_its_image_is_reported_with_kubelets_reason() -> None:
    from kimi_operator.reconcile import failing_pod

    pod = {
        "metadata": {"name": "kd-abc"},
        "status": {
            "containerStatuses": [
                {
                    "name": "sglang",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x"'}},
                }
            ]
        },
    }
    assert failing_pod([pod]) == ("ImagePullBackOff", 'pod kd-abc container sglang: Back-off pulling image "x"')
    starting = {
        "metadata": {"name": "p"},
        "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
    }
    assert failing_pod([starting]) is None


EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("kimi-k2.5-*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_what_the_operator_applies_is_what_render_prints(example: Path) -> None:
    """One function decides the children: once settled, what decide applied at the download and at the serving
    stage equals `kimi-operator render` (render.render_all on the plan pinned by render.pin) for the same commit.
    (On the way the Service points at the engines until the gateway is ready; render prints where it settles.)"""
    (doc,) = [d for d in yaml.safe_load_all(example.read_text()) if d and d.get("kind") == "KimiDeployment"]
    s = Server(doc["spec"])
    s.hub["draft"] = COMMIT_V2
    spec = KimiDeploymentSpec.model_validate(doc["spec"])
    draft = COMMIT_V2 if spec.engine.speculative is not None else None
    pinned = render.pin(planner.plan(spec), spec, CONFIG, commit=COMMIT, draft_commit=draft)
    owner = render.Owner("kd", "ns", "u-1")

    def settle() -> None:
        for _ in range(4):
            s.step()
            gw = s.children.get(("Deployment", gateway.names("kd")["gateway"]))
            if gw is not None:
                gw["status"] = {"readyReplicas": gw["spec"]["replicas"]}

    for stage, weights_ready in (("download", False), ("serving", True)):
        settle()
        printed = {
            (m["kind"], m["metadata"]["name"]): m
            for m in render.render_all(owner, spec, pinned, CONFIG, weights_ready=weights_ready)
        }
        assert set(s.children) == set(printed), f"{stage}: children differ from what render prints"
        for k, m in printed.items():
            assert reconcile.is_subset(m, s.children[k]), f"{stage}: {k} as applied differs from what render prints"
        if not weights_ready:
            s.job_succeeds()


def test_every_planner_refusal_is_a_warning_reason() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(planner))
    raised = {
        node.args[0].attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "PlanError"
        and node.args
        and isinstance(node.args[0], ast.Attribute)
    }
    assert len(raised) >= 10, raised
    for member in raised:
        assert Reason[member].warning, f"the planner refuses with {member}, which is not a Warning reason"


@pytest.mark.parametrize("state", list(WeightsState), ids=lambda s: s.name)
def test_weights_states_answer_what_the_decision_asks(state: WeightsState) -> None:
    assert state.reason == state.value and Reason.of(str(state.reason)) is state.reason
    assert not (state.ready and state.wants_fetch_job), "ready weights never want a fetch Job"
    assert not (state.waits and state.wants_fetch_job), "a state that waits leaves the Job alone"
    assert state.ready == (state in (WeightsState.DOWNLOADED, WeightsState.REUSED))
    assert state.ready or state.ready_reason.warning == (state.waits or state is WeightsState.FETCH_FAILED)
    assert state.ready or state.ready_reason in reasons.READY_REASONS


def test_a_fetch_pod_admission_refuses_is_failed_create_not_downloading() -> None:
    s = Server({"topology": {"priorityClassName": "nope"}})
    s.step()
    s.fetch_create_error = 'Error creating: pods "kd-fetch-x" is forbidden: no PriorityClass with name nope was found'
    actions = s.step()
    ready = _cond(s, "Ready")
    assert ready["reason"] == "FailedCreate" and "no PriorityClass with name nope" in ready["message"], ready
    assert _cond(s, "Progressing")["status"] == "False"
    assert ("Warning", "FailedCreate") in {(e.type, e.reason) for e in actions.events}
    assert ("Job", "kd-fetch") in s.children, "the Job stays: it retries by itself once the cause is fixed"
    s.fetch_create_error = ""
    s.step()
    assert _cond(s, "Ready")["reason"] == "DownloadingWeights"


def test_a_deployment_whose_pods_admission_refuses_is_failed_create() -> None:
    s = _serving()
    dep = s.children[("Deployment", "kd")]
    dep["status"] = {
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": 0,
        "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "exceeded quota: gpus"}
        ],
    }
    s.step()
    ready = _cond(s, "Ready")
    assert ready["reason"] == "FailedCreate" and "Deployment kd cannot create pods: exceeded quota" in ready["message"]


def test_a_revision_the_hub_does_not_have_gets_no_fetch_job_and_says_so() -> None:
    s = Server({"model": {"revision": "v9"}})
    s.hub.pop("v9", None)
    observed = s.observed()
    import dataclasses

    observed = dataclasses.replace(
        observed, revision_missing=True, resolve_error="the Hub has no revision 'v9' in moonshotai/Kimi-K2.5"
    )
    actions = reconcile.decide(observed, CONFIG, NOW)
    assert "Job" not in {m["kind"] for m in actions.apply}
    assert actions.status is not None
    ready = next(c for c in actions.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RevisionNotFound" and "set spec.model.revision" in ready["message"], ready
    assert ("Warning", "RevisionNotFound") in {(e.type, e.reason) for e in actions.events}


# ---------------------------------------------------------------------------------------- the volume's identity
def _claim_uid(s: Server) -> str:
    return str(s.kube.obj("PersistentVolumeClaim", "kd-weights")["metadata"]["uid"])


def test_the_completed_download_is_bound_to_the_claims_uid() -> None:
    s = _serving()
    assert s.body["status"]["weights"]["claimUID"] == _claim_uid(s)


def test_an_emptied_volume_is_never_served_it_is_downloaded_to_again() -> None:
    """The fault run's defect 1: scale to 0, delete the weights PVC, a new empty volume binds, scale to 1. The new
    claim has another UID: the record of the old download does not cover it."""
    s = _serving()
    old_uid = _claim_uid(s)
    s.set_spec(replicas=0)
    s.step()
    assert s.children[("Deployment", "kd")]["spec"]["replicas"] == 0
    s.kube.drop("PersistentVolumeClaim", "kd-weights")  # kubectl delete pvc (nothing mounts it at 0 replicas)
    s.set_spec(replicas=1)

    replaced = s.step()
    assert ("PersistentVolumeClaim", "kd-weights") in _kinds(replaced), "a new claim"
    assert ("Deployment", "kd") not in _kinds(replaced), "no replica starts on the new, empty volume"
    cond = _cond(s, "WeightsReady")
    assert (cond["status"], cond["reason"]) == ("False", "VolumeReplaced"), cond
    assert old_uid in cond["message"] and "downloaded again" in cond["message"], cond
    assert ("Warning", "VolumeReplaced") in {(e.type, e.reason) for e in replaced.events}
    assert _cond(s, "Ready")["reason"] == "DownloadingWeights"
    assert "completedKey" not in s.body["status"]["weights"], "the old record is dropped"

    assert ("Job", "kd-fetch") in _kinds(replaced), "a fetch Job for the new volume"
    new_uid = _claim_uid(s)
    assert new_uid != old_uid
    s.step()
    assert _cond(s, "WeightsReady")["reason"] == "Downloading"
    assert s.children[("Deployment", "kd")]["spec"]["replicas"] == 0, "still nothing serves from it"

    s.job_succeeds()
    s.step()
    assert _cond(s, "WeightsReady")["reason"] == "Downloaded"
    assert s.body["status"]["weights"]["claimUID"] == new_uid
    assert s.children[("Deployment", "kd")]["spec"]["replicas"] == 1, "serves once the new volume is complete"


def test_a_finished_job_made_before_the_claim_does_not_count_for_it() -> None:
    """The PVC was deleted while the fetch pod wrote to it (the pod kept it until it finished), then re-created:
    the Job's success belongs to the old volume. It is replaced by a Job that checks the new one."""
    s = Server({})
    s.step()
    pvc = s.kube.obj("PersistentVolumeClaim", "kd-weights")
    s.kube.drop("PersistentVolumeClaim", "kd-weights")
    pvc["metadata"].update(uid="the-new-claim", creationTimestamp="2026-11-23T12:05:00Z")
    s.kube.put(pvc)
    s.job_succeeds()
    actions = s.step()
    assert actions.delete == [("Job", "kd-fetch")], actions.explanation
    assert _cond(s, "WeightsReady")["reason"] == "VolumeReplaced"
    assert ("Deployment", "kd") not in s.children
    s.step()
    assert ("Job", "kd-fetch") in s.children and not (s.children[("Job", "kd-fetch")].get("status") or {})


def test_a_terminating_weights_claim_is_reported_while_it_lasts_and_serving_goes_on() -> None:
    s = _serving()
    s.kube.update(
        "PersistentVolumeClaim",
        "kd-weights",
        lambda pvc: pvc["metadata"].update(
            deletionTimestamp="2026-11-23T12:10:00Z", finalizers=["kubernetes.io/pvc-protection"]
        ),
    )
    actions = s.step()
    for ctype in ("WeightsReady", "Ready"):
        cond = _cond(s, ctype)
        assert (cond["status"], cond["reason"]) == ("False", "VolumeTerminating"), cond
    assert "being deleted" in _cond(s, "Ready")["message"]
    assert ("Warning", "VolumeTerminating") in {(e.type, e.reason) for e in actions.events}
    assert ("Deployment", "kd") not in actions.delete and ("Deployment", "kd") in s.children
    assert _cond(s, "Progressing")["status"] == "False", "stalled: it does not pass by itself"


def test_a_claim_still_pending_is_reported_even_when_a_download_is_on_record() -> None:
    """Defect 1's second half: while the new claim was Pending, VolumeNotBound was hidden by the old record."""
    s = _serving()
    s.kube.drop("PersistentVolumeClaim", "kd-weights")
    s.step()  # re-created
    s.kube.update("PersistentVolumeClaim", "kd-weights", lambda pvc: pvc.update(status={"phase": "Pending"}))
    s.step("2026-11-23T12:30:00Z")
    with mock.patch("kimi_operator.controller.time.time", lambda: 1_900_000_000.0):
        s.step("2026-11-23T12:30:00Z")
    assert _cond(s, "WeightsReady")["reason"] == "VolumeNotBound", _cond(s, "WeightsReady")


def _refused_by_weights_check(finished: str) -> dict[str, Any]:
    """A serving pod whose weights-check init container found the snapshot incomplete (its log: the message)."""
    said = f"weights-check: /models/moonshotai/Kimi-K2.5/{COMMIT} is not a complete snapshot: no manifest"
    terminated = {"exitCode": 1, "reason": "Error", "message": said, "finishedAt": finished}
    return {
        "metadata": {"name": "kd-7d9-abc", "labels": {render.WORKLOAD_LABEL: "deployment"}},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {
                    "name": "weights-check",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                    "lastState": {"terminated": terminated},
                }
            ],
        },
    }


def test_a_snapshot_a_serving_pod_finds_incomplete_is_sent_back_to_the_fetcher() -> None:
    """The record says complete, the volume says otherwise (files deleted by hand, a restore gone wrong): the
    serving pod's weights-check refuses to start the engine, and the operator answers with a fetch Job."""
    s = _serving()
    assert s.body["status"]["weights"]["completedAt"] == NOW
    s.pods = [_refused_by_weights_check("2026-11-23T12:01:00Z")]
    actions = s.step("2026-11-23T12:01:05Z")
    cond = _cond(s, "WeightsReady")
    assert (cond["status"], cond["reason"]) == ("False", "SnapshotIncomplete"), cond
    assert "kd-7d9-abc" in cond["message"] and "not a complete snapshot" in cond["message"], cond
    assert ("Warning", "SnapshotIncomplete") in {(e.type, e.reason) for e in actions.events}
    assert ("Job", "kd-fetch") in _kinds(actions)
    assert ("Deployment", "kd") in s.children, "the pods stay: their init container starts the engine once fixed"

    s.step("2026-11-23T12:01:10Z")
    assert _cond(s, "WeightsReady")["reason"] == "Downloading"
    s.job_succeeds()
    s.step("2026-11-23T12:03:00Z")
    assert _cond(s, "WeightsReady")["reason"] == "Downloaded"
    assert s.body["status"]["weights"]["completedAt"] == "2026-11-23T12:03:00Z"
    s.step("2026-11-23T12:03:05Z")
    assert _cond(s, "WeightsReady")["reason"] == "Downloaded", "the failure before this download is answered"


def test_a_weights_check_failure_from_before_the_download_completed_is_not_held_against_it() -> None:
    s = _serving()
    s.pods = [_refused_by_weights_check("2026-11-23T11:59:00Z")]
    s.step("2026-11-23T12:02:00Z")
    assert _cond(s, "WeightsReady")["reason"] == "Downloaded"
