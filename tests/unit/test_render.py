"""Manifests: golden files for every example, and the properties every rendered child must have.

Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 make unit` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kimi_operator import planner, render
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "KimiDeployment" in p.read_text())
GOLDEN = ROOT / "tests" / "golden"
CONFIG = OperatorConfig(operator_image="ghcr.io/kimi-operator/kimi-operator:test")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "KimiDeployment"]


# What the operator pins once it resolved model.revision (and the draft's main branch) through the Hub: the golden
# files show exactly what it applies (`kimi-operator render --commit ... --draft-commit ...` prints the same).
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DRAFT_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _render(doc: dict[str, Any], *, weights_ready: bool) -> list[dict[str, Any]]:
    spec = KimiDeploymentSpec.model_validate(doc["spec"])
    owner = render.Owner(doc["metadata"]["name"], "demo", "00000000-0000-0000-0000-000000000000")
    p = render.pin(planner.plan(spec), spec, CONFIG, commit=COMMIT, draft_commit=DRAFT_COMMIT)
    return render.render_all(owner, spec, p, CONFIG, weights_ready=weights_ready)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("stage", ["serving", "download"])
def test_examples_match_golden_manifests(example: Path, stage: str) -> None:
    manifests = [m for d in _docs(example) for m in _render(d, weights_ready=stage == "serving")]
    text = yaml.safe_dump_all(manifests, sort_keys=False)
    golden = GOLDEN / f"{example.stem}.{stage}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}; run UPDATE_GOLDEN=1 make unit"
    assert text == golden.read_text(), f"{golden.name} differs from the renderer; review, then UPDATE_GOLDEN=1"


def _by_kind(ms: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in ms:
        out.setdefault(m["kind"], []).append(m)
    return out


def _doc(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "kd"}, "spec": spec}


def test_gpus_are_requested_only_by_the_serving_stage() -> None:
    download = _by_kind(_render(_doc(), weights_ready=False))
    assert "Deployment" not in download
    assert "nvidia.com/gpu" not in yaml.safe_dump(download["Job"])
    serving = _by_kind(_render(_doc(), weights_ready=True))
    assert "Job" not in serving
    pod = serving["Deployment"][0]["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}


def test_serving_pod_mounts_weights_read_only_and_runs_offline() -> None:
    dep = _by_kind(_render(_doc(), weights_ready=True))["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    weights = next(v for v in c["volumeMounts"] if v["mountPath"] == "/models")
    assert weights["readOnly"] is True and weights["name"] == "weights" and "subPath" not in weights
    cache = next(v for v in c["volumeMounts"] if v["mountPath"] == "/cache/sglang")
    assert cache["name"] == "weights" and cache["subPath"].startswith(".kernel-cache/") and not cache.get("readOnly")
    assert f"/models/moonshotai/Kimi-K2.5/{COMMIT}" in c["command"]
    assert c["resources"]["requests"]["cpu"] == "40" and c["resources"]["requests"]["memory"] == "640Gi"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert pod["terminationGracePeriodSeconds"] >= 600
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


def test_retained_weights_volume_has_no_owner_so_deleting_the_kd_keeps_it() -> None:
    pvc = _by_kind(_render(_doc(), weights_ready=True))["PersistentVolumeClaim"][0]
    assert "ownerReferences" not in pvc["metadata"]
    pvc = _by_kind(_render(_doc(weights={"retainOnDelete": False}), weights_ready=True))["PersistentVolumeClaim"][0]
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "KimiDeployment"


def test_existing_claim_is_used_and_not_created() -> None:
    ms = _by_kind(_render(_doc(weights={"existingClaimName": "shared-cache"}), weights_ready=True))
    assert "PersistentVolumeClaim" not in ms
    vols = ms["Deployment"][0]["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "weights",
        "persistentVolumeClaim": {"claimName": "shared-cache"},
    } in vols


def test_pdb_only_with_more_than_one_replica() -> None:
    assert "PodDisruptionBudget" not in _by_kind(_render(_doc(replicas=1), weights_ready=True))
    pdb = _by_kind(_render(_doc(replicas=2), weights_ready=True))["PodDisruptionBudget"][0]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_every_child_is_labelled_and_owned() -> None:
    for m in _render(_doc(weights={"retainOnDelete": False}), weights_ready=True) + _render(
        _doc(), weights_ready=False
    ):
        labels = m["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "kimi-operator"
        assert labels["app.kubernetes.io/instance"] == "kd"
        if m["kind"] != "PersistentVolumeClaim":
            assert m["metadata"]["ownerReferences"][0]["controller"] is True


def test_token_secret_is_referenced_never_inlined() -> None:
    job = _by_kind(_render(_doc(model={"tokenSecretRef": {"name": "hf", "key": "tok"}}), weights_ready=False))["Job"][0]
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    token = next(e for e in env if e["name"] == "HF_TOKEN")
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "tok"}}}


def test_fetch_pod_has_no_api_credentials_and_runs_as_the_image_user() -> None:
    job = _by_kind(_render(_doc(), weights_ready=False))["Job"][0]
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == sc["runAsGroup"] == sc["fsGroup"] == 65532
    assert sc["fsGroupChangePolicy"] == "OnRootMismatch"  # no recursive chown of the whole volume at each start
    (c,) = pod["containers"]
    assert c["imagePullPolicy"] == "IfNotPresent" and c["image"] == CONFIG.operator_image
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {e["name"] for e in c["env"]} == {"HF_HUB_DISABLE_TELEMETRY", "HF_HOME", "POD_NAME"}
    assert "tolerations" not in pod and "nodeSelector" not in pod
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules == [
        {"action": "FailJob", "onExitCodes": {"containerName": "fetch", "operator": "In", "values": [2, 3]}}
    ]


def test_fetch_pod_tolerates_what_the_engine_tolerates() -> None:
    taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    job = _by_kind(_render(_doc(topology={"tolerations": [taint]}), weights_ready=False))["Job"][0]
    assert job["spec"]["template"]["spec"]["tolerations"] == [taint]


@pytest.mark.parametrize(
    ("fetch_resources", "expected"),
    [
        (None, {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}),
        # a small node: lower the CPU request, keep the default memory request and limit
        ({"requests": {"cpu": "250m"}}, {"requests": {"cpu": "250m", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}),
        # a memory limit below the default request: the default request gives way (Kubernetes: request = limit)
        ({"limits": {"memory": "2Gi"}}, {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}),
    ],
)
def test_fetch_pod_resources_merge_the_users_over_the_default(
    fetch_resources: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    weights_spec = {"fetchResources": fetch_resources} if fetch_resources is not None else {}
    job = _by_kind(_render(_doc(weights=weights_spec), weights_ready=False))["Job"][0]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["resources"] == expected
    assert "nvidia.com/gpu" not in str(c["resources"]), "the fetch pod never holds GPUs"


def test_service_selects_serving_pods_and_matches_status_selector() -> None:
    ms = _by_kind(_render(_doc(), weights_ready=True))
    svc = next(s for s in ms["Service"] if s["metadata"]["name"] == "kd")
    assert svc["spec"]["selector"] == render.selector("kd")
    assert render.selector_string("kd") == ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items())
    assert ms["Deployment"][0]["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


@pytest.mark.parametrize("key", ["token, name: someone-elses-secret", "tok}en", "a\nb: c", "{{ x }}"])
def test_a_value_reaching_a_template_is_rendered_as_data_never_as_yaml(key: str) -> None:
    """Refused at admission (Secret keys are [-._a-zA-Z0-9]+), and even unvalidated it stays one string."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="key"):
        KimiDeploymentSpec.model_validate({"model": {"tokenSecretRef": {"name": "hf", "key": key}}})
    spec = KimiDeploymentSpec.model_validate({"model": {"tokenSecretRef": {"name": "hf", "key": "token"}}})
    assert spec.model.token_secret_ref is not None
    object.__setattr__(spec.model.token_secret_ref, "key", key)  # as if validation were bypassed
    owner = render.Owner("kd", "demo", "00000000-0000-0000-0000-000000000000")
    ms = render.render_all(owner, spec, planner.plan(spec), CONFIG, weights_ready=False)
    job = next(m for m in ms if m["kind"] == "Job")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    token = next(e for e in env if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": key}
