"""vLLM: Plan -> `vllm serve` command line, environment and probes. Pure.

The published K2.5 recipe (vllm-project/recipes models/moonshotai/Kimi-K2.5.yaml; shared/reference/sglang-kimi.md
"Other engines"): TP8 with the kimi_k2 tool-call and reasoning parsers, auto tool choice, trust-remote-code, the
vision encoder data-parallel (`--mm-encoder-tp-mode data`), optional `--max-model-len` and `--language-model-only`,
EAGLE3 through `--speculative-config`, 2x8 H100 as TP8 x PP2. Every command line rendered here goes through the
pinned vLLM release's own parser and engine-argument validation in the contract tests (tests/contract/).
"""

from __future__ import annotations

import json
from typing import Any

from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.engine.common import (
    DIST_INIT_PORT,
    HTTP_PORT,
    health_probes,
    lifecycle,
    snapshot_path,
    user_env,
)
from kimi_operator.engine.kinds import FACTS
from kimi_operator.planner import Plan

MASTER_PORT = DIST_INIT_PORT
KERNEL_CACHE_MOUNT = "/cache/vllm"
API_KEY_ENV = "VLLM_API_KEY"  # vLLM's own: `--api-key` defaults to it
# Thinking-mode answers can run for many minutes; vLLM drains in-flight requests on SIGTERM.
TERMINATION_GRACE_SECONDS = 1800
PROBE_PERIOD_SECONDS = 10
# /health answers once the engine core is up; it runs no generation, so a short timeout is enough.
HEALTH_TIMEOUT_SECONDS = 10
# The spec's KV cache element type in vLLM's spelling (--kv-cache-dtype choices).
KV_CACHE_DTYPES = {"fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2", "bf16": "bfloat16"}


def serve_args(plan: Plan, spec: KimiDeploymentSpec, *, role: str = "single") -> list[str]:
    """The `vllm serve` arguments for one replica; `role` leader or worker for a LeaderWorkerSet group."""
    args = [
        snapshot_path(plan.repo, plan.revision),
        "--served-model-name",
        plan.served_model_name,
        "--tensor-parallel-size",
        str(plan.tp),
    ]
    if plan.pp > 1:
        args += ["--pipeline-parallel-size", str(plan.pp)]
    if plan.ep > 1:
        args.append("--enable-expert-parallel")
    args += [
        "--trust-remote-code",
        "--tool-call-parser",
        "kimi_k2",
        "--enable-auto-tool-choice",
        "--reasoning-parser",
        "kimi_k2",
        "--host",
        "0.0.0.0",
        "--port",
        str(HTTP_PORT),
        "--max-model-len",
        str(plan.context_length),
        "--gpu-memory-utilization",
        f"{plan.mem_fraction_static:.3f}",
    ]
    if plan.language_model_only:
        args.append("--language-model-only")
    else:
        args += ["--mm-encoder-tp-mode", "data"]
    if plan.kv_cache_dtype in KV_CACHE_DTYPES:
        args += ["--kv-cache-dtype", KV_CACHE_DTYPES[plan.kv_cache_dtype]]
    spec_dec = spec.engine.speculative
    if spec_dec is not None:
        config = {
            "model": snapshot_path(spec_dec.draft_repo, plan.draft_commit or "main"),
            "method": "eagle3",
            "num_speculative_tokens": spec_dec.num_steps,
        }
        args += ["--speculative-config", json.dumps(config, separators=(",", ":"))]
    if role != "single":
        args += [
            "--nnodes",
            "$(LWS_GROUP_SIZE)",
            "--node-rank",
            "$(LWS_WORKER_INDEX)",
            "--master-addr",
            "$(LWS_LEADER_ADDRESS)",
            "--master-port",
            str(MASTER_PORT),
        ]
        if role == "worker":
            args.append("--headless")
    return args + list(spec.engine.extra_args)


def command(plan: Plan, spec: KimiDeploymentSpec, *, role: str = "single") -> list[str]:
    return ["vllm", "serve", *serve_args(plan, spec, role=role)]


def env(plan: Plan, spec: KimiDeploymentSpec) -> list[dict[str, Any]]:
    """Offline hub, writable caches, compiled kernels on the weights volume, then the user's."""
    out: list[dict[str, Any]] = [
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HF_HOME", "value": "/tmp/hf-home"},
        {"name": "HF_MODULES_CACHE", "value": "/tmp/hf-modules"},
        {"name": "VLLM_CACHE_ROOT", "value": KERNEL_CACHE_MOUNT},
    ]
    if plan.nodes_per_replica > 1:
        out.append({"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    if plan.vendor == "amd":
        out.append({"name": "VLLM_ROCM_USE_AITER", "value": "1"})  # the recipe's MI300X line
    out += user_env(spec.engine.env, FACTS["vllm"].owned_env)
    return out


def probes(plan: Plan) -> dict[str, dict[str, Any]]:
    """The startup probe covers the weight load and compilation (the plan's budget); then /health."""
    return health_probes(plan.startup_budget_seconds, period=PROBE_PERIOD_SECONDS, timeout=HEALTH_TIMEOUT_SECONDS)


__all__ = ["HTTP_PORT", "lifecycle"]
