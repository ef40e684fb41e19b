"""What every engine's pod shares, whichever engine runs in it: the port, the weights layout, the preStop. Pure."""

from __future__ import annotations

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


def lifecycle() -> dict[str, Any]:
    """preStop: keep serving while endpoints propagate, then SIGTERM lets the engine drain in-flight requests."""
    return {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}}
