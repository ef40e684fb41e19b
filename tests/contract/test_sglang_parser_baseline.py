"""Baseline: the parser under test is sglang 0.5.23's real one, and it is strict.

These pin down, with hand-written command lines, the facts the operator's rendering relies on; the tests of
rendered command lines build on the same `parse_sglang` fixture.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from .conftest import SGLANG_VERSION, ParseSGLang, SGLangParseError

pytestmark = pytest.mark.contract

LOADER_CONFIG = json.dumps({"enable_multithread_load": True, "num_threads": 64})


def k25_tp8(model_dir: Path) -> list[str]:
    """The documented single-node 8xH200 K2.5 launch (shared/reference/sglang-kimi.md)."""
    return [
        "--model-path",
        str(model_dir),
        "--tp",
        "8",
        "--trust-remote-code",
        "--tool-call-parser",
        "kimi_k2",
        "--reasoning-parser",
        "kimi_k2",
        "--host",
        "0.0.0.0",
        "--port",
        "30000",
        "--served-model-name",
        "kimi-k2.5",
        "--enable-metrics",
        "--context-length",
        "131072",
        "--mem-fraction-static",
        "0.85",
        "--model-loader-extra-config",
        LOADER_CONFIG,
    ]


def test_the_parser_is_the_pinned_sglang(parse_sglang: ParseSGLang) -> None:
    parse_sglang(["--model-path", "/m"])
    import sglang
    from sglang.srt import server_args

    assert sglang.__version__ == SGLANG_VERSION
    assert Path(server_args.__file__).parts[-4:] == ("site-packages", "sglang", "srt", "server_args.py")
    # Only torch/triton may be import stubs (tests/contract/torch_stub.py); the parser's own modules are real.
    for name in ("msgspec", "sglang.srt.arg_groups.fields.parallel", "sglang.srt.function_call.parser_names"):
        assert Path(sys.modules[name].__file__ or "").is_file(), name


def test_k25_tp8_line_parses_and_the_values_come_back(parse_sglang: ParseSGLang, kimi_k25_model_dir: Path) -> None:
    args = parse_sglang(k25_tp8(kimi_k25_model_dir))
    assert args.model_path == str(kimi_k25_model_dir)
    assert args.tp_size == 8
    assert args.trust_remote_code is True
    assert args.tool_call_parser == "kimi_k2"
    assert args.reasoning_parser == "kimi_k2"
    assert (args.host, args.port) == ("0.0.0.0", 30000)
    assert args.served_model_name == "kimi-k2.5"
    assert args.enable_metrics is True
    assert args.enable_metrics_for_all_schedulers is False
    assert args.context_length == 131072
    assert args.mem_fraction_static == pytest.approx(0.85)
    # Kept as the JSON string; sglang decodes it when the loader starts.
    assert json.loads(args.model_loader_extra_config) == {"enable_multithread_load": True, "num_threads": 64}
    assert (args.ep_size, args.dp_size, args.attn_dp_size, args.pp_size, args.nnodes) == (1, 1, 1, 1, 1)
    assert args.launch_command == " ".join(k25_tp8(kimi_k25_model_dir))


def test_defaults_the_operator_relies_on(parse_sglang: ParseSGLang) -> None:
    args = parse_sglang(["--model-path", "/m"])
    assert (args.host, args.port) == ("127.0.0.1", 30000)
    assert args.tp_size == 1
    assert args.load_format == "auto"
    assert args.log_level == "info"
    assert args.watchdog_timeout == 300
    assert args.model_loader_extra_config == "{}"
    assert args.mem_fraction_static is None and args.context_length is None  # decided at launch


def test_tp_and_dp_are_abbreviations_not_registered_flags(
    parse_sglang: ParseSGLang, sglang_option_strings: frozenset[str]
) -> None:
    # 0.5.23 registers --tp-size/--tensor-parallel-size and --dp-size/--data-parallel-size only. `--tp` and
    # `--dp` parse through argparse's unique-prefix matching, which breaks the day sglang adds another flag
    # starting with the same letters (it has already happened to --cuda-graph-max-bs, below).
    assert {"--tp-size", "--tensor-parallel-size", "--dp-size", "--data-parallel-size"} <= sglang_option_strings
    assert not {"--tp", "--dp"} & sglang_option_strings
    assert {"--ep", "--ep-size", "--expert-parallel-size"} <= sglang_option_strings
    assert parse_sglang(["--model-path", "/m", "--tp", "4"]).tp_size == 4
    assert parse_sglang(["--model-path", "/m", "--tp-size", "4"]).tp_size == 4
    assert parse_sglang(["--model-path", "/m", "--ep", "4"]).ep_size == 4


def test_cuda_graph_max_bs_is_ambiguous_in_0_5_23(
    parse_sglang: ParseSGLang, sglang_option_strings: frozenset[str]
) -> None:
    assert "--cuda-graph-max-bs" not in sglang_option_strings
    with pytest.raises(SGLangParseError, match="ambiguous option: --cuda-graph-max-bs"):
        parse_sglang(["--model-path", "/m", "--cuda-graph-max-bs", "128"])
    assert parse_sglang(["--model-path", "/m", "--cuda-graph-max-bs-decode", "128"]).cuda_graph_max_bs_decode == 128


def test_multi_node_line_parses(parse_sglang: ParseSGLang, kimi_k25_model_dir: Path) -> None:
    args = parse_sglang(
        [
            *k25_tp8(kimi_k25_model_dir),
            "--dist-init-addr",
            "10.0.0.1:20000",
            "--nnodes",
            "2",
            "--node-rank",
            "0",
            "--tp",
            "16",
            "--ep-size",
            "16",
        ]
    )
    assert (args.dist_init_addr, args.nnodes, args.node_rank) == ("10.0.0.1:20000", 2, 0)
    assert (args.tp_size, args.ep_size) == (16, 16)  # the later --tp wins, as with any argparse flag


def test_enable_ep_moe_is_rejected(parse_sglang: ParseSGLang, kimi_k25_model_dir: Path) -> None:
    with pytest.raises(SGLangParseError, match=r"unrecognized arguments: --enable-ep-moe"):
        parse_sglang([*k25_tp8(kimi_k25_model_dir), "--enable-ep-moe"])


def test_unknown_flag_is_rejected(parse_sglang: ParseSGLang, kimi_k25_model_dir: Path) -> None:
    with pytest.raises(SGLangParseError, match=r"unrecognized arguments: --no-such-flag 1"):
        parse_sglang([*k25_tp8(kimi_k25_model_dir), "--no-such-flag", "1"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tp", "eight"], r"argument --tp-size/--tensor-parallel-size: invalid int value: 'eight'"),
        (["--tool-call-parser", "kimi"], r"argument --tool-call-parser: invalid choice: 'kimi'"),
        (["--kv-cache-dtype", "fp8"], r"argument --kv-cache-dtype: invalid choice: 'fp8'"),
        (["--mem-fraction-static", "85%"], r"argument --mem-fraction-static: invalid float value"),
        (["--port"], r"argument --port: expected one argument"),
        (["--log-level", "loud"], r"AttributeError: .*LOUD"),
    ],
)
def test_bad_values_are_rejected(parse_sglang: ParseSGLang, extra: list[str], message: str) -> None:
    with pytest.raises(SGLangParseError, match=message):
        parse_sglang(["--model-path", "/m", *extra])


def test_context_length_accepts_si_and_iec_suffixes(parse_sglang: ParseSGLang) -> None:
    assert parse_sglang(["--model-path", "/m", "--context-length", "128k"]).context_length == 128000
    assert parse_sglang(["--model-path", "/m", "--context-length", "256Ki"]).context_length == 262144


def test_dp_attention_parses_and_is_deprecated(
    parse_sglang: ParseSGLang, kimi_k25_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        args = parse_sglang(
            [*k25_tp8(kimi_k25_model_dir), "--dp", "8", "--enable-dp-attention", "--enable-metrics-for-all-schedulers"]
        )
    assert (args.tp_size, args.dp_size, args.enable_dp_attention) == (8, 8, True)
    assert args.attn_dp_size == 1  # launch-time resolution moves dp_size into attn_dp_size
    assert args.enable_metrics_for_all_schedulers is True
    warnings = [record.getMessage() for record in caplog.records if "--enable-dp-attention" in record.getMessage()]
    assert len(warnings) == 1
    assert "'--enable-dp-attention' is deprecated and will be removed in a future release." in warnings[0]
    assert "Use '--attn-dp-size <dp-size>' instead." in warnings[0]
    # The replacement spelling.
    assert parse_sglang([*k25_tp8(kimi_k25_model_dir), "--attn-dp-size", "8"]).attn_dp_size == 8


def test_eagle3_speculative_flags_parse(
    parse_sglang: ParseSGLang, kimi_k25_model_dir: Path, kimi_k25_eagle3_dir: Path
) -> None:
    args = parse_sglang(
        [
            *k25_tp8(kimi_k25_model_dir),
            "--speculative-algorithm",
            "EAGLE3",
            "--speculative-num-steps",
            "3",
            "--speculative-eagle-topk",
            "1",
            "--speculative-num-draft-tokens",
            "4",
            "--speculative-draft-model-path",
            str(kimi_k25_eagle3_dir),
        ]
    )
    assert args.speculative_algorithm == "EAGLE3"
    assert (args.speculative_num_steps, args.speculative_eagle_topk, args.speculative_num_draft_tokens) == (3, 1, 4)
    assert args.speculative_draft_model_path == str(kimi_k25_eagle3_dir)


def test_the_model_path_is_not_read_at_parse_time(parse_sglang: ParseSGLang, tmp_path: Path) -> None:
    # Checkpoint checks happen at launch (ServerArgs.resolve_once), outside this contract.
    missing = tmp_path / "does-not-exist"
    assert parse_sglang(["--model-path", str(missing), "--tp", "8"]).model_path == str(missing)


def test_other_flags_the_operator_may_render(parse_sglang: ParseSGLang) -> None:
    args = parse_sglang(
        [
            "--model-path",
            "/m",
            "--kv-cache-dtype",
            "fp8_e4m3",
            "--moe-a2a-backend",
            "deepep",
            "--deepep-mode",
            "low_latency",
            "--watchdog-timeout",
            "1800",
            "--chunked-prefill-size",
            "8192",
            "--cuda-graph-max-bs-decode",
            "256",
            "--max-running-requests",
            "512",
            "--skip-server-warmup",
            "--api-key",
            "secret",
            "--load-format",
            "safetensors",
            "--log-level",
            "warning",
        ]
    )
    assert (args.kv_cache_dtype, args.moe_a2a_backend, args.deepep_mode) == ("fp8_e4m3", "deepep", "low_latency")
    assert args.watchdog_timeout == 1800.0
    assert (args.chunked_prefill_size, args.cuda_graph_max_bs_decode, args.max_running_requests) == (8192, 256, 512)
    assert (args.skip_server_warmup, args.api_key, args.load_format) == (True, "secret", "safetensors")
    assert args.log_level == "warning"


@pytest.mark.parametrize(
    "extra",
    [
        ["--model-loader-extra-config", "{not json"],
        ["--tp", "3", "--ep-size", "7"],
        ["--mem-fraction-static", "1.7"],
        ["--speculative-algorithm", "NO-SUCH-ALGORITHM"],
        ["--nnodes", "2", "--node-rank", "5"],
        ["--dist-init-addr", "not-an-address"],
    ],
)
def test_parse_time_does_not_check_semantics(parse_sglang: ParseSGLang, extra: list[str]) -> None:
    """What this contract cannot catch: sglang checks these only at launch (ServerArgs.resolve_once).

    The operator's own tests have to hold these invariants; a passing parse proves spelling, types and choices.
    """
    parse_sglang(["--model-path", "/m", *extra])
