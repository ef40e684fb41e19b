"""A watch-fed cache of the objects a reconcile reads: the KimiDeployments and every object the operator manages
(children, engine and fetch pods), by kind and namespace.

kopf's watches feed it (handlers.py: every event of a watched kind, before the owner is queued, so a reconcile
that an event queued reads at least that event). The first read of a (kind, namespace) primes it with one LIST of
the namespace, merged by resourceVersion with what the watch already brought; after that a reconcile reads no LIST
from the API server. No I/O here: kube.CachedKube does the priming LIST.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

Manifest = dict[str, Any]

_REQUIREMENT = re.compile(r"\s*([^\s=!,()]+)(?:\s*(==?|!=)\s*([^\s,()]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*")


def _requirements(selector: str) -> list[tuple[str, str, frozenset[str]]]:
    """Parse a label selector of the forms the operator uses: k=v, k==v, k!=v, k in (a,b), k notin (a,b), k."""
    out: list[tuple[str, str, frozenset[str]]] = []
    rest = selector.strip()
    while rest:
        m = _REQUIREMENT.match(rest)
        if m is None or not m.group(0).strip():
            raise ValueError(f"label selector not understood: {selector!r}")
        key, op, value, set_op, values = m.groups()
        if set_op:
            out.append((key, set_op, frozenset(v.strip() for v in values.split(",") if v.strip())))
        elif op:
            out.append((key, "!=" if op == "!=" else "=", frozenset({value})))
        else:
            out.append((key, "exists", frozenset()))
        rest = rest[m.end() :]
        if rest.startswith(","):
            rest = rest[1:]
        elif rest:
            raise ValueError(f"label selector not understood: {selector!r}")
    return out


def matches(labels: Mapping[str, str], selector: str) -> bool:
    for key, op, values in _requirements(selector):
        have = labels.get(key)
        if op == "exists" and have is None:
            return False
        if op in ("=", "in") and have not in values:
            return False
        if op in ("!=", "notin") and have in values:
            return False
    return True


def _version(obj: Mapping[str, Any]) -> int | None:
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else None


def _slim(body: Mapping[str, Any]) -> Manifest:
    """A plain, private copy without managedFields (what no decision reads and what costs most memory)."""
    obj: Manifest = copy.deepcopy(dict(body))
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


class Cache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], dict[str, Manifest]] = {}  # (kind, namespace) -> name -> object
        self._primed: set[tuple[str, str]] = set()

    def event(self, kind: str, type_: str | None, body: Mapping[str, Any]) -> None:
        """A watch event (ADDED, MODIFIED, DELETED, or None: kopf's initial listing)."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if not name:
            return
        with self._lock:
            bucket = self._objects.setdefault((kind, namespace), {})
            if type_ == "DELETED":
                bucket.pop(name, None)
                return
            self._put(bucket, name, _slim(body))

    @staticmethod
    def _put(bucket: dict[str, Manifest], name: str, obj: Manifest) -> None:
        old = bucket.get(name)
        new_v, old_v = _version(obj), _version(old) if old is not None else None
        if old is None or new_v is None or old_v is None or new_v >= old_v:
            bucket[name] = obj

    def primed(self, kind: str, namespace: str) -> bool:
        with self._lock:
            return (kind, namespace) in self._primed

    def prime(self, kind: str, namespace: str, items: Iterable[Mapping[str, Any]]) -> None:
        """What one LIST of the namespace returned: merged (a newer version from the watch wins), then served."""
        with self._lock:
            bucket = self._objects.setdefault((kind, namespace), {})
            for item in items:
                name = str((item.get("metadata") or {}).get("name") or "")
                if name:
                    self._put(bucket, name, _slim(item))
            self._primed.add((kind, namespace))

    def list(self, kind: str, namespace: str, selector: str = "") -> list[Manifest]:
        with self._lock:
            found = [
                o
                for o in self._objects.get((kind, namespace), {}).values()
                if not selector or matches((o.get("metadata") or {}).get("labels") or {}, selector)
            ]
            return copy.deepcopy(found)

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        with self._lock:
            obj = self._objects.get((kind, namespace), {}).get(name)
            return copy.deepcopy(obj) if obj is not None else None

    def size(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._objects.values())
