"""Stand-in engine harness: one stand-in engine (SGLang TEST DOUBLE) per Running pod, on the pod's own IP.

Simulated pods have loopback IPs (127.<cluster>.<node>.<n>), so a local listener on (pod IP, port) is reached
exactly where the real engine would be. The harness watches pods (one namespace or all, optional label selector)
and starts a stand-in when a pod is Running with an IP, and stops it when the pod stops running or goes away.

In pytest (threads, in-process)::

    with Harness(api_client, namespace="ns", selector="app.kubernetes.io/name=kimi") as harness:
        eng = harness.engine("my-pod-0")   # waits until it listens
        eng.queue_depth = 12

From a shell (for demos), with an optional control API::

    python -m kimi_testbed.harness --kubeconfig K --selector app.kubernetes.io/name=kimi --port 8000 \\
        [--namespace NS | --all-namespaces] [--control-port 18080]
    curl -s localhost:18080/engines
    curl -s -XPOST localhost:18080/engines/NS/POD -d '{"queue_depth": 12}'   # or /engines for all

Port: ``port`` if given, else the pod's containerPort named ``http``, else 8000. The stand-in's model name, TP,
DP and EP sizes come from the pod's SGLang command line when it has one (``--served-model-name``, ``--tp``,
``--dp``/``--attn-dp-size``, ``--ep-size``, ``--context-length``), so metrics look like that engine's.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from kimi_testbed.standin import EngineConfig, StandinEngine

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger("kimi_testbed.harness")

DEFAULT_PORT = 8000
_INT_FLAGS = {
    "--tp": "tp_size",
    "--tp-size": "tp_size",
    "--tensor-parallel-size": "tp_size",
    "--dp": "dp_size",
    "--dp-size": "dp_size",
    "--data-parallel-size": "dp_size",
    "--attn-dp-size": "dp_size",
    "--ep": "ep_size",
    "--ep-size": "ep_size",
    "--expert-parallel-size": "ep_size",
    "--context-length": "context_length",
}
_STR_FLAGS = {"--served-model-name": "model_name", "--model-path": "model_path", "--model": "model_path"}


def config_from_argv(argv: list[str], base: EngineConfig) -> EngineConfig:
    """Read the engine shape from an SGLang command line; unknown or inconsistent values keep ``base``."""
    changes: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in _INT_FLAGS or flag in _STR_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    break
                value = argv[i + 1]
                i += 1
            if flag in _STR_FLAGS:
                changes[_STR_FLAGS[flag]] = value
            elif value.isdigit():
                changes[_INT_FLAGS[flag]] = int(value)
        i += 1
    try:
        return replace(base, **changes)
    except ValueError as err:
        log.warning("ignoring the pod's engine shape (%s): %s", changes, err)
        return base


def _pod_port(pod: Any) -> int | None:
    for container in pod.spec.containers or []:
        for port in container.ports or []:
            if port.name == "http":
                return int(port.container_port)
    return None


def _pod_argv(pod: Any) -> list[str]:
    for container in pod.spec.containers or []:
        argv = [*(container.command or []), *(container.args or [])]
        if any(a.startswith("--") for a in argv):
            return [str(a) for a in argv]
    return []


@dataclass
class _Entry:
    key: str  # namespace/name
    uid: str
    ip: str
    port: int
    engine: StandinEngine


class Harness:
    """Starts and stops stand-in engines (SGLang test doubles) for the pods it watches."""

    def __init__(
        self,
        api_client: ApiClient,
        namespace: str | None = None,
        selector: str = "",
        port: int | None = None,
        config: EngineConfig | None = None,
        config_from_pod: bool = True,
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.selector = selector
        self.port = port
        self.config = config or EngineConfig()
        self.config_from_pod = config_from_pod
        self.errors: list[str] = []
        self._entries: dict[str, _Entry] = {}  # by pod uid
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._synced = threading.Event()

    # -- public API --------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Harness:
        """Start watching; returns once the first list of pods has been handled."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="standin-harness", daemon=True)
            self._thread.start()
        if not self._synced.wait(timeout):
            raise TimeoutError(f"the stand-in harness could not list pods within {timeout}s: {self.errors[-3:]}")
        return self

    def stop(self) -> None:
        """Stop watching and stop every stand-in engine."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=20)
            self._thread = None
        with self._cond:
            entries, self._entries = list(self._entries.values()), {}
            self._cond.notify_all()
        for entry in entries:
            entry.engine.stop()

    def __enter__(self) -> Harness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def engines(self) -> dict[str, StandinEngine]:
        """Running stand-ins by "namespace/pod"."""
        with self._cond:
            return {e.key: e.engine for e in self._entries.values()}

    def engine(self, pod: str, namespace: str | None = None, timeout: float = 30.0) -> StandinEngine:
        """The stand-in of ``pod`` (name, or namespace/name), waiting until it listens."""
        key = pod if "/" in pod else f"{namespace or self.namespace}/{pod}"
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in self._entries.values():
                    if entry.key == key:
                        return entry.engine
                left = deadline - time.monotonic()
                if left <= 0:
                    known = sorted(e.key for e in self._entries.values())
                    raise TimeoutError(
                        f"no stand-in engine for pod {key} after {timeout}s (pods with stand-ins: {known}; "
                        f"a pod gets one when it is Running with an IP and matches selector {self.selector!r}; "
                        f"errors: {self.errors[-3:]})"
                    )
                self._cond.wait(min(left, 0.5))

    def wait_for_engines(self, count: int, timeout: float = 30.0) -> dict[str, StandinEngine]:
        """Wait until exactly ``count`` stand-ins run; returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._entries) != count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"expected {count} stand-in engines, have {sorted(e.key for e in self._entries.values())}"
                    )
                self._cond.wait(min(left, 0.5))
            return {e.key: e.engine for e in self._entries.values()}

    # -- the watch loop ----------------------------------------------------------------------------------------
    def _list_fn(self) -> Any:
        from kubernetes import client

        core = client.CoreV1Api(self.api_client)
        if self.namespace:
            return lambda **kw: core.list_namespaced_pod(self.namespace, **kw)
        return core.list_pod_for_all_namespaces

    def _run(self) -> None:
        from kubernetes import watch

        list_fn = self._list_fn()
        while not self._stop.is_set():
            try:
                listed = list_fn(label_selector=self.selector, _request_timeout=15)
                self._resync(listed.items)
                self._synced.set()
                version = listed.metadata.resource_version
                # short watches resumed from the last version seen: stop() takes effect within a second
                relist = False
                while version and not self._stop.is_set():
                    stream = watch.Watch()  # type: ignore[no-untyped-call]
                    for event in stream.stream(  # type: ignore[no-untyped-call]
                        list_fn,
                        label_selector=self.selector,
                        resource_version=version,
                        timeout_seconds=1,
                        _request_timeout=10,
                    ):
                        if isinstance(event["object"], dict):
                            # this client version hands some watch objects over undeserialized: relist instead
                            relist = True
                            break
                        if event["type"] == "DELETED":
                            self._forget(event["object"].metadata.uid)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self._reconcile(event["object"])
                    if relist:
                        self._stop.wait(0.1)
                        break
                    version = stream.resource_version or version
            except Exception as err:
                if self._stop.is_set():
                    break
                if getattr(err, "status", None) == 410:  # our version is too old: just relist
                    continue
                self.errors.append(f"{type(err).__name__}: {err}")
                log.warning("stand-in harness: %s; relisting", err)
                self._stop.wait(1.0)

    def _resync(self, pods: list[Any]) -> None:
        seen = set()
        for pod in pods:
            seen.add(pod.metadata.uid)
            self._reconcile(pod)
        with self._cond:
            gone = [uid for uid in self._entries if uid not in seen]
        for uid in gone:
            self._forget(uid)

    def _wanted(self, pod: Any) -> bool:
        status = pod.status
        return bool(
            status is not None
            and status.phase == "Running"
            and status.pod_ip
            and pod.metadata.deletion_timestamp is None
        )

    def _reconcile(self, pod: Any) -> None:
        uid = pod.metadata.uid
        with self._cond:
            current = self._entries.get(uid)
        if not self._wanted(pod):
            if current is not None:
                self._forget(uid)
            return
        ip = pod.status.pod_ip
        port = self.port or _pod_port(pod) or DEFAULT_PORT
        if current is not None and (current.ip, current.port) == (ip, port):
            return
        if current is not None:
            self._forget(uid)
        with self._cond:  # a recycled pod IP may still be held by a pod that is going away
            clash = [u for u, e in self._entries.items() if (e.ip, e.port) == (ip, port)]
        for other in clash:
            self._forget(other)
        cfg = self.config
        if self.config_from_pod:
            cfg = config_from_argv(_pod_argv(pod), cfg)
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        engine = StandinEngine(ip, port, cfg)
        try:
            engine.start()
        except OSError as err:
            self.errors.append(f"{key}: cannot listen on {ip}:{port}: {err}")
            log.error("stand-in for %s cannot listen on %s:%s: %s", key, ip, port, err)
            return
        log.info("stand-in engine (test double) for pod %s on %s:%s", key, ip, port)
        with self._cond:
            self._entries[uid] = _Entry(key, uid, ip, port, engine)
            self._cond.notify_all()

    def _forget(self, uid: str) -> None:
        with self._cond:
            entry = self._entries.pop(uid, None)
            self._cond.notify_all()
        if entry is not None:
            entry.engine.stop()
            log.info("stand-in engine for pod %s stopped", entry.key)


