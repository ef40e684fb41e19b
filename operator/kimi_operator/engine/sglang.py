"""SGLang: Plan -> command line, environment, ports and probes. Pure.

Every command line rendered here is parsed in the contract tests by the pinned sglang's own
`prepare_server_args` (tests/contract/). Facts and their sources: shared/reference/sglang-kimi.md.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.engine.common import (
    DIST_INIT_PORT,
    HTTP_PORT,
    MODELS_MOUNT,
    health_probes,
    lifecycle,
    snapshot_path,
    user_env,
)
from kimi_operator.planner import Plan

__all__ = ["DIST_INIT_PORT", "HTTP_PORT", "MODELS_MOUNT", "lifecycle", "snapshot_path"]
KERNEL_CACHE_MOUNT = "/cache/sglang"
# The kernel cache's directory on the weights volume, per engine image (kernels are built for one SGLang build).
KERNEL_CACHE_ROOT = ".kernel-cache"
# SGLang's /health runs a one-token generation with an internal 20 s timeout (SGLANG_HEALTH_CHECK_TIMEOUT):
# a probe timeout must exceed it or a busy but healthy server is marked down.
HEALTH_TIMEOUT_SECONDS = 30
PROBE_PERIOD_SECONDS = 10
# Thinking-mode answers can run for many minutes; SGLang drains in-flight requests on SIGTERM.
TERMINATION_GRACE_SECONDS = 1800
LOADER_THREADS = 64


def kernel_cache_subpath(image: str) -> str:
    """subPath of the weights volume holding this image's compiled-kernel cache (`.kernel-cache/<image>`).

    A leading dot keeps it apart from the /models/<owner>/<repo>/<commit> snapshots: no Hub owner starts with one.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", image).strip("._") or "default"
    return f"{KERNEL_CACHE_ROOT}/{safe}"


def server_args(plan: Plan, spec: KimiDeploymentSpec, *, multi_node: bool = False) -> list[str]:
    """The `python3 -m sglang.launch_server` arguments for one replica (the leader's, when multi-node)."""
    args = [
        "--model-path",
        snapshot_path(plan.repo, plan.revision),
        "--served-model-name",
        plan.served_model_name,
        "--tp-size",
        str(plan.tp),
    ]
    if plan.pp > 1:
        args += ["--pp-size", str(plan.pp)]
    if plan.ep > 1:
        args += ["--ep-size", str(plan.ep)]
    if plan.data_parallel_attention:
        # Attention DP inside one replica. In 0.5.23 --dp-size means whole extra model copies, and
        # --dp-size N --attn-dp-size N is refused at launch (parallel_hook.handle_data_parallelism).
        args += ["--attn-dp-size", str(plan.dp)]
    args += [
        "--trust-remote-code",
        "--tool-call-parser",
        "kimi_k2",
        "--reasoning-parser",
        "kimi_k2",
        "--host",
        "0.0.0.0",
        "--port",
        str(HTTP_PORT),
        "--enable-metrics",
        "--context-length",
        str(plan.context_length),
        "--mem-fraction-static",
        f"{plan.mem_fraction_static:.3f}",
        "--model-loader-extra-config",
        json.dumps({"enable_multithread_load": True, "num_threads": LOADER_THREADS}, separators=(",", ":")),
    ]
    if plan.chunked_prefill_size is not None:
        # Divided by the attention-DP size at launch: this keeps a useful chunk per rank.
        args += ["--chunked-prefill-size", str(plan.chunked_prefill_size)]
    if plan.data_parallel_attention:
        # Only TP rank 0 reports metrics by default; the autoscaler sums queue depth over every DP rank.
        args.append("--enable-metrics-for-all-schedulers")
    if plan.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", plan.kv_cache_dtype]
    if plan.language_model_only:
        args.append("--language-model-only")
    spec_dec = spec.engine.speculative
    if spec_dec is not None:
        args += [
            "--speculative-algorithm",
            "EAGLE3",
            "--speculative-draft-model-path",
            snapshot_path(spec_dec.draft_repo, plan.draft_commit or "main"),
            "--speculative-num-steps",
            str(spec_dec.num_steps),
            "--speculative-eagle-topk",
            str(spec_dec.topk),
            "--speculative-num-draft-tokens",
            str(spec_dec.num_draft_tokens),
        ]
        if plan.max_running_requests is not None:
            args += ["--max-running-requests", str(plan.max_running_requests)]
    if multi_node:
        args += [
            "--dist-init-addr",
            f"$(LWS_LEADER_ADDRESS):{DIST_INIT_PORT}",
            "--nnodes",
            "$(LWS_GROUP_SIZE)",
            "--node-rank",
            "$(LWS_WORKER_INDEX)",
        ]
        if plan.dist_timeout_seconds is not None:
            args += ["--dist-timeout", str(plan.dist_timeout_seconds)]
    return args + list(spec.engine.extra_args)


def command(plan: Plan, spec: KimiDeploymentSpec, *, multi_node: bool = False) -> list[str]:
    return ["python3", "-m", "sglang.launch_server", *server_args(plan, spec, multi_node=multi_node)]


def env(plan: Plan, spec: KimiDeploymentSpec) -> list[dict[str, Any]]:
    """Engine environment: offline hub, writable module cache for trust-remote-code, then the user's."""
    out: list[dict[str, Any]] = [
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HF_HOME", "value": "/tmp/hf-home"},
        {"name": "HF_MODULES_CACHE", "value": "/tmp/hf-modules"},
        {"name": "SGLANG_HEALTH_CHECK_TIMEOUT", "value": "20"},
        # Compiled kernels (DeepGEMM, Triton, Inductor, FlashInfer) on the weights volume, so a restarted or
        # rescheduled pod does not JIT them again (minutes on K2.5).
        {"name": "SGLANG_CACHE_DIR", "value": KERNEL_CACHE_MOUNT},
    ]
    if plan.vendor == "amd":
        out.append({"name": "SGLANG_USE_AITER", "value": "1"})
        # With AITER attention above 8K context SGLang multiplies an explicit --mem-fraction-static by 0.85
        # (attention_hook) unless told to honour it: the fraction passed is then the one the plan's KV numbers use.
        out.append({"name": "SGLANG_AITER_HONOR_EXPLICIT_MEM_FRACTION", "value": "1"})
    out += user_env(spec.engine.env, [e["name"] for e in out])
    return out


def probes(plan: Plan) -> dict[str, dict[str, Any]]:
    """Startup probe sized to the checkpoint's load time; readiness/liveness above SGLang's 20 s health timeout."""
    return health_probes(plan.startup_budget_seconds, period=PROBE_PERIOD_SECONDS, timeout=HEALTH_TIMEOUT_SECONDS)
