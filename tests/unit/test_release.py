"""The release workflow (.github/workflows/release.yaml) publishes what the chart's defaults install: the operator
image from images/operator/Dockerfile under the chart's default `image.repository`, tagged with the appVersion the
chart defaults its tag to, and both charts as OCI artifacts in the same registry namespace. actionlint checks the
file's syntax and expressions (`make lint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kimi_operator import __version__
from kimi_operator.config import DEFAULT_GATEWAY_IMAGE

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"


def _workflow() -> dict[Any, Any]:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _steps() -> list[dict[str, Any]]:
    (job,) = _workflow()["jobs"].values()
    steps = job["steps"]
    assert isinstance(steps, list)
    return steps


def _uses(prefix: str, file: str | None = None) -> dict[str, Any]:
    (step,) = [
        s
        for s in _steps()
        if str(s.get("uses", "")).startswith(prefix) and (file is None or s.get("with", {}).get("file") == file)
    ]
    return step


def test_runs_on_version_tags_only() -> None:
    wf = _workflow()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers == {"push": {"tags": ["v*.*.*"]}}
    assert wf["permissions"] == {"contents": "read"}, "write access only where the job needs it"
    (job,) = wf["jobs"].values()
    assert job["permissions"] == {"contents": "read", "packages": "write"}


def test_pushes_the_image_the_chart_installs_by_default() -> None:
    values = yaml.safe_load((ROOT / "charts" / "kimi-operator" / "values.yaml").read_text())
    env = _workflow()["env"]
    assert env["IMAGE"] == values["image"]["repository"]
    assert values["image"]["tag"] == "" and values["image"]["digest"] == "", "the chart defaults to its appVersion"
    assert env["IMAGE"].split("/", 1)[0] == env["REGISTRY"]
    build = _uses("docker/build-push-action@", "images/operator/Dockerfile")["with"]
    assert build["context"] == "."
    assert build["push"] is True
    assert build["tags"] == "${{ env.IMAGE }}:${{ steps.version.outputs.version }}"
    assert "latest" not in WORKFLOW.read_text()
    login = _uses("docker/login-action@")["with"]
    assert login["registry"] == "${{ env.REGISTRY }}"


def test_pushes_the_gateway_image_the_operator_defaults_to() -> None:
    """The operator's default gateway image (config.DEFAULT_GATEWAY_IMAGE) is the one this release pushes, with
    the same version tag as the operator image."""
    env = _workflow()["env"]
    repository, tag = DEFAULT_GATEWAY_IMAGE.rsplit(":", 1)
    assert env["GATEWAY_IMAGE"] == repository and tag == __version__
    build = _uses("docker/build-push-action@", "images/gateway/Dockerfile")["with"]
    assert build["context"] == "." and build["push"] is True
    assert build["tags"] == "${{ env.GATEWAY_IMAGE }}:${{ steps.version.outputs.version }}"


def test_the_version_step_ties_the_tag_to_both_charts_and_the_package() -> None:
    (step,) = [s for s in _steps() if s.get("id") == "version"]
    script = step["run"]
    for chart in sorted(p.parent.name for p in (ROOT / "charts").glob("*/Chart.yaml")):
        assert f"charts/{chart}" in script
        meta = yaml.safe_load((ROOT / "charts" / chart / "Chart.yaml").read_text())
        assert meta["version"] == meta["appVersion"], f"{chart}: the release tag names both"
    assert "pyproject.toml" in script


def test_pushes_every_chart_as_an_oci_artifact_next_to_the_image() -> None:
    env = _workflow()["env"]
    owner = env["IMAGE"].rsplit("/", 1)[0]
    assert env["CHARTS"] == f"oci://{owner}/charts"
    (push,) = [s for s in _steps() if "helm push" in str(s.get("run", ""))]
    script = push["run"]
    for chart in sorted(p.parent.name for p in (ROOT / "charts").glob("*/Chart.yaml")):
        assert f"charts/{chart}" in script, f"{chart} is packaged"
        assert f'helm push "dist/{chart}-${{VERSION}}.tgz" "${{CHARTS}}"' in script, f"{chart} is pushed"


def test_helm_is_the_version_the_test_bed_pins() -> None:
    pins = dict(line.split("=", 1) for line in (ROOT / "hack" / "versions.env").read_text().splitlines() if "=" in line)
    assert _workflow()["env"]["HELM_VERSION"] == pins["HELM_VERSION"]
    assert _uses("azure/setup-helm@")["with"]["version"] == "${{ env.HELM_VERSION }}"
