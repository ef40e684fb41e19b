"""The pinned vLLM's own `vllm serve`, run on CPU up to its engine config, for the contract tests.

`check_vllm(argv, models_root)` runs `vllm serve *argv` with vLLM 0.34.0 (installed by `make venv` into .venv-vllm
from hack/contract-requirements-vllm.txt) on a simulated node of 8 H200s and returns facts from the VllmConfig it
builds, or raises `VLLMLaunchError` with vLLM's own message. `check_vllm_many` checks a batch in one call.

What runs is vLLM's real entry point (tests/contract/vllm_worker.py): its parser, `validate_parsed_serve_args`, the
`serve` subcommand, `setup_server`'s tool/reasoning parser checks and `AsyncEngineArgs.create_engine_config` with
everything it validates; it stops when the engine config exists, before any engine process starts. What stands in
for the GPU stack, and why that cannot hide a check, is in tests/contract/vllm_stubs.py.

Why a separate venv: vLLM 0.34.0 requires tokenizers>=0.23.3, fastapi<0.137, numpy<2.4 (through mistral_common)
and compressed-tensors 0.17.0, where .venv holds sglang 0.5.23's tokenizers==0.23.2, fastapi 0.165.0, numpy 2.4.6
(and a torch stub that answers "no GPU"); so the check runs in `.venv-vllm/bin/python` as a long-lived worker
process: vLLM is imported once per test session (about 3 s) and each line then takes about 1-2 s in a forked child.

Checkpoints: `/models/<owner>/<repo>[/<commit>]` in argv (also inside JSON values such as --speculative-config) is
mapped under `models_root`, and each such directory gets stand-in files for what vLLM reads at config time:
config.json (tests/contract/sglang_launch.CONFIGS, the faithful configs the SGLang contract uses), and for a target
model a tokenizer (tokenizer.json + tokenizer_config.json: Kimi's special tokens at their real ids, which vLLM's
kimi_k2 reasoning/tool parsers look up; the real one is TikToken remote code, which vLLM reads here only for those
ids) and for K2.5 the vision preprocessor_config.json (vLLM's fused MoonViT processor reads its media_proc_cfg).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from kimi_operator import catalog

from .sglang_launch import CONFIGS
from .vllm_stubs import GPU_ENV, SimulatedGPU

VLLM_VERSION = "0.34.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".venv-vllm"
PYTHON = VENV / "bin" / "python"
SITE_DIR = Path(__file__).resolve().parent / "vllm_site"
REPLY_TIMEOUT_S = 900.0
JOBS = max(1, min(4, os.cpu_count() or 1))

# vLLM-specific config.json differences from CONFIGS. The K2.5 EAGLE3 drafts: vLLM 0.34.0 turns any draft whose
# model_type is "deepseek_v3" into a DeepSeek MTP draft (SpeculativeConfig.hf_config_override) and then refuses it for
# method "eagle3" ("Model architectures ['Eagle3DeepSeekMTPModel'] are not supported"); with "kimi_k2" (what NVIDIA
# ModelOpt writes when it exports a Kimi-K2 EAGLE3 draft) it loads Eagle3DeepseekV2ForCausalLM. CONFIGS says
# "deepseek_v3": which one the published checkpoints carry decides whether vLLM accepts them (see test_vllm_launch).
CONFIG_OVERRIDES: dict[str, dict[str, Any]] = {
    "lightseekorg/kimi-k2.5-eagle3-mla": {"model_type": "kimi_k2"},
    "lightseekorg/kimi-k2.5-eagle3": {"model_type": "kimi_k2"},
}
DRAFTS = frozenset(repo for repo, config in CONFIGS.items() if config["architectures"][0].startswith("Eagle3"))

# Kimi K2's special tokens (its tokenizer_config.json added_tokens_decoder), K2.5's media tokens included.
KIMI_SPECIAL_TOKENS: dict[int, str] = {
    163584: "[BOS]",
    163585: "[EOS]",
    163586: "<|im_end|>",
    163587: "<|im_user|>",
    163588: "<|im_assistant|>",
    163590: "<|start_header_id|>",
    163591: "<|end_header_id|>",
    163593: "[EOT]",
    163594: "<|im_system|>",
    163595: "<|tool_calls_section_begin|>",
    163596: "<|tool_calls_section_end|>",
    163597: "<|tool_call_begin|>",
    163598: "<|tool_call_argument_begin|>",
    163599: "<|tool_call_end|>",
    163601: "<|im_middle|>",
    163602: "<|media_begin|>",
    163603: "<|media_content|>",
    163604: "<|media_end|>",
    163605: "<|media_pad|>",
    163606: "<think>",
    163607: "</think>",
    163838: "[UNK]",
    163839: "[PAD]",
}
# K2.5's vision preprocessing (the media_proc_cfg keys vLLM's KimiK25FusedVisionProcessor reads; MoonViT's values).
K25_MEDIA_PROC_CFG: dict[str, Any] = {
    "in_patch_limit": 16384,
    "patch_size": 14,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "merge_kernel_size": 2,
    "fixed_output_tokens": None,
    "patch_limit_on_one_side": 512,
    "in_patch_limit_each_frame": 4096,
    "in_patch_limit_video": None,
    "temporal_merge_kernel_size": 4,
}


class VLLMLaunchError(AssertionError):
    """vLLM refused the command line; the message is vLLM's own."""


