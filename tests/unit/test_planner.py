"""The planner: memory arithmetic, layout choice and refusals a person can act on."""

from __future__ import annotations

from typing import Any

import pytest

from kimi_operator import catalog, planner
from kimi_operator.api.models import KimiDeploymentSpec


def plan_for(**spec: Any) -> planner.Plan:
    return planner.plan(KimiDeploymentSpec.model_validate(spec))


def test_k25_on_h200_fits_one_node_with_the_expected_kv_capacity() -> None:
    p = plan_for()
    assert (p.nodes_per_replica, p.tp, p.ep, p.dp) == (1, 8, 1, 1)
    k25 = catalog.CHECKPOINTS["moonshotai/Kimi-K2.5"]
    per_token = (512 + 64) * 61 * 2
    assert p.kv_bytes_per_token == per_token == k25.kv_bytes_per_token(2)
    static = int(143771 * 1024**2 * 0.85)
    weights = -(-595 * 1000**3 // 8)
    assert p.weights_bytes_per_gpu == weights
    assert p.kv_cache_tokens == (static - weights) // per_token
    assert p.max_full_context_sequences == p.kv_cache_tokens // 262144
    assert p.summary == "1x8 H200 TP8"


def test_k25_on_a_single_h100_node_is_refused_with_what_to_change() -> None:
    with pytest.raises(planner.PlanError) as err:
        plan_for(topology={"accelerator": "H100", "nodesPerReplica": 1})
    assert err.value.reason == "DoesNotFit"
    msg = err.value.message
    assert "595 GB of weights need 69.3 GiB per GPU on 8 x H100" in msg
    assert "nodesPerReplica: 2" in msg
    assert "accelerator H200" in msg


def test_auto_layout_on_h100_picks_the_smallest_that_fits() -> None:
    p = plan_for(topology={"accelerator": "H100"})
    assert p.nodes_per_replica == 2 and p.tp == 16
    assert [c.fits for c in p.candidates][:2] == [False, True]


def test_h20_single_node_fails_only_on_full_context_and_fp8_or_shorter_context_fixes_it() -> None:
    with pytest.raises(planner.PlanError) as err:
        plan_for(topology={"accelerator": "H20", "nodesPerReplica": 1})
    assert "less than one 262144-token sequence" in err.value.message
    assert "fp8_e4m3" in err.value.message
    p = plan_for(topology={"accelerator": "H20", "nodesPerReplica": 1}, engine={"kvCacheDtype": "fp8_e4m3"})
    assert p.kv_bytes_per_token == (512 + 64) * 61
    short = plan_for(topology={"accelerator": "H20", "nodesPerReplica": 1}, engine={"contextLength": 131072})
    assert short.max_full_context_sequences >= 1


def test_fp8_kv_doubles_capacity() -> None:
    bf16 = plan_for()
    fp8 = plan_for(engine={"kvCacheDtype": "fp8_e4m3"})
    assert fp8.kv_cache_tokens in (2 * bf16.kv_cache_tokens, 2 * bf16.kv_cache_tokens + 1)


def test_dp_attention_multiplies_capacity_by_dp() -> None:
    p = plan_for(engine={"dataParallelAttention": True})
    assert p.dp == 8 and p.data_parallel_attention
    assert p.kv_cache_tokens == plan_for().kv_cache_tokens * 8


def test_amd_runs_attention_with_16_heads_per_gpu_and_fp8_kv() -> None:
    p = plan_for(topology={"accelerator": "MI300X"})
    assert p.tp == 8 and p.dp == 2
    assert 64 * p.dp // p.tp == 16
    assert p.kv_cache_dtype == "fp8_e4m3"
    assert any("AITER" in n for n in p.notes)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"model": {"repo": "someone/other-model"}}, "UnknownCheckpoint"),
        ({"topology": {"accelerator": "TPUv5"}}, "UnknownAccelerator"),
        ({"engine": {"contextLength": 524288}}, "ContextTooLong"),
    ],
)
def test_refusals_have_reasons(spec: dict[str, Any], reason: str) -> None:
    with pytest.raises(planner.PlanError) as err:
        plan_for(**spec)
    assert err.value.reason == reason
    assert err.value.message


def test_startup_budget_covers_a_slow_load_of_the_checkpoint() -> None:
    p = plan_for()
    assert p.startup_budget_seconds >= 40 * 60
    assert p.startup_budget_seconds >= 595 * 1000**3 / planner.LOAD_BYTES_PER_SECOND


def test_weights_volume_defaults_to_checkpoint_plus_headroom_and_user_size_wins() -> None:
    assert plan_for().weights_volume_size == "638Gi"
    assert plan_for(weights={"size": "2Ti"}).weights_volume_size == "2Ti"


def test_every_catalog_accelerator_has_a_source_and_every_checkpoint_has_sources() -> None:
    assert all(a.source for a in catalog.ACCELERATORS.values())
    assert all(c.sources for c in catalog.CHECKPOINTS.values())
