"""Stand-in engine: a TEST DOUBLE for an SGLang server. It is not SGLang and runs no model.

It answers the HTTP surface the operator relies on, where an SGLang leader pod would (its pod IP and port):

- ``/health`` and ``/health_generate``: 200 with an empty body, or 503 when made unhealthy (SGLang answers 503
  while starting or draining);
- ``/model_info``, ``/v1/models``;
- ``/metrics``: Prometheus text with SGLang's own metric names and labels (``sglang:num_queue_reqs`` ... with
  model_name, engine_type, tp_rank, pp_rank, moe_ep_rank, and dp_rank when DP attention runs, one sample per
  DP rank as with ``--enable-metrics-for-all-schedulers``);
- ``/v1/chat/completions``: a trivial OpenAI-shaped answer that says it comes from a test double. A prefix cache
  is modelled on the prompt's words (one word = one token; a radix tree like SGLang's RadixCache, never evicted):
  ``usage.prompt_tokens_details.cached_tokens`` and ``sglang:cache_hit_rate`` say how much of the prompts was
  already cached here, so a router's cache affinity is measurable (``prompt_tokens_total``/``cached_tokens_total``).

A test drives it: ``queue_depth``/``running_requests`` (spread over DP ranks) or ``set_rank(...)``,
``make_unhealthy()``, ``make_silent()`` (accepts connections, never answers), ``stop_listening()`` (port closed,
as while SGLang loads weights), ``resume()``, ``completion_seconds`` (each completion takes that long, to have
answers in flight), ``drain()`` (stop accepting and wait for the answers in flight, as SGLang's HTTP server does on
SIGTERM). Every response carries ``Server: kimi-testbed-standin``. As a program (the standin-engine image):
``kimi_testbed.standin_server``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("kimi_testbed.standin")

SERVER_NAME = "kimi-testbed-standin/1 (SGLang test double)"

# gauge name -> HELP text (SGLang's SchedulerMetricsCollector wording)
GAUGES: dict[str, str] = {
    "sglang:num_running_reqs": "The number of running requests.",
    "sglang:num_used_tokens": "The number of used tokens.",
    "sglang:token_usage": "The token usage.",
    "sglang:gen_throughput": "The generation throughput (token/s).",
    "sglang:num_queue_reqs": "The number of requests in the waiting queue.",
    "sglang:cache_hit_rate": "The prefix cache hit rate.",
    "sglang:max_total_num_tokens": "Maximum total number of tokens in the KV cache pool.",
}

# vLLM's (vllm/v1/metrics/loggers.py) and llama-server's (--metrics) queue and running gauges: (name, HELP)
OTHER_GAUGES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "vllm": (
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
        ("vllm:num_requests_running", "Number of requests in model execution batches."),
    ),
    "llamacpp": (
        ("llamacpp:requests_deferred", "Number of requests deferred."),
        ("llamacpp:requests_processing", "Number of requests processing."),
    ),
}


@dataclass
class RankStats:
    """What one scheduler (one DP rank) reports."""

    num_queue_reqs: int = 0
    num_running_reqs: int = 0
    num_used_tokens: int = 0
    gen_throughput: float = 0.0
    cache_hit_rate: float = 0.0


@dataclass
class EngineConfig:
    model_name: str = "kimi-k2.5"
    model_path: str = "moonshotai/Kimi-K2.5"
    tp_size: int = 8
    dp_size: int = 1  # > 1: DP attention, one metrics sample per DP rank
    ep_size: int = 1
    pp_size: int = 1
    max_total_num_tokens: int = 1_000_000  # per DP rank
    context_length: int = 262144
    extra: dict[str, Any] = field(default_factory=dict)
    # Which engine's metric names /metrics speaks: sglang (per scheduler, as above), vllm or llamacpp (one sample
    # of each engine's queue and running gauges, as those servers export them), for the autoscaler's tests per kind.
    flavor: str = "sglang"

    def __post_init__(self) -> None:
        if self.dp_size < 1 or self.tp_size % self.dp_size:
            raise ValueError(f"dp_size {self.dp_size} must divide tp_size {self.tp_size}")
        if self.ep_size < 1 or self.tp_size % self.ep_size:
            raise ValueError(f"ep_size {self.ep_size} must divide tp_size {self.tp_size}")


def _num(value: float) -> str:
    return repr(float(value))


class _Handler(BaseHTTPRequestHandler):
    server_version = SERVER_NAME
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without TCP_NODELAY a keep-alive client (the gateway's pool) waits
    # for the delayed ACK (~40 ms) on every answer, which is the stand-in's artefact, not the router's latency
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.engine._lock:
            self.server.engine._conns.add(self.connection)

    def finish(self) -> None:
        with self.server.engine._lock:
            self.server.engine._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s:%s %s", self.server.engine.host, self.server.engine.port, format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode())

    def _gate(self) -> bool:
        """Count the request; in silent mode hold it without answering; check the API key as SGLang does.
        False: answered already (401) or drop the connection."""
        engine = self.server.engine
        path = self.path.split("?", 1)[0]
        with engine._lock:
            engine.requests[path] += 1
        exempt = path.startswith("/health") or path == "/metrics"
        if engine.api_key and not exempt and self.headers.get("Authorization") != f"Bearer {engine.api_key}":
            with engine._lock:
                engine.unauthorized += 1
            self.close_connection = True  # the body is left unread: this connection ends here
            self._json({"error": "Unauthorized"}, 401)
            return False
        while engine._silent.is_set():
            if engine._closing.wait(0.05):
                self.close_connection = True
                return False
        return not engine._closing.is_set()

    def do_GET(self) -> None:
        with self.server.engine._in_flight():
            self._get()

    def do_POST(self) -> None:
        with self.server.engine._in_flight():
            self._post()

    def _get(self) -> None:
        if not self._gate():
            return
        engine = self.server.engine
        path = self.path.split("?", 1)[0]
        if path in ("/health", "/health_generate"):
            self._send(200 if engine.healthy else int(HTTPStatus.SERVICE_UNAVAILABLE), b"", "text/plain")
        elif path == "/metrics":
            self._send(200, engine.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/model_info", "/get_model_info"):
            self._json(engine.model_info())
        elif path == "/v1/models":
            self._json(engine.models())
        else:
            self._json({"error": f"no route {path} on the stand-in engine (test double)"}, 404)

    def _post(self) -> None:
        if not self._gate():
            return
        engine = self.server.engine
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._json({"error": "body is not JSON"}, 400)
            return
        if path in ("/v1/chat/completions", "/v1/completions"):
            if not engine.healthy:
                self._json({"error": "engine unhealthy (stand-in)"}, 503)
                return
            if engine.completion_seconds > 0:
                time.sleep(engine.completion_seconds)
            if body.get("stream"):
                chunk = engine.chat_completion(body, stream=True)
                data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
                self._send(200, data, "text/event-stream")
            else:
                self._json(engine.chat_completion(body))
        else:
            self._json({"error": f"no route {path} on the stand-in engine (test double)"}, 404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    engine: StandinEngine


class StandinEngine:
    """Stand-in engine (TEST DOUBLE for SGLang) listening on ``host:port``; ``port=0`` picks a free port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: EngineConfig | None = None) -> None:
        self.host = host
        self.port = port
        self.config = config or EngineConfig()
        self.ranks = [RankStats() for _ in range(self.config.dp_size)]
        self.healthy = True
        self.requests: collections.Counter[str] = collections.Counter()
        self.completions = 0
        self.completion_seconds = 0.0  # how long each completion takes (answers in flight for drain tests)
        # like SGLang's --api-key: every route but /health*, /metrics needs `Authorization: Bearer KEY` (else 401)
        self.api_key: str | None = None
        self.unauthorized = 0  # requests refused for a missing or wrong key
        self.in_flight = 0  # requests being answered now
        self.prompt_tokens_total = 0
        self.cached_tokens_total = 0
        self._prefix_tree: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._silent = threading.Event()
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "listening" if self.listening else "closed"
        return f"<StandinEngine (test double) {self.host}:{self.port} {state} healthy={self.healthy}>"

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> StandinEngine:
        if self._server is not None:
            return self
        self._closing.clear()
        server = _Server((self.host, self.port), _Handler)
        server.engine = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"standin-{self.host}:{self.port}"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("stand-in engine (test double) listening on %s", self.url)
        return self

    def stop_listening(self) -> None:
        """Close the port (connections are refused), as while SGLang loads weights or after it died."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()
        server.shutdown()
        server.server_close()
        with self._lock:  # keep-alive connections must not outlive the listener
            conns, self._conns = set(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("stand-in engine (test double) on %s:%s stopped listening", self.host, self.port)

    def resume(self) -> StandinEngine:
        """Listen again on the same port, answering normally."""
        self._silent.clear()
        return self.start()

    stop = stop_listening

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        with self._lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def drain(self, timeout: float | None = None) -> int:
        """Stop accepting connections and wait (at most ``timeout`` s) for the requests in flight, as SGLang's HTTP
        server does on SIGTERM; open connections stay open until their answer is written. Returns how many requests
        were still in flight when it gave up (0: drained)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.in_flight and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)
        log.info("stand-in engine (test double) on %s:%s drained, %d in flight", self.host, self.port, self.in_flight)
        return self.in_flight

    def __enter__(self) -> StandinEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour controls ------------------------------------------------------------------------------------
    def make_unhealthy(self) -> None:
        """/health and /health_generate answer 503 (SGLang: starting, draining or a failed health generate)."""
        self.healthy = False

    def make_healthy(self) -> None:
        self.healthy = True
        self._silent.clear()

    def make_silent(self) -> None:
        """Accept connections but never answer (a hung engine): clients see timeouts."""
        self._silent.set()

    def make_talkative(self) -> None:
        self._silent.clear()

    @property
    def silent(self) -> bool:
        return self._silent.is_set()

    @staticmethod
    def _spread(total: int, parts: int) -> list[int]:
        return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]

    @property
    def queue_depth(self) -> int:
        """Sum of ``sglang:num_queue_reqs`` over DP ranks. Setting it spreads the total over the ranks."""
        return sum(r.num_queue_reqs for r in self.ranks)

    @queue_depth.setter
    def queue_depth(self, total: int) -> None:
        with self._lock:
            for rank, n in zip(self.ranks, self._spread(total, len(self.ranks)), strict=True):
                rank.num_queue_reqs = n

    @property
    def running_requests(self) -> int:
        return sum(r.num_running_reqs for r in self.ranks)

    @running_requests.setter
    def running_requests(self, total: int) -> None:
        with self._lock:
            for rank, n in zip(self.ranks, self._spread(total, len(self.ranks)), strict=True):
                rank.num_running_reqs = n

    def set_rank(self, dp_rank: int, **values: float) -> None:
        """Set RankStats fields of one DP rank: ``set_rank(1, num_queue_reqs=5, num_used_tokens=1000)``."""
        with self._lock:
            rank = self.ranks[dp_rank]
            for key, value in values.items():
                if not hasattr(rank, key):
                    raise AttributeError(f"RankStats has no field {key!r}")
                setattr(rank, key, type(getattr(rank, key))(value))

    # -- responses ---------------------------------------------------------------------------------------------
    def _labels(self, dp_rank: int) -> dict[str, str]:
        cfg = self.config
        attn_tp = cfg.tp_size // cfg.dp_size
        tp_rank = dp_rank * attn_tp  # the reporting scheduler of each DP group is its attention-TP rank 0
        labels = {
            "model_name": cfg.model_name,
            "engine_type": "unified",
            "tp_rank": str(tp_rank),
            "pp_rank": "0",
            "moe_ep_rank": str(tp_rank // (cfg.tp_size // cfg.ep_size)),
        }
        if cfg.dp_size > 1:
            labels["dp_rank"] = str(dp_rank)
        return labels

    def metrics_text(self) -> str:
        cfg = self.config
        if cfg.flavor in OTHER_GAUGES:
            (queue_name, queue_help), (running_name, running_help) = OTHER_GAUGES[cfg.flavor]
            tag = f'{{model_name="{cfg.model_name}",engine="0"}}' if cfg.flavor == "vllm" else ""
            out: list[str] = []
            for gauge, gauge_help, count in (
                (queue_name, queue_help, self.queue_depth),
                (running_name, running_help, self.running_requests),
            ):
                out += [f"# HELP {gauge} {gauge_help}", f"# TYPE {gauge} gauge", f"{gauge}{tag} {_num(count)}"]
            return "\n".join(out) + "\n"
        with self._lock:
            rows = [(self._labels(i), RankStats(**vars(r))) for i, r in enumerate(self.ranks)]
        lines: list[str] = []
        for name, help_text in GAUGES.items():
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            for labels, stats in rows:
                value: float
                if name == "sglang:token_usage":
                    value = stats.num_used_tokens / cfg.max_total_num_tokens
                elif name == "sglang:max_total_num_tokens":
                    value = cfg.max_total_num_tokens
                else:
                    value = getattr(stats, name.split(":", 1)[1])
                label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(f"{name}{{{label_text}}} {_num(value)}")
        return "\n".join(lines) + "\n"

    def model_info(self) -> dict[str, Any]:
        return {
            "model_path": self.config.model_path,
            "tokenizer_path": self.config.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": True,
            "has_audio_understanding": False,
            "model_type": "kimi_k25",
            "architectures": ["KimiK25ForConditionalGeneration"],
        }

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.config.model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "sglang",
                    "root": self.config.model_path,
                    "max_model_len": self.config.context_length,
                }
            ],
        }

    def _cache_prompt(self, tokens: list[str]) -> int:
        """Walk and extend the prefix tree with the prompt's tokens; returns how many were cached. Holds _lock."""
        node, cached = self._prefix_tree, 0
        for i, tok in enumerate(tokens):
            child = node.get(tok)
            if child is None:
                for rest in tokens[i:]:
                    node = node.setdefault(rest, {})
                break
            node, cached = child, cached + 1
        return cached

    def chat_completion(self, body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
        tokens = [t for m in body.get("messages", []) or [] for t in str(m.get("content", "")).split()]
        if not tokens and "prompt" in body:
            tokens = str(body["prompt"]).split()
        with self._lock:
            self.completions += 1
            n = self.completions
            cached = self._cache_prompt(tokens)
            self.prompt_tokens_total += len(tokens)
            self.cached_tokens_total += cached
            hit_rate = self.cached_tokens_total / self.prompt_tokens_total if self.prompt_tokens_total else 0.0
            for rank in self.ranks:
                rank.cache_hit_rate = hit_rate
        text = "stand-in engine (test double): no model runs here"
        prompt_tokens = len(tokens)
        created = int(time.time())
        if stream:
            return {
                "id": f"chatcmpl-standin-{n}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.config.model_name,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            }
        completion_tokens = len(text.split())
        return {
            "id": f"chatcmpl-standin-{n}",
            "object": "chat.completion",
            "created": created,
            "model": self.config.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