# -- CLI with a small control API -----------------------------------------------------------------------------
def _describe(key: str, eng: StandinEngine) -> dict[str, Any]:
    ns, _, pod = key.partition("/")
    return {
        "namespace": ns,
        "pod": pod,
        "url": eng.url,
        "listening": eng.listening,
        "healthy": eng.healthy,
        "silent": eng.silent,
        "queue_depth": eng.queue_depth,
        "running_requests": eng.running_requests,
        "requests": dict(eng.requests),
    }


def apply_controls(eng: StandinEngine, body: dict[str, Any]) -> None:
    """Apply a control request: queue_depth, running_requests, healthy, completion_seconds, mode
    (silent|talkative|down|up)."""
    if "completion_seconds" in body:
        eng.completion_seconds = float(body["completion_seconds"])
    if "queue_depth" in body:
        eng.queue_depth = int(body["queue_depth"])
    if "running_requests" in body:
        eng.running_requests = int(body["running_requests"])
    if "healthy" in body:
        if body["healthy"]:
            eng.make_healthy()
        else:
            eng.make_unhealthy()
    mode = body.get("mode")
    if mode == "silent":
        eng.make_silent()
    elif mode == "talkative":
        eng.make_talkative()
    elif mode == "down":
        eng.stop_listening()
    elif mode == "up":
        eng.resume()
    elif mode is not None:
        raise ValueError(f"unknown mode {mode!r}: silent, talkative, down, up")


