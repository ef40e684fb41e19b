"""kube.py's typed API errors: one factory maps a status code to a KubeError subclass, and Kube's own tolerances
(404 on get/delete, a missing optional CRD) are written against the types."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from kimi_operator import kube
from kimi_operator.kube import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    Unauthorized,
    Unavailable,
    kube_error,
)

STATUS_BODY = json.dumps(
    {
        "kind": "Status",
        "status": "Failure",
        "message": 'Deployment.apps "kd" is invalid: spec.replicas: Invalid value: -1: must be >= 0',
        "reason": "Invalid",
        "code": 422,
    }
)


@pytest.mark.parametrize(
    ("status", "cls", "refused"),
    [
        (400, BadRequest, True),
        (401, Unauthorized, False),
        (403, Forbidden, True),
        (404, NotFound, True),
        (409, Conflict, True),
        (410, Gone, False),
        (422, Invalid, True),
        (429, Unavailable, False),
        (500, Unavailable, False),
        (503, Unavailable, False),
        (504, Unavailable, False),
        (0, KubeError, False),  # no answer at all (the client raised before a response)
        (418, KubeError, False),
    ],
)
def test_each_status_maps_to_one_type_and_refused_is_what_it_was(status: int, cls: type, refused: bool) -> None:
    err = kube_error(status, "Reason", STATUS_BODY)
    assert type(err) is cls and isinstance(err, KubeError)
    assert err.refused is refused is cls.refused
    # what callers read stays as it was
    assert err.status == status and err.body == STATUS_BODY and err.reason == "Reason"
    assert str(err).startswith(f"{status} Reason: ")
    assert err.server_message.startswith('Deployment.apps "kd" is invalid: spec.replicas')


def test_refused_is_exactly_the_old_status_list() -> None:
    """The old check was `status in (400, 403, 404, 409, 422)`."""
    assert {s for s in range(600) if kube_error(s, "", "").refused} == {400, 403, 404, 409, 422}


def test_a_body_that_is_not_a_status_is_the_message() -> None:
    assert kube_error(502, "Bad Gateway", "<html>upstream</html>").server_message == "<html>upstream</html>"


def test_an_exception_the_client_raises_itself_is_typed_too() -> None:
    err = kube.from_api_exception(ApiException(status=429, reason="Too Many Requests"))
    assert isinstance(err, Unavailable) and err.status == 429 and err.body == ""
    assert type(kube.from_api_exception(ApiException(status=0, reason="SSLError"))) is KubeError


# ------------------------------------------------------------------------------ Kube over a scripted transport


@dataclass
class Response:
    status: int
    body: str
    reason: str = ""

    def read(self) -> bytes:
        return self.body.encode()


class Transport:
    """Stands in for kubernetes.client.ApiClient: answers (method, path) from a script, records every call."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, str] | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []

    def param_serialize(self, method: str, path: str, **_: Any) -> tuple[str, str]:
        return method, path

    def call_api(self, method: str, path: str, _request_timeout: float = 0) -> Response:
        self.calls.append((method, path))
        answer = self.answers.get((method, path), (200, "{}"))
        if isinstance(answer, Exception):
            raise answer
        return Response(*answer)


def _kube(answers: dict[tuple[str, str], tuple[int, str] | Exception]) -> kube.Kube:
    return kube.Kube(cast(kubernetes.client.ApiClient, Transport(answers)))


DEP = "/apis/apps/v1/namespaces/ns/deployments/kd"


def test_get_is_none_on_not_found_and_raises_the_rest() -> None:
    assert _kube({("GET", DEP): (404, "{}")}).get(kube.CHILD_TYPES["Deployment"], "ns", "kd") is None
    with pytest.raises(Forbidden):
        _kube({("GET", DEP): (403, "{}")}).get(kube.CHILD_TYPES["Deployment"], "ns", "kd")


def test_delete_tolerates_not_found() -> None:
    _kube({("DELETE", DEP): (404, "{}")}).delete("Deployment", "ns", "kd")
    with pytest.raises(Conflict):
        _kube({("DELETE", DEP): (409, "{}")}).delete("Deployment", "ns", "kd")
    _kube({("PATCH", "/api/v1/namespaces/ns/pods/p"): (404, "{}")}).annotate_pod("ns", "p", {"a": "b"})


def test_a_missing_optional_crd_is_reported_but_a_missing_core_api_raises() -> None:
    lws = "/apis/leaderworkerset.x-k8s.io/v1/namespaces/ns/leaderworkersets"
    children, missing = _kube({("GET", lws): (404, "{}")}).list_children("ns", "a=b")
    assert children == {} and missing == {"LeaderWorkerSet"}
    with pytest.raises(NotFound):
        _kube({("GET", "/apis/apps/v1/namespaces/ns/deployments"): (404, "{}")}).list_children("ns", "a=b")


def test_a_refused_event_never_fails_the_caller_and_transport_errors_are_typed() -> None:
    owner = {"metadata": {"name": "kd", "namespace": "ns", "uid": "u"}}
    _kube({("POST", "/api/v1/namespaces/ns/events"): (403, "{}")}).event(owner, "Normal", "R", "m")
    with pytest.raises(Unavailable):
        _kube({("GET", DEP): ApiException(status=503, reason="Service Unavailable")}).get(
            kube.CHILD_TYPES["Deployment"], "ns", "kd"
        )


def test_an_api_server_that_does_not_answer_is_unreachable_a_retryable_error_not_a_transport_traceback() -> None:
    config = kubernetes.client.Configuration()
    config.host = "http://127.0.0.1:9"  # the discard port: nothing listens
    config.retries = 0
    k = kube.Kube(kubernetes.client.ApiClient(config))
    with pytest.raises(kube.Unreachable) as caught:
        k.get_kd("ns", "kd")
    err = caught.value
    assert isinstance(err, Unavailable) and not err.refused and err.status == 0
    assert str(err).startswith("the API server could not be reached: "), str(err)
    assert "Traceback" not in str(err) and "\n" not in str(err)


def test_a_standby_replica_writes_nothing_its_writes_stop_before_the_network() -> None:
    config = kubernetes.client.Configuration()
    config.host = "http://127.0.0.1:9"  # nothing listens: a write that left the process would be Unreachable
    config.retries = 0
    k = kube.Kube(kubernetes.client.ApiClient(config), may_write=lambda: False)
    with pytest.raises(kube.NotLeader):
        k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kd", "namespace": "ns"}})
    with pytest.raises(kube.NotLeader):
        k.patch_status("ns", "kd", {"ready": "1/1"}, resource_version="1")
    with pytest.raises(kube.Unreachable):
        k.get_kd("ns", "kd")  # reads go on: a standby keeps its view current
    with pytest.raises(kube.Unreachable):  # the Lease itself is never guarded: it is how a standby takes over
        k.create_lease("ops", "kimi", {"holderIdentity": "b"})
