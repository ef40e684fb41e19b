"""The pinned sglang's own command-line parser, for the contract tests.

`parse_sglang(argv)` runs `sglang.srt.server_args.prepare_server_args(argv)` from sglang 0.5.23 (installed by
`make venv` from hack/contract-requirements.txt) and returns the `ServerArgs` it builds, or raises
`SGLangParseError` carrying sglang's own message.

What that exercises, and what it does not (read from sglang 0.5.23's server_args.py):
- `prepare_server_args` = argparse over the real 532 option definitions (unknown flags, ambiguous
  abbreviations, value types such as int/float/"128k", choices, deprecated-flag actions, `--config` YAML
  merging), then `logging.basicConfig(level=getattr(logging, log_level.upper()))` (rejects an unknown
  `--log-level`), then `ServerArgs.from_cli_args` (a msgspec Struct; no type checks) and redaction of
  `--watermark-config` in the recorded launch command.
- In 0.5.23 `ServerArgs.__post_init__` is a no-op. All semantic validation (tp/ep/dp divisibility, the
  `--enable-dp-attention` -> `--attn-dp-size` translation, speculative-decoding checks, model config from
  `config.json`, GPU memory and platform checks) lives in `ServerArgs.resolve_once()`, which the launcher
  calls after `prepare_server_args`. It needs the checkpoint's remote code, transformers and a real GPU
  platform, so it is not part of this contract.
- Nothing here reads the model path or touches the network.

torch and triton are replaced by import stubs when not installed (see torch_stub.py for why and why that is
sound); every other module sglang imports is the real package.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from . import torch_stub

SGLANG_VERSION = "0.5.23"

ParseSGLang = Callable[[list[str]], Any]

# A minimal but faithful moonshotai/Kimi-K2.5 config.json: the fields sglang's model-config code reads for the
# text model (DeepseekV3 architecture, MLA, MoE). prepare_server_args itself never opens it; it is here so the
# command lines under test name a real local directory and never a hub id.
KIMI_K25_CONFIG: dict[str, Any] = {
    "architectures": ["KimiK25ForConditionalGeneration"],
    "model_type": "kimi_k25",
    "media_placeholder_token_id": 163605,
    "text_config": {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "kimi_k2",
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "moe_intermediate_size": 2048,
        "num_hidden_layers": 61,
        "first_k_dense_replace": 1,
        "num_attention_heads": 64,
        "num_key_value_heads": 64,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "n_routed_experts": 384,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "vocab_size": 163840,
        "max_position_embeddings": 262144,
        "torch_dtype": "bfloat16",
    },
}
# The EAGLE3 draft for K2.5 (sglang.srt.models.kimi_k25_eagle3 registers this architecture).
KIMI_K25_EAGLE3_CONFIG: dict[str, Any] = {"architectures": ["Eagle3DeepseekV2ForCausalLM"]}


class SGLangParseError(AssertionError):
    """sglang's parser refused a command line; the message is sglang's own."""


@contextlib.contextmanager
def _keep_root_logging() -> Iterator[None]:
    """Stop prepare_server_args' `logging.basicConfig(force=True)` from replacing pytest's log handlers.

    The level is still checked the way basicConfig would (`Logger.setLevel`), so a bad `--log-level` fails.
    """

    def check_level_only(**kwargs: Any) -> None:
        if "level" in kwargs:
            logging.Logger("sglang-contract-level-check").setLevel(kwargs["level"])

    with mock.patch.object(logging, "basicConfig", check_level_only):
        yield


def _import_prepare_server_args() -> Callable[[list[str]], Any]:
    torch_stub.install()
    try:
        from sglang.srt.server_args import prepare_server_args
        from sglang.version import __version__
    except ImportError as exc:  # pragma: no cover - only without `make venv`
        pytest.fail(f"sglang's parser is not importable ({exc}); run `make venv` (hack/contract-requirements.txt)")
    assert __version__ == SGLANG_VERSION, f"contract pinned to sglang {SGLANG_VERSION}, found {__version__}"
    parse: Callable[[list[str]], Any] = prepare_server_args
    return parse


def exit_message(stderr: str, exc: SystemExit) -> str:
    """What sglang said before it exited: argparse's "...: error: ..." line, else its last line on stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if ": error: " in line), lines[-1] if lines else str(exc.code))


def parse_with_sglang(prepare_server_args: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Run sglang's prepare_server_args on argv; raise SGLangParseError with sglang's message on refusal."""
    assert all(isinstance(item, str) for item in argv), f"argv items must be str: {argv!r}"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), _keep_root_logging():
            return prepare_server_args(list(argv))
    except SystemExit as exc:  # argparse's parser.error(): usage + "sglang serve: error: ..." on stderr
        raise SGLangParseError(f"{exit_message(stderr.getvalue(), exc)} (exit {exc.code}); argv: {argv!r}") from None
    except Exception as exc:
        raise SGLangParseError(f"{type(exc).__name__}: {exc}; argv: {argv!r}") from exc


@pytest.fixture(scope="session")
def sglang_prepare_server_args() -> Callable[[list[str]], Any]:
    """The pinned sglang's `prepare_server_args` itself."""
    return _import_prepare_server_args()


@pytest.fixture(scope="session")
def parse_sglang(sglang_prepare_server_args: Callable[[list[str]], Any]) -> ParseSGLang:
    """`parse_sglang(argv) -> ServerArgs`; raises SGLangParseError (an AssertionError) with sglang's message."""

    def parse(argv: list[str]) -> Any:
        return parse_with_sglang(sglang_prepare_server_args, argv)

    return parse


@pytest.fixture(scope="session")
def sglang_option_strings(sglang_prepare_server_args: Callable[[list[str]], Any]) -> frozenset[str]:
    """Every option string sglang's parser registers, e.g. to check a rendered flag is not an abbreviation."""
    import argparse

    server_args = sys.modules[sglang_prepare_server_args.__module__]  # sglang.srt.server_args
    parser = argparse.ArgumentParser(prog="sglang serve")  # as prepare_server_args builds it
    server_args.ServerArgs.add_cli_args(parser)
    return frozenset(option for action in parser._actions for option in action.option_strings)


@pytest.fixture(scope="session")
def kimi_k25_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local directory standing in for the Kimi K2.5 checkpoint (config.json only)."""
    path = tmp_path_factory.mktemp("models") / "moonshotai" / "Kimi-K2.5"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(KIMI_K25_CONFIG, indent=2))
    return path


@pytest.fixture(scope="session")
def kimi_k25_eagle3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local directory standing in for the K2.5 EAGLE3 draft checkpoint (config.json only)."""
    path = tmp_path_factory.mktemp("models") / "lightseekorg" / "kimi-k2.5-eagle3"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(KIMI_K25_EAGLE3_CONFIG, indent=2))
    return path
