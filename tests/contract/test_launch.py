"""Every SGLang command line the operator can render is accepted by the pinned sglang at launch.

Each engine container of each example and planner profile (tests/contract/cases.py) goes through sglang 0.5.23's
parser AND its launch-time resolution (`ServerArgs.resolve_once`: the hooks under sglang/srt/arg_groups/), on the
GPU the plan is for, with the container's own environment (tests/contract/sglang_launch.py says what is stubbed
and why). The values SGLang resolves must be the ones the planner's numbers assume: parallelism, the memory
fraction, chunked prefill per attention-DP rank, the speculative request cap.

The pipeline is shown to be live: the lines the operator used to render (`--dp-size N --attn-dp-size N`) and a
known-bad line per hook family are refused with SGLang's own message; the memory default SGLang computes on each
simulated GPU equals the planner's replica of it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kimi_operator import catalog, planner

from .cases import CASES, COMMIT, engine_containers, plan_of
from .sglang_launch import Resolve, SGLangLaunchError, make_resolver

pytestmark = pytest.mark.contract

K25 = f"/models/moonshotai/Kimi-K2.5/{COMMIT}"
H200 = catalog.ACCELERATORS["H200"]
B200 = catalog.ACCELERATORS["B200"]
MI300X = catalog.ACCELERATORS["MI300X"]


@pytest.fixture(scope="session")
def resolve(
    sglang_prepare_server_args: Callable[[list[str]], Any], tmp_path_factory: pytest.TempPathFactory
) -> Resolve:
    return make_resolver(sglang_prepare_server_args, tmp_path_factory.mktemp("models"))


def _base(*extra: str) -> list[str]:
    return ["--model-path", K25, "--trust-remote-code", "--tool-call-parser", "kimi_k2", *extra]


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_line_is_accepted_at_launch_with_the_planned_values(case: str, resolve: Resolve) -> None:
    spec, p = plan_of(CASES[case])
    acc = catalog.ACCELERATORS[p.accelerator]
    for container in engine_containers(CASES[case]):
        got = resolve(container.command[3:], acc, container.env)
        where = f"{case} rank {container.rank}"
        assert (got.tp_size, got.pp_size, got.attn_dp_size, got.dp_size) == (p.tp, p.pp, p.dp, 1), where
        assert got.ep_size == p.ep, where
        assert got.mem_fraction_static == pytest.approx(p.mem_fraction_static, abs=5e-4), (
            f"{where}: SGLang runs mem-fraction-static {got.mem_fraction_static}, the plan's KV numbers assume "
            f"{p.mem_fraction_static}"
        )
        assert got.context_length == p.context_length, where
        if p.chunked_prefill_size is not None:
            assert got.chunked_prefill_size == p.chunked_prefill_size // p.dp >= planner.CHUNK_PER_ATTENTION_DP_RANK
        if p.max_running_requests is not None:
            assert got.max_running_requests == p.max_running_requests, where
        if spec.engine.speculative is not None:
            assert got.speculative_algorithm == "EAGLE3", where
        assert got.language_only is False and bool(got.language_model_only) == p.language_model_only, where


def _sglang_default_cases() -> list[str]:
    return sorted(c for c in CASES if "own default" in plan_of(CASES[c])[1].mem_fraction_source)


@pytest.mark.parametrize("case", _sglang_default_cases())
def test_planner_memory_default_is_what_sglang_computes_for_the_line(case: str, resolve: Resolve) -> None:
    """Where the plan says "SGLang's own default", remove --mem-fraction-static and let SGLang compute it."""
    _, p = plan_of(CASES[case])
    container = engine_containers(CASES[case])[0]
    argv = container.command[3:]
    i = argv.index("--mem-fraction-static")
    without = argv[:i] + argv[i + 2 :]
    got = resolve(without, catalog.ACCELERATORS[p.accelerator], container.env)
    assert got.mem_fraction_static == pytest.approx(p.mem_fraction_static, abs=5e-4), case


OLD_LINES = {
    # What the operator rendered before, for examples/kimi-k2.5-h200-throughput.yaml and examples/kimi-k2.5-mi300x.yaml.
    "h200-throughput": (H200, ["--tp-size", "8", "--dp-size", "8", "--attn-dp-size", "8"]),
    "mi300x": (MI300X, ["--tp-size", "8", "--dp-size", "2", "--attn-dp-size", "2", "--kv-cache-dtype", "fp8_e4m3"]),
}


@pytest.mark.parametrize("name", sorted(OLD_LINES))
def test_the_old_dp_plus_attention_dp_lines_are_refused(name: str, resolve: Resolve) -> None:
    acc, extra = OLD_LINES[name]
    with pytest.raises(SGLangLaunchError, match="data-parallel replicas combined with attention data parallelism"):
        resolve(_base(*extra), acc, {})


# One known-bad line per hook family: each shows that part of the pipeline (and the simulated device behind it) is
# live. (hook, accelerator, extra args, sglang's own message)
KNOWN_BAD: dict[str, tuple[catalog.Accelerator, list[str], str]] = {
    "parallel: DP replicas with attention DP": (
        H200,
        ["--tp-size", "8", "--dp-size", "2", "--attn-dp-size", "2"],
        "not supported",
    ),
    "model config: context beyond the checkpoint's": (
        H200,
        ["--tp-size", "8", "--context-length", "1000000"],
        "greater than the derived context_length",
    ),
    "attention backend on this GPU: TRTLLM MLA needs Blackwell": (
        H200,
        ["--tp-size", "8", "--attention-backend", "trtllm_mla"],
        "only supported on Blackwell",
    ),
    "speculative: EAGLE3 top-k 0": (
        H200,
        [
            "--tp-size",
            "8",
            "--speculative-algorithm",
            "EAGLE3",
            "--speculative-draft-model-path",
            f"/models/lightseekorg/kimi-k2.5-eagle3-mla/{COMMIT}",
            "--speculative-eagle-topk",
            "0",
        ],
        "",
    ),
}


@pytest.mark.parametrize("name", sorted(KNOWN_BAD))
def test_a_known_bad_line_per_hook_is_refused(name: str, resolve: Resolve) -> None:
    acc, extra, message = KNOWN_BAD[name]
    with pytest.raises(SGLangLaunchError, match=message):
        resolve(_base(*extra), acc, {})


def test_the_simulated_gpu_reaches_the_hooks(resolve: Resolve) -> None:
    """Capability: TRTLLM MLA refused on H200 (above) is accepted on B200. Memory: the computed default follows
    the simulated GPU's memory. Vendor: on MI300X at TP4 SGLang picks the AITER MLA backend."""
    assert resolve(_base("--tp-size", "8", "--attention-backend", "trtllm_mla"), B200, {}).attention_backend == (
        "trtllm_mla"
    )
    fractions = {
        key: resolve(_base("--tp-size", "8"), catalog.ACCELERATORS[key], {}).mem_fraction_static
        for key in ("H100", "H200", "B200")
    }
    assert len(set(fractions.values())) == 3, fractions
    assert resolve(_base("--tp-size", "4"), MI300X, {}).attention_backend == "aiter"
    assert resolve(_base("--tp-size", "8"), MI300X, {}).attention_backend == "triton"


