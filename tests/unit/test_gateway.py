"""The gateway: when it runs, what it runs, and how the Service moves to it and back without losing backends."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
from typing import Any

import pytest
from pydantic import ValidationError

from kimi_operator import controller, gateway, render
from kimi_operator.api import resource
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.config import DEFAULT_GATEWAY_IMAGE
from kimi_operator.kube import kube_error
from kimi_operator.reconcile import ready_leaders

from .test_reconcile import Server, _cond, _serving

GATEWAY_SEL = {
    "app.kubernetes.io/name": "kimi",
    "app.kubernetes.io/instance": "kd",
    "app.kubernetes.io/component": "gateway",
}
GATEWAY_KINDS = [
    ("Deployment", "kd-gateway"),
    ("PodDisruptionBudget", "kd-gateway"),
    ("Role", "kd-gateway"),
    ("RoleBinding", "kd-gateway"),
    ("ServiceAccount", "kd-gateway"),
]


@pytest.mark.parametrize(
    ("spec", "on"),
    [
        ({}, False),
        ({"replicas": 2}, True),
        ({"autoscaling": {"enabled": True, "maxReplicas": 3}}, True),
        ({"gateway": {"enabled": True}}, True),
        ({"replicas": 4, "gateway": {"enabled": False}}, False),
    ],
)
def test_the_gateway_is_on_by_default_only_when_more_than_one_replica_may_serve(spec: dict[str, Any], on: bool) -> None:
    assert KimiDeploymentSpec.model_validate(spec).gateway_enabled() is on


def test_gateway_command_discovers_ready_leaders_and_carries_no_key() -> None:
    spec = KimiDeploymentSpec.model_validate({"replicas": 2, "gateway": {"policy": "round_robin"}})
    cmd = gateway.command(spec, "ns", render.selector("kd"))
    assert cmd[:3] == ["python3", "-c", gateway.LAUNCHER]
    args = cmd[3:]
    assert args[args.index("--policy") + 1] == "round_robin"
    assert "--service-discovery" in args
    sel = args[args.index("--selector") + 1 : args.index("--service-discovery-port")]
    assert sel == ["app.kubernetes.io/name=kimi", "app.kubernetes.io/instance=kd", "app.kubernetes.io/component=server"]
    assert args[args.index("--service-discovery-port") + 1] == "8000"
    assert args[args.index("--service-discovery-namespace") + 1] == "ns"
    assert "--api-key" not in args


def _by_kind(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def _render(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    s = Server(spec)
    s.step()
    s.job_succeeds()
    s.step()
    return _by_kind(list(s.children.values()))


def test_api_key_reaches_gateway_and_engines_only_through_secret_key_refs() -> None:
    objs = _render({"replicas": 2, "auth": {"apiKeySecretRef": {"name": "kimi-key"}}})
    ref = {"secretKeyRef": {"name": "kimi-key", "key": "api-key"}}
    gw = objs[("Deployment", "kd-gateway")]["spec"]["template"]["spec"]["containers"][0]
    engine = objs[("Deployment", "kd")]["spec"]["template"]["spec"]["containers"][0]
    for c in (gw, engine):
        assert {"name": gateway.API_KEY_ENV, "valueFrom": ref} in c["env"]
        assert "--api-key" not in c["command"]
    assert engine["command"][:3] == ["python3", "-c", gateway.ENGINE_LAUNCHER]
    assert engine["command"][3] == "--model-path"  # SGLang's own arguments follow, unchanged
    # probes stay on /health (SGLang and the gateway never ask a key there)
    assert engine["readinessProbe"]["httpGet"]["path"] == "/health"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readiness"


def test_engine_command_without_auth_is_sglangs_own() -> None:
    engine = _render({})[("Deployment", "kd")]["spec"]["template"]["spec"]["containers"][0]
    assert engine["command"][:3] == ["python3", "-m", "sglang.launch_server"]


def test_gateway_rbac_is_pod_discovery_in_its_namespace_owned_by_the_kd() -> None:
    objs = _render({"replicas": 2})
    role = objs[("Role", "kd-gateway")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = objs[("RoleBinding", "kd-gateway")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kd-gateway", "namespace": "ns"}]
    for key in GATEWAY_KINDS:
        assert objs[key]["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    pod = objs[("Deployment", "kd-gateway")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kd-gateway"
    assert "nodeSelector" not in pod, "the gateway needs no GPU node"
    assert objs[("PodDisruptionBudget", "kd-gateway")]["spec"]["maxUnavailable"] == 1


def _gateway_ready(s: Server, ready: int) -> None:
    dep = s.children[("Deployment", "kd-gateway")]
    dep["status"] = {"readyReplicas": ready, "replicas": dep["spec"]["replicas"]}


def _service_selector(s: Server) -> dict[str, str]:
    sel: dict[str, str] = s.children[("Service", "kd")]["spec"]["selector"]
    return sel


def test_turning_the_gateway_on_moves_the_service_only_once_a_gateway_pod_is_ready() -> None:
    s = _serving()
    s.set_spec(replicas=2)
    applied = {(m["kind"], m["metadata"]["name"]) for m in s.step().apply}
    assert set(GATEWAY_KINDS) <= applied
    assert _service_selector(s) == render.selector("kd"), "no gateway pod is ready: the engines keep serving"
    assert ("NetworkPolicy", "kd-engines") not in s.children, "the engines still take client traffic"
    assert s.body["status"]["gateway"]["serving"] is False
    s.step()
    assert _service_selector(s) == render.selector("kd")
    _gateway_ready(s, 1)
    s.step()
    assert _service_selector(s) == GATEWAY_SEL
    assert ("NetworkPolicy", "kd-engines") in s.children
    s.step()
    status = s.body["status"]["gateway"]
    assert status["serving"] is True and status["ready"] == "1/2"
    # the gateway losing its ready pods does not flap the Service back and forth
    _gateway_ready(s, 0)
    s.step()
    assert _service_selector(s) == GATEWAY_SEL


def test_turning_the_gateway_off_moves_the_service_back_before_the_gateway_goes() -> None:
    s = _serving()
    s.set_spec(replicas=2)
    s.step()
    _gateway_ready(s, 2)
    s.step()
    s.step()
    assert _service_selector(s) == GATEWAY_SEL
    s.set_spec(gateway={"enabled": False})
    actions = s.step()
    assert _service_selector(s) == render.selector("kd")
    assert ("Deployment", "kd-gateway") in s.children, "the gateway stays until the Service has moved"
    assert actions.delete == [("NetworkPolicy", "kd-engines")]
    actions = s.step()
    assert sorted(actions.delete) == GATEWAY_KINDS
    s.step()
    assert s.body["status"]["gateway"] == {"enabled": False, "serving": False, "summary": "off"}
    assert s.step().writes == 0


def test_status_counts_ready_leaders_as_the_gateways_workers() -> None:
    def pod(name: str, component: str, ready: bool) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "labels": {"app.kubernetes.io/component": component}},
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }

    pods = [pod("a", "server", True), pod("b", "server", False), pod("c", "worker", True), pod("d", "server", True)]
    assert ready_leaders(pods) == 2


def test_network_policy_admits_the_gateway_the_group_and_the_scrapers() -> None:
    s = _serving()
    s.set_spec(replicas=2)
    s.step()
    _gateway_ready(s, 1)
    s.step()
    np = s.children[("NetworkPolicy", "kd-engines")]["spec"]
    exprs = np["podSelector"]["matchExpressions"]
    assert {"key": "app.kubernetes.io/component", "operator": "In", "values": ["server", "worker"]} in exprs
    gw_rule, group_rule, metrics_rule = np["ingress"]
    assert gw_rule["from"] == [{"podSelector": {"matchLabels": GATEWAY_SEL}}]
    assert gw_rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert "ports" not in group_rule, "multi-node rendezvous (NCCL, torch distributed) uses many ports"
    assert metrics_rule["from"] == gateway.default_metrics_peers()


def test_network_policy_is_opt_out() -> None:
    s = _serving()
    s.set_spec(replicas=2, gateway={"networkPolicy": {"enabled": False}})
    s.step()
    _gateway_ready(s, 1)
    s.step()
    s.step()
    assert _service_selector(s) == GATEWAY_SEL
    assert ("NetworkPolicy", "kd-engines") not in s.children


@pytest.mark.parametrize(
    ("wanted", "ready", "current", "target", "keep"),
    [
        (True, 0, None, "engines", True),
        (True, 0, "engines", "engines", True),
        (True, 1, "engines", "gateway", True),
        (True, 0, "gateway", "gateway", True),
        (False, 2, "gateway", "engines", True),
        (False, 2, "engines", "engines", False),
        (False, 0, None, "engines", False),
    ],
)
def test_service_target_never_leaves_the_service_without_backends(
    wanted: bool, ready: int, current: gateway.ServiceTarget | None, target: str, keep: bool
) -> None:
    decision = gateway.service_target(wanted, ready, current)
    assert (decision.target, decision.keep_gateway) == (target, keep)


@pytest.mark.parametrize(
    ("resources", "want"),
    [
        (None, {"requests": {"cpu": "1", "memory": "1Gi"}}),
        ({"requests": {"cpu": "2"}}, {"requests": {"cpu": "2"}}),
        ({"limits": {"memory": "2Gi"}}, {"limits": {"memory": "2Gi"}}),
    ],
)
def test_gateway_resources_are_a_typed_resource_requirements(resources: Any, want: dict[str, Any]) -> None:
    gw: dict[str, Any] = {"enabled": True} | ({"resources": resources} if resources is not None else {})
    dep = _render({"replicas": 2, "gateway": gw})[("Deployment", gateway.names("kd")["gateway"])]
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"] == want


@pytest.mark.parametrize("bad", [{"requests": "lots"}, {"requests": {"cpu": "lots"}}, {"limits": {"gpu": []}}])
def test_a_gateway_resources_value_that_is_no_quantity_is_refused_at_admission(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        KimiDeploymentSpec.model_validate({"gateway": {"resources": bad}})


def _secret(s: Server, value: str, name: str = "kimi-key", **labels: str) -> None:
    encoded = base64.b64encode(value.encode()).decode()
    s.kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "data": {"api-key": encoded, "other": base64.b64encode(b"x").decode()},
        }
    )


def _key_annotations(s: Server) -> dict[str, str | None]:
    def of(template: dict[str, Any]) -> str | None:
        return ((template.get("metadata") or {}).get("annotations") or {}).get(render.API_KEY_ANNOTATION)

    return {
        "gateway": of(s.children[("Deployment", "kd-gateway")]["spec"]["template"]),
        "engines": of(s.children[("Deployment", "kd")]["spec"]["template"]),
    }


def test_a_new_api_key_rolls_the_gateway_and_the_engines_and_nothing_else_does() -> None:
    """Neither sglang-router nor SGLang re-reads the key: a new value in the Secret changes a fingerprint in the pod
    templates that hold it (a rolling restart by their Deployments); labels or other keys of the Secret do not."""
    s = Server({"replicas": 2, "auth": {"apiKeySecretRef": {"name": "kimi-key"}}})
    _secret(s, "first-key-0123456789abcdef")
    s.step()
    s.job_succeeds()
    s.step()
    first = _key_annotations(s)
    assert first["gateway"] and first["gateway"] == first["engines"]
    assert len(first["gateway"]) == 16
    _secret(s, "first-key-0123456789abcdef", team="ml")  # a label: no restart
    s.step()
    assert _key_annotations(s) == first
    _secret(s, "second-key-fedcba9876543210")
    s.step()
    second = _key_annotations(s)
    assert second["gateway"] and second["gateway"] == second["engines"] and second["gateway"] != first["gateway"]
    # the value is nowhere in what the operator wrote: children, status, Events
    written = json.dumps([list(s.children.values()), s.body.get("status"), s.kube.recorded_events()])
    assert "second-key" not in written and "first-key" not in written


def test_the_fingerprint_is_of_the_value_and_the_secrets_name_never_the_value_itself() -> None:
    s = Server({})
    _secret(s, "k1")
    a = s.kube.secret_key_fingerprint("ns", "kimi-key", "api-key")
    _secret(s, "k1", name="other-secret")
    b = s.kube.secret_key_fingerprint("ns", "other-secret", "api-key")
    assert a and b and a != b, "salted with the Secret's namespace and name: no table of common keys applies"
    assert a != hashlib.sha256(b"k1").hexdigest()[:16]
    assert s.kube.secret_key_fingerprint("ns", "kimi-key", "no-such-key") is None
    assert s.kube.secret_key_fingerprint("ns", "no-such-secret", "api-key") is None


def test_without_rbac_for_secrets_the_pods_keep_their_template_and_the_log_says_how_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Server({"replicas": 2, "auth": {"apiKeySecretRef": {"name": "kimi-key"}}})
    _secret(s, "k1")
    s.kube.fail("get", "Secret", "kimi-key", kube_error(403, "Forbidden", '{"message": "secrets is forbidden"}'), None)
    controller._unreadable_secrets.clear()
    with caplog.at_level(logging.WARNING, logger="kimi_operator.controller"):
        s.step()
        s.job_succeeds()
        s.step()
        s.step()
    assert _key_annotations(s) == {"gateway": None, "engines": None}
    said = [r.getMessage() for r in caplog.records if "cannot read Secret kimi-key" in r.getMessage()]
    assert len(said) == 1 and "rollout restart" in said[0] and "rbac.readApiKeySecrets" in said[0], said
    assert _cond(s, "Ready")["status"] in ("True", "False")  # the reconcile itself went on


def test_rotation_off_never_reads_the_secret() -> None:
    s = Server({"replicas": 2, "auth": {"apiKeySecretRef": {"name": "kimi-key"}}})
    _secret(s, "k1")
    observed = controller.observe(s.kube, s.resolver, resource.parse(copy.deepcopy(s.body)), api_key_rotation=False)
    assert observed.api_key_fingerprint is None
    assert controller.observe(s.kube, s.resolver, resource.parse(copy.deepcopy(s.body))).api_key_fingerprint


def test_the_gateway_pods_take_their_own_node_selector_and_tolerations() -> None:
    toleration = {"key": "cpu-pool", "operator": "Exists", "effect": "NoSchedule"}
    objs = _render({"replicas": 2, "gateway": {"nodeSelector": {"pool": "cpu"}, "tolerations": [toleration]}})
    pod = objs[("Deployment", "kd-gateway")]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"] == [toleration]
    engine = objs[("Deployment", "kd")]["spec"]["template"]["spec"]
    assert engine["nodeSelector"] != {"pool": "cpu"} and toleration not in engine.get("tolerations", [])
    assert objs[("Deployment", "kd-gateway")]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        DEFAULT_GATEWAY_IMAGE
    )
