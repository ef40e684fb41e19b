"""The vLLM side of the vLLM contract check: runs in .venv-vllm, started by tests/contract/vllm_launch.py.

    python -m tests.contract.vllm_worker RESPONSE_FD      (requests: JSON lines on stdin; replies: JSON lines on FD)

Each command line runs through vLLM's real entry point, `vllm.entrypoints.cli.main.main()` with
`sys.argv = ["vllm", "serve", *argv]`, unchanged: its parser (`make_arg_parser`: FrontendArgs + AsyncEngineArgs,
FlexibleArgumentParser's `--config`/JSON/underscore handling), `validate_parsed_serve_args`, the `serve`
subcommand's API-server/headless/LB decisions, `setup_server` (`validate_api_server_args`: tool and reasoning parser
names) and `AsyncEngineArgs.from_cli_args(args).create_engine_config(...)`: every engine config (model config from
the checkpoint directory with vLLM's own config classes, the model-registry inspection in its subprocess,
multimodal processor info, tokenizer-derived reasoning tokens, parallel/world-size vs GPUs, speculative decoding,
quantization, scheduler, cache, compilation) and VllmConfig's cross-checks. Exactly two things are intercepted:
- the listening socket is not bound (`launcher.create_server_socket` / `create_server_unix_socket`), so lines
  naming the same port can be checked side by side;
- the run stops right after `create_engine_config` returns, before engine processes or workers start (those need
  the GPUs), and reports facts from the VllmConfig it returned.

The imports happen once (a warm-up `vllm --version` in this process); every line then runs in its own forked
child, so no state one line leaves in vLLM's module globals or caches reaches another.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import vllm_stubs

LINE_TIMEOUT_S = 300.0


class EngineConfigReached(BaseException):
    """Raised right after vLLM's create_engine_config returns; BaseException so vLLM's `except Exception` passes it."""

    def __init__(self, config: Any) -> None:
        super().__init__("engine config created")
        self.config = config


def _plain(value: Any) -> Any:
    """JSON-safe: primitives as they are, containers element-wise, anything else as its str()."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


def facts(config: Any, args: argparse.Namespace | None) -> dict[str, Any]:
    """The resolved values the operator's plans depend on, read from vLLM's VllmConfig (and the parsed namespace)."""
    parallel, model, scheduler, cache = (
        config.parallel_config,
        config.model_config,
        config.scheduler_config,
        config.cache_config,
    )
    spec = config.speculative_config
    multimodal = model.multimodal_config
    result: dict[str, Any] = {
        "tensor_parallel_size": parallel.tensor_parallel_size,
        "pipeline_parallel_size": parallel.pipeline_parallel_size,
        "data_parallel_size": parallel.data_parallel_size,
        "world_size": parallel.world_size,
        "enable_expert_parallel": parallel.enable_expert_parallel,
        "nnodes": parallel.nnodes,
        "node_rank": parallel.node_rank,
        "distributed_executor_backend": parallel.distributed_executor_backend,
        "model": model.model,
        "served_model_name": model.served_model_name,
        "architecture": model.architecture,
        "max_model_len": model.max_model_len,
        "dtype": model.dtype,
        "quantization": model.quantization,
        "multimodal": model.is_multimodal_model,
        "language_model_only": None if multimodal is None else multimodal.language_model_only,
        "mm_encoder_tp_mode": None if multimodal is None else multimodal.mm_encoder_tp_mode,
        "reasoning_parser": config.structured_outputs_config.reasoning_parser or None,
        "speculative_method": None if spec is None else spec.method,
        "num_speculative_tokens": None if spec is None else spec.num_speculative_tokens,
        "draft_model": None if spec is None else spec.model,
        "draft_architecture": None
        if spec is None or spec.draft_model_config is None
        else (spec.draft_model_config.architecture),
        "max_num_seqs": scheduler.max_num_seqs,
        "max_num_batched_tokens": scheduler.max_num_batched_tokens,
        "kv_cache_dtype": cache.cache_dtype,
    }
    if args is not None:
        result |= {
            "tool_call_parser": args.tool_call_parser,
            "enable_auto_tool_choice": args.enable_auto_tool_choice,
            "headless": args.headless,
            "api_server_count": args.api_server_count,
            "host": args.host,
            "port": args.port,
        }
    return {key: _plain(value) for key, value in result.items()}


