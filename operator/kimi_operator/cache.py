"""A watch-fed cache of the objects a reconcile reads: the KimiDeployments and every object the operator manages
(children, engine and fetch pods), by kind and namespace.

kopf's watches feed it (handlers.py: every event of a watched kind, before the owner is queued, so a reconcile
that an event queued reads at least that event). The first read of a (kind, namespace) primes it with one LIST of
the namespace, merged by resourceVersion with what the watch already brought; after that a reconcile reads no LIST
from the API server. No I/O here: kube.CachedKube does the priming LIST.
"""

from __future__ import annotations

import copy
import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

Manifest = dict[str, Any]
T = TypeVar("T")

_REQUIREMENT = re.compile(r"\s*([^\s=!,()]+)(?:\s*(==?|!=)\s*([^\s,()]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*")


Requirement = tuple[str, str, frozenset[str]]


@functools.lru_cache(maxsize=4096)
def _requirements(selector: str) -> tuple[Requirement, ...]:
    """Parse a label selector of the forms the operator uses: k=v, k==v, k!=v, k in (a,b), k notin (a,b), k.
    Parsed once per distinct selector (a reconcile asks the same three selectors every time)."""
    out: list[Requirement] = []
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
    return tuple(out)


def matches(labels: Mapping[str, str], selector: str) -> bool:
    return _matches(labels, _requirements(selector))


def _matches(labels: Mapping[str, str], requirements: tuple[Requirement, ...]) -> bool:
    for key, op, values in requirements:
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


def _label(obj: Mapping[str, Any], key: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(key)
    return None if value is None else str(value)


RELIST_SECONDS = 600.0  # a (kind, namespace) is listed again this often: what a watch that had to relist lost
INDEX_LABEL = "app.kubernetes.io/instance"  # render.INSTANCE_LABEL: every managed object names its KimiDeployment


class Cache:
    """Objects by (kind, namespace) and name, indexed by one label (the owning KimiDeployment's name), so that a
    selector naming that label reads only that KimiDeployment's objects, not the namespace's."""

    def __init__(
        self,
        relist_seconds: float = RELIST_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        index_label: str = INDEX_LABEL,
    ) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], dict[str, Manifest]] = {}  # (kind, namespace) -> name -> object
        self._index: dict[tuple[str, str], dict[str, set[str]]] = {}  # (kind, namespace) -> label value -> names
        self._primed: dict[tuple[str, str], float] = {}  # when it was last listed
        self._relist = relist_seconds
        self._clock = clock
        self._index_label = index_label

    def event(self, kind: str, type_: str | None, body: Mapping[str, Any]) -> None:
        """A watch event (ADDED, MODIFIED, DELETED, or None: kopf's initial listing)."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if not name:
            return
        obj = _slim(body)
        with self._lock:
            if type_ == "DELETED":
                self._drop((kind, namespace), name)
                return
            self._put((kind, namespace), name, obj)

    def _put(self, where: tuple[str, str], name: str, obj: Manifest) -> None:
        bucket = self._objects.setdefault(where, {})
        old = bucket.get(name)
        new_v, old_v = _version(obj), _version(old) if old is not None else None
        if old is None or new_v is None or old_v is None or new_v >= old_v:
            if old is not None:
                self._unindex(where, name, old)
            bucket[name] = obj
            value = _label(obj, self._index_label)
            if value is not None:
                self._index.setdefault(where, {}).setdefault(value, set()).add(name)

    def _drop(self, where: tuple[str, str], name: str) -> None:
        old = self._objects.get(where, {}).pop(name, None)
        if old is not None:
            self._unindex(where, name, old)

    def _unindex(self, where: tuple[str, str], name: str, old: Manifest) -> None:
        value = _label(old, self._index_label)
        index = self._index.get(where, {})
        if value is None or value not in index:
            return
        index[value].discard(name)
        if not index[value]:
            del index[value]

    def primed(self, kind: str, namespace: str) -> bool:
        """Listed, and not so long ago that a watch which had to relist (kopf reports no deletion it missed then)
        could have left a stale object behind."""
        with self._lock:
            at = self._primed.get((kind, namespace))
            return at is not None and self._clock() - at < self._relist

    def prime(self, kind: str, namespace: str, items: Iterable[Mapping[str, Any]]) -> None:
        """What one LIST of the namespace returned: merged (a newer version from the watch wins), and what the
        LIST no longer has is dropped unless the watch brought it after the LIST was served."""
        listed = [_slim(i) for i in items if (i.get("metadata") or {}).get("name")]
        newest = max((v for v in (_version(i) for i in listed) if v is not None), default=None)
        where = (kind, namespace)
        with self._lock:
            bucket = self._objects.setdefault(where, {})
            names = {str(i["metadata"]["name"]) for i in listed}
            for name in [n for n in bucket if n not in names]:
                v = _version(bucket[name])
                if newest is None or v is None or v <= newest:
                    self._drop(where, name)  # deleted while the watch was away
            for item in listed:
                self._put(where, str(item["metadata"]["name"]), item)
            self._primed[where] = self._clock()

    def _candidates(self, where: tuple[str, str], requirements: tuple[Requirement, ...]) -> Iterable[Manifest]:
        """The objects that can match: only those with the indexed label's value where the selector asks for it."""
        bucket = self._objects.get(where, {})
        for key, op, values in requirements:
            if key == self._index_label and op in ("=", "in"):
                index = self._index.get(where, {})
                return [bucket[n] for v in values for n in index.get(v, ())]
        return bucket.values()

    def scan(self, kind: str, namespace: str, read: Callable[[Manifest], T]) -> list[T]:
        """read(object) for every object of the kind in the namespace, without copying them: for a question about
        all of them (which volumes the neighbours completed) where a copy of each would cost O(namespace) per
        call. `read` must not change the object nor keep a reference into it."""
        with self._lock:
            return [read(o) for o in self._objects.get((kind, namespace), {}).values()]

    def list(self, kind: str, namespace: str, selector: str = "") -> list[Manifest]:
        """Private copies of the objects that match (a caller may change them)."""
        requirements = _requirements(selector) if selector else ()
        with self._lock:
            found = [
                o
                for o in self._candidates((kind, namespace), requirements)
                if _matches((o.get("metadata") or {}).get("labels") or {}, requirements)
            ]
            return copy.deepcopy(found)

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        with self._lock:
            obj = self._objects.get((kind, namespace), {}).get(name)
            return copy.deepcopy(obj) if obj is not None else None

    def size(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._objects.values())
