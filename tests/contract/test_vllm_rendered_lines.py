"""Every vLLM command line the operator renders is accepted by the pinned vLLM at launch, with the plan's values.

Covers each vLLM example in examples/ and a profile per planner branch vLLM shares (cases.VLLM_CASES: H200, B200,
2x8 H100 as TP8 x PP2 through a LeaderWorkerSet, EAGLE3, 128K text-only, fp8 KV, expert parallelism, K2 Thinking).
Each container's command, as the kubelet would run it (LeaderWorkerSet variables expanded), goes through vLLM's own
`vllm serve` up to its engine config (tests/contract/vllm_launch.py). The same lines with an option vLLM does not
know, or with an owned option given a value that contradicts the plan, are refused with vLLM's message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kimi_operator import catalog
from kimi_operator.engine import kinds

from .cases import VLLM_CASES, engine_containers, plan_of
from .vllm_launch import VLLM_VERSION, VLLMLaunchError, check_vllm_many, vllm_option_strings

pytestmark = pytest.mark.contract

# vLLM resolves --master-addr only when a worker connects; the test bed's LWS address stands for the leader's IP
LEADER_IP = "10.0.0.1"


def _argvs(name: str) -> list[tuple[int, list[str], dict[str, str]]]:
    out = []
    for c in engine_containers(VLLM_CASES[name]):
        assert c.command[:2] == ["vllm", "serve"], c.command
        argv = [LEADER_IP if a == "kd-0.kd.ns" else a for a in c.command[2:]]
        out.append((c.rank, argv, c.env))
    return out


@pytest.fixture(scope="session")
def rendered_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/models/ of the lines; vllm_launch.localize writes each checkpoint's stand-in config there."""
    return tmp_path_factory.mktemp("vllm-rendered")


@pytest.fixture(scope="session")
def rendered(rendered_models: Path) -> dict[str, list[tuple[int, list[str], dict[str, Any] | VLLMLaunchError]]]:
    """Every case's lines through vLLM, batched per accelerator (one simulated node each)."""
    out: dict[str, list[tuple[int, list[str], dict[str, Any] | VLLMLaunchError]]] = {}
    by_acc: dict[str, list[tuple[str, int, list[str], dict[str, str]]]] = {}
    for name in VLLM_CASES:
        _, p = plan_of(VLLM_CASES[name])
        for rank, argv, env in _argvs(name):
            by_acc.setdefault(p.accelerator, []).append((name, rank, argv, env))
    for acc, lines in by_acc.items():
        results = check_vllm_many([a for _, _, a, _ in lines], rendered_models, accelerator=catalog.ACCELERATORS[acc])
        for (name, rank, argv, _), result in zip(lines, results, strict=True):
            out.setdefault(name, []).append((rank, argv, result))
    return out


@pytest.mark.parametrize("name", sorted(VLLM_CASES))
def test_rendered_line_is_accepted_by_vllm_with_the_plans_values(
    name: str, rendered: dict[str, list[tuple[int, list[str], dict[str, Any] | VLLMLaunchError]]]
) -> None:
    spec, p = plan_of(VLLM_CASES[name])
    assert p.engine == "vllm"
    for rank, argv, result in rendered[name]:
        if isinstance(result, VLLMLaunchError):
            raise result
        assert result["tensor_parallel_size"] == p.tp, (rank, argv)
        assert result["pipeline_parallel_size"] == p.pp, (rank, argv)
        assert result["enable_expert_parallel"] == (p.ep > 1), (rank, argv)
        assert result["max_model_len"] == p.context_length, (rank, argv)
        assert result["nnodes"] == p.nodes_per_replica and result["node_rank"] == rank, (rank, argv)
        assert result["headless"] == (rank > 0), (rank, argv)
        if rank == 0:
            assert result["served_model_name"] in (p.served_model_name, [p.served_model_name]), result
            assert result["tool_call_parser"] == "kimi_k2" and result["reasoning_parser"] == "kimi_k2", result
            assert result["enable_auto_tool_choice"] is True
            assert (result["host"], result["port"]) == ("0.0.0.0", 8000)
        assert result["language_model_only"] in (p.language_model_only, None), result
        if spec.engine.speculative is not None:
            assert result["speculative_method"] == "eagle3", result
            assert result["num_speculative_tokens"] == spec.engine.speculative.num_steps, result


def test_a_rendered_line_with_an_unknown_or_contradicting_option_is_refused(rendered_models: Path) -> None:
    ((_, argv, _),) = _argvs("vllm-h200")
    unknown, contradicting = check_vllm_many(
        [[*argv, "--no-such-flag"], [*argv, "--tensor-parallel-size", "3"]], rendered_models
    )
    assert isinstance(unknown, VLLMLaunchError) and "--no-such-flag" in str(unknown), unknown
    assert isinstance(contradicting, VLLMLaunchError), contradicting  # 3 GPUs do not divide K2.5's 64 heads


def test_every_option_the_operator_renders_or_owns_is_one_of_vllms() -> None:
    options = vllm_option_strings()
    rendered = {a for name in VLLM_CASES for _, argv, _ in _argvs(name) for a in argv if a.startswith("-")}
    assert rendered <= options, rendered - options
    owned = set(kinds.FACTS["vllm"].owned_options)
    assert owned <= options, owned - options
    # vLLM takes abbreviations, so the operator refuses every prefix of an owned long option: no option of vLLM's
    # own may be such a prefix unless it is owned too
    shadowed = {o for o in options - owned if o.startswith("--") and kinds.abbreviated("vllm", o) is not None}
    assert not shadowed, shadowed


def test_the_operators_vllm_image_is_the_contracts_release() -> None:
    assert kinds.VLLM_VERSION == VLLM_VERSION
    assert f"vllm/vllm-openai:v{VLLM_VERSION}" == kinds.VLLM_IMAGE
