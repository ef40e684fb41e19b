"""Cross-field rules of the KimiDeployment API, each written once for both places that enforce it. Pure.

Each rule carries its CEL expression (the CRD's x-kubernetes-validations: the API server refuses the object at
admission) and, unless it compares with the old object, the same predicate in Python (the models' validators: the
operator and the offline `kimi-operator plan/render` refuse what the API server would). A unit test checks every
rule both ways on the same examples.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kimi_operator.engine.flags import OWNED_ENV, SECRET_ENV, SECRET_ENV_SUFFIXES

# Longest name whose children stay valid: Services are DNS-1035 labels (<name>-headless <= 63 characters) and a
# LeaderWorkerSet's StatefulSets <name>-<group> carry a controller-revision-hash label <name>-<group>-<10-char hash>
# that must fit 63 characters with up to 64 groups.
MAX_NAME = 49
NAME_RE = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


@dataclass(frozen=True)
class Rule:
    path: str  # the schema node the rule sits on ("" = the object root)
    cel: str
    message: str
    # The same rule on the parsed node; None: a transition rule (oldSelf), or one a field validator enforces.
    check: Callable[[Any], bool] | None = None


def _name_ok(name: object) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and re.match(NAME_RE, name) is not None


NAME_MESSAGE = (
    f"metadata.name must be a lowercase DNS-1035 label of at most {MAX_NAME} characters (letters, digits and '-', "
    "starting with a letter, ending with a letter or digit, no dots), so that every child name "
    "(<name>-headless, <name>-weights, the LeaderWorkerSet's <name>-<group>) stays valid"
)


def _quoted(names: Any) -> str:
    return "[" + ", ".join(f"'{n}'" for n in sorted(names)) + "]"


RULES: tuple[Rule, ...] = (
    Rule(
        "spec.model",
        "!self.revision.contains('..') && !self.revision.contains('//') && !self.revision.endsWith('/') "
        "&& !self.revision.endsWith('.lock')",
        "model.revision must be a git ref name (a branch, tag or commit): no '..' or '//', not ending in '/' or "
        "'.lock'; it names a directory on the weights volume",
        lambda m: (
            not (".." in m.revision or "//" in m.revision or m.revision.endswith("/") or m.revision.endswith(".lock"))
        ),
    ),
    Rule(
        "spec.engine.env",
        f"self.all(e, !(e.name in {_quoted(OWNED_ENV)}))",
        "engine.env: the operator sets HF_HUB_OFFLINE, HF_HOME, HF_MODULES_CACHE, SGLANG_HEALTH_CHECK_TIMEOUT, "
        "SGLANG_CACHE_DIR and the AMD AITER variables itself; remove them",
    ),
    Rule(
        "spec.engine.env",
        f"self.all(e, !(e.name in {_quoted(SECRET_ENV)}) && "
        + " && ".join(f"!e.name.endsWith('{s}')" for s in SECRET_ENV_SUFFIXES)
        + ")",
        "engine.env: a credential in plain text is visible to anyone who can read pods; put the Hub token in a "
        "Secret and set model.tokenSecretRef",
    ),
    Rule(
        "",
        f"self.metadata.name.size() <= {MAX_NAME} && self.metadata.name.matches('{NAME_RE}')",
        NAME_MESSAGE,
    ),
    Rule(
        "spec.weights",
        "!has(self.existingClaimName) || (!has(self.storageClassName) && !has(self.size))",
        "weights.existingClaimName cannot be combined with storageClassName or size: the operator neither creates "
        "nor resizes a volume you bring; remove one of them",
        lambda w: w.existing_claim_name is None or (w.storage_class_name is None and w.size is None),
    ),
    Rule(
        "spec.weights",
        "has(self.existingClaimName) == has(oldSelf.existingClaimName) && "
        "(!has(self.existingClaimName) || self.existingClaimName == oldSelf.existingClaimName)",
        "weights.existingClaimName is immutable: create a new KimiDeployment to move to another volume",
    ),
    Rule(
        "spec.weights",
        "has(self.storageClassName) == has(oldSelf.storageClassName) && "
        "(!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
        "weights.storageClassName is immutable (a PVC's class cannot change)",
    ),
    Rule(
        "spec.weights",
        "self.accessMode == oldSelf.accessMode",
        "weights.accessMode is immutable (a PVC's access mode cannot change)",
    ),
    Rule(
        "spec.autoscaling",
        "self.minReplicas <= self.maxReplicas",
        "autoscaling: minReplicas must not exceed maxReplicas",
        lambda a: a.min_replicas <= a.max_replicas,
    ),
    Rule(
        "spec.rollout",
        "self.maxSurge > 0 || self.maxUnavailable > 0",
        "rollout: maxSurge and maxUnavailable cannot both be 0 (a rollout could never progress); use "
        "maxUnavailable: 1 when there is no spare GPU node",
        lambda r: r.max_surge > 0 or r.max_unavailable > 0,
    ),
)


def failures(path: str, node: Any) -> list[str]:
    """Messages of the non-transition rules on `path` that `node` (the parsed model) breaks."""
    return [r.message for r in RULES if r.path == path and r.check is not None and not r.check(node)]


def name_problem(name: object) -> str | None:
    return None if _name_ok(name) else f"{NAME_MESSAGE}; got {name!r}"
