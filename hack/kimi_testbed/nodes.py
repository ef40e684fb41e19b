"""Simulated 8-GPU nodes: what a GPU node with NVIDIA's GPU feature discovery labels looks like to the API.

kwok manages every node carrying the annotation ``kwok.x-k8s.io/node: fake``: it keeps them Ready and runs the
pods bound to them. Each node gets a podCIDR inside 127.0.0.0/8 (127.<cluster byte>.<node index>.0/24), so kwok
hands out loopback pod IPs on which a local process (the stand-in engine) can listen where the pod would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
POOL_LABEL = "kimi-testbed.dev/pool"
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class Accelerator:
    product: str  # nvidia.com/gpu.product as GPU feature discovery writes it
    memory_mib: int  # nvidia.com/gpu.memory
    instance_type: str  # node.kubernetes.io/instance-type of a cloud 8-GPU machine


ACCELERATORS: dict[str, Accelerator] = {
    "H200": Accelerator("NVIDIA-H200", 143771, "p5en.48xlarge"),
    "H100": Accelerator("NVIDIA-H100-80GB-HBM3", 81559, "p5.48xlarge"),
    "B200": Accelerator("NVIDIA-B200", 183359, "p6-b200.48xlarge"),
}
DEFAULT_POOL = "H200"


def parse_pools(nodes: int, extra: list[str] | None) -> dict[str, int]:
    """``--nodes N`` is the H200 pool; each ``--pool KIND=COUNT`` adds (or resizes) a pool."""
    pools: dict[str, int] = {}
    if nodes:
        pools[DEFAULT_POOL] = nodes
    for item in extra or []:
        kind, sep, count = item.partition("=")
        kind = kind.strip().upper()
        if not sep or kind not in ACCELERATORS or not count.strip().isdigit():
            raise ValueError(f"--pool {item!r}: expected KIND=COUNT with KIND one of {', '.join(ACCELERATORS)}")
        pools[kind] = int(count)
    pools = {k: v for k, v in pools.items() if v > 0}
    if not pools:
        raise ValueError("a cluster needs at least one node")
    if sum(pools.values()) > 250:
        raise ValueError("at most 250 simulated nodes (one /24 of 127.x.0.0/16 each)")
    return pools


def node_manifests(pools: dict[str, int], cidr_byte: int) -> list[dict[str, Any]]:
    """Node objects, numbered 1..N across pools; node i: podCIDR 127.b.i.0/24, InternalIP 127.b.0.i."""
    out: list[dict[str, Any]] = []
    index = 0
    for kind, count in pools.items():
        acc = ACCELERATORS[kind]
        for i in range(count):
            index += 1
            name = f"kwok-{kind.lower()}-{i}"
            resources = {
                "cpu": "192",
                "memory": "2Ti",
                "pods": "110",
                "ephemeral-storage": "10Ti",
                "nvidia.com/gpu": str(GPUS_PER_NODE),
            }
            cidr = f"127.{cidr_byte}.{index}.0/24"
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE},
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "node.kubernetes.io/instance-type": acc.instance_type,
                            "nvidia.com/gpu.product": acc.product,
                            "nvidia.com/gpu.count": str(GPUS_PER_NODE),
                            "nvidia.com/gpu.memory": str(acc.memory_mib),
                            "nvidia.com/gpu.present": "true",
                            "type": "kwok",
                            POOL_LABEL: kind.lower(),
                        },
                    },
                    "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                    "status": {
                        "capacity": dict(resources),
                        "allocatable": dict(resources),
                        "addresses": [
                            {"type": "InternalIP", "address": f"127.{cidr_byte}.0.{index}"},
                            {"type": "Hostname", "address": name},
                        ],
                    },
                }
            )
    return out
