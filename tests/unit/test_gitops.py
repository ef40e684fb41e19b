"""GitOps examples: the Argo CD health check for KimiDeployment run by a real Lua 5.1 interpreter (Argo CD's
gopher-lua speaks 5.1; `lupa` from PyPI embeds the reference one) on statuses the operator really writes, the
Flux health expressions agreeing with it, and every Application/HelmRelease's values accepted by the charts.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kimi_operator import reasons, reconcile
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.api.resource import parse as parse_kd
from kimi_operator.config import OperatorConfig
from kimi_testbed.bins import find_bin_dir

try:  # a dev dependency (pyproject [dev]); never skip: the health check must be executed to be trusted
    import lupa.lua51 as lua51  # type: ignore[import-untyped]
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(f"{err}: the Lua health-check test needs lupa; install it with `pip install lupa`") from err

ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "examples" / "gitops"
ARGO = GITOPS / "argocd"
FLUX = GITOPS / "flux"
KUBE_VERSION = "1.36.3"
NOW = "2026-01-01T00:00:00Z"
Manifest = dict[str, Any]


def ready_reasons() -> set[str]:
    """The reasons of the Ready condition, as docs/api.md (generated from the models) lists them."""
    text = " ".join((ROOT / "docs" / "api.md").read_text().split())
    listed = text[text.index("The `Ready` reason is") :].split(".")[0]
    return set(re.findall(r"`([A-Za-z]+)`", listed)) - {"Ready"}


# A person must act (or the cluster must change) before these resolve: Degraded in Argo CD, failed in Flux.
DEGRADED = ready_reasons() & reasons.WARNING_REASONS
IN_PROGRESS = ready_reasons() - reasons.WARNING_REASONS - {"ScaledToZero"}


def health(obj: Manifest) -> tuple[str, str]:
    """Run health.lua the way Argo CD does: the object in the global `obj`, the script's return value read back."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    script = (ARGO / "health.lua").read_text()
    result = lua.execute(script)
    return str(result["status"]), str(result["message"])


