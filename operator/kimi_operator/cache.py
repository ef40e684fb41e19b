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
import time
from collections.abc import Callable, Iterable, Mapping
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


RELIST_SECONDS = 600.0  # a (kind, namespace) is listed again this often: what a watch that had to relist lost


class Cache:
    def __init__(self, relist_seconds: float = RELIST_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], dict[str, Manifest]] = {}  # (kind, namespace) -> name -> object
        self._primed: dict[tuple[str, str], float] = {}  # when it was last listed
        self._relist = relist_seconds
        self._clock = clock

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
        with self._lock:
            bucket = self._objects.setdefault((kind, namespace), {})
            names = {str(i["metadata"]["name"]) for i in listed}
            for name in [n for n in bucket if n not in names]:
                v = _version(bucket[name])
                if newest is None or v is None or v <= newest:
                    del bucket[name]  # deleted while the watch was away
            for item in listed:
                self._put(bucket, str(item["metadata"]["name"]), item)
            self._primed[(kind, namespace)] = self._clock()

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
