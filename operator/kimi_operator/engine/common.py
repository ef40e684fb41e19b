"""What every engine's pod shares, whichever engine runs in it: the port, the weights layout, the preStop. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

HTTP_PORT = 8000  # the container port every engine listens on (the Service's and the gateway's target)
DIST_INIT_PORT = 20000  # a multi-node group's rendezvous port on the leader
MODELS_MOUNT = "/models"
# The engines drain in-flight requests on SIGTERM; preStop keeps serving while endpoints propagate.
PRESTOP_SLEEP_SECONDS = 15


def snapshot_path(repo: str, commit: str) -> str:
    """Where a checkpoint lives on the weights volume: keyed by repo and commit (the fetcher's layout), so
    deployments and revisions share one volume without clobbering each other."""
    return f"{MODELS_MOUNT}/{repo}/{commit}"


def http_get(path: str) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}}


def health_probes(startup_budget_seconds: int, *, period: int, timeout: int) -> dict[str, dict[str, Any]]:
    """/health probes of an engine: a startup probe that allows the plan's startup budget, then readiness (3 misses)
    and liveness (10 misses, every 30 s). `timeout` is each engine's own (SGLang's /health generates a token)."""
    return {
        "startupProbe": {
            **http_get("/health"),
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": math.ceil(startup_budget_seconds / period),
        },
        "readinessProbe": {
            **http_get("/health"),
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": 3,
            "successThreshold": 1,
        },
        "livenessProbe": {
            **http_get("/health"),
            "periodSeconds": 30,
            "timeoutSeconds": timeout,
            "failureThreshold": 10,
        },
    }


def user_env(spec_env: Iterable[Any], owned: Iterable[str]) -> list[dict[str, Any]]:
    """engine.env entries as container env, without the names the operator sets (the API refuses those anyway)."""
    skip = set(owned)
    return [{"name": e.name, "value": e.value} for e in spec_env if e.name not in skip]


def lifecycle() -> dict[str, Any]:
    """preStop: keep serving while endpoints propagate, then SIGTERM lets the engine drain in-flight requests."""
    return {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}}
