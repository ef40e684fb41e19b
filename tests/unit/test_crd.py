"""The committed CRD is exactly what the generator writes, and it is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kimi_operator.api import crd

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_the_generator() -> None:
    committed = (ROOT / "crds" / crd.FILENAME).read_text()
    assert committed == crd.render_crd_yaml(), "crds/ drifted from the models: run `make crds` and commit"


def _walk(node: Any, path: str = "") -> list[str]:
    bad: list[str] = []
    if isinstance(node, dict):
        for key in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            if key in node:
                bad.append(f"{path}/{key}")
        free_form = node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node
        if node.get("type") == "object" and "properties" not in node and not free_form and path.count("/") > 1:
            bad.append(f"{path}: object without properties")
        for k, v in node.items():
            bad += _walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            bad += _walk(v, f"{path}[{i}]")
    return bad


def test_schema_is_structural() -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema["properties"]["spec"]) == []


def test_scale_subresource_and_printer_columns() -> None:
    version = crd.build_crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Ready", "Status", "Model", "Weights", "Queue", "Age", "Endpoint", "Plan", "Gateway"]


def test_nested_defaults_reach_the_api_server() -> None:
    spec = crd.spec_schema()
    assert spec["properties"]["topology"]["default"]["accelerator"] == "H200"
    assert spec["properties"]["rollout"]["default"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert "default" not in spec["properties"]["model"]["properties"]["tokenSecretRef"]
    assert spec["properties"]["topology"]["properties"]["accelerator"]["default"] == "H200"
    assert "H100" in spec["properties"]["topology"]["properties"]["accelerator"]["enum"]
    assert yaml.safe_dump(spec)


def test_committed_api_reference_matches_the_generator() -> None:
    from kimi_operator.api import docs

    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == docs.render(), "docs/api.md drifted from the models: run `make docs` and commit"
