"""The engines a KimiDeployment can run (`spec.engine.kind`) and the facts every layer needs about each. Pure.

SGLang is the default; vLLM and llama.cpp are the other two engines the Kimi K2.5 guides describe
(shared/reference/sglang-kimi.md "Other engines"; docs/engines.md says which engine when). Each engine's renderer is
its own module (engine/sglang.py, engine/vllm.py, engine/llamacpp.py); this one holds what the models, the CRD, the
planner and the autoscaler read: pinned versions and images, metric names, and which options each renderer owns.

Owned options of vLLM and llama.cpp are matched (`--flag` or `--flag=value`) in the spellings each parser takes:
vLLM's FlexibleArgumentParser turns `--max_model_len` into `--max-model-len` and, being argparse with its default
allow_abbrev, takes unambiguous abbreviations (`--max-model 4096`), so any prefix of an owned long option (at
least 3 characters after `--`) is refused too (tests/contract checks no vLLM option of its own is such a prefix);
llama.cpp's parser takes exact names only. SGLang's full parser resolution lives in engine/flags.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["sglang", "vllm", "llamacpp"]
KINDS: tuple[Kind, ...] = ("sglang", "vllm", "llamacpp")

VLLM_VERSION = "0.34.0"  # keep in step with hack/contract-requirements-vllm.txt (tests/contract)
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
VLLM_ROCM_IMAGE = f"rocm/vllm:v{VLLM_VERSION}"
# llama.cpp publishes server images per build number (ggml-org/llama.cpp packages: server-cuda-b<N>); the build the
# test bed compiles from source (images/llamacpp/Dockerfile) is the one vendored by llama-cpp-python 0.3.36.
LLAMACPP_IMAGE = "ghcr.io/ggml-org/llama.cpp:server-cuda"


@dataclass(frozen=True)
class EngineFacts:
    kind: Kind
    display: str
    version: str
    container: str  # the engine container's name in the pod
    queue_metric: str  # requests waiting (the autoscaler's signal)
    running_metric: str  # requests being served
    health_path: str
    # option -> what to set instead (vLLM and llama.cpp; SGLang's are engine/flags.OWNED_DESTS)
    owned_options: dict[str, str] = field(default_factory=dict)
    # environment variables the operator sets, or that would set an owned option behind its back
    owned_env: dict[str, str] = field(default_factory=dict)
    owned_env_prefixes: tuple[str, ...] = ()
    normalise_underscores: bool = False
    abbreviations: bool = False  # the parser takes unambiguous prefixes of long options


_VLLM_OWNED = {
    "--model": "model.repo / model.revision",
    "--served-model-name": "model.servedModelName",
    "--tensor-parallel-size": "topology (the planner chooses TP)",
    "-tp": "topology (the planner chooses TP)",
    "--pipeline-parallel-size": "engine.pipelineParallel",
    "-pp": "engine.pipelineParallel",
    "--data-parallel-size": "replicas (each replica is its own pod or group)",
    "-dp": "replicas (each replica is its own pod or group)",
    "--enable-expert-parallel": "engine.expertParallel",
    "-ep": "engine.expertParallel",
    "--host": "(fixed: 0.0.0.0)",
    "--port": "(fixed: 8000, the Service's target)",
    "--trust-remote-code": "(always on: K2 ships its tokenizer as remote code)",
    "--tool-call-parser": "(fixed: kimi_k2)",
    "--enable-auto-tool-choice": "(always on, as the K2.5 recipe)",
    "--reasoning-parser": "(fixed: kimi_k2)",
    "--mm-encoder-tp-mode": "(fixed: data, as the K2.5 recipe)",
    "--max-model-len": "engine.contextLength",
    "--language-model-only": "engine.languageModelOnly",
    "--speculative-config": "engine.speculative",
    "--kv-cache-dtype": "engine.kvCacheDtype",
    "--gpu-memory-utilization": "engine.memFractionStaticPercent",
    "--api-key": "auth.apiKeySecretRef",
    "--nnodes": "topology.nodesPerReplica",
    "--node-rank": "(set from the LeaderWorkerSet)",
    "--master-addr": "(set from the LeaderWorkerSet)",
    "--master-port": "(set from the LeaderWorkerSet)",
    "--headless": "(set on LeaderWorkerSet workers)",
    "--distributed-executor-backend": "(multiprocessing across the LeaderWorkerSet)",
}
_LLAMACPP_OWNED = {
    "-m": "model.repo and engine.quantization",
    "--model": "model.repo and engine.quantization",
    "-mu": "model.repo (the weights volume is the only source)",
    "--model-url": "model.repo (the weights volume is the only source)",
    "-hf": "model.repo (the weights volume is the only source)",
    "-hfr": "model.repo (the weights volume is the only source)",
    "--hf-repo": "model.repo (the weights volume is the only source)",
    "-mm": "engine.languageModelOnly (the vision projector comes from the volume)",
    "--mmproj": "engine.languageModelOnly (the vision projector comes from the volume)",
    "-a": "model.servedModelName",
    "--alias": "model.servedModelName",
    "--host": "(fixed: 0.0.0.0)",
    "--port": "(fixed: 8000, the Service's target)",
    "-ngl": "(the planner offloads: all layers on the GPUs, experts where they fit)",
    "--n-gpu-layers": "(the planner offloads: all layers on the GPUs, experts where they fit)",
    "--gpu-layers": "(the planner offloads: all layers on the GPUs, experts where they fit)",
    "-ot": "(the planner places the MoE experts)",
    "--override-tensor": "(the planner places the MoE experts)",
    "-cmoe": "(the planner places the MoE experts)",
    "--cpu-moe": "(the planner places the MoE experts)",
    "-ncmoe": "(the planner places the MoE experts)",
    "--n-cpu-moe": "(the planner places the MoE experts)",
    "-c": "engine.contextLength",
    "--ctx-size": "engine.contextLength",
    "--jinja": "(always on: K2.5's chat template and tool calls need it)",
    "--metrics": "(always on: the autoscaler reads them)",
    "--api-key": "auth.apiKeySecretRef",
    "--api-key-file": "auth.apiKeySecretRef",
    "-t": "engine.resources (threads follow the CPU request)",
    "--threads": "engine.resources (threads follow the CPU request)",
    "-ctk": "engine.kvCacheDtype",
    "--cache-type-k": "engine.kvCacheDtype",
    "-ctv": "engine.kvCacheDtype",
    "--cache-type-v": "engine.kvCacheDtype",
}

FACTS: dict[Kind, EngineFacts] = {
    "sglang": EngineFacts(
        kind="sglang",
        display="SGLang",
        version="0.5.23",
        container="sglang",
        queue_metric="sglang:num_queue_reqs",
        running_metric="sglang:num_running_reqs",
        health_path="/health",
    ),
    "vllm": EngineFacts(
        kind="vllm",
        display="vLLM",
        version=VLLM_VERSION,
        container="vllm",
        queue_metric="vllm:num_requests_waiting",
        running_metric="vllm:num_requests_running",
        health_path="/health",
        owned_options=_VLLM_OWNED,
        abbreviations=True,
        owned_env={
            "HF_HUB_OFFLINE": "serving pods never reach the Hub: the weights are on the volume",
            "HF_HOME": "a writable path inside the pod",
            "HF_MODULES_CACHE": "a writable path for the checkpoint's remote code",
            "VLLM_CACHE_ROOT": "compiled kernels on the weights volume",
            "VLLM_HOST_IP": "set from the pod IP for multi-node groups",
            "VLLM_ROCM_USE_AITER": "set on AMD",
        },
        normalise_underscores=True,
    ),
    "llamacpp": EngineFacts(
        kind="llamacpp",
        display="llama.cpp",
        version="llama-cpp-python 0.3.36 vendor",
        container="llamacpp",
        # llama-server --metrics: requests_deferred = waiting for a free slot, requests_processing = in a slot
        queue_metric="llamacpp:requests_deferred",
        running_metric="llamacpp:requests_processing",
        health_path="/health",
        owned_options=_LLAMACPP_OWNED,
        owned_env={"HF_HUB_OFFLINE": "serving pods never reach the Hub", "LLAMA_API_KEY": "auth.apiKeySecretRef"},
        # llama.cpp reads every option from LLAMA_ARG_<NAME> as well
        owned_env_prefixes=("LLAMA_ARG_",),
    ),
}

_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def option_problems(kind: Kind, args: list[str]) -> list[str]:
    """Messages for extraArgs items that vLLM or llama.cpp would take as an option the operator sets."""
    facts = FACTS[kind]
    out: list[str] = []
    for item in args:
        if item != item.strip():
            out.append(f"{item!r} has leading or trailing whitespace; remove it")
            continue
        if not item.startswith("-") or _NUMBER.match(item):
            continue
        flag = item.split("=", 1)[0]
        if " " in flag:
            out.append(f"{item!r} holds a flag and a value in one item; give them as two items")
            continue
        name = flag.replace("_", "-") if facts.normalise_underscores and flag.startswith("--") else flag
        full = name if name in facts.owned_options else abbreviated(kind, name)
        if full is not None:
            hint = facts.owned_options[full]
            how = f" {hint}" if hint.startswith("(") else f" from the plan; use {hint}"
            shown = flag if full == name else f"{flag} (= {full})"
            out.append(f"{shown} is set by the operator for {facts.display}{how}")
    return out


MIN_PREFIX = 5  # "--" and 3 characters


def abbreviated(kind: Kind, name: str) -> str | None:
    """The owned long option `name` abbreviates, when the engine's parser takes abbreviations."""
    facts = FACTS[kind]
    if not facts.abbreviations or not name.startswith("--") or len(name) < MIN_PREFIX:
        return None
    return next((o for o in sorted(facts.owned_options) if o.startswith(name) and o.startswith("--")), None)


