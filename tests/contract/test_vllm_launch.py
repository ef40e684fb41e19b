"""The published vLLM recipe lines for Kimi K2.5 are accepted by the pinned vLLM at launch; known-bad lines are not.

Each line goes through vLLM 0.34.0's own `vllm serve` up to its engine config, on a simulated node of 8 H200s
(tests/contract/vllm_launch.py; what is stubbed and why: tests/contract/vllm_stubs.py). All lines are checked in
one batch per session. The refusals show each layer is live: argparse (unknown flag, bad choice),
validate_parsed_serve_args, setup_server's parser-name checks, and the engine config (model config from config.json,
parallel config against the simulated GPUs, VllmConfig's cross-checks, speculative decoding).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from .cases import COMMIT, DRAFT_COMMIT
from .sglang_launch import CONFIGS
from .vllm_launch import VLLM_VERSION, VLLMLaunchError, check_vllm, check_vllm_many, vllm_option_strings

pytestmark = pytest.mark.contract

K25 = f"/models/moonshotai/Kimi-K2.5/{COMMIT}"
DRAFT = f"/models/lightseekorg/kimi-k2.5-eagle3-mla/{DRAFT_COMMIT}"
EAGLE3 = json.dumps({"model": DRAFT, "method": "eagle3", "num_speculative_tokens": 3}, separators=(",", ":"))
# vllm-project/recipes models/moonshotai/Kimi-K2.5.yaml (minimum vLLM 0.19.1), as published: `-tp 8`.
RECIPE = [
    K25,
    "-tp",
    "8",
    "--mm-encoder-tp-mode",
    "data",
    "--tool-call-parser",
    "kimi_k2",
    "--enable-auto-tool-choice",
    "--reasoning-parser",
    "kimi_k2",
    "--trust-remote-code",
]
LONG = [K25, "--tensor-parallel-size", "8", *RECIPE[3:]]  # the same with the long spelling of -tp
PP2 = ["--pipeline-parallel-size", "2", "--nnodes", "2", "--master-addr", "10.0.0.1"]

# name -> (argv after `vllm serve`, facts vLLM must resolve)
ACCEPTED: dict[str, tuple[list[str], dict[str, Any]]] = {
    "recipe": (RECIPE, {}),
    "recipe, --tensor-parallel-size": (LONG, {}),
    "--max-model-len 131072": ([*LONG, "--max-model-len", "131072"], {"max_model_len": 131072}),
    "--language-model-only": ([*LONG, "--language-model-only"], {"language_model_only": True}),
    "--served-model-name": ([*LONG, "--served-model-name", "kimi-k2.5"], {"served_model_name": "kimi-k2.5"}),
    "EAGLE3": (
        [*LONG, "--speculative-config", EAGLE3],
        {
            "speculative_method": "eagle3",
            "num_speculative_tokens": 3,
            "draft_architecture": "Eagle3DeepseekV2ForCausalLM",
        },
    ),
    "TP8 x PP2, head node": (
        [*LONG, *PP2, "--node-rank", "0"],
        {"pipeline_parallel_size": 2, "world_size": 16, "nnodes": 2, "node_rank": 0, "headless": False},
    ),
    "TP8 x PP2, second node": (
        [*LONG, *PP2, "--node-rank", "1", "--headless"],
        {"pipeline_parallel_size": 2, "world_size": 16, "nnodes": 2, "node_rank": 1, "headless": True},
    ),
}
RECIPE_FACTS: dict[str, Any] = {
    "tensor_parallel_size": 8,
    "pipeline_parallel_size": 1,
    "data_parallel_size": 1,
    "world_size": 8,
    "architecture": "KimiK25ForConditionalGeneration",
    "quantization": "compressed-tensors",
    "dtype": "torch.bfloat16",
    "max_model_len": 262144,
    "multimodal": True,
    "language_model_only": False,
    "mm_encoder_tp_mode": "data",
    "tool_call_parser": "kimi_k2",
    "enable_auto_tool_choice": True,
    "reasoning_parser": "kimi_k2",
    "speculative_method": None,
    "distributed_executor_backend": "mp",
}

SGLANG_DRAFT = f"/models/sglang-stand-in/kimi-k2.5-eagle3-mla/{DRAFT_COMMIT}"  # CONFIGS' draft config.json as is
# name -> (argv, vLLM's own message)
REFUSED: dict[str, tuple[list[str], str]] = {
    "argparse: unknown flag": ([*LONG, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    "argparse: bad choice": ([*LONG[:3], "--mm-encoder-tp-mode", "nope"], "invalid choice: 'nope'"),
    "serve args: auto tool choice without a parser": (
        [K25, "-tp", "8", "--enable-auto-tool-choice"],
        "--enable-auto-tool-choice requires --tool-call-parser",
    ),
    "API server: unknown tool-call parser": (
        [K25, "-tp", "8", "--tool-call-parser", "nope", "--enable-auto-tool-choice"],
        "invalid tool call parser: nope",
    ),
    "engine: unknown reasoning parser": ([K25, "-tp", "8", "--reasoning-parser", "nope"], "Reasoning parser 'nope'"),
    "model config: context beyond config.json": (
        [*LONG, "--max-model-len", "1000000"],
        r"User-specified max_model_len \(1000000\) is greater than the derived max_model_len",
    ),
    "VllmConfig: TP that does not divide the attention heads": (
        [K25, "--tensor-parallel-size", "3", *RECIPE[3:]],
        r"Total number of attention heads \(64\) must be divisible by tensor parallel size \(3\)",
    ),
    "parallel config vs the simulated GPUs: TP8 x PP2 on one 8-GPU node": (
        [*LONG, "--pipeline-parallel-size", "2"],
        r"World size \(16\) is larger than the number of available GPUs \(8\) in this node",
    ),
    "speculative: an EAGLE3 draft whose config.json says deepseek_v3": (
        [*LONG, "--speculative-config", EAGLE3.replace(DRAFT, SGLANG_DRAFT)],
        r"Model architectures \['Eagle3DeepSeekMTPModel'\] are not supported",
    ),
}

# Truth tests of a torch stub that happen while a line runs; each is harmless, and any new one fails the test below.
STUB_DECISIONS = {
    # typing.TypeVar(bound=nn.Module) checks `if bound:` when vllm/model_executor/models/adapters.py is imported
    "import: bool(torch.nn.Module) in typing.__init__",
    # a class attribute of the online-FP8 (--quantization fp8 on an unquantized checkpoint) linear method, computed
    # when vllm/model_executor/layers/quantization/online/fp8.py is imported; no line here quantizes online
    "import: bool(torch.ops._C.cutlass_scaled_mm_supports_fp8()) in "
    "vllm.model_executor.layers.quantization.online.fp8.Fp8PerTensorOnlineLinearMethod",
}

# Modules vLLM (or a library) probed for while a line ran that are not installed here, and why each answer ("not
# installed") is the real image's answer or cannot change a decision the lines here depend on. A new probe fails the
# test below: decide whether the package belongs in hack/contract-requirements-vllm.txt.
MISSING_OK = {
    # all-to-all / MoE kernel libraries probed when fused_moe/all2all_utils.py is imported; none is a dependency of
    # the vllm 0.34.0 wheel, and no line here selects an all-to-all backend
    "deep_ep": "EP kernels",
    "moonep": "EP kernels",
    "mori": "EP kernels (ROCm)",
    "nixl_ep": "EP kernels",
    "b12x": "vllm[b12x] extra: MXFP4 kernels",
    # vllm.ray.lazy_utils.is_ray_initialized(): False for a `vllm serve` started outside a Ray job, installed or not;
    # ParallelConfig picks "ray" only inside a Ray placement group
    "ray": "not in a Ray job",
    # mistral_common's image tokenizer (Mistral models only); opencv is a vLLM dependency not installed here
    "cv2": "Mistral image tokenizer",
    "scipy": "numba's optional scipy support",
    "soundfile": "audio extras",
    "soxr": "audio extras",
    "colorama": "coloured logs",
    "coverage": "numba's coverage support",
    # jsonschema's optional format checkers
    **dict.fromkeys(
        ["fqdn", "isoduration", "jsonpointer", "rfc3339_validator", "rfc3986_validator", "rfc3987", "rfc3987_syntax"],
        "jsonschema formats",
    ),
    **dict.fromkeys(["uri_template", "webcolors"], "jsonschema formats"),
    # transformers' remote-code namespace: vLLM uses its registered Kimi_K25Config for model_type kimi_k25 even
    # with --trust-remote-code, so no remote code is imported
    "transformers_modules": "no remote code",
    # vllm/third_party/triton_kernels, which is installed, is the fallback
    "triton_kernels": "vendored copy used",
}


@pytest.fixture(scope="session")
def vllm_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where /models/ of the command lines lives; stand-in checkpoints are written on demand (vllm_launch.localize)."""
    root = tmp_path_factory.mktemp("vllm-models")
    draft = root / Path(SGLANG_DRAFT).relative_to("/models")
    draft.mkdir(parents=True)
    (draft / "config.json").write_text(json.dumps(CONFIGS["lightseekorg/kimi-k2.5-eagle3-mla"], indent=2))
    return root


