"""The only module that talks to the Kubernetes API server.

Server-side apply with one field manager for every child, plain reads, status merge-patches and core/v1 Events.
Every write is counted in `kimi_operator_api_writes_total` so benchmarks can prove an idle KimiDeployment costs none.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from kimi_operator import metrics
from kimi_operator.api.models import GROUP, KIND, PLURAL, VERSION
from kimi_operator.cache import Cache
from kimi_operator.timeutil import now_rfc3339

log = logging.getLogger(__name__)

FIELD_MANAGER = "kimi-operator"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    api_version: str
    kind: str
    plural: str

    def path(self, namespace: str, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        out = f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"
        return f"{out}/{name}" if name else out


KD = ResourceType(f"{GROUP}/{VERSION}", KIND, PLURAL)
CHILD_TYPES: dict[str, ResourceType] = {
    "PersistentVolumeClaim": ResourceType("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    "Job": ResourceType("batch/v1", "Job", "jobs"),
    "Deployment": ResourceType("apps/v1", "Deployment", "deployments"),
    "Service": ResourceType("v1", "Service", "services"),
    "PodDisruptionBudget": ResourceType("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    "LeaderWorkerSet": ResourceType("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets"),
    # the gateway's pod discovery identity, and the engines' NetworkPolicy
    "ServiceAccount": ResourceType("v1", "ServiceAccount", "serviceaccounts"),
    "Role": ResourceType("rbac.authorization.k8s.io/v1", "Role", "roles"),
    "RoleBinding": ResourceType("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    "NetworkPolicy": ResourceType("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
}
OPTIONAL_KINDS = frozenset({"LeaderWorkerSet"})  # CRDs a cluster may not have
PODS = ResourceType("v1", "Pod", "pods")
EVENTS = ResourceType("v1", "Event", "events")
NODES = ResourceType("v1", "Node", "nodes")  # cluster-scoped: path("")
LEASES = ResourceType("coordination.k8s.io/v1", "Lease", "leases")
SECRETS = ResourceType("v1", "Secret", "secrets")  # only the API key's, by name (get), for its fingerprint


class KubeError(Exception):
    """An answer of the API server outside 2xx. `kube_error` picks the subclass from the status code; catch the
    subclass (`except NotFound:`) or ask the class (`err.refused`), never compare `.status` by hand."""

    refused: ClassVar[bool] = False
    """The API server refused the request as such (invalid, forbidden, conflicting, not found...): retrying the same
    write will not help; a person has to change something. False for everything that may pass on a retry."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.body = body

    @property
    def server_message(self) -> str:
        """The Status message the API server gave (what `kubectl` prints), else the raw body."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return self.body[:500]
        message = data.get("message") if isinstance(data, dict) else None
        return str(message) if message else self.body[:500]


class BadRequest(KubeError):
    """400: a request the server could not decode (malformed patch, strict field validation). Kept apart from
    Invalid as apimachinery does (IsBadRequest vs IsInvalid); both are refusals."""

    refused = True


class Unauthorized(KubeError):
    """401: the credentials were not accepted (an expired token is renewed on a later call: not a refusal)."""


class Forbidden(KubeError):
    """403: RBAC does not allow it (or a namespace is terminating)."""

    refused = True


class NotFound(KubeError):
    """404: the object, or the whole API (an optional CRD such as LeaderWorkerSet), does not exist."""

    refused = True


class Conflict(KubeError):
    """409: AlreadyExists on create, or a stale resourceVersion / field-manager conflict."""

    refused = True


class Gone(KubeError):
    """410: a list continuation (or watch) expired, its resourceVersion too old: list again."""


class Invalid(KubeError):
    """422: the object fails validation (schema, CEL, an immutable field): the message names the field."""

    refused = True


class Unavailable(KubeError):
    """429 and 5xx: throttled, overloaded, timed out or failing server-side (webhooks too): retry later."""


class Unreachable(Unavailable):
    """No answer at all: connection refused or reset, a timeout, TLS failing (status 0). Retry later."""

    def __init__(self, err: Exception) -> None:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        super().__init__(0, type(err).__name__, first)

    def __str__(self) -> str:
        return f"the API server could not be reached: {self.reason}: {self.server_message}"


_BY_STATUS: dict[int, type[KubeError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: Unavailable,
}


def kube_error(status: int, reason: str, body: str) -> KubeError:
    """The KubeError subclass for an HTTP status (the one place that maps numbers to types)."""
    cls = _BY_STATUS.get(status) or (Unavailable if 500 <= status <= 599 else KubeError)
    return cls(status, reason, body)


def from_api_exception(err: ApiException) -> KubeError:
    """The typed error for what the client library raised itself (status 0: the request never got an answer)."""
    return kube_error(int(err.status or 0), str(err.reason or ""), str(err.body or ""))


def load_client(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


def _read_of(path: str) -> tuple[str, str]:
    """(resource, get|list) of a GET path, for the reads metric."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        rest = parts[parts.index("namespaces") + 2 :]
    else:
        rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if not rest:
        return "?", "get"
    if len(rest) >= 3:  # <plural>/<name>/<subresource>
        return f"{rest[0]}/{rest[2]}", "get"
    return rest[0], "get" if len(rest) == 2 else "list"


