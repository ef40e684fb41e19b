"""An in-memory API server behind kube.Kube's interface, so controller and autoscaler tests run in milliseconds.

`FakeKube` subclasses `Kube` and overrides every method that would reach the API server, so mypy checks each
override's signature against the real one and it goes wherever a `Kube` is expected. The read helpers built on
those (`get_kd`, `list_children`, `list_pods`, `list_kds`, `list_nodes`, `events_for`) are Kube's own code. The
transport raises: a new Kube method the fake does not cover fails the test instead of reaching for a network.

It keeps what the controller relies on: objects by (kind, namespace, name) with uid, creationTimestamp,
resourceVersion (bumped on every change) and generation (bumped when anything but metadata and status changes);
server-side apply as this field manager's merge (fields it set before and no longer sends are removed, fields
others set are kept, status is never taken from an apply); label and field selectors; status merge patches;
Events; pod logs; deletes. `fail()` makes a chosen call raise a typed KubeError, like an admission refusal or an outage.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

import kubernetes

from kimi_operator.api.models import GROUP, KIND, VERSION
from kimi_operator.hub import Resolver
from kimi_operator.kube import (
    CHILD_TYPES,
    Kube,
    KubeError,
    Manifest,
    NotFound,
    ResourceType,
    kube_error,
)

Key = tuple[str, str, str]  # (kind, namespace, name); namespace "" for cluster-scoped kinds
STAMP = "2026-11-23T12:00:00Z"
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict"}
REASONS |= {410: "Gone", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
# fields the API server fills in on create (so drift detection must tolerate what it did not set)
SERVER_DEFAULTS: dict[str, Manifest] = {
    "Deployment": {"spec": {"revisionHistoryLimit": 10, "progressDeadlineSeconds": 600}},
    "Service": {"spec": {"sessionAffinity": "None", "internalTrafficPolicy": "Cluster"}},
    "Job": {"spec": {"completionMode": "NonIndexed", "suspend": False}},
    "PersistentVolumeClaim": {"spec": {"volumeMode": "Filesystem"}},
}


def status_error(code: int, message: str) -> KubeError:
    """The typed error the API server's answer `code` with this Status message becomes (via kube.kube_error)."""
    reason = REASONS.get(code, "Unknown")
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason}
    return kube_error(code, reason, json.dumps(body | {"code": code}))


