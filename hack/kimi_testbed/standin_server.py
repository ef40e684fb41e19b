"""The stand-in engine (SGLang TEST DOUBLE) as a program: the process of the ``standin-engine`` test image.

That image puts this behind ``python3 -m sglang.launch_server`` (images/testing/standin-engine/launch_server.py), so a
pod rendered by the operator for the real SGLang image runs the stand-in unchanged: the same command line, ports and
probes. It reads what it needs from SGLang's flags (``--host``, ``--port``, ``--served-model-name``, ``--tp``,
``--dp``, ``--ep-size``, ``--context-length``; everything else is accepted and ignored) and plays the parts of an
engine's life that the kubelet sees:

- loading: the port stays closed for ``KIMI_STANDIN_LOAD_SECONDS`` (as while SGLang loads weights), then it listens.
  Meanwhile it prints the pinned SGLang's own startup lines (the ones kimi_operator.engine.sglang_startup reads):
  "Load weight begin", the safetensors shard bar over ``KIMI_STANDIN_SHARDS`` shards (default 8; redrawn with a
  carriage return as tqdm does, or one line per shard with ``KIMI_STANDIN_PROGRESS=lines``), "Load weight end",
  ``KIMI_STANDIN_CAPTURE_SECONDS`` of CUDA graph capture (default 0: none), then K2.5's warmup line and "The server
  is fired up and ready to roll!". ``KIMI_STANDIN_STALL_AT_SHARD=N`` stops the load after shard N for good (a
  stalled load: the port never opens);
- serving: each chat completion takes ``KIMI_STANDIN_COMPLETION_SECONDS`` (default 0), so answers can be in flight;
- SIGTERM: stop accepting connections, finish the answers in flight (at most ``KIMI_STANDIN_DRAIN_SECONDS``,
  default: until the kubelet's SIGKILL), exit 0.

A test steers it over a control port (``KIMI_STANDIN_CONTROL_PORT``, default 18080; 0: none), on the pod IP:
``GET /engine`` describes it, ``POST /engine`` with ``{"queue_depth": 12}``, ``{"healthy": false}``,
``{"mode": "silent"|"talkative"|"down"|"up"}``, ``{"completion_seconds": 5}`` changes it (the harness's controls).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from kimi_testbed.harness import apply_controls, config_from_argv
from kimi_testbed.standin import EngineConfig, StandinEngine

log = logging.getLogger("kimi_testbed.standin_server")

SGLANG_DEFAULT_PORT = 30000  # sglang.launch_server's default --port
CONTROL_PORT = 18080


def _env_seconds(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _state(engine: StandinEngine) -> dict[str, Any]:
    return {
        "url": engine.url,
        "listening": engine.listening,
        "healthy": engine.healthy,
        "silent": engine.silent,
        "queue_depth": engine.queue_depth,
        "running_requests": engine.running_requests,
        "completion_seconds": engine.completion_seconds,
        "in_flight": engine.in_flight,
        "completions": engine.completions,
        "requests": dict(engine.requests),
    }


def _control_server(engine: StandinEngine, host: str, port: int) -> ThreadingHTTPServer:
    class Control(BaseHTTPRequestHandler):
        server_version = "kimi-testbed-standin-control/1 (test double)"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("control: " + format, *args)

        def _reply(self, obj: Any, status: int = 200) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path != "/engine":
                self._reply({"error": f"no route {self.path}"}, 404)
                return
            self._reply(_state(engine))

        def do_POST(self) -> None:
            if self.path != "/engine":
                self._reply({"error": f"no route {self.path}"}, 404)
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                apply_controls(engine, body)
            except (ValueError, TypeError, KeyError) as err:
                self._reply({"error": str(err)}, 400)
                return
            self._reply(_state(engine))

    server = ThreadingHTTPServer((host, port), Control)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="standin-control", daemon=True).start()
    return server


def sglang_line(message: str) -> None:
    """A line as SGLang's logger prints it (its format: `[time TP0] message`)."""
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')} TP0] {message}", flush=True)