class NotLeader(Exception):
    """A write refused before it left this process: another operator replica holds the leader Lease (or this one
    could not renew it in time). Not an API error: the work is done by the leader."""


Completion = tuple[str, str, str | None, str]  # (KimiDeployment name, claimName, claimUID, completedKey)


def completion_of(kd: Manifest) -> Completion:
    w = (kd.get("status") or {}).get("weights") or {}
    uid = w.get("claimUID")
    return (
        str(kd["metadata"]["name"]),
        str(w.get("claimName") or ""),
        None if uid is None else str(uid),
        str(w.get("completedKey") or ""),
    )


class Kube:
    def __init__(self, api: kubernetes.client.ApiClient, may_write: Callable[[], bool] | None = None) -> None:
        """`may_write`: asked before every write (leader.Elector.leading); None: this process always may."""
        self.api = api
        self.may_write = may_write

    # ---------------------------------------------------------------------------------------------- transport
    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        guarded: bool = True,
    ) -> Any:
        text = self._request(method, path, body=body, query=query, content_type=content_type, guarded=guarded)
        return json.loads(text) if text else None

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: float = 30,
        guarded: bool = True,
    ) -> str:
        write = method != "GET"
        if write and guarded and self.may_write is not None and not self.may_write():
            raise NotLeader(f"{method} {path}: not the leader")
        serialized = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.api.call_api(*serialized, _request_timeout=timeout)
            data = resp.read()  # type: ignore[no-untyped-call]
        except ApiException as err:  # raised by the client itself (SSL, Retry-After retries spent): typed too
            raise from_api_exception(err) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:  # the transport: typed here, never a traceback
            raise Unreachable(err) from err
        ok = 200 <= resp.status < 300
        if write and guarded:  # the Lease's renewals are not the operator's writes to the objects it manages
            metrics.API_WRITES.labels(verb=method, outcome="ok" if ok else str(resp.status)).inc()
        elif not write and guarded:
            metrics.API_READS.labels(*_read_of(path)).inc()
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data or "")
        if not ok:
            raise kube_error(resp.status, resp.reason or "", text)
        return text

    # ---------------------------------------------------------------------------------------------- the Lease
    # (leader.LeaseStore; never guarded: these writes are how leadership is won and kept)
    def get_lease(self, namespace: str, name: str) -> Manifest | None:
        try:
            out: Manifest = self._call("GET", LEASES.path(namespace, name), guarded=False)
            return out
        except NotFound:
            return None

    def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": LEASES.api_version, "kind": "Lease", "metadata": {"name": name}, "spec": spec}
        self._call("POST", LEASES.path(namespace), body=body, guarded=False)

    def update_lease(self, lease: Manifest, spec: dict[str, Any]) -> None:
        """PUT with the resourceVersion it was read at: a Conflict when another candidate wrote it meanwhile."""
        meta = lease["metadata"]
        body = {
            "apiVersion": LEASES.api_version,
            "kind": "Lease",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta["resourceVersion"],
            },
            "spec": spec,
        }
        self._call("PUT", LEASES.path(meta["namespace"], meta["name"]), body=body, guarded=False)

    # ---------------------------------------------------------------------------------------------- reads
    def get(self, rtype: ResourceType, namespace: str, name: str) -> Manifest | None:
        try:
            out: Manifest = self._call("GET", rtype.path(namespace, name))
            return out
        except NotFound:
            return None

    def list_of(
        self, rtype: ResourceType, namespace: str, label_selector: str, field_selector: str = ""
    ) -> list[Manifest]:
        query = [("labelSelector", label_selector)]
        if field_selector:
            query.append(("fieldSelector", field_selector))
        out = self._call("GET", rtype.path(namespace), query=query)
        items: list[Manifest] = out.get("items") or []
        for item in items:
            item.setdefault("kind", rtype.kind)
            item.setdefault("apiVersion", rtype.api_version)
        return items

    def get_kd(self, namespace: str, name: str) -> Manifest | None:
        return self.get(KD, namespace, name)

    def list_children(self, namespace: str, selector: str) -> tuple[dict[tuple[str, str], Manifest], set[str]]:
        """The children with these labels, and the optional kinds whose API the cluster does not serve."""
        children: dict[tuple[str, str], Manifest] = {}
        missing: set[str] = set()
        for kind, rtype in CHILD_TYPES.items():
            try:
                items = self._list_child_kind(rtype, namespace, selector)
            except NotFound:
                if kind not in OPTIONAL_KINDS:
                    raise
                missing.add(kind)
                continue
            for item in items:
                children[(kind, item["metadata"]["name"])] = item
        return children, missing

    def _list_child_kind(self, rtype: ResourceType, namespace: str, selector: str) -> list[Manifest]:
        """One child kind's objects with these labels (NotFound: the cluster does not serve the kind)."""
        return self.list_of(rtype, namespace, selector)

    def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        return self.list_of(PODS, namespace, selector)

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
        """The last ``lines`` lines of a container's log (pods/log get), at most ``limit_bytes``; with
        ``timestamps`` each line starts with the kubelet's RFC 3339 time. Needs a kubelet: raises a KubeError when
        the pod's node serves no logs (e.g. a simulated node) or the pod is gone."""
        query = [("container", container), ("tailLines", str(lines)), ("limitBytes", str(limit_bytes))]
        if timestamps:
            query.append(("timestamps", "true"))
        # the API server answers 406 to Accept: text/plain on this subresource (kubectl sends */* too)
        return self._request("GET", PODS.path(namespace, name) + "/log", query=query, accept="*/*", timeout=10)

    def list_nodes(self, selector: str) -> list[Manifest]:
        """Nodes with these labels (cluster-scoped; needs nodes list, which the namespaced chart does not grant)."""
        return self.list_of(NODES, "", selector)

    def list_kds(self, namespace: str) -> list[Manifest]:
        return self.list_of(KD, namespace, "")

    def weights_completions(self, namespace: str) -> list[Completion]:
        """Each KimiDeployment's recorded weights: (name, claimName, claimUID, completedKey) from status.weights."""
        return [completion_of(kd) for kd in self.list_kds(namespace)]

    def secret_key_fingerprint(self, namespace: str, name: str, key: str) -> str | None:
        """A fingerprint of one key of a Secret (the API key): 16 hex digits of SHA-256 over the Secret's namespace,
        name and the key's value. It changes when that value changes, not when the Secret's labels or other keys
        do; the value never leaves this method. None: no such Secret or key. Needs `get` on secrets."""
        secret = self.get(SECRETS, namespace, name)
        encoded = ((secret or {}).get("data") or {}).get(key)
        if encoded is None:
            return None
        digest = hashlib.sha256(f"kimi-operator/{namespace}/{name}\0".encode())
        digest.update(base64.b64decode(encoded))
        return digest.hexdigest()[:16]

    def events_for(self, namespace: str, kind: str, name: str) -> list[Manifest]:
        return self.list_of(EVENTS, namespace, "", f"involvedObject.kind={kind},involvedObject.name={name}")

    # ---------------------------------------------------------------------------------------------- writes
    def apply(self, manifest: Manifest) -> Manifest:
        rtype = CHILD_TYPES[manifest["kind"]]
        meta = manifest["metadata"]
        out: Manifest = self._call(
            "PATCH",
            rtype.path(meta["namespace"], meta["name"]),
            body=json.dumps(manifest),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return out

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(
                "DELETE",
                CHILD_TYPES[kind].path(namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        with contextlib.suppress(NotFound):
            self._call(
                "PATCH",
                PODS.path(namespace, name),
                body={"metadata": {"annotations": annotations}},
                query=[("fieldManager", FIELD_MANAGER)],
                content_type="application/merge-patch+json",
            )

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str) -> None:
        """A JSON merge patch of .status, only onto the KimiDeployment exactly as it was read (its resourceVersion):
        a status worked out from an object that changed since, or was deleted and re-created under the same name
        (it would carry the old one's download record onto the new one), is refused with 409 Conflict. A UID in the
        patch would not do: the status subresource copies metadata from the stored object before it compares."""
        self._call(
            "PATCH",
            KD.path(namespace, name) + "/status",
            body={"metadata": {"resourceVersion": resource_version}, "status": status},
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )

    def event(self, owner: Manifest, type_: str, reason: str, message: str) -> None:
        meta = owner["metadata"]
        stamp = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": owner.get("apiVersion", KD.api_version),
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._call("POST", EVENTS.path(meta["namespace"]), body=body)
        except KubeError as err:  # an event is best effort: never fail a reconcile on it
            log.warning("event %s/%s not recorded: %s", meta["name"], reason, err)


MANAGED_SELECTOR = "app.kubernetes.io/managed-by=kimi-operator"  # what handlers.py watches (render.MANAGED_BY)
MISSING_KIND_SECONDS = 60.0  # an optional kind the cluster does not serve (no LWS CRD) is asked again after this


class CachedKube(Kube):
    """Kube whose reconcile reads come from the watch-fed cache (cache.py): the KimiDeployments, their children and
    their pods. The first read of a kind in a namespace primes it with one LIST of the namespace's managed objects;
    after that no LIST reaches the API server. Writes, Events, logs, the Lease and a user's own claim go through."""

    def __init__(
        self, api: kubernetes.client.ApiClient, cache: Cache, may_write: Callable[[], bool] | None = None
    ) -> None:
        super().__init__(api, may_write)
        self.cache = cache
        self._missing: dict[str, float] = {}  # optional kind -> when the cluster said it does not serve it
        self._prime_lock = threading.Lock()

    def _ensure(self, kind: str, rtype: ResourceType, namespace: str, selector: str) -> None:
        if self.cache.primed(kind, namespace):
            return
        with self._prime_lock:  # one priming LIST per (kind, namespace), whatever the number of workers
            if not self.cache.primed(kind, namespace):
                self.cache.prime(kind, namespace, self._list_from_server(rtype, namespace, selector))
                metrics.CACHED_OBJECTS.set(self.cache.size())

    def _list_from_server(self, rtype: ResourceType, namespace: str, selector: str) -> list[Manifest]:
        return super().list_of(rtype, namespace, selector)

    def get_kd(self, namespace: str, name: str) -> Manifest | None:
        self._ensure(KIND, KD, namespace, "")
        return self.cache.get(KIND, namespace, name)

    def list_kds(self, namespace: str) -> list[Manifest]:
        self._ensure(KIND, KD, namespace, "")
        return self.cache.list(KIND, namespace)

    def weights_completions(self, namespace: str) -> list[Completion]:
        self._ensure(KIND, KD, namespace, "")
        return self.cache.scan(KIND, namespace, completion_of)  # four strings each, no copy of the namespace

    def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        self._ensure("Pod", PODS, namespace, MANAGED_SELECTOR)
        return self.cache.list("Pod", namespace, selector)

    def _list_child_kind(self, rtype: ResourceType, namespace: str, selector: str) -> list[Manifest]:
        kind = rtype.kind
        said = self._missing.get(kind)
        if said is not None and time.monotonic() - said < MISSING_KIND_SECONDS:
            raise NotFound(
                404,
                "NotFound",
                f"the cluster did not serve {rtype.plural} when asked in the last {MISSING_KIND_SECONDS:.0f}s",
            )
        try:
            self._ensure(kind, rtype, namespace, MANAGED_SELECTOR)
        except NotFound:
            self._missing[kind] = time.monotonic()
            raise
        self._missing.pop(kind, None)
        items = self.cache.list(kind, namespace, selector)
        for item in items:
            item.setdefault("kind", rtype.kind)
            item.setdefault("apiVersion", rtype.api_version)
        return items
