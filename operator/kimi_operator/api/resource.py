"""A KimiDeployment as read from the API server, parsed once into the typed spec and status.

The controller parses each body once; `observe`, `decide` and the autoscaler take this object, so defaults live
only in the models (never repeated as `dict.get(..., default)` on the raw body).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kimi_operator.api.models import Condition, KimiDeploymentSpec, KimiDeploymentStatus


def validation_message(err: ValidationError, prefix: str = "spec") -> str:
    """Each problem on one line-part: `spec.path.to.field: what is wrong`, joined with "; "."""
    parts = []
    for e in err.errors():
        loc = ".".join([prefix, *(str(p) for p in e["loc"])])
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class KimiDeployment:
    body: dict[str, Any]  # the object as read: the status merge patch is computed against its raw status
    spec: KimiDeploymentSpec | None  # None: the spec does not validate (`spec_error` says why)
    spec_error: str
    status: KimiDeploymentStatus

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def uid(self) -> str:
        return str(self.body["metadata"].get("uid") or "")

    @property
    def resource_version(self) -> str:
        return str(self.body["metadata"].get("resourceVersion") or "")

    @property
    def generation(self) -> int:
        return int(self.body["metadata"].get("generation") or 0)

    @property
    def raw_status(self) -> dict[str, Any]:
        out: dict[str, Any] = self.body.get("status") or {}
        return out

    def condition(self, ctype: str) -> Condition | None:
        return next((c for c in self.status.conditions if c.type == ctype), None)


def parse(body: dict[str, Any]) -> KimiDeployment:
    """Parse a KimiDeployment body. An invalid spec is kept as its message (the reconcile reports it); a status
    this version cannot read (written by another version, or by hand) is read as empty and rewritten."""
    spec: KimiDeploymentSpec | None = None
    error = ""
    try:
        spec = KimiDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        error = validation_message(err)
    try:
        status = KimiDeploymentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        status = KimiDeploymentStatus()
    return KimiDeployment(body, spec, error, status)