def _bar(desc: str, done: int, total: int, elapsed: float) -> str:
    """tqdm's line with SGLang's BAR_FORMAT ("{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt} [...]")."""
    left = elapsed / done * (total - done) if done else 0.0
    return f"{desc}: {done * 100 / total:3.0f}% Completed | {done}/{total} [{elapsed:05.1f}<{left:05.1f}, ?it/s]"


def simulate_startup(stop: threading.Event, load_seconds: float) -> bool:
    """Print SGLang's startup lines over the simulated load (False: stopped meanwhile)."""
    shards = max(1, int(os.environ.get("KIMI_STANDIN_SHARDS", "8")))
    stall_at = int(os.environ.get("KIMI_STANDIN_STALL_AT_SHARD", "-1"))
    capture = _env_seconds("KIMI_STANDIN_CAPTURE_SECONDS", 0.0) or 0.0
    redraw = os.environ.get("KIMI_STANDIN_PROGRESS", "tqdm") != "lines"
    desc = "Loading safetensors checkpoint shards"
    sglang_line("Load weight begin. avail mem=139.50 GB (stand-in: no GPU, no weights are read)")
    started = time.monotonic()
    for done in range(shards + 1):
        bar = _bar(desc, done, shards, time.monotonic() - started)
        if redraw:
            sys.stderr.write("\r" + bar)
            sys.stderr.flush()
        else:
            print(bar, flush=True)
        if done == stall_at:
            print("", file=sys.stderr, flush=True)
            print(f"stand-in engine: load stalled after shard {done} (KIMI_STANDIN_STALL_AT_SHARD)", flush=True)
            stop.wait()
            return False
        if done < shards and stop.wait(load_seconds / shards):
            return False
    if redraw:
        sys.stderr.write("\n")
        sys.stderr.flush()
    sglang_line(f"Load weight end. elapsed={time.monotonic() - started:.2f} s, type=KimiK25ForConditionalGeneration")
    if capture:
        sglang_line("Capture target decode CUDA graph begin. backend=fa3, num_tokens_per_req=1, avail mem=30.00 GB")
        if stop.wait(capture):
            return False
        sglang_line(f"Capture target decode CUDA graph end. elapsed={capture:.2f} s, mem usage=1.00 GB.")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m sglang.launch_server",
        description="stand-in engine: a TEST DOUBLE answering SGLang's HTTP surface; it runs no model",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=SGLANG_DEFAULT_PORT)
    parser.add_argument("--api-key", default=None, help="checked like SGLang's (never printed)")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_argv(rest, EngineConfig())
    engine = StandinEngine(args.host, args.port, config)
    engine.api_key = args.api_key or None
    engine.completion_seconds = _env_seconds("KIMI_STANDIN_COMPLETION_SECONDS", 0.0) or 0.0
    drain_seconds = _env_seconds("KIMI_STANDIN_DRAIN_SECONDS", None)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stand-in engine (test double): got %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)  # as PID 1 in a container, no handler would mean no SIGTERM at all
    signal.signal(signal.SIGINT, on_signal)
    control_port = int(os.environ.get("KIMI_STANDIN_CONTROL_PORT", CONTROL_PORT))
    if control_port:
        _control_server(engine, args.host, control_port)
    print(
        f"stand-in engine (TEST DOUBLE for SGLang, no model runs): {config.model_name} tp={config.tp_size} "
        f"dp={config.dp_size} ep={config.ep_size}; ignoring {len(rest)} other arguments",
        flush=True,
    )
    load_seconds = _env_seconds("KIMI_STANDIN_LOAD_SECONDS", 0.0) or 0.0
    if load_seconds:
        print(f"stand-in engine: simulating a {load_seconds:g} s weight load (port {args.port} closed)", flush=True)
    if not simulate_startup(stop, load_seconds):
        return 0
    engine.start()
    print(f"stand-in engine: listening on {engine.url}", flush=True)
    sglang_line("Using a 512x512 image for Kimi VLM startup warmup to compile MoonViT position interpolation.")
    sglang_line("The server is fired up and ready to roll!")
    while not stop.wait(3600):
        pass
    started = time.monotonic()
    left = engine.drain(drain_seconds)
    print(f"stand-in engine: drained in {time.monotonic() - started:.1f} s, {left} requests left in flight", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
