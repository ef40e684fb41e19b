"""Desired children vs the observed ones -> which to apply and which to delete, and why (drift by value)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kimi_operator import quantity, render
from kimi_operator.reconcile.types import Actions, ChildKey, Manifest, key_of

# Fields whose values the API server stores as normalised quantities (cpu: 96000m -> "96", memory: 1048576Mi ->
# "1Ti", sizeLimit: 65536Mi -> "64Gi"): compared by value, or every resync would see drift and re-apply.
_QUANTITY_PARENTS = frozenset({"requests", "limits", "capacity"})
_QUANTITY_KEYS = frozenset({"sizeLimit", "storage"})


def _same_quantity(desired: Any, observed: Any) -> bool:
    try:
        return quantity.parse(str(desired)) == quantity.parse(str(observed))
    except ValueError:
        return False


def is_subset(desired: Any, observed: Any, *, _key: str = "", _parent: str = "") -> bool:
    """True when every field we set is present with the same value (the server may add defaults, and normalises
    quantities, which are compared by value)."""
    if isinstance(desired, dict):
        if not isinstance(observed, dict):
            return False
        return all(k in observed and is_subset(v, observed[k], _key=k, _parent=_key) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(desired) != len(observed):
            return False
        return all(is_subset(d, o, _parent=_key) for d, o in zip(desired, observed, strict=True))
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return desired == observed
    if str(desired) == str(observed):
        return True
    return (_parent in _QUANTITY_PARENTS or _key in _QUANTITY_KEYS) and _same_quantity(desired, observed)


def pvc_change(desired: Manifest, current: Manifest) -> str:
    """Why the weights PVC must be re-applied ("" when it need not): the retain-on-delete annotation or owner
    reference differ, or the desired size is larger (a PVC never shrinks; a smaller size is left alone)."""
    want_meta, have_meta = desired["metadata"], current.get("metadata") or {}
    want_retain = (want_meta.get("annotations") or {}).get(render.RETAIN_ANNOTATION)
    have_retain = (have_meta.get("annotations") or {}).get(render.RETAIN_ANNOTATION)
    owned = any(r.get("kind") == "KimiDeployment" for r in have_meta.get("ownerReferences") or [])
    if want_retain != have_retain or bool(want_meta.get("ownerReferences")) != owned:
        return f"retain-on-delete {have_retain} -> {want_retain}"
    want = desired["spec"]["resources"]["requests"]["storage"]
    have = ((current.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
    try:
        if have is not None and quantity.parse(want) > quantity.parse(str(have)):
            return f"expand {have} -> {want}"
    except ValueError:
        return ""
    return ""


def writes(
    desired: list[Manifest],
    children: dict[ChildKey, Manifest],
    *,
    job_key: str,
    retry_job: bool,
    keep: Callable[[ChildKey], bool],
) -> Actions:
    """Apply what is missing or drifted, delete what is no longer wanted unless `keep` says otherwise (PVCs are
    never deleted here). A Job's template is immutable: it is replaced (deleted, created on the next reconcile)
    when it downloads another snapshot, or when `retry_job` says its backoff has passed."""
    actions = Actions()
    for m in desired:
        k = key_of(m)
        current = children.get(k)
        if current is None:
            actions.apply.append(m)
            actions.explanation.append(f"create {k[0]}/{k[1]}")
        elif k[0] == "PersistentVolumeClaim":
            # A PVC's spec is immutable but for its size: re-applied only to follow retainOnDelete (its annotation
            # and owner reference: without that a toggle deletes or leaks 600 GB) or a larger weights.size.
            why = pvc_change(m, current)
            if why:
                actions.apply.append(m)
                actions.explanation.append(f"update {k[0]}/{k[1]}: {why}")
        elif k[0] == "Job":
            current_key = (current["metadata"].get("annotations") or {}).get(render.WEIGHTS_KEY_ANNOTATION)
            if current_key != job_key:
                actions.delete.append(k)
                actions.explanation.append(f"replace Job/{k[1]}: {current_key} -> {job_key}")
            elif retry_job:
                actions.delete.append(k)  # recreated on the next reconcile: a fresh set of attempts
                actions.explanation.append(f"retry Job/{k[1]} after its backoff")
        elif not is_subset(m, current):
            actions.apply.append(m)
            actions.explanation.append(f"update {k[0]}/{k[1]} (drifted from the plan)")

    wanted = {key_of(m) for m in desired}
    for k in children:
        if k in wanted or k[0] == "PersistentVolumeClaim" or keep(k):
            continue
        actions.delete.append(k)
        actions.explanation.append(f"delete {k[0]}/{k[1]} (no longer wanted)")
    return actions
