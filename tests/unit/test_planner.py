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
    # SGLang 0.5.23's own computed default for this line (tests/contract checks it against the real hook).
    assert p.mem_fraction_static == pytest.approx(0.806, abs=5e-4)
    assert "own default" in p.mem_fraction_source
    static = int(143771 * 1024**2 * p.mem_fraction_static)
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


def test_auto_layout_on_h100_picks_the_smallest_that_fits_as_pipeline_stages_without_rdma() -> None:
    p = plan_for(topology={"accelerator": "H100"})
    assert (p.nodes_per_replica, p.tp, p.pp, p.ep) == (2, 8, 2, 1)
    assert [c.fits for c in p.candidates][:2] == [False, True]
    assert any("without RDMA" in n for n in p.notes)


def test_h100_two_nodes_with_rdma_is_tp16_with_expert_parallelism() -> None:
    p = plan_for(topology={"accelerator": "H100", "network": {"rdmaResource": "rdma/ib"}})
    assert (p.nodes_per_replica, p.tp, p.pp, p.ep) == (2, 16, 1, 16)
    assert not any("WARNING" in n for n in p.notes)


def test_tp_across_nodes_without_rdma_is_warned_about() -> None:
    p = plan_for(topology={"accelerator": "H100"}, engine={"pipelineParallel": False})
    assert (p.tp, p.pp) == (16, 1)
    assert any(n.startswith("WARNING: TP16 spans 2 nodes without RDMA") for n in p.notes)


def test_pipeline_stages_each_cache_only_their_layers() -> None:
    pp = plan_for(topology={"accelerator": "H200", "nodesPerReplica": 2})
    tp = plan_for(topology={"accelerator": "H200", "nodesPerReplica": 2, "network": {"rdmaResource": "rdma/ib"}})
    per_layer = (512 + 64) * 2
    pp_layout = pp.candidates[0]
    assert pp_layout.kv_cache_tokens == pp_layout.kv_budget_bytes_per_gpu // (per_layer * 31)
    assert tp.candidates[0].kv_cache_tokens == tp.candidates[0].kv_budget_bytes_per_gpu // (per_layer * 61)


def test_attention_heads_must_divide_by_the_attention_tp_size() -> None:
    with pytest.raises(planner.PlanError) as err:
        plan_for(topology={"gpusPerNode": 6, "nodesPerReplica": 1})
    assert "attention tensor parallelism 6 does not divide" in err.value.message


def test_memory_fraction_sources() -> None:
    assert plan_for(engine={"memFractionStaticPercent": 90}).mem_fraction_static == 0.9
    assert "engine.memFractionStaticPercent" in plan_for(engine={"memFractionStaticPercent": 90}).mem_fraction_source
    assert plan_for(engine={"dataParallelAttention": True}).mem_fraction_static == 0.7
    assert plan_for(engine={"speculative": {}}).mem_fraction_static == 0.9  # H200 TP8 + EAGLE3 (cookbook)
    assert plan_for(topology={"accelerator": "MI300X"}).mem_fraction_static == 0.8
    b200 = plan_for(topology={"accelerator": "B200"})
    assert "own default" in b200.mem_fraction_source and 0.7 < b200.mem_fraction_static < 0.8


def test_sglang_default_fraction_replica_matches_values_read_off_the_hook() -> None:
    """Values sglang 0.5.23's memory_hook computed on CPU for K2.5 (shared/reference/sglang-kimi.md)."""
    k25 = catalog.CHECKPOINTS["moonshotai/Kimi-K2.5"]

    def frac(acc: str, tp: int, pp: int = 1, dp: int = 1) -> float:
        return planner.sglang_default_mem_fraction(
            gpu_mem_mib=catalog.ACCELERATORS[acc].memory_mib,
            tp=tp,
            pp=pp,
            attn_dp=dp,
            chunked_prefill_size=None,
            max_running_requests=None,
            vision_tower=k25.vision_tower,
        )

    assert frac("H200", 8) == pytest.approx(0.806, abs=5e-4)
    assert frac("H200", 8, dp=8) == pytest.approx(0.690, abs=5e-4)


def test_eagle3_caps_concurrency_visibly() -> None:
    p = plan_for(engine={"speculative": {}})
    assert p.max_running_requests == 48
    assert any("at most 48 concurrent requests" in n for n in p.notes)
    assert plan_for(engine={"speculative": {"maxRunningRequests": 96}}).max_running_requests == 96


def test_attention_dp_scales_chunked_prefill_so_each_rank_keeps_4k() -> None:
    assert plan_for(engine={"dataParallelAttention": True}).chunked_prefill_size == 32768
    assert plan_for().chunked_prefill_size is None
    user = plan_for(engine={"dataParallelAttention": True, "extraArgs": ["--chunked-prefill-size", "65536"]})
    assert user.chunked_prefill_size is None  # the user's own value is passed through extraArgs


def test_language_model_only_is_refused_while_sglang_refuses_it_for_k25() -> None:
    with pytest.raises(planner.PlanError) as err:
        plan_for(engine={"languageModelOnly": True})
    assert err.value.reason == "UnsupportedByEngine"
    with pytest.raises(planner.PlanError, match="text-only checkpoint"):
        plan_for(model={"repo": "moonshotai/Kimi-K2-Thinking"}, engine={"languageModelOnly": True})


