"""The real gateway (PyPI sglang-router, the SGLang Model Gateway) as a host process, run from a rendered manifest.

The operator renders the gateway Deployment; a kwok pod runs nothing, so the tests start the container's own command
line here (``python3`` replaced by this interpreter), with its environment (secretKeyRef values supplied by the
test, as the kubelet would from the Secret) and ``KUBECONFIG`` so the gateway's Kubernetes discovery watches the
local API server. It listens where the pod would (``host``: the gateway pod's IP) and discovers the stand-in
engines (SGLang test doubles) on the engine pods' IPs. Only ``--host``, ``--port`` and ``--prometheus-port`` are
replaced: every other argument is the operator's.

    python -m kimi_testbed.gateway_proc --kubeconfig K --namespace NS --deployment NAME-gateway [--port 8000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kimi_testbed.procs import free_port


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


def container_command(deployment: dict[str, Any], host: str, port: int, metrics_port: int) -> list[str]:
    """The gateway container's command line, bound to (host, port); metrics on (host, metrics_port)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    if command[:1] != ["python3"]:
        raise ValueError(f"the gateway container does not start with python3: {command[:3]}")
    args = command[1:]
    launcher_end = 2 if args[:1] == ["-c"] else 0
    head, rest = args[:launcher_end], args[launcher_end:]
    for flag, value in (("--host", host), ("--port", str(port)), ("--prometheus-host", host)):
        rest = _replace(rest, flag, value)
    rest = _replace(rest, "--prometheus-port", str(metrics_port))
    return [sys.executable, *head, *rest]


def container_env(deployment: dict[str, Any], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's env: plain values, and secretKeyRef values from ``secrets[(name, key)]``."""
    out: dict[str, str] = {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for item in container.get("env") or []:
        if "value" in item:
            out[item["name"]] = str(item["value"])
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            out[item["name"]] = secrets[(ref["name"], ref["key"])]
    return out


class GatewayProcess:
    """One gateway process for a rendered gateway Deployment."""

    def __init__(
        self,
        deployment: dict[str, Any],
        kubeconfig: Path,
        log_path: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        secrets: dict[tuple[str, str], str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.command = container_command(deployment, host, self.port, self.metrics_port)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")},
            **container_env(deployment, secrets or {}),
            "KUBECONFIG": str(kubeconfig),
            "NO_COLOR": "1",
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/liveness", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the gateway did not answer /liveness on {self.url} within {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
            return text

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--deployment", required=True, help="the rendered gateway Deployment, NAME-gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", action="append", default=[], help="NAME/KEY=VALUE for a secretKeyRef")
    args = parser.parse_args(argv)
    out = subprocess.run(
        [
            "kubectl",
            "--kubeconfig",
            args.kubeconfig,
            "-n",
            args.namespace,
            "get",
            "deployment",
            args.deployment,
            "-o",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    secrets = {}
    for item in args.secret:
        ref, value = item.split("=", 1)
        name, key = ref.split("/", 1)
        secrets[(name, key)] = value
    gw = GatewayProcess(
        json.loads(out.stdout), Path(args.kubeconfig), Path("gateway.log"), args.host, args.port or None, secrets
    ).start()
    print(f"gateway on {gw.url} (metrics :{gw.metrics_port}); log in gateway.log", flush=True)
    try:
        assert gw.proc is not None
        return gw.proc.wait()
    except KeyboardInterrupt:
        gw.stop()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
