"""Every SGLang command line the operator can render is accepted by the pinned sglang's own parser.

Covers each example in examples/ and a profile per planner branch (every accelerator, DP attention, expert
parallelism, fp8 KV, speculative decoding, extra args). Each rendered flag must be a registered option string, not
an abbreviation argparse happens to accept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kimi_operator import catalog, planner, render
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.config import OperatorConfig

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]

PROFILES: dict[str, dict[str, Any]] = {
    **{f"accelerator-{a}": {"topology": {"accelerator": a}} for a in catalog.ACCELERATORS},
    "dp-attention": {"engine": {"dataParallelAttention": True}},
    "expert-parallel": {"engine": {"expertParallel": True}},
    "fp8-kv-128k": {"engine": {"kvCacheDtype": "fp8_e4m3", "contextLength": 131072}},
    "mem-fraction-90": {"engine": {"memFractionStaticPercent": 90}},
    "eagle3": {"engine": {"speculative": {"draftRepo": "lightseekorg/kimi-k2.5-eagle3"}}},
    "extra-args": {"engine": {"extraArgs": ["--chunked-prefill-size", "8192", "--max-running-requests", "64"]}},
    "k2-thinking": {"model": {"repo": "moonshotai/Kimi-K2-Thinking"}},
    "k2-instruct-b300": {"model": {"repo": "moonshotai/Kimi-K2-Instruct"}, "topology": {"accelerator": "B300"}},
    "h100-auto-2-nodes": {"topology": {"accelerator": "H100"}},
    "h200-2-nodes": {"topology": {"accelerator": "H200", "nodesPerReplica": 2}},
    "h200-4-nodes-dp-attention": {
        "topology": {"accelerator": "H200", "nodesPerReplica": 4},
        "engine": {"dataParallelAttention": True},
    },
    "h20-2-nodes-fp8": {
        "topology": {"accelerator": "H20", "nodesPerReplica": 2},
        "engine": {"kvCacheDtype": "fp8_e4m3"},
    },
    "h100-rdma-hostnetwork": {
        "topology": {"accelerator": "H100", "network": {"hostNetwork": True, "rdmaResource": "rdma/ib"}},
    },
    "k2-instruct-h200-2-nodes": {"model": {"repo": "moonshotai/Kimi-K2-Instruct"}},
}

# What the LeaderWorkerSet webhook injects and the kubelet expands in $(VAR) references.
LWS_ENV = {"LWS_LEADER_ADDRESS": "kd-0.kd.ns", "LWS_GROUP_SIZE": "", "LWS_WORKER_INDEX": ""}


def _example_specs() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "KimiDeployment":
                out[f"example-{doc['metadata']['name']}"] = doc.get("spec") or {}
    return out


CASES = {**_example_specs(), **PROFILES}


def _expand(command: list[str], env: dict[str, str]) -> list[str]:
    out = []
    for arg in command:
        for key, value in env.items():
            arg = arg.replace(f"$({key})", value)
        assert "$(" not in arg, f"unexpanded variable in {arg}"
        out.append(arg)
    return out


def _commands(spec_dict: dict[str, Any]) -> list[tuple[int, list[str]]]:
    """(node rank, command) for every engine container, with LWS variables expanded as the kubelet would."""
    spec = KimiDeploymentSpec.model_validate(spec_dict)
    p = planner.plan(spec)
    owner = render.Owner("kd", "ns", "uid")
    cmds: list[tuple[int, list[str]]] = []
    for m in render.render_all(owner, spec, p, OperatorConfig(), weights_ready=True):
        if m["kind"] == "Deployment":
            cmds += [(0, c["command"]) for c in m["spec"]["template"]["spec"]["containers"]]
        if m["kind"] == "LeaderWorkerSet":
            lwt = m["spec"]["leaderWorkerTemplate"]
            size = lwt["size"]
            for rank in range(size):
                template = lwt["leaderTemplate"] if rank == 0 else lwt["workerTemplate"]
                env = {**LWS_ENV, "LWS_GROUP_SIZE": str(size), "LWS_WORKER_INDEX": str(rank)}
                cmds += [(rank, _expand(c["command"], env)) for c in template["spec"]["containers"]]
    assert cmds, "no engine container rendered"
    return cmds


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_command_line_parses(case: str, parse_sglang: Any, sglang_option_strings: frozenset[str]) -> None:
    p = planner.plan(KimiDeploymentSpec.model_validate(CASES[case]))
    for rank, command in _commands(CASES[case]):
        assert command[:3] == ["python3", "-m", "sglang.launch_server"]
        argv = command[3:]
        flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
        unknown = [f for f in flags if f not in sglang_option_strings]
        assert not unknown, f"{case}: flags that are not registered sglang options: {unknown}"
        args = parse_sglang(argv)
        assert args.tp_size == p.tp
        assert args.port == 8000 and args.host == "0.0.0.0"
        assert args.tool_call_parser == "kimi_k2" and args.reasoning_parser == "kimi_k2"
        assert args.enable_metrics is True and args.trust_remote_code is True
        assert args.context_length == p.context_length
        if p.data_parallel_attention:
            assert args.dp_size == p.dp and args.attn_dp_size == p.dp
        if p.ep > 1:
            assert args.ep_size == p.ep
        assert args.nnodes == p.nodes_per_replica and args.node_rank == rank
        if p.nodes_per_replica > 1:
            assert args.dist_init_addr == "kd-0.kd.ns:20000"
