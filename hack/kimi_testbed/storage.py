"""Storage for the test bed: the control plane has no provisioner, so a weights claim binds only to a
PersistentVolume made for it (pre-bound with claimRef).

- ``prebound_pv``: for kwok pods; its hostPath is never written (kwok runs no container).
- ``node_local_pv``: for the real node; a real directory on this machine (the real node's host), owned by the uid
  that will write it (the kubelet applies no fsGroup to hostPath volumes), with node affinity to the real node so
  every pod that mounts the claim is scheduled there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

HOSTPATH_ROOT = Path("/tmp/kimi-testbed")


def prebound_pv(namespace: str, claim: str, size: str = "2Ti") -> dict[str, Any]:
    """A ReadWriteMany PersistentVolume that only `namespace/claim` can bind."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{claim}", "labels": {"kimi-testbed/namespace": namespace}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/tmp/kimi-testbed/{namespace}/{claim}"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }


def node_local_dir(namespace: str, claim: str, uid: int = 65532) -> Path:
    """The directory behind node_local_pv, created (empty) and owned by ``uid``:``uid``."""
    path = HOSTPATH_ROOT / namespace / claim
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    path.chmod(0o755)
    return path


def node_local_pv(
    namespace: str, claim: str, node_labels: dict[str, str], path: Path, size: str = "2Ti"
) -> dict[str, Any]:
    """A ReadWriteMany hostPath PersistentVolume at ``path`` that only ``namespace/claim`` binds, usable only on
    nodes with ``node_labels`` (the real node)."""
    pv = prebound_pv(namespace, claim, size)
    pv["spec"]["hostPath"] = {"path": str(path), "type": "Directory"}
    pv["spec"]["nodeAffinity"] = {
        "required": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in node_labels.items()]}
            ]
        }
    }
    return pv
