"""sglang 0.5.23's own launch-time resolution, run on CPU for the contract tests.

`prepare_server_args` only parses. `python -m sglang.launch_server` then calls `ServerArgs.resolve_once()`, which
runs about a hundred hooks from `sglang/srt/arg_groups/` in dependency order (`pipeline.run_resolution_pipeline`):
deprecated-flag translation, model config from the checkpoint's config.json, multimodal, PD, CUDA graphs,
platform defaults, GPU memory (`--mem-fraction-static`, chunked prefill), model-specific adjustments, attention
backend, data/context/expert parallelism, MoE, speculative decoding, load format, environment, and the final
cross-checks. Those refuse lines the parser accepts (`--dp-size 8 --attn-dp-size 8`, for one). `resolve()` below
runs that whole pipeline, unchanged, against a faithful config.json of the checkpoint.

What is not the real thing, and why each cannot hide a check:
- Import stubs (tests/contract/torch_stub.py) for packages that are GPU code or need it: `torch`, `triton`,
  `torchvision`, `torchaudio` (PyPI serves only CUDA builds: 5+ GB), `tvm_ffi` (the kernel FFI; its import
  inspects torch's tensor types) and `compressed_tensors` (quantization kernels; its pydantic models are typed
  with torch dtypes). No hook validates through them: they are imported for class bases, type hints and kernel
  registration; every decision the hooks make reads the `ServerArgs` record, the model config (real transformers
  and sglang config classes) and the device facts below.
- The device facts (`simulated_accelerator`): what `torch.cuda`, `torch.version` and nvidia-smi/rocminfo would
  answer on the planned GPU - available, 8 devices, compute capability (or a ROCm version and gfx target), total
  memory - plus sglang's own `override_platform` for the same facts. sglang's probes in `sglang.srt.utils.common`
  are lru-cached, so their caches are cleared on entry and exit. The modules the pipeline imports lazily are
  imported first under the CPU answers (under CUDA answers their import-time code would load `sgl_kernel`).
- Nothing touches the network, a GPU or the checkpoint's weights; config.json is the only file read.

That the pipeline is live is itself tested (tests/contract/test_launch.py): a known-bad line per hook family is
refused with sglang's own message, and the memory default it computes is compared with the planner's.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import os
import pkgutil
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from kimi_operator import catalog

from . import torch_stub
from .conftest import KIMI_K25_CONFIG, _keep_root_logging, exit_message

# Faithful config.json files, with the fields sglang's configs and hooks read (from each model card's config.json;
# the vision tower numbers are MoonViT's as sglang's configs/kimi_k25.py defines them).
_K2_TEXT: dict[str, Any] = dict(KIMI_K25_CONFIG["text_config"])
_INT4_EXPERTS: dict[str, Any] = {
    "quant_method": "compressed-tensors",
    "format": "pack-quantized",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {
                "num_bits": 4,
                "type": "int",
                "symmetric": True,
                "strategy": "group",
                "group_size": 32,
                "dynamic": False,
            },
            "input_activations": None,
        }
    },
    "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
}
CONFIGS: dict[str, dict[str, Any]] = {
    "moonshotai/Kimi-K2.5": {
        **KIMI_K25_CONFIG,
        "text_config": {**_K2_TEXT, "quantization_config": _INT4_EXPERTS},
        "vision_config": {
            "patch_size": 14,
            "num_attention_heads": 16,
            "num_hidden_layers": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "merge_kernel_size": [2, 2],
            "mm_hidden_size": 1152,
        },
    },
    "moonshotai/Kimi-K2-Thinking": {
        **{k: v for k, v in _K2_TEXT.items() if k != "architectures"},
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "kimi_k2",
        "quantization_config": _INT4_EXPERTS,
    },
    "moonshotai/Kimi-K2-Instruct": {
        **{k: v for k, v in _K2_TEXT.items() if k != "architectures"},
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "kimi_k2",
        "max_position_embeddings": 131072,
        "quantization_config": {
            "quant_method": "fp8",
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "weight_block_size": [128, 128],
        },
    },
    # The K2.5 EAGLE3 drafts: one decoder layer; the -mla one with K2's MLA attention (models/kimi_k25_eagle3.py).
    "lightseekorg/kimi-k2.5-eagle3-mla": {
        "architectures": ["Eagle3DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "num_hidden_layers": 1,
        "num_attention_heads": 64,
        "num_key_value_heads": 64,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "vocab_size": 163840,
        "draft_vocab_size": 163840,
        "target_hidden_size": 7168,
        "max_position_embeddings": 262144,
        "torch_dtype": "bfloat16",
    },
}
# The first K2.5 EAGLE3 draft: the same one-layer EAGLE3 shape (the fields sglang's hooks read are the same).
CONFIGS["lightseekorg/kimi-k2.5-eagle3"] = CONFIGS["lightseekorg/kimi-k2.5-eagle3-mla"]


class SGLangLaunchError(AssertionError):
    """sglang refused the command line at launch; the message is sglang's own."""


@dataclass(frozen=True)
class Device:
    """The facts one GPU model gives torch and sglang's probes."""

    vendor: str
    memory_mib: int
    capability: tuple[int, int]
    gfx: str
    name: str
    count: int = 8

    @classmethod
    def of(cls, acc: catalog.Accelerator, count: int = 8) -> Device:
        return cls(acc.vendor, acc.memory_mib, acc.capability, acc.gfx, acc.key, count)


