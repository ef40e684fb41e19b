"""Every engine command line the operator can render: each example in examples/ and a profile per planner branch.

`engine_containers(spec)` renders a spec the way the operator applies it (`render.pin` with a resolved commit, the
serving stage) and returns, for every engine container, its node rank, command (LeaderWorkerSet variables expanded
as the kubelet would) and environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kimi_operator import catalog, planner, render
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DRAFT_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"

PROFILES: dict[str, dict[str, Any]] = {
    **{
        f"accelerator-{k}": {"topology": {"accelerator": k}}
        for k, a in catalog.ACCELERATORS.items()
        if not a.budget_only
    },
    "dp-attention": {"engine": {"dataParallelAttention": True}},
    "expert-parallel": {"engine": {"expertParallel": True}},
    "fp8-kv-128k": {"engine": {"kvCacheDtype": "fp8_e4m3", "contextLength": 131072}},
    "mem-fraction-90": {"engine": {"memFractionStaticPercent": 90}},
    "eagle3-default-draft": {"engine": {"speculative": {}}},
    "eagle3-h200-128-requests": {"engine": {"speculative": {"maxRunningRequests": 128}}},
    "eagle3-older-draft": {"engine": {"speculative": {"draftRepo": "lightseekorg/kimi-k2.5-eagle3"}}},
    "extra-args": {"engine": {"extraArgs": ["--chunked-prefill-size", "8192", "--max-running-requests", "64"]}},
    "k2-thinking": {"model": {"repo": "moonshotai/Kimi-K2-Thinking"}},
    "k2-instruct-b300": {"model": {"repo": "moonshotai/Kimi-K2-Instruct"}, "topology": {"accelerator": "B300"}},
    "h100-auto-2-nodes-pipeline": {"topology": {"accelerator": "H100"}},
    "h100-2-nodes-tp16-rdma": {
        "topology": {"accelerator": "H100", "network": {"hostNetwork": True, "rdmaResource": "rdma/ib"}},
    },
    "h100-2-nodes-tp16-no-rdma": {"topology": {"accelerator": "H100"}, "engine": {"pipelineParallel": False}},
    "h200-2-nodes": {"topology": {"accelerator": "H200", "nodesPerReplica": 2}},
    "h200-4-nodes-dp-attention": {
        "topology": {"accelerator": "H200", "nodesPerReplica": 4, "network": {"rdmaResource": "rdma/ib"}},
        "engine": {"dataParallelAttention": True},
    },
    "h20-2-nodes-fp8": {
        "topology": {"accelerator": "H20", "nodesPerReplica": 2},
        "engine": {"kvCacheDtype": "fp8_e4m3"},
    },
    "mi300x-whole-node": {"topology": {"accelerator": "MI300X", "gpusPerReplica": 8}},
    "mi325x-dp-attention": {"topology": {"accelerator": "MI325X"}, "engine": {"dataParallelAttention": True}},
    "k2-instruct-h200-2-nodes": {"model": {"repo": "moonshotai/Kimi-K2-Instruct"}},
}

# What the LeaderWorkerSet webhook injects and the kubelet expands in $(VAR) references.
LWS_ENV = {"LWS_LEADER_ADDRESS": "kd-0.kd.ns", "LWS_GROUP_SIZE": "", "LWS_WORKER_INDEX": ""}


def example_specs() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "KimiDeployment":
                out[f"example-{doc['metadata']['name']}"] = doc.get("spec") or {}
    return out


def _kind(spec: dict[str, Any]) -> str:
    return str((spec.get("engine") or {}).get("kind", "sglang"))


# SGLang's command lines (tests/contract/test_rendered_lines.py, test_launch.py)
CASES = {name: spec for name, spec in {**example_specs(), **PROFILES}.items() if _kind(spec) == "sglang"}
# vLLM's (tests/contract/test_vllm_launch.py): every vLLM example and the planner branches vLLM shares with SGLang
VLLM_PROFILES: dict[str, dict[str, Any]] = {
    "vllm-h200": {"engine": {"kind": "vllm"}},
    "vllm-b200": {"engine": {"kind": "vllm"}, "topology": {"accelerator": "B200"}},
    "vllm-h100-tp8-pp2": {"engine": {"kind": "vllm"}, "topology": {"accelerator": "H100"}},
    "vllm-h200-eagle3": {"engine": {"kind": "vllm", "speculative": {}}},
    "vllm-h200-128k-language-only": {
        "engine": {"kind": "vllm", "contextLength": 131072, "languageModelOnly": True},
    },
    "vllm-h200-fp8-kv": {"engine": {"kind": "vllm", "kvCacheDtype": "fp8_e4m3"}},
    "vllm-h200-expert-parallel": {"engine": {"kind": "vllm", "expertParallel": True}},
    "vllm-k2-thinking": {"engine": {"kind": "vllm"}, "model": {"repo": "moonshotai/Kimi-K2-Thinking"}},
}
VLLM_CASES = {
    **{name: spec for name, spec in example_specs().items() if _kind(spec) == "vllm"},
    **VLLM_PROFILES,
}


@dataclass(frozen=True)
class Container:
    rank: int
    command: list[str]
    env: dict[str, str]


def _expand(command: list[str], env: dict[str, str]) -> list[str]:
    out = []
    for arg in command:
        for key, value in env.items():
            arg = arg.replace(f"$({key})", value)
        assert "$(" not in arg, f"unexpanded variable in {arg}"
        out.append(arg)
    return out


def plan_of(spec_dict: dict[str, Any]) -> tuple[KimiDeploymentSpec, planner.Plan]:
    spec = KimiDeploymentSpec.model_validate(spec_dict)
    p = render.pin(planner.plan(spec), spec, OperatorConfig(), commit=COMMIT, draft_commit=DRAFT_COMMIT)
    return spec, p


def engine_containers(spec_dict: dict[str, Any]) -> list[Container]:
    """Every engine container of the serving stage, as the operator applies it."""
    spec, p = plan_of(spec_dict)
    owner = render.Owner("kd", "ns", "uid")
    out: list[Container] = []
    for m in render.render_all(owner, spec, p, OperatorConfig(), weights_ready=True):
        templates: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        component = m["metadata"]["labels"].get(render.COMPONENT_LABEL)
        if m["kind"] == "Deployment" and component == "server":  # not the gateway's Deployment
            templates.append((0, m["spec"]["template"], {}))
        if m["kind"] == "LeaderWorkerSet":
            lwt = m["spec"]["leaderWorkerTemplate"]
            size = lwt["size"]
            for rank in range(size):
                template = lwt["leaderTemplate"] if rank == 0 else lwt["workerTemplate"]
                templates.append(
                    (rank, template, {**LWS_ENV, "LWS_GROUP_SIZE": str(size), "LWS_WORKER_INDEX": str(rank)})
                )
        for rank, template, lws in templates:
            for c in template["spec"]["containers"]:
                env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
                out.append(Container(rank, _expand(c["command"], lws), env))
    assert out, "no engine container rendered"
    return out