def test_h20_single_node_fails_only_on_full_context_and_fp8_with_a_shorter_context_fixes_it() -> None:
    with pytest.raises(planner.PlanError) as err:
        plan_for(topology={"accelerator": "H20", "nodesPerReplica": 1})
    assert "less than one 262144-token sequence" in err.value.message
    assert "fp8_e4m3" in err.value.message and "shorter engine.contextLength" in err.value.message
    p = plan_for(
        topology={"accelerator": "H20", "nodesPerReplica": 1},
        engine={"kvCacheDtype": "fp8_e4m3", "contextLength": 65536},
    )
    assert p.kv_bytes_per_token == (512 + 64) * 61
    short = plan_for(topology={"accelerator": "H20", "nodesPerReplica": 1}, engine={"contextLength": 32768})
    assert short.max_full_context_sequences >= 1


def test_fp8_kv_doubles_capacity() -> None:
    bf16 = plan_for()
    fp8 = plan_for(engine={"kvCacheDtype": "fp8_e4m3"})
    assert fp8.kv_cache_tokens in (2 * bf16.kv_cache_tokens, 2 * bf16.kv_cache_tokens + 1)


def test_dp_attention_multiplies_capacity_by_dp_at_the_same_fraction() -> None:
    p = plan_for(engine={"dataParallelAttention": True})
    same = plan_for(engine={"dataParallelAttention": False, "memFractionStaticPercent": 70})
    assert p.dp == 8 and p.data_parallel_attention
    assert p.kv_cache_tokens == same.kv_cache_tokens * 8


def test_amd_runs_the_published_tp4_layout_two_replicas_per_node_with_aiter_and_fp8_kv() -> None:
    p = plan_for(topology={"accelerator": "MI300X"})
    assert (p.tp, p.dp, p.gpus_per_replica, p.gpus_per_pod) == (4, 1, 4, 4)
    assert p.kv_cache_dtype == "fp8_e4m3"
    assert p.image.endswith("-rocm700-mi30x")
    assert p.gpu_product_label_key == "amd.com/gpu.product-name"
    assert p.gpu_product_label == "AMD_Instinct_MI300X_OAM"
    assert any("AITER MLA backend" in n for n in p.notes)
    assert any("2 replicas share a node" in n for n in p.notes)
    whole = plan_for(topology={"accelerator": "MI300X", "gpusPerReplica": 8})
    assert (whole.tp, whole.gpus_per_pod) == (8, 8)
    assert any("triton MLA backend" in n for n in whole.notes)


def test_gpus_per_replica_must_pack_a_node() -> None:
    with pytest.raises(planner.PlanError, match="does not divide gpusPerNode"):
        plan_for(topology={"gpusPerReplica": 3})
    with pytest.raises(planner.PlanError, match="part of one node"):
        plan_for(topology={"gpusPerReplica": 4, "nodesPerReplica": 2})


def test_engine_requests_are_sized_from_the_node() -> None:
    p = plan_for()
    assert planner.engine_requests(p, None) == (40, 640)  # OME's K2 runtime: cpu 40, memory 640Gi for 8 GPUs
    small = planner.engine_requests(p, (2000, 24 * 1024**3))  # the test bed's real node: 2 cores, 24 GiB
    assert small == (1, 19)
    amd = plan_for(topology={"accelerator": "MI300X"})
    assert planner.engine_requests(amd, None) == (20, 320)


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


@pytest.mark.parametrize("args", [["--moe-a2a-backend", "deepep"], ["--moe-a2a=deepep"], ["--moe-a2a-b", "deepep"]])
def test_deepep_is_refused_for_k25_however_the_flag_is_spelled(args: list[str]) -> None:
    with pytest.raises(planner.PlanError) as err:
        plan_for(engine={"extraArgs": args})
    assert err.value.reason == "UnsupportedByCheckpoint" and "DeepEP" in err.value.message


def test_user_tunables_in_extra_args_are_read_by_the_planner_under_any_spelling() -> None:
    p = plan_for(engine={"dataParallelAttention": True, "extraArgs": ["--chunked-prefill=16384"]})
    assert p.chunked_prefill_size is None  # the user's value is passed as given, not replaced


@pytest.mark.parametrize(
    ("spec", "reason", "said"),
    [
        (
            {"topology": {"accelerator": "H200", "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}},
            "AcceleratorMismatch",
            "selects H100 nodes but topology.accelerator is H200",
        ),
        ({"weights": {"size": "100Gi"}}, "VolumeTooSmall", "use at least 638Gi"),
        ({"topology": {"network": {"shmSize": "0"}}}, "InvalidSpec", "shmSize must be more than 0"),
    ],
)
def test_plans_the_engine_could_not_start_are_refused_with_the_fix(
    spec: dict[str, Any], reason: str, said: str
) -> None:
    with pytest.raises(planner.PlanError) as err:
        plan_for(**spec)
    assert err.value.reason == reason and said in err.value.message


def test_a_custom_product_label_value_is_left_to_the_user() -> None:
    p = plan_for(topology={"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200-141GB-custom"}})
    assert p.accelerator == "H200"
