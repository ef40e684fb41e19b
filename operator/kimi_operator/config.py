"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from kimi_operator import __version__

DEFAULT_OPERATOR_IMAGE = f"ghcr.io/kimi-operator/kimi-operator:{__version__}"
# images/gateway/Dockerfile: the pinned sglang-router (kimi_operator.gateway.ROUTER_VERSION), released with the operator
DEFAULT_GATEWAY_IMAGE = f"ghcr.io/kimi-operator/kimi-gateway:{__version__}"


@dataclass(frozen=True)
class OperatorConfig:
    operator_image: str = DEFAULT_OPERATOR_IMAGE
    engine_image: str = ""  # SGLang image for NVIDIA GPUs when spec.engine.image is unset (empty: the catalog's pin)
    gateway_image: str = DEFAULT_GATEWAY_IMAGE  # the pinned sglang-router, when spec.gateway.image is unset
    engine_image_rocm: str = ""  # the same for AMD GPUs (a ROCm build of SGLang)
    resync_seconds: int = 60
    workers: int = 4
    metrics_port: int = 8080
    cluster_domain: str = "cluster.local"
    hf_endpoint: str = ""  # Hub mirror for revision resolution and the fetch Job (empty: huggingface.co)
    operator_image_pull_policy: str = "IfNotPresent"  # of the fetch Job's container (the chart's image.pullPolicy)
    volume_grace_seconds: int = 30  # a weights PVC Pending longer than this is reported as VolumeNotBound
    startup_stall_seconds: int = 300  # the shortest quiet time in a startup phase reported as StartupStalled
    # Read the API key's Secret (get, by name) for its fingerprint, so that a new key rolls the pods that hold it
    api_key_rotation: bool = True
    # Leader election (more than one operator replica): the Lease's name (empty: off, this process always works),
    # its namespace, and this candidate's identity (the pod name)
    leader_election_lease: str = ""
    leader_election_namespace: str = "default"
    identity: str = ""

    @classmethod
    def from_env(cls) -> OperatorConfig:
        env = os.environ
        return cls(
            operator_image=env.get("KIMI_OPERATOR_IMAGE", DEFAULT_OPERATOR_IMAGE),
            engine_image=env.get("KIMI_ENGINE_IMAGE", ""),
            engine_image_rocm=env.get("KIMI_ENGINE_IMAGE_ROCM", ""),
            gateway_image=env.get("KIMI_GATEWAY_IMAGE") or DEFAULT_GATEWAY_IMAGE,
            resync_seconds=int(env.get("KIMI_RESYNC_SECONDS", "60")),
            workers=int(env.get("KIMI_WORKERS", "4")),
            metrics_port=int(env.get("KIMI_METRICS_PORT", "8080")),
            cluster_domain=env.get("KIMI_CLUSTER_DOMAIN", "cluster.local"),
            hf_endpoint=env.get("KIMI_HF_ENDPOINT", env.get("HF_ENDPOINT", "")),
            operator_image_pull_policy=env.get("KIMI_OPERATOR_IMAGE_PULL_POLICY", "IfNotPresent"),
            volume_grace_seconds=int(env.get("KIMI_VOLUME_GRACE_SECONDS", "30")),
            startup_stall_seconds=int(env.get("KIMI_STARTUP_STALL_SECONDS", "300")),
            api_key_rotation=env.get("KIMI_API_KEY_ROTATION", "true").lower() not in ("false", "0", "no", "off"),
            leader_election_lease=env.get("KIMI_LEADER_ELECTION_LEASE", ""),
            leader_election_namespace=env.get("KIMI_LEADER_ELECTION_NAMESPACE", env.get("POD_NAMESPACE", "default")),
            identity=env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        )