def _import_pipeline_modules() -> None:
    """Import what resolve_once imports lazily, while torch still answers like a CPU-only machine."""
    import sglang.srt.arg_groups as arg_groups

    for module in pkgutil.walk_packages(arg_groups.__path__, "sglang.srt.arg_groups."):
        importlib.import_module(module.name)
    importlib.import_module("sglang.srt.kernel_plugins.amd.binding")
    importlib.import_module("sglang.srt.kernel_plugins.nvidia.binding")


def _clear_probe_caches() -> None:
    from sglang.srt.utils import common

    for value in vars(common).values():
        if isinstance(value, functools._lru_cache_wrapper):
            value.cache_clear()


@contextlib.contextmanager
def simulated_accelerator(device: Device) -> Iterator[None]:
    """torch.cuda / torch.version / nvidia-smi answers of `device` for the duration; the CPU answers after."""
    torch = sys.modules["torch"]
    from sglang.srt.runtime_context import override_platform
    from sglang.srt.utils import common

    props = types.SimpleNamespace(
        total_memory=device.memory_mib * 1024**2,
        name=device.name,
        major=device.capability[0],
        minor=device.capability[1],
        multi_processor_count=132,
        gcnArchName=f"{device.gfx}:sramecc+:xnack-" if device.gfx else "",
    )
    cuda_answers: dict[str, Any] = {
        "is_available": lambda: True,
        "device_count": lambda: device.count,
        "get_device_capability": lambda *_a, **_k: device.capability,
        "get_device_properties": lambda *_a, **_k: props,
        "get_device_name": lambda *_a, **_k: device.name,
        "is_initialized": lambda: False,
        "mem_get_info": lambda *_a, **_k: (props.total_memory, props.total_memory),
    }
    version_answers: dict[str, Any] = (
        {"cuda": "12.9", "hip": None} if device.vendor == "nvidia" else {"cuda": None, "hip": "7.0.0"}
    )
    memory = float(device.memory_mib)
    common_answers: dict[str, Any] = {
        "get_nvgpu_memory_capacity": lambda: memory,  # nvidia-smi is not installed here
        "get_amdgpu_memory_capacity": lambda: memory,  # nor rocminfo
    }
    saved: list[tuple[object, str, object]] = []
    for target, answers in ((torch.cuda, cuda_answers), (torch.version, version_answers), (common, common_answers)):
        for attribute, value in answers.items():
            saved.append((target, attribute, getattr(target, attribute, None)))
            setattr(target, attribute, value)
    _clear_probe_caches()
    sm = device.capability[0] * 10 + device.capability[1]
    facts: dict[str, Any] = {
        "is_cuda": device.vendor == "nvidia",
        "is_hip": device.vendor == "amd",
        "device_capability": device.capability,
        "device_sm": sm,
        "is_sm90": device.vendor == "nvidia" and device.capability[0] == 9,
        "is_sm100": device.vendor == "nvidia" and device.capability[0] == 10,
        "is_sm100_or_sm110": device.vendor == "nvidia" and device.capability[0] in (10, 11),
        "is_blackwell": device.vendor == "nvidia" and device.capability[0] >= 10,
    }
    try:
        with override_platform(**facts):
            yield
    finally:
        for target, attribute, value in reversed(saved):
            setattr(target, attribute, value)
        _clear_probe_caches()


def write_checkpoint_dirs(root: Path, argv: list[str]) -> None:
    """config.json for each /models/<owner>/<repo>/<commit> path on the command line (under `root`)."""
    for arg in argv:
        if not arg.startswith(str(root)):
            continue
        rel = Path(arg).relative_to(root)
        repo = "/".join(rel.parts[:2])
        if repo not in CONFIGS:
            raise AssertionError(f"no faithful config.json for {repo}; add it to sglang_launch.CONFIGS")
        Path(arg).mkdir(parents=True, exist_ok=True)
        (Path(arg) / "config.json").write_text(json.dumps(CONFIGS[repo], indent=2))


Resolve = Callable[[list[str], catalog.Accelerator, dict[str, str]], Any]


def make_resolver(prepare_server_args: Callable[[list[str]], Any], models_root: Path) -> Resolve:
    """`resolve(argv, accelerator, env) -> resolved view`; `/models` in argv is mapped to `models_root`."""
    torch_stub.install()
    _import_pipeline_modules()
    from sglang.srt.arg_groups.overrides import resolving_view

    def resolve(argv: list[str], accelerator: catalog.Accelerator, env: dict[str, str]) -> Any:
        """Parse and resolve argv as the engine container would start it: with its environment `env`."""
        local = [a.replace("/models/", f"{models_root}/", 1) if a.startswith("/models/") else a for a in argv]
        write_checkpoint_dirs(models_root, local)
        stderr = io.StringIO()
        try:
            with (
                contextlib.redirect_stderr(stderr),
                _keep_root_logging(),
                mock.patch.dict(os.environ, env),
            ):
                args = prepare_server_args(local)
                with simulated_accelerator(Device.of(accelerator)):
                    args.resolve_once()
        except SystemExit as exc:
            raise SGLangLaunchError(f"{exit_message(stderr.getvalue(), exc)}; argv: {argv!r}") from None
        except Exception as exc:
            raise SGLangLaunchError(f"{type(exc).__name__}: {exc}; argv: {argv!r}") from exc
        return resolving_view(args)

    return resolve