@pytest.fixture(scope="session")
def outcomes(vllm_models: Path) -> dict[str, dict[str, Any] | VLLMLaunchError]:
    """Every line of ACCEPTED and REFUSED through the pinned vLLM, in one batch."""
    names = [*ACCEPTED, *REFUSED]
    argvs = [ACCEPTED[name][0] if name in ACCEPTED else REFUSED[name][0] for name in names]
    return dict(zip(names, check_vllm_many(argvs, vllm_models), strict=True))


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_published_line_is_accepted_with_the_expected_values(
    name: str, outcomes: dict[str, dict[str, Any] | VLLMLaunchError]
) -> None:
    got = outcomes[name]
    if isinstance(got, VLLMLaunchError):
        raise got
    want = {**RECIPE_FACTS, **ACCEPTED[name][1]}
    assert {key: got[key] for key in want} == want, name
    if "served_model_name" not in ACCEPTED[name][1]:
        assert got["served_model_name"] == got["model"]  # vLLM's default: the path the line names


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_known_bad_line_is_refused_with_vllms_message(
    name: str, outcomes: dict[str, dict[str, Any] | VLLMLaunchError]
) -> None:
    got = outcomes[name]
    assert isinstance(got, VLLMLaunchError), f"{name}: vLLM accepted {REFUSED[name][0]!r}"
    assert re.search(REFUSED[name][1], str(got)), str(got)


