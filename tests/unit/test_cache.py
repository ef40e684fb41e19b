"""The watch-fed read cache (cache.py) and kube.CachedKube: a reconcile in steady state reads no LIST from the API
server (the fault run: 9 sequential uncached reads per reconcile, 9 per KimiDeployment per idle minute)."""

from __future__ import annotations

import threading

import pytest

from kimi_operator import controller, render
from kimi_operator.cache import Cache, matches
from kimi_operator.config import OperatorConfig
from kimi_operator.kube import CachedKube, ResourceType
from kimi_operator.reconcile.types import Manifest
from tests.unit.fakekube import FakeHub, FakeKube, kimideployment

COMMIT = "a" * 40
CONFIG = OperatorConfig(operator_image="op:test")


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (render.children_selector("kd"), {render.INSTANCE_LABEL: "kd", render.MANAGED_BY_LABEL: "kimi-operator"}, True),
        (
            render.children_selector("kd"),
            {render.INSTANCE_LABEL: "kd2", render.MANAGED_BY_LABEL: "kimi-operator"},
            False,
        ),
        (render.engine_pods_selector("kd"), {render.INSTANCE_LABEL: "kd", render.COMPONENT_LABEL: "server"}, True),
        (render.engine_pods_selector("kd"), {render.INSTANCE_LABEL: "kd", render.COMPONENT_LABEL: "fetch"}, False),
        (render.engine_pods_selector("kd"), {render.COMPONENT_LABEL: "server"}, False),
        ("a!=b", {"a": "c"}, True),
        ("a!=b", {"a": "b"}, False),
        ("a notin (x, y),b", {"a": "z", "b": ""}, True),
        ("b", {}, False),
        ("", {}, True),
    ],
)
def test_the_selectors_the_operator_uses_match_as_the_api_server_would(
    selector: str, labels: dict[str, str], expected: bool
) -> None:
    assert matches(labels, selector) is expected


def _obj(name: str, rv: str, **labels: str) -> Manifest:
    return {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "labels": labels, "managedFields": [1]}
    }


def test_the_newer_version_wins_whichever_way_it_arrives_and_a_deletion_removes() -> None:
    cache = Cache()
    cache.event("Job", "MODIFIED", _obj("j", "20"))
    cache.prime("Job", "ns", [_obj("j", "10"), _obj("k", "11")])  # a LIST older than the watch's event
    assert cache.primed("Job", "ns") and not cache.primed("Job", "other")
    got = cache.get("Job", "ns", "j")
    assert got is not None and got["metadata"]["resourceVersion"] == "20"
    assert "managedFields" not in got["metadata"], "not kept: no decision reads them"
    cache.event("Job", "MODIFIED", _obj("k", "9"))  # a late, older event
    assert (cache.get("Job", "ns", "k") or {})["metadata"]["resourceVersion"] == "11"
    cache.event("Job", "DELETED", _obj("j", "21"))
    assert [o["metadata"]["name"] for o in cache.list("Job", "ns")] == ["k"]
    listed = cache.list("Job", "ns")
    listed[0]["metadata"]["name"] = "edited"
    assert cache.get("Job", "ns", "k") is not None, "callers get copies"


def test_the_instance_index_answers_as_a_full_scan_would_through_relabels_relists_and_deletions() -> None:
    cache, inst = Cache(), render.INSTANCE_LABEL

    def names(selector: str) -> list[str]:
        return sorted(o["metadata"]["name"] for o in cache.list("Pod", "ns", selector))

    cache.event("Pod", "ADDED", _obj("a-0", "1", **{inst: "a", render.COMPONENT_LABEL: "server"}))
    cache.event("Pod", "ADDED", _obj("a-f", "2", **{inst: "a", render.COMPONENT_LABEL: "fetch"}))
    cache.event("Pod", "ADDED", _obj("b-0", "3", **{inst: "b", render.COMPONENT_LABEL: "server"}))
    cache.event("Pod", "ADDED", _obj("x", "4"))  # no instance label: only a selector without it finds it
    assert names(render.engine_pods_selector("a")) == ["a-0"]
    assert names(f"{inst} in (a, b)") == ["a-0", "a-f", "b-0"]
    assert names(f"{inst}!=a") == ["b-0", "x"]
    assert names("") == ["a-0", "a-f", "b-0", "x"]
    cache.event("Pod", "MODIFIED", _obj("a-0", "5", **{inst: "b", render.COMPONENT_LABEL: "server"}))  # relabelled
    assert names(render.engine_pods_selector("a")) == [] and names(render.engine_pods_selector("b")) == ["a-0", "b-0"]
    cache.event("Pod", "MODIFIED", _obj("a-0", "4", **{inst: "a", render.COMPONENT_LABEL: "server"}))  # older: lost
    assert names(f"{inst}=a") == ["a-f"]
    cache.prime("Pod", "ns", [_obj("b-0", "3", **{inst: "b"}), _obj("x", "7")])  # a newer relist: a-0, a-f gone
    assert names(f"{inst}=b") == ["b-0"] and names(f"{inst}=a") == []
    cache.event("Pod", "DELETED", _obj("b-0", "8"))
    assert names(f"{inst}=b") == [] and names("") == ["x"]


