"""The gateway: the SGLang Model Gateway (PyPI sglang-router) in front of the replicas. Pure.

What it runs, how it finds the engines (Kubernetes pod discovery of the ready leaders, port 8000), how the API key
reaches it (the environment, never argv), and where the KimiDeployment's Service points while the gateway is
switched on or off. Facts checked against sglang-router 0.3.2 on this machine: docs/gateway.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kimi_operator.api.models import KimiDeploymentSpec

# The gateway the operator and the tests pin (the wheel the cluster tests run; see docs/gateway.md).
ROUTER_PACKAGE = "sglang-router"
ROUTER_VERSION = "0.3.2"
HTTP_PORT = 8000
METRICS_PORT = 29000
API_KEY_ENV = "KIMI_API_KEY"
COMPONENT = "gateway"
# Long thinking-mode answers: the gateway must not cut a request the engine is still answering.
REQUEST_TIMEOUT_SECONDS = 1800
HEALTH_CHECK_INTERVAL_SECONDS = 5
DEFAULT_RESOURCES: dict[str, Any] = {"requests": {"cpu": "1", "memory": "1Gi"}}

# `python3 -c LAUNCHER ARGS...`: parse the gateway's own command line with its own parser, then take the API key
# from the environment (the Secret's value arrives there through secretKeyRef) and hand it to the router in
# process. sglang-router only reads the key from `--api-key`, which would put it in /proc/PID/cmdline and `ps`.
LAUNCHER = (
    "import os, sys\n"
    "from sglang_router.launch_router import launch_router, parse_router_args\n"
    "args = parse_router_args(sys.argv[1:])\n"
    f"args.api_key = os.environ.pop({API_KEY_ENV!r}, '') or None\n"
    "launch_router(args)\n"
)
# The same for an engine served without a gateway: SGLang's --api-key appended in process, not on argv.
ENGINE_LAUNCHER = (
    "import os, runpy, sys\n"
    f"key = os.environ.pop({API_KEY_ENV!r}, '')\n"
    "sys.argv = ['sglang.launch_server', *sys.argv[1:], *(['--api-key', key] if key else [])]\n"
    "runpy.run_module('sglang.launch_server', run_name='__main__', alter_sys=True)\n"
)

ServiceTarget = Literal["gateway", "engines"]


def names(owner_name: str) -> dict[str, str]:
    """Names of the gateway's objects (Deployment, ServiceAccount, Role, RoleBinding, PDB share one)."""
    return {"gateway": f"{owner_name}-gateway", "network_policy": f"{owner_name}-engines"}


def engine_selector_args(selector: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in selector.items()]


def args(spec: KimiDeploymentSpec, namespace: str, engine_selector: dict[str, str]) -> list[str]:
    """The gateway's command-line arguments (after `python3 -c LAUNCHER`): discovery of the ready leaders."""
    return [
        "--host",
        "0.0.0.0",
        "--port",
        str(HTTP_PORT),
        "--policy",
        spec.gateway.policy,
        "--service-discovery",
        "--selector",
        *engine_selector_args(engine_selector),
        "--service-discovery-port",
        str(HTTP_PORT),
        "--service-discovery-namespace",
        namespace,
        "--prometheus-host",
        "0.0.0.0",
        "--prometheus-port",
        str(METRICS_PORT),
        "--request-timeout-secs",
        str(REQUEST_TIMEOUT_SECONDS),
        "--health-check-interval-secs",
        str(HEALTH_CHECK_INTERVAL_SECONDS),
        "--health-check-endpoint",
        "/health",
    ]


def command(spec: KimiDeploymentSpec, namespace: str, engine_selector: dict[str, str]) -> list[str]:
    return ["python3", "-c", LAUNCHER, *args(spec, namespace, engine_selector)]


def engine_command(server_command: list[str]) -> list[str]:
    """An engine command line (`python3 -m sglang.launch_server ARGS`) that takes the API key from the env."""
    if server_command[:3] != ["python3", "-m", "sglang.launch_server"]:
        raise ValueError(f"not an SGLang launch command: {server_command[:3]}")
    return ["python3", "-c", ENGINE_LAUNCHER, *server_command[3:]]


def api_key_env(spec: KimiDeploymentSpec) -> list[dict[str, Any]]:
    """The API key from its Secret (secretKeyRef: the value never appears in the pod spec)."""
    ref = spec.auth.api_key_secret_ref
    if ref is None:
        return []
    return [{"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


@dataclass(frozen=True)
class ServiceDecision:
    target: ServiceTarget
    keep_gateway: bool  # keep the gateway's objects (wanted, or still the Service's backend)
    why: str


def service_target(wanted: bool, gateway_ready: int, current: ServiceTarget | None) -> ServiceDecision:
    """Where the KimiDeployment's Service points, so that it never has no backends while switching.

    On: the Service keeps selecting the engines until a gateway pod is Ready (it has discovered a worker), then
    selects the gateway; it stays there while the gateway has no ready pod rather than flap. Off: the Service goes
    back to the engines (which are serving) first; the gateway's objects are deleted only once the Service observed
    on the server selects the engines again.
    """
    if wanted:
        if gateway_ready > 0:
            return ServiceDecision("gateway", True, "the gateway is ready")
        if current == "gateway":
            return ServiceDecision("gateway", True, "the gateway serves but no gateway pod is ready")
        return ServiceDecision("engines", True, "the engines serve until a gateway pod is ready")
    if current == "gateway":
        return ServiceDecision("engines", True, "back to the engines; the gateway goes once the Service has moved")
    return ServiceDecision("engines", False, "no gateway")


def observed_target(service: dict[str, Any] | None, gateway_selector: dict[str, str]) -> ServiceTarget | None:
    """Which backend a Service observed on the server selects (None: no Service yet)."""
    if service is None:
        return None
    sel = (service.get("spec") or {}).get("selector") or {}
    return "gateway" if sel == gateway_selector else "engines"


def default_metrics_peers() -> list[dict[str, Any]]:
    """Who may scrape the engines' /metrics (on the HTTP port): the operator's autoscaler and Prometheus."""
    return [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kimi-operator"}}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
    ]