def kimideployment(name: str, spec: Manifest, namespace: str = "ns") -> Manifest:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def merge_patch(old: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(old) if isinstance(old, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _prune(obj: Manifest, owned: Manifest) -> None:
    """Remove from obj what a field manager set (owned): what it does not send again is no longer its."""
    for k, v in owned.items():
        if k not in obj:
            continue
        if isinstance(v, dict) and isinstance(obj[k], dict):
            _prune(obj[k], v)
            if not obj[k]:
                del obj[k]
        else:
            del obj[k]


def _fill(obj: Manifest, defaults: Manifest) -> None:
    for k, v in defaults.items():
        if isinstance(v, dict):
            _fill(obj.setdefault(k, {}), v)
        else:
            obj.setdefault(k, v)


def _terms(selector: str) -> list[str]:
    """Split a selector at the commas outside `in (...)` sets."""
    out, cur, depth = [], "", 0
    for ch in selector:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [t for t in [*out, cur.strip()] if t]


def matches_labels(labels: dict[str, str], selector: str) -> bool:
    """Equality (=, ==, !=), set (in, notin) and existence (key, !key) requirements, all of them."""
    for term in _terms(selector):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            values = {v.strip() for v in m[3].split(",")}
            if (labels.get(m[1]) in values) != (m[2] == "in"):
                return False
        elif "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def matches_fields(obj: Manifest, selector: str) -> bool:
    for term in _terms(selector):
        path, _, want = term.partition("=")
        value: Any = obj
        for part in path.strip().split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if str(value if value is not None else "") != want.strip():
            return False
    return True


@dataclass
class Fault:
    verb: str  # apply | delete | patch_status | event | annotate_pod | get | list | log
    kind: str
    name: str  # "" matches any name
    error: KubeError
    times: int | None  # None: every time, until cleared


class FakeKube(Kube):
    def __init__(self, *, lws_installed: bool = True) -> None:
        super().__init__(cast(kubernetes.client.ApiClient, None))  # no client: nothing here reaches a server
        self.objects: dict[Key, Manifest] = {}
        self._incarnations: dict[str, int] = {}
        self.owned: dict[Key, Manifest] = {}  # what this field manager last applied, per object
        self.logs: dict[tuple[str, str, str], str] = {}  # (namespace, pod, container) -> log text
        self.log_timestamps = False  # whether the last pods/log read asked for the kubelet's timestamps
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name) of every write the operator asked for
        self.faults: list[Fault] = []
        self.unserved: set[str] = set() if lws_installed else {"LeaderWorkerSet"}  # kinds whose API is absent
        self._version = 0
        self._lock = threading.Lock()  # the work queue calls in from worker threads

    # ------------------------------------------------------------------------------------------ test controls
    def fail(self, verb: str, kind: str, name: str, error: KubeError, times: int | None = 1) -> None:
        """Make the next `times` calls of `verb` on kind/name raise `error` (a refusal, an outage...)."""
        self.faults.append(Fault(verb, kind, name, error, times))

    def put(self, obj: Manifest) -> Manifest:
        """Create or replace an object as a person or another controller would (not this field manager)."""
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        with self._lock:
            return copy.deepcopy(self._store(key, copy.deepcopy(obj), self.objects.get(key)))

    def obj(self, kind: str, name: str, namespace: str = "ns") -> Manifest:
        """The stored object itself (edits to it are what the next read sees, with no version bump)."""
        return self.objects[(kind, namespace, name)]

    def update(self, kind: str, name: str, edit: Callable[[Manifest], None], namespace: str = "ns") -> None:
        """An edit by someone else (a person, `kubectl edit`): bumps resourceVersion, and generation for spec."""
        new = copy.deepcopy(self.obj(kind, name, namespace))
        edit(new)
        self.put(new)

    def set_status(self, kind: str, name: str, status: Manifest, namespace: str = "ns") -> None:
        """What the owning controller writes to the status subresource (a Job completing, pods getting ready)."""
        obj = self.obj(kind, name, namespace)
        obj["status"] = copy.deepcopy(status)
        self._bump(obj)

    def drop(self, kind: str, name: str, namespace: str = "ns") -> None:
        """An object gone by someone else's hand (or garbage collection)."""
        self.objects.pop((kind, namespace, name), None)
        self.owned.pop((kind, namespace, name), None)

    def set_log(self, pod: str, container: str, text: str, namespace: str = "ns") -> None:
        self.logs[(namespace, pod, container)] = text

    def recorded_events(self, name: str = "", namespace: str = "ns") -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events about a KimiDeployment (all of them without a name), oldest first."""
        events = [
            o
            for (kind, ns, _), o in self.objects.items()
            if kind == "Event" and ns == namespace and (not name or o["involvedObject"]["name"] == name)
        ]
        events.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [(e["type"], e["reason"], e["message"]) for e in events]

    def writes_of(self, verb: str) -> list[tuple[str, str]]:
        return [(kind, name) for v, kind, name in self.writes if v == verb]

    # ------------------------------------------------------------------------------------------ internals
    def _request(self, method: str, path: str, **_: Any) -> str:
        raise AssertionError(f"FakeKube has no API server ({method} {path}): fake the Kube method that calls this")

    def _check(self, verb: str, kind: str, name: str) -> None:
        for fault in self.faults:
            if fault.verb == verb and fault.kind == kind and fault.name in ("", name):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                raise fault.error

    def _bump(self, obj: Manifest) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def _store(self, key: Key, new: Manifest, prev: Manifest | None) -> Manifest:
        meta = new["metadata"]
        if prev is None:
            uid = f"uid-{key[0].lower()}-{key[2]}"
            self._incarnations[uid] = self._incarnations.get(uid, 0) + 1
            # a re-created object is another object: a new UID, as on a real server
            meta.setdefault("uid", uid if self._incarnations[uid] == 1 else f"{uid}-{self._incarnations[uid]}")
            meta.setdefault("creationTimestamp", STAMP)
            meta["generation"] = 1
            _fill(new, SERVER_DEFAULTS.get(key[0], {}))
        else:
            for field in ("uid", "creationTimestamp", "generation", "resourceVersion"):
                if field in prev["metadata"]:
                    meta[field] = prev["metadata"][field]
            if "status" in prev and "status" not in new:
                new["status"] = prev["status"]

            def body(o: Manifest) -> Manifest:
                return {k: v for k, v in o.items() if k not in ("metadata", "status")}

            if body(new) != body(prev):
                meta["generation"] = int(prev["metadata"].get("generation") or 0) + 1
            if new == prev:
                return new
        self._bump(new)
        self.objects[key] = new
        return new

    # ------------------------------------------------------------------------------------------ reads
    def get(self, rtype: ResourceType, namespace: str, name: str) -> Manifest | None:
        with self._lock:
            self._check("get", rtype.kind, name)
            obj = self.objects.get((rtype.kind, namespace, name))
            return copy.deepcopy(obj)

    def list_of(
        self, rtype: ResourceType, namespace: str, label_selector: str, field_selector: str = ""
    ) -> list[Manifest]:
        with self._lock:
            if rtype.kind in self.unserved:
                raise status_error(404, "the server could not find the requested resource")
            self._check("list", rtype.kind, "")
            out = [
                copy.deepcopy(o)
                for (kind, ns, _), o in sorted(self.objects.items())
                if kind == rtype.kind
                and (not namespace or ns == namespace)
                and matches_labels(o["metadata"].get("labels") or {}, label_selector)
                and matches_fields(o, field_selector)
            ]
        for item in out:
            item.setdefault("apiVersion", rtype.api_version)
        return out

    def pod_log_tail(
        self,
        namespace: str,
        name: str,
        container: str,
        *,
        lines: int = 40,
        limit_bytes: int = 64 << 10,
        timestamps: bool = False,
    ) -> str:
        """The text set_log gave (with `timestamps` it is expected to carry them already, as the kubelet's)."""
        with self._lock:
            self.log_timestamps = timestamps  # what the last read asked for
            self._check("log", "Pod", name)
            if ("Pod", namespace, name) not in self.objects:
                raise status_error(404, f'pods "{name}" not found')
            text = self.logs.get((namespace, name, container))
        if text is None:
            raise status_error(400, f'container "{container}" in pod "{name}" is waiting to start')
        return "\n".join(text.split("\n")[-lines:]).encode()[-limit_bytes:].decode(errors="ignore")

    # ------------------------------------------------------------------------------------------ writes
    def apply(self, manifest: Manifest) -> Manifest:
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        with self._lock:
            self.writes.append(("apply", key[0], key[2]))
            self._check("apply", key[0], key[2])
            sent = {k: v for k, v in copy.deepcopy(manifest).items() if k != "status"}  # status: a subresource
            prev = self.objects.get(key)
            new = copy.deepcopy(prev) if prev is not None else {}
            _prune(new, self.owned.get(key, {}))
            new = merge_patch(new, sent) if prev is not None else sent
            new.setdefault("metadata", {}).update({"name": key[2], "namespace": key[1]})
            self.owned[key] = sent
            return copy.deepcopy(self._store(key, new, prev))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if kind not in CHILD_TYPES:  # as Kube.delete
            raise KeyError(kind)
        with self._lock:
            self.writes.append(("delete", kind, name))
            try:
                self._check("delete", kind, name)
                if (kind, namespace, name) not in self.objects:
                    raise status_error(404, f'{kind.lower()}s "{name}" not found')
            except NotFound:
                return
            del self.objects[(kind, namespace, name)]
            self.owned.pop((kind, namespace, name), None)

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        with self._lock:
            self.writes.append(("annotate_pod", "Pod", name))
            try:
                self._check("annotate_pod", "Pod", name)
                pod = self.objects.get(("Pod", namespace, name))
                if pod is None:
                    raise status_error(404, f'pods "{name}" not found')
            except NotFound:
                return
            pod["metadata"]["annotations"] = {**(pod["metadata"].get("annotations") or {}), **annotations}
            self._bump(pod)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str) -> None:
        with self._lock:
            self.writes.append(("patch_status", KIND, name))
            self._check("patch_status", KIND, name)
            obj = self.objects.get((KIND, namespace, name))
            if obj is None:
                raise status_error(404, f'kimideployments.{GROUP} "{name}" not found')
            if obj["metadata"].get("resourceVersion") != resource_version:  # as the API server (cluster test)
                raise status_error(
                    409,
                    f'Operation cannot be fulfilled on kimideployments.{GROUP} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
            obj["status"] = merge_patch(obj.get("status") or {}, status)
            self._bump(obj)

    def event(self, owner: Manifest, type_: str, reason: str, message: str) -> None:
        meta = owner["metadata"]
        with self._lock:
            self.writes.append(("event", KIND, meta["name"]))
            try:
                self._check("event", KIND, meta["name"])
            except KubeError:  # as Kube.event: best effort
                return
            seq = self._version + 1
            self._store(
                ("Event", meta["namespace"], f"{meta['name']}.{seq:016x}"),
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"{meta['name']}.{seq:016x}", "namespace": meta["namespace"]},
                    "involvedObject": {"kind": KIND, "name": meta["name"], "uid": meta.get("uid", "")},
                    "type": type_,
                    "reason": reason,
                    "message": message[:1024],
                },
                None,
            )


