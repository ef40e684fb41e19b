"""llama.cpp: Plan -> `llama-server` command line, environment and probes (GGUF budget mode). Pure.

The guides' line (unsloth.ai/docs/models/kimi-k2.5; shared/reference/sglang-kimi.md "Other engines"):
`llama-server --model <first shard> --n-gpu-layers 99 -ot ".ffn_.*_exps.=CPU" --ctx-size 16384 --jinja`: every
layer on the GPUs except the routed MoE experts, which stay in host RAM. The planner decides whether the experts go
to RAM (planner.budget_row). The shards' names are not known before the download (Unsloth splits each quantization
into N files named `<name>-00001-of-0000N.gguf`), so a small `sh` prologue picks the first shard, and the vision
projector when the plan wants one, from the snapshot directory on the weights volume (`$$(` is the kubelet's escape
for a literal `$(` in a command).
"""

from __future__ import annotations

import math
from typing import Any

from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.engine.common import HTTP_PORT, health_probes, lifecycle, snapshot_path, user_env
from kimi_operator.engine.kinds import FACTS
from kimi_operator.planner import Plan

API_KEY_ENV = "LLAMA_API_KEY"  # llama-server's own: `--api-key` reads it
KERNEL_CACHE_MOUNT = "/cache/llamacpp"
TERMINATION_GRACE_SECONDS = 600
PROBE_PERIOD_SECONDS = 10
# /health answers 503 while the model loads and 200 once it serves; it does not generate.
HEALTH_TIMEOUT_SECONDS = 10
EXPERTS_ON_CPU = ".ffn_.*_exps.=CPU"  # the guides' -ot pattern: routed experts' tensors in host RAM
ALL_LAYERS = "999"  # --n-gpu-layers: every layer (the guides write 99; K2.5 has 61)
# The spec's KV cache element type in llama.cpp's cache types (-ctk/-ctv); f16 by default.
CACHE_TYPES = {"fp8_e4m3": "q8_0", "fp8_e5m2": "q8_0", "bf16": "bf16"}

PROLOGUE = (
    'dir="$1"; quant="$2"; mmproj="$3"; shift 3; '
    'model=$$(ls "$dir/$quant/"*-00001-of-*.gguf "$dir/$quant/"*.gguf 2>/dev/null | head -n 1); '
    'if [ -z "$model" ]; then echo "llama.cpp: no .gguf file under $dir/$quant" >&2; exit 1; fi; '
    'if [ -n "$mmproj" ]; then proj=$$(ls "$dir/"$mmproj 2>/dev/null | head -n 1); '
    'if [ -n "$proj" ]; then set -- --mmproj "$proj" "$@"; '
    'else echo "llama.cpp: no vision projector $mmproj in $dir: serving text only" >&2; fi; fi; '
    'echo "llama.cpp: serving $model" >&2; exec llama-server --model "$model" "$@"'
)


def threads(cpu_request: int) -> int:
    """Generation threads: the CPU cores the pod requests (llama.cpp would count the node's, not the pod's)."""
    return max(1, math.floor(cpu_request))


def server_args(plan: Plan, spec: KimiDeploymentSpec, *, cpu: int = 0) -> list[str]:
    """llama-server's arguments after the model (which the prologue adds)."""
    args = [
        "--alias",
        plan.served_model_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(HTTP_PORT),
        "--ctx-size",
        str(plan.context_length),
        "--jinja",
        "--metrics",
        "--n-gpu-layers",
        ALL_LAYERS,
    ]
    if plan.experts_on_cpu:
        args += ["--override-tensor", EXPERTS_ON_CPU]
    if cpu:
        args += ["--threads", str(threads(cpu))]
    if plan.kv_cache_dtype in CACHE_TYPES:
        args += ["--cache-type-k", CACHE_TYPES[plan.kv_cache_dtype]]
    return args + list(spec.engine.extra_args)


def command(plan: Plan, spec: KimiDeploymentSpec, *, cpu: int = 0) -> list[str]:
    mmproj = "" if plan.language_model_only else next((g for g in plan.fetch_include if "mmproj" in g), "")
    return [
        "sh",
        "-c",
        PROLOGUE,
        "llama-server",
        snapshot_path(plan.repo, plan.revision),
        plan.quant,
        mmproj,
        *server_args(plan, spec, cpu=cpu),
    ]


def env(plan: Plan, spec: KimiDeploymentSpec) -> list[dict[str, Any]]:  # noqa: ARG001 - the engines' signature
    out: list[dict[str, Any]] = [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    out += user_env(spec.engine.env, FACTS["llamacpp"].owned_env)
    return out


def probes(plan: Plan) -> dict[str, dict[str, Any]]:
    """Startup probe sized to reading the quantization from the volume; then /health (200 once loaded)."""
    return health_probes(plan.startup_budget_seconds, period=PROBE_PERIOD_SECONDS, timeout=HEALTH_TIMEOUT_SECONDS)


__all__ = ["HTTP_PORT", "lifecycle"]