def test_aiter_scales_an_explicit_fraction_unless_the_operator_tells_it_not_to(resolve: Resolve) -> None:
    """Why engine/sglang.py sets SGLANG_AITER_HONOR_EXPLICIT_MEM_FRACTION on AMD: without it SGLang runs 0.8 x 0.85."""
    argv = _base("--tp-size", "4", "--mem-fraction-static", "0.8", "--kv-cache-dtype", "fp8_e4m3")
    assert resolve(argv, MI300X, {}).mem_fraction_static == pytest.approx(0.68)
    honour = {"SGLANG_AITER_HONOR_EXPLICIT_MEM_FRACTION": "1"}
    assert resolve(argv, MI300X, honour).mem_fraction_static == pytest.approx(0.8)


def test_language_model_only_is_refused_for_k25_by_sglang_and_so_by_the_planner(resolve: Resolve) -> None:
    """If a new pin accepts it, this fails: set catalog language_model_only_supported for K2.5 and render it."""
    with pytest.raises(SGLangLaunchError, match="--language-model-only does not support"):
        resolve(_base("--tp-size", "8", "--language-model-only"), H200, {})
    with pytest.raises(planner.PlanError, match="refuses --language-model-only"):
        plan_of({"engine": {"languageModelOnly": True}})


def test_faithful_configs_exist_for_every_catalog_checkpoint() -> None:
    from .sglang_launch import CONFIGS

    assert {r for r, c in catalog.CHECKPOINTS.items() if c.format == "safetensors"} <= set(CONFIGS)
    assert Path(K25).name == COMMIT