def test_no_decision_rests_on_a_torch_stub(outcomes: dict[str, dict[str, Any] | VLLMLaunchError]) -> None:
    """While a line runs, no torch stub is called outside an import, no stub is truth-tested except the two harmless
    ones above, and every "is it installed?" probe that answered no is one of MISSING_OK (tests/contract/
    vllm_stubs.py records every use)."""
    for name in ACCEPTED:
        got = outcomes[name]
        assert isinstance(got, dict), name
        uses: list[str] = got["stub_uses"]
        assert [use for use in uses if use.startswith("run: ")] == [], name
        assert {use for use in uses if "bool(" in use} <= STUB_DECISIONS, name
        missing = {use.removeprefix("missing: ") for use in uses if use.startswith("missing: ")}
        assert missing <= set(MISSING_OK), f"{name}: new availability probes {sorted(missing - set(MISSING_OK))}"


def test_recipe_flags_are_vllms_own_spellings(vllm_models: Path) -> None:
    """Every flag the recipe lines use is an option string of the pinned `vllm serve` (not an abbreviation)."""
    options = vllm_option_strings()
    flags = {arg for argv, _ in ACCEPTED.values() for arg in argv if arg.startswith("-")}
    assert flags <= options, sorted(flags - options)
    assert {"-tp", "--tensor-parallel-size", "--mm-encoder-tp-mode", "--language-model-only"} <= options


def test_check_vllm_raises_with_vllms_message(vllm_models: Path) -> None:
    assert check_vllm(RECIPE, vllm_models)["tensor_parallel_size"] == 8
    with pytest.raises(VLLMLaunchError, match="unrecognized arguments: --no-such-flag"):
        check_vllm([*RECIPE, "--no-such-flag"], vllm_models)


def test_pinned_version() -> None:
    requirements = (Path(__file__).parents[2] / "hack" / "contract-requirements-vllm.txt").read_text()
    assert f"vllm=={VLLM_VERSION}" in requirements.splitlines()