def _control_server(harness: Harness, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

        def _reply(self, obj: Any, status: int = 200) -> None:
            data = json.dumps(obj, indent=2).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/engines":
                self._reply([_describe(k, e) for k, e in sorted(harness.engines().items())])
            else:
                self._reply({"error": "GET /engines"}, 404)

        def do_POST(self) -> None:
            parts = [p for p in self.path.split("/") if p]
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                engines = harness.engines()
                if parts == ["engines"]:
                    targets = engines
                elif len(parts) == 3 and parts[0] == "engines":
                    key = f"{parts[1]}/{parts[2]}"
                    if key not in engines:
                        self._reply({"error": f"no stand-in for {key}"}, 404)
                        return
                    targets = {key: engines[key]}
                else:
                    self._reply({"error": "POST /engines or /engines/NAMESPACE/POD"}, 404)
                    return
                for eng in targets.values():
                    apply_controls(eng, body)
                self._reply([_describe(k, e) for k, e in sorted(targets.items())])
            except (ValueError, TypeError) as err:
                self._reply({"error": str(err)}, 400)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="harness-control").start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kimi_testbed.harness",
        description="Run stand-in engines (SGLang TEST DOUBLES) on the IPs of Running pods.",
    )
    parser.add_argument("--kubeconfig", required=True)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n")
    scope.add_argument("--all-namespaces", "-A", action="store_true")
    parser.add_argument("--selector", "-l", default="", help="label selector, e.g. app.kubernetes.io/name=kimi")
    parser.add_argument("--port", type=int, default=None, help="default: containerPort named http, else 8000")
    parser.add_argument("--model-name", default=EngineConfig.model_name)
    parser.add_argument("--control-port", type=int, default=0, help="serve GET/POST /engines on 127.0.0.1")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    from pathlib import Path

    from kimi_testbed.cluster import new_api_client

    api = new_api_client(Path(args.kubeconfig))
    namespace = None if args.all_namespaces else (args.namespace or "default")
    harness = Harness(api, namespace, args.selector, args.port, EngineConfig(model_name=args.model_name))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    harness.start()
    control = _control_server(harness, args.control_port) if args.control_port else None
    where = f"namespace {namespace}" if namespace else "all namespaces"
    log.info("stand-in harness (SGLang test doubles) watching pods in %s, selector %r", where, args.selector)
    if control:
        log.info("control API on http://127.0.0.1:%s/engines", control.server_address[1])
    stop.wait()
    if control:
        control.shutdown()
    harness.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
