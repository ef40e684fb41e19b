"""The KimiDeployment models: defaults, wire names, and refusals that name what is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kimi_operator.api.models import KimiDeploymentSpec


def test_empty_spec_defaults_to_k25_on_one_h200_node() -> None:
    spec = KimiDeploymentSpec.model_validate({})
    assert spec.model.repo == "moonshotai/Kimi-K2.5"
    assert spec.topology.accelerator == "H200"
    assert spec.topology.nodes_per_replica == 0
    assert spec.weights.retain_on_delete is True
    assert spec.weights.access_mode == "ReadWriteMany"
    assert spec.rollout.max_surge == 0 and spec.rollout.max_unavailable == 1


def test_wire_names_are_camel_case() -> None:
    spec = KimiDeploymentSpec.model_validate({"engine": {"memFractionStaticPercent": 80, "kvCacheDtype": "fp8_e4m3"}})
    wire = spec.wire()
    assert wire["engine"]["memFractionStaticPercent"] == 80
    assert "mem_fraction_static_percent" not in wire["engine"]


def test_unknown_field_is_refused_not_ignored() -> None:
    with pytest.raises(ValidationError, match="replicaz"):
        KimiDeploymentSpec.model_validate({"replicaz": 2})


@pytest.mark.parametrize("arg", ["--tp", "--tp=4", "--tp 4", "--model-path", "--enable-metrics", "--port=9000"])
def test_extra_args_that_collide_with_owned_flags_are_refused_with_the_flag_named(arg: str) -> None:
    with pytest.raises(ValidationError) as err:
        KimiDeploymentSpec.model_validate({"engine": {"extraArgs": [arg]}})
    flag = arg.split("=")[0].split(" ")[0]
    assert f"{flag} is set by the operator" in str(err.value)


def test_removed_enable_ep_moe_flag_points_to_expert_parallel() -> None:
    with pytest.raises(ValidationError, match="expertParallel"):
        KimiDeploymentSpec.model_validate({"engine": {"extraArgs": ["--enable-ep-moe"]}})


def test_harmless_extra_args_pass() -> None:
    spec = KimiDeploymentSpec.model_validate({"engine": {"extraArgs": ["--chunked-prefill-size", "8192"]}})
    assert spec.engine.extra_args == ["--chunked-prefill-size", "8192"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"replicas": -1}, "replicas"),
        ({"model": {"repo": "not a repo"}}, "repo"),
        ({"weights": {"size": "lots"}}, "size"),
        ({"engine": {"memFractionStaticPercent": 99}}, "memFractionStaticPercent"),
        ({"engine": {"kvCacheDtype": "int2"}}, "kvCacheDtype"),
    ],
)
def test_bad_values_are_refused(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        KimiDeploymentSpec.model_validate(patch)
