"""Engine pods' CPU/memory requests follow the smallest node with the planned GPUs (controller._smallest_node)."""

from __future__ import annotations

from typing import Any

import pytest

from kimi_operator import controller, kube, quantity
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.kube import kube_error


class Nodes:
    """Answers list_nodes like the API server would, and records the selectors asked for."""

    def __init__(self, nodes: list[dict[str, Any]] | None = None, error: int | None = None) -> None:
        self.nodes = nodes or []
        self.error = error
        self.selectors: list[str] = []

    def list_nodes(self, selector: str) -> list[dict[str, Any]]:
        self.selectors.append(selector)
        if self.error is not None:
            raise kube_error(self.error, "Forbidden", "nodes is forbidden")
        return self.nodes


def _node(cpu: str, memory: str) -> dict[str, Any]:
    return {"status": {"allocatable": {"cpu": cpu, "memory": memory}}}


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    controller._node_sizes.clear()


def test_smallest_cpu_and_smallest_memory_are_taken_separately() -> None:
    kube = Nodes([_node("192", "2Ti"), _node("1900m", "24Gi"), _node("8", "16Gi")])
    spec = KimiDeploymentSpec.model_validate({"topology": {"accelerator": "H200", "nodeSelector": {"pool": "a"}}})
    assert controller._smallest_node(kube, spec) == (1900, 16 * 1024**3)  # type: ignore[arg-type]
    assert kube.selectors == ["nvidia.com/gpu.product=NVIDIA-H200,pool=a"]


def test_results_are_cached_and_forbidden_means_unknown() -> None:
    kube = Nodes(error=403)
    assert controller._smallest_node(kube, KimiDeploymentSpec()) is None  # type: ignore[arg-type]
    assert controller._smallest_node(kube, KimiDeploymentSpec()) is None  # type: ignore[arg-type]
    assert len(kube.selectors) == 1


def test_a_missing_api_is_unknown_but_a_server_error_fails_the_reconcile() -> None:
    assert controller._smallest_node(Nodes(error=404), KimiDeploymentSpec()) is None  # type: ignore[arg-type]
    controller._node_sizes.clear()
    with pytest.raises(kube.Unavailable):
        controller._smallest_node(Nodes(error=500), KimiDeploymentSpec())  # type: ignore[arg-type]


def test_no_matching_node_is_unknown() -> None:
    assert controller._smallest_node(Nodes([]), KimiDeploymentSpec()) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "value"),
    [("2", 2), ("1900m", 1.9), ("24Gi", 24 * 1024**3), ("25165824Ki", 24 * 1024**3), ("1e3", 1000), ("64M", 64e6)],
)
def test_quantities_parse_like_the_api_server(text: str, value: float) -> None:
    assert float(quantity.parse(text)) == pytest.approx(value)


@pytest.mark.parametrize("text", ["lots", "1.2.3", "5Qi", ""])
def test_bad_quantities_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity.parse(text)