def exit_message(stderr: str, code: object) -> str:
    """What vLLM said before it exited: argparse's "...: error: ..." line, else its last line on stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if ": error: " in line), lines[-1] if lines else f"exit {code}")


@dataclass
class _Hooks:
    """The two interceptions (module docstring) and a record of the namespace vLLM's top-level parser returned."""

    args: argparse.Namespace | None = None

    def install(self) -> None:
        arg_utils: Any = importlib.import_module("vllm.engine.arg_utils")
        launcher: Any = importlib.import_module("vllm.entrypoints.launchers.launcher")
        argparse_utils: Any = importlib.import_module("vllm.utils.argparse_utils")
        create_engine_config = arg_utils.EngineArgs.create_engine_config
        parse_args = argparse_utils.FlexibleArgumentParser.parse_args
        hooks = self

        def stop_after(engine_args: Any, *args: Any, **kwargs: Any) -> Any:
            raise EngineConfigReached(create_engine_config(engine_args, *args, **kwargs))

        def record(parser: Any, *args: Any, **kwargs: Any) -> Any:
            namespace = parse_args(parser, *args, **kwargs)
            # main()'s top-level `vllm` parser parses first; later parses (log_non_default_args parses [] for the
            # defaults) must not replace it.
            if hooks.args is None and parser.prog == "vllm":
                hooks.args = namespace
            return namespace

        def unbound(*args: Any, **kwargs: Any) -> socket.socket:
            return socket.socket()

        arg_utils.EngineArgs.create_engine_config = stop_after
        argparse_utils.FlexibleArgumentParser.parse_args = record
        launcher.create_server_socket = unbound
        launcher.create_server_unix_socket = unbound


def check_line(cli_main: Callable[[], None], argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `vllm serve *argv` up to its engine config (in this process: call it in a fresh child)."""
    os.environ.update(env)
    hooks = _Hooks()
    hooks.install()
    sys.argv = ["vllm", "serve", *argv]
    stderr = io.StringIO()
    with vllm_stubs.recording(sys._getframe()) as stub_uses:
        try:
            with contextlib.redirect_stderr(stderr):
                cli_main()
        except EngineConfigReached as reached:
            return {"ok": True, "facts": facts(reached.config, hooks.args), "stub_uses": list(stub_uses)}
        except SystemExit as exc:
            return {"ok": False, "error": exit_message(stderr.getvalue(), exc.code), "stub_uses": list(stub_uses)}
        except Exception as exc:
            traceback.print_exc()
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "stub_uses": list(stub_uses)}
        finally:
            sys.__stderr__.write(stderr.getvalue())  # type: ignore[union-attr]
    return {"ok": False, "error": "vllm serve returned before it created an engine config", "stub_uses": []}


def _run_children(
    cli_main: Callable[[], None], lines: list[list[str]], env: dict[str, str], jobs: int
) -> list[dict[str, Any]]:
    """check_line for each line in a forked child, `jobs` at a time; results in the order of `lines`."""
    results: list[dict[str, Any] | None] = [None] * len(lines)
    running: dict[int, tuple[int, Path, float]] = {}
    pending = list(enumerate(lines))
    with tempfile.TemporaryDirectory(prefix="vllm-contract-") as tmp:
        while pending or running:
            while pending and len(running) < jobs:
                index, argv = pending.pop(0)
                out = Path(tmp) / f"{index}.json"
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:  # the child: one `vllm serve`, then exit without running the parent's cleanups
                    code = 0
                    try:
                        print(f"=== vllm contract line {index}: vllm serve {' '.join(argv)}", flush=True)
                        out.write_text(json.dumps(check_line(cli_main, argv, env)))
                    except BaseException:
                        traceback.print_exc()
                        code = 1
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(code)
                running[pid] = (index, out, time.monotonic())
            for pid, (index, out, started) in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    if time.monotonic() - started > LINE_TIMEOUT_S:
                        os.kill(pid, 9)
                        os.waitpid(pid, 0)
                        results[index] = {"ok": False, "error": f"timed out after {LINE_TIMEOUT_S:.0f}s", "crash": True}
                        del running[pid]
                    continue
                del running[pid]
                if out.exists():
                    results[index] = json.loads(out.read_text())
                else:
                    results[index] = {"ok": False, "error": f"worker child died (status {status})", "crash": True}
            time.sleep(0.02)
    return [result for result in results if result is not None]


def _warm_up() -> tuple[Callable[[], None], str]:
    """Import vLLM's CLI and everything `vllm serve` imports up front (`vllm --version`), once for all lines."""
    cli = importlib.import_module("vllm.entrypoints.cli.main")
    version: str = importlib.import_module("vllm.version").__version__
    sys.argv = ["vllm", "--version"]
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        cli.main()
    main: Callable[[], None] = cli.main
    return main, version


def _option_strings() -> list[str]:
    """Every option string `vllm serve` registers (to check a rendered flag is not an abbreviation)."""
    argparse_utils = importlib.import_module("vllm.utils.argparse_utils")
    serve = importlib.import_module("vllm.entrypoints.cli.serve")
    parser = argparse_utils.FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(dest="subparser")
    serve_parser = serve.ServeSubcommand().subparser_init(subparsers)
    return sorted(option for action in serve_parser._actions for option in action.option_strings)


def main() -> None:
    replies = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    cli_main, version = _warm_up()
    replies.write(json.dumps({"ready": True, "version": version}) + "\n")
    for request_line in sys.stdin:
        request = json.loads(request_line)
        if request.get("options"):
            replies.write(json.dumps({"options": _option_strings()}) + "\n")
            continue
        results = _run_children(cli_main, request["lines"], request.get("env", {}), int(request.get("jobs", 1)))
        replies.write(json.dumps({"results": results}) + "\n")


if __name__ == "__main__":
    main()