class FakeHub(Resolver):
    """The Hub as a dict: revisions of the model repo by name, and `"draft"` for any other repo's main branch.
    A revision it does not know is "unreachable" (not definitive), one in `absent` is one the Hub says it does not
    have (RevisionNotFound). The real Resolver's 40-hex short cut stays; its cache does not (tests change what the
    Hub answers between two reconciles)."""

    MODEL_REPOS = ("moonshotai/Kimi-K2.5", "unsloth/Kimi-K2.5-GGUF")  # the model (safetensors or GGUF)

    def __init__(self, revisions: dict[str, str] | None = None) -> None:
        super().__init__(None)
        self.hub: dict[str, str] = dict(revisions or {})
        self.absent: set[str] = set()
        self.asked: list[tuple[str, str]] = []

    def _ask(self, repo: str, revision: str, token: str | None) -> tuple[str | None, str, bool]:
        self.asked.append((repo, revision if token is None else f"{revision} (with a token)"))
        key = revision if repo in self.MODEL_REPOS else "draft"
        if key in self.hub:
            return self.hub[key], "", False
        if key in self.absent:
            return None, f"the Hub has no revision {revision!r} in {repo}", True
        return None, f"cannot resolve {repo}@{revision} through the Hub: hub unreachable", False

    def resolve(
        self, repo: str, revision: str, token: str | None = None, *, waiter: Hashable | None = None
    ) -> tuple[str | None, str]:
        self._cache.clear()  # tests change what the Hub answers between reconciles; missing() reads the last ask
        return super().resolve(repo, revision, token, waiter=waiter)


class Children(MutableMapping[tuple[str, str], Manifest]):
    """The live children of one namespace by (kind, name), for tests that poke at them as a person would."""

    def __init__(self, kube: FakeKube, namespace: str = "ns") -> None:
        self.kube, self.namespace = kube, namespace

    def _keys(self) -> list[tuple[str, str]]:
        return [(k, n) for (k, ns, n) in self.kube.objects if ns == self.namespace and k in CHILD_TYPES]

    def __getitem__(self, key: tuple[str, str]) -> Manifest:
        if key not in self._keys():
            raise KeyError(key)
        return self.kube.obj(key[0], key[1], self.namespace)

    def __setitem__(self, key: tuple[str, str], value: Manifest) -> None:
        self.kube.put(value)

    def __delitem__(self, key: tuple[str, str]) -> None:
        if key not in self._keys():
            raise KeyError(key)
        self.kube.drop(key[0], key[1], self.namespace)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())