class VLLMContractError(RuntimeError):
    """The check itself could not run (no .venv-vllm, the worker crashed): never a refusal by vLLM."""


def simulated_gpu(acc: catalog.Accelerator, count: int = 8) -> SimulatedGPU:
    if acc.vendor != "nvidia":
        raise VLLMContractError(f"the vLLM contract simulates NVIDIA GPUs only (NVML), not {acc.key}")
    return SimulatedGPU(acc.product_label.replace("-", " "), acc.memory_mib, acc.capability, count)


def config_json(repo: str) -> dict[str, Any]:
    if repo not in CONFIGS:
        raise VLLMContractError(f"no faithful config.json for {repo}; add it to sglang_launch.CONFIGS")
    return {**CONFIGS[repo], **CONFIG_OVERRIDES.get(repo, {})}


def write_checkpoint(path: Path, repo: str) -> None:
    """The stand-in files vLLM reads at config time for `repo`, into `path` (module docstring)."""
    path.mkdir(parents=True, exist_ok=True)
    config = config_json(repo)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if repo in DRAFTS:
        return  # a draft runs with the target's tokenizer
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": token_id,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for token_id, token in KIMI_SPECIAL_TOKENS.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "WordLevel",
            "vocab": {token: token_id for token_id, token in KIMI_SPECIAL_TOKENS.items()},
            "unk_token": "[UNK]",
        },
    }
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    max_length = config.get("text_config", config).get("max_position_embeddings")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
        "model_max_length": max_length,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if "vision_config" in config:
        (path / "preprocessor_config.json").write_text(json.dumps({"media_proc_cfg": K25_MEDIA_PROC_CFG}))


def localize(argv: Sequence[str], models_root: Path) -> list[str]:
    """argv with /models/... under `models_root` (stand-in checkpoints written for each such directory)."""
    root = str(models_root).rstrip("/")
    local = []
    for arg in argv:
        if not isinstance(arg, str):
            raise VLLMContractError(f"argv items must be str: {argv!r}")
        arg = f"{root}/{arg.removeprefix('/models/')}" if arg.startswith("/models/") else arg
        local.append(arg.replace('"/models/', f'"{root}/'))
    for arg in local:
        for candidate in _paths_in(arg):
            if candidate.startswith(f"{root}/"):
                parts = Path(candidate).relative_to(root).parts
                if len(parts) >= 2 and not (Path(candidate) / "config.json").exists():
                    write_checkpoint(Path(candidate), "/".join(parts[:2]))
    return local


def _paths_in(arg: str) -> list[str]:
    """The argument itself, or the string values of a JSON object argument (--speculative-config '{"model":...}')."""
    if arg.startswith("{"):
        try:
            value = json.loads(arg)
        except json.JSONDecodeError:
            return [arg]
        return [item for item in value.values() if isinstance(item, str)] if isinstance(value, dict) else [arg]
    return [arg]