def env_problem(kind: Kind, name: str) -> str | None:
    """Why engine.env may not set `name` for vLLM or llama.cpp (SGLang: engine/flags.env_problem), or None."""
    facts = FACTS[kind]
    if name in facts.owned_env:
        return f"engine.env: {name} is set by the operator for {facts.display} ({facts.owned_env[name]}); remove it"
    for prefix in facts.owned_env_prefixes:
        if name.startswith(prefix):
            return (
                f"engine.env: {name} sets a {facts.display} option behind the operator's back; give it in "
                "engine.extraArgs instead (options the operator sets are refused there with what to change)"
            )
    return None


def owned_pattern(kind: Kind) -> str:
    """An RE2 pattern matching every extraArgs item that sets an option the operator owns for vLLM or llama.cpp
    (`--flag` or `--flag=value`; vLLM's underscore spellings too), for the CRD's CEL rule."""
    facts = FACTS[kind]
    alternatives = []
    for option in sorted(facts.owned_options):
        assert re.fullmatch(r"-{1,2}[a-z0-9-]+", option), option
        if not option.startswith("--"):
            alternatives.append(option)
            continue
        # the option's characters from position `keep` on are optional when the parser takes abbreviations
        keep = MIN_PREFIX if facts.abbreviations else len(option)
        dash = "[-_]" if facts.normalise_underscores else "-"
        tail = ""
        for ch in reversed(option[keep:]):
            tail = f"({dash if ch == '-' else ch}{tail})?"
        alternatives.append("--" + option[2:keep].replace("-", dash) + tail)
    return "^(" + "|".join(alternatives) + ")(=.*)?$"
