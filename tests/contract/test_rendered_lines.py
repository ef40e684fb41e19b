"""Every SGLang command line the operator can render is accepted by the pinned sglang's own parser.

Covers each example in examples/ and a profile per planner branch (every accelerator, DP attention, expert
parallelism, fp8 KV, speculative decoding, extra args). Each rendered flag must be a registered option string, not
an abbreviation argparse happens to accept.
"""

from __future__ import annotations

from typing import Any

import pytest

from .cases import CASES, engine_containers, plan_of

pytestmark = pytest.mark.contract


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_command_line_parses(case: str, parse_sglang: Any, sglang_option_strings: frozenset[str]) -> None:
    _, p = plan_of(CASES[case])
    for container in engine_containers(CASES[case]):
        rank, command = container.rank, container.command
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
            assert args.attn_dp_size == p.dp and args.dp_size == 1, "attention DP inside one replica, no --dp-size"
        assert args.pp_size == p.pp
        if p.ep > 1:
            assert args.ep_size == p.ep
        assert args.nnodes == p.nodes_per_replica and args.node_rank == rank
        if p.nodes_per_replica > 1:
            assert args.dist_init_addr == "kd-0.kd.ns:20000"


def test_the_committed_flag_table_is_the_pinned_sglangs_own(sglang_prepare_server_args: Any) -> None:
    """engine/sglang_flags.py (what ownership of extraArgs is decided by) equals what the installed sglang builds."""
    import subprocess
    import sys

    from .cases import ROOT

    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen_sglang_flags.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_field_the_operator_renders_is_owned_or_a_declared_tunable(case: str) -> None:
    from kimi_operator.engine import flags

    _, _p = plan_of(CASES[case])
    user = set(CASES[case].get("engine", {}).get("extraArgs", []))
    for container in engine_containers(CASES[case]):
        rendered = [a for a in container.command[3:] if a.startswith("--") and a not in user]
        for arg in rendered:
            dest = flags.resolve(arg.split("=", 1)[0])[0]
            assert dest in flags.OWNED_DESTS or dest in flags.TUNABLE_DESTS, f"{case}: {arg} -> {dest}"
