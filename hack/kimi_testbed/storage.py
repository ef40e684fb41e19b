"""Simulated storage for the test bed: the control plane has no provisioner, so a weights claim binds only to a
PersistentVolume made for it (pre-bound with claimRef). hostPath: nothing is ever written there by kwok pods."""

from __future__ import annotations

from typing import Any


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