def kd(generation: int = 1, status: Manifest | None = None, **spec: Any) -> Manifest:
    obj: Manifest = {
        "apiVersion": "kimi-operator.dev/v1alpha1",
        "kind": "KimiDeployment",
        "metadata": {"name": "kimi", "namespace": "ns", "uid": "u-1", "generation": generation},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def operator_status(obj: Manifest) -> Manifest:
    """The status the operator's own decision writes for this object (no children yet)."""
    actions = reconcile.decide(reconcile.Observed(parse_kd(obj), {}, []), OperatorConfig(), NOW)
    assert actions.status is not None
    return actions.status


def ready(status: str, reason: str, generation: int = 1, message: str = "m") -> Manifest:
    cond = {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": NOW,
    }
    return {"observedGeneration": generation, "conditions": [cond]}


# ------------------------------------------------------------------------------------------------ Argo CD (Lua)


def test_no_status_yet_is_progressing() -> None:
    assert health(kd()) == ("Progressing", "Waiting for the operator to report status")
    assert health(kd(status={"conditions": []}))[0] == "Progressing"


def test_downloading_weights_as_the_operator_reports_it_is_progressing() -> None:
    obj = kd(model={"repo": "moonshotai/Kimi-K2.5"}, topology={"accelerator": "H200"})
    obj["status"] = operator_status(obj)
    status, message = health(obj)
    assert status == "Progressing" and message.startswith("DownloadingWeights")


def test_a_spec_that_does_not_fit_as_the_operator_reports_it_is_degraded() -> None:
    obj = kd(topology={"accelerator": "H100", "nodesPerReplica": 1})
    obj["status"] = operator_status(obj)
    status, message = health(obj)
    assert status == "Degraded" and message.startswith("DoesNotFit: ") and "nodesPerReplica: 2" in message


def test_ready_for_the_current_generation_is_healthy() -> None:
    assert health(kd(status=ready("True", "Ready", message="1/1 replicas ready"))) == (
        "Healthy",
        "Ready: 1/1 replicas ready",
    )
    assert health(kd(status=ready("True", "ScaledToZero")))[0] == "Healthy"


def test_ready_for_an_older_generation_is_progressing() -> None:
    status, message = health(kd(generation=3, status=ready("True", "Ready", generation=2)))
    assert status == "Progressing" and message == "Waiting for the operator to observe generation 3"


def test_the_reason_lists_are_read_from_the_api_docs() -> None:
    assert {"DoesNotFit", "InvalidSpec", "FetchFailed", "Unschedulable"} <= DEGRADED
    assert {"DownloadingWeights", "Loading", "RollingOut"} <= IN_PROGRESS


@pytest.mark.parametrize("reason", sorted(DEGRADED))
def test_every_refusal_and_stuck_reason_is_degraded(reason: str) -> None:
    assert health(kd(status=ready("False", reason)))[0] == "Degraded"


@pytest.mark.parametrize("reason", sorted(IN_PROGRESS))
def test_work_in_progress_is_progressing(reason: str) -> None:
    assert health(kd(status=ready("False", reason))) == ("Progressing", f"{reason}: m")


def test_argocd_cm_embeds_the_health_check_verbatim() -> None:
    cm = yaml.safe_load((ARGO / "argocd-cm.yaml").read_text())
    assert cm["metadata"]["name"] == "argocd-cm"
    assert (
        cm["data"]["resource.customizations.health.kimi-operator.dev_KimiDeployment"]
        == (ARGO / "health.lua").read_text()
    )


def test_lua_degraded_reasons_are_the_operators_warning_reasons() -> None:
    text = (ARGO / "health.lua").read_text()
    block = text[text.index("local degraded = {") : text.index("}", text.index("local degraded = {"))]
    names = {line.strip().split(" =")[0] for line in block.splitlines()[1:] if "= true" in line}
    assert names == DEGRADED


# ------------------------------------------------------------------------------------------------ Flux


def test_flux_health_expressions_name_the_same_reasons_and_the_current_generation() -> None:
    ks = yaml.safe_load((FLUX / "kimi-deployments.kustomization.yaml").read_text())
    (expr,) = ks["spec"]["healthCheckExprs"]
    assert (expr["apiVersion"], expr["kind"]) == ("kimi-operator.dev/v1alpha1", "KimiDeployment")
    assert set(re.findall(r"'([A-Za-z]+)'", expr["failed"])) - {"Ready", "False"} == DEGRADED
    assert "c.observedGeneration == metadata.generation" in expr["current"]
    assert ks["spec"]["wait"] is True


def test_flux_kustomization_path_holds_valid_kimideployments() -> None:
    ks = yaml.safe_load((FLUX / "kimi-deployments.kustomization.yaml").read_text())
    path = ROOT / ks["spec"]["path"]
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        (obj,) = list(yaml.safe_load_all((path / resource).read_text()))
        assert obj["kind"] == "KimiDeployment"
        KimiDeploymentSpec.model_validate(obj["spec"])


# ------------------------------------------------------------------------------------------------ values


def _helm_template(chart: Path, values: Manifest, tmp_path: Path) -> list[Manifest]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = subprocess.run(
        [str(find_bin_dir() / "helm"), "template", "x", str(chart), "-f", str(path), "--kube-version", KUBE_VERSION],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _all(directory: Path) -> list[Manifest]:
    return [d for f in sorted(directory.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def test_argocd_applications_point_at_charts_and_values_they_accept(tmp_path: Path) -> None:
    apps = [d for d in _all(ARGO) if d["kind"] == "Application"]
    assert len(apps) == 3
    for app in apps:
        source = app["spec"]["source"]
        assert (ROOT / source["path"]).is_dir(), source["path"]
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
        if "helm" in source:
            _helm_template(ROOT / source["path"], source["helm"]["valuesObject"], tmp_path)
        else:
            include = source["directory"]["include"]
            (obj,) = list(yaml.safe_load_all((ROOT / source["path"] / include).read_text()))
            assert obj["kind"] == "KimiDeployment"


def test_flux_helmreleases_values_are_accepted_by_the_charts(tmp_path: Path) -> None:
    releases = {d["metadata"]["name"]: d for d in _all(FLUX) if d["kind"] == "HelmRelease"}
    assert set(releases) == {"kimi-operator", "kimi-deployments"}
    for name, release in releases.items():
        assert release["spec"]["chart"]["spec"]["chart"] == name
        rendered = _helm_template(ROOT / "charts" / name, release["spec"]["values"], tmp_path)
        assert rendered
    assert releases["kimi-deployments"]["spec"]["dependsOn"][0]["name"] == "kimi-operator"