def test_a_scan_reads_every_object_of_the_namespace_without_copying_it() -> None:
    cache = Cache()
    cache.event("KimiDeployment", "ADDED", _obj("a", "1"))
    cache.event("KimiDeployment", "ADDED", _obj("b", "2"))
    cache.event("KimiDeployment", "ADDED", {**_obj("c", "3"), "metadata": {"name": "c", "namespace": "other"}})
    seen = cache.scan("KimiDeployment", "ns", lambda o: o)
    assert sorted(o["metadata"]["name"] for o in seen) == ["a", "b"]
    assert seen[0] is cache.scan("KimiDeployment", "ns", lambda o: o)[0], "the cached object itself, no copy"


class WatchedFake(CachedKube, FakeKube):
    """CachedKube over the in-memory API server, whose every change reaches the cache as a watch event would
    (kopf's handlers do that for the real operator); counts the LISTs that reach the server."""

    def __init__(self) -> None:
        FakeKube.__init__(self)
        self.cache = Cache()
        self._missing = {}
        self._prime_lock = threading.Lock()
        self.lists: list[str] = []

    def _list_from_server(self, rtype: ResourceType, namespace: str, selector: str) -> list[Manifest]:
        self.lists.append(rtype.kind)
        out: list[Manifest] = FakeKube.list_of(self, rtype, namespace, selector)
        return out

    def _bump(self, obj: Manifest) -> None:  # every change of the in-memory server: a watch event
        FakeKube._bump(self, obj)
        if hasattr(self, "cache") and obj.get("kind"):
            self.cache.event(obj["kind"], "MODIFIED", obj)

    def drop(self, kind: str, name: str, namespace: str = "ns") -> None:
        FakeKube.drop(self, kind, name, namespace)
        self.cache.event(kind, "DELETED", {"metadata": {"name": name, "namespace": namespace}})

    def delete(self, kind: str, namespace: str, name: str) -> None:
        FakeKube.delete(self, kind, namespace, name)
        self.cache.event(kind, "DELETED", {"metadata": {"name": name, "namespace": namespace}})


def test_after_the_first_reconcile_of_a_namespace_a_reconcile_reads_no_list() -> None:
    kube = WatchedFake()
    kube.put(kimideployment("kd", {}))
    hub = FakeHub({"main": COMMIT})

    def reconcile() -> None:
        assert controller.reconcile_one(kube, CONFIG, "ns", "kd", hub) is not None

    reconcile()
    primed = len(kube.lists)
    assert primed >= 10, kube.lists  # one LIST per kind in the namespace, once
    kube.set_status("Job", "kd-fetch", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    reconcile()  # the Deployment is created
    reconcile()  # the Job goes
    assert ("Job", "ns", "kd-fetch") not in kube.objects
    before = len(kube.lists)
    for _ in range(5):
        reconcile()
    assert kube.lists[before:] == [], f"steady state read LISTs: {kube.lists[before:]}"
    assert len(kube.lists) == primed, "and none since the priming"
    # a second KimiDeployment in the namespace: nothing to prime
    kube.put(kimideployment("two", {}))
    assert controller.reconcile_one(kube, CONFIG, "ns", "two", hub) is not None
    assert len(kube.lists) == primed
    assert ("Job", "ns", "two-fetch") in kube.objects


def test_a_kind_the_cluster_does_not_serve_is_asked_again_only_after_a_minute() -> None:
    kube = WatchedFake()
    kube.unserved.add("LeaderWorkerSet")
    kube.put(kimideployment("kd", {}))
    for _ in range(3):
        _, missing = kube.list_children("ns", render.children_selector("kd"))
        assert missing == {"LeaderWorkerSet"}
    assert kube.lists.count("LeaderWorkerSet") == 1


def test_a_relist_drops_what_a_watch_that_had_to_relist_never_reported_deleted() -> None:
    now = [0.0]
    cache = Cache(relist_seconds=600, clock=lambda: now[0])
    cache.prime("Job", "ns", [_obj("gone", "10"), _obj("kept", "11")])
    cache.event("Job", "ADDED", _obj("new", "30"))  # came by the watch after the next LIST was served
    now[0] += 599
    assert cache.primed("Job", "ns")
    now[0] += 2
    assert not cache.primed("Job", "ns"), "listed again after 10 minutes"
    cache.prime("Job", "ns", [_obj("kept", "12")])  # "gone" was deleted while kopf's watch relisted
    assert sorted(o["metadata"]["name"] for o in cache.list("Job", "ns")) == ["kept", "new"]