class Worker:
    """One long-lived .venv-vllm process (tests/contract/vllm_worker.py) for one simulated GPU node."""

    def __init__(self, gpu: SimulatedGPU) -> None:
        if not PYTHON.exists():
            raise VLLMContractError(f"{PYTHON} is missing; run `make venv` (hack/contract-requirements-vllm.txt)")
        self.scratch = tempfile.TemporaryDirectory(prefix="vllm-contract-")
        scratch = Path(self.scratch.name)
        self.log_path = scratch / "worker.log"
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("VLLM_", "HF_", "CUDA_", "PYTHON")) and key != "TRANSFORMERS_OFFLINE"
        }
        env |= {
            "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{SITE_DIR}",
            GPU_ENV: gpu.to_json(),
            "VLLM_CACHE_ROOT": str(scratch / "vllm-cache"),  # the model-registry inspection cache, this session's
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HOME": str(scratch / "hf"),
            "HF_HUB_OFFLINE": "1",
            "NUMBA_CACHE_DIR": str(scratch / "numba"),
            "TOKENIZERS_PARALLELISM": "false",
        }
        read_end, write_end = os.pipe()
        self.log: IO[str] = self.log_path.open("w")
        self.process = subprocess.Popen(
            [str(PYTHON), "-m", "tests.contract.vllm_worker", str(write_end)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
            text=True,
        )
        os.close(write_end)
        self.replies = os.fdopen(read_end)
        hello = self._reply()
        if hello.get("version") != VLLM_VERSION:
            raise VLLMContractError(f"contract pinned to vLLM {VLLM_VERSION}, .venv-vllm has {hello.get('version')}")

    def _reply(self) -> dict[str, Any]:
        ready, _, _ = select.select([self.replies], [], [], REPLY_TIMEOUT_S)
        line = self.replies.readline() if ready else ""
        if not line:
            self.close()
            raise VLLMContractError(f"the vLLM contract worker gave no answer; its log ends:\n{self.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def log_tail(self, lines: int = 60) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_many(self, lines: list[list[str]], env: dict[str, str]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self._ask({"lines": lines, "env": env, "jobs": JOBS})["results"]
        return results

    def option_strings(self) -> frozenset[str]:
        return frozenset(self._ask({"options": True})["options"])

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.replies.close()
        self.log.close()


_workers: dict[SimulatedGPU, Worker] = {}


def worker(gpu: SimulatedGPU) -> Worker:
    if gpu not in _workers:
        _workers[gpu] = Worker(gpu)
    return _workers[gpu]


@atexit.register
def close_workers() -> None:
    while _workers:
        _workers.popitem()[1].close()


def check_vllm_many(
    argvs: Sequence[Sequence[str]],
    models_root: Path,
    *,
    accelerator: catalog.Accelerator = catalog.ACCELERATORS["H200"],
    env: dict[str, str] | None = None,
) -> list[dict[str, Any] | VLLMLaunchError]:
    """`vllm serve *argv` for each argv (after `vllm serve`), in one worker call: per line, the resolved facts
    (tests/contract/vllm_worker.facts, plus "stub_uses") or the VLLMLaunchError carrying vLLM's message."""
    lines = [localize(argv, models_root) for argv in argvs]
    gpu_worker = worker(simulated_gpu(accelerator))
    outcomes: list[dict[str, Any] | VLLMLaunchError] = []
    for argv, result in zip(argvs, gpu_worker.check_many(lines, dict(env or {})), strict=True):
        if result.get("crash"):
            raise VLLMContractError(f"{result['error']} on {list(argv)!r}; log:\n{gpu_worker.log_tail()}")
        if result["ok"]:
            outcomes.append({**result["facts"], "stub_uses": result["stub_uses"]})
        else:
            outcomes.append(VLLMLaunchError(f"{result['error']}; argv: {list(argv)!r}"))
    return outcomes


def check_vllm(
    argv: Sequence[str],
    models_root: Path,
    *,
    accelerator: catalog.Accelerator = catalog.ACCELERATORS["H200"],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`vllm serve *argv` up to its engine config: the resolved facts, or VLLMLaunchError with vLLM's message."""
    (outcome,) = check_vllm_many([argv], models_root, accelerator=accelerator, env=env)
    if isinstance(outcome, VLLMLaunchError):
        raise outcome
    return outcome


def vllm_option_strings(accelerator: catalog.Accelerator = catalog.ACCELERATORS["H200"]) -> frozenset[str]:
    """Every option string `vllm serve` registers in the pinned vLLM."""
    return worker(simulated_gpu(accelerator)).option_strings()
