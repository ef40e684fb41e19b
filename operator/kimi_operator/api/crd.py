"""Generate the KimiDeployment CustomResourceDefinition from the pydantic models.

`python -m kimi_operator.api.crd --write crds/` (make crds) writes the file; a unit test fails when the committed
file differs from this output. Transformations: $refs inlined, titles dropped, Optional[X] -> X (not required),
free-form dicts -> x-kubernetes-preserve-unknown-fields, nested defaulted objects get `default: {}` so the API
server applies nested defaults, CEL rules for cross-field checks and immutable fields.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel

from kimi_operator import catalog
from kimi_operator.api.models import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ApiModel,
    KimiDeploymentSpec,
    KimiDeploymentStatus,
)
from kimi_operator.api.rules import RULES
from kimi_operator.engine import kinds
from kimi_operator.engine.flags import owned_pattern

Schema = dict[str, Any]

# Owned SGLang options with their aliases and unambiguous abbreviations (engine/flags.py, from SGLang's own parser).
OWNED_FLAGS_RE = owned_pattern()

# CEL rules, keyed by the dotted path of the schema node they sit on ("" = the object root): the cross-field rules
# from api/rules.py (written once, also enforced by the models) and the extraArgs patterns.
CEL_RULES: dict[str, list[dict[str, str]]] = {}
for _rule in RULES:
    CEL_RULES.setdefault(_rule.path, []).append({"rule": _rule.cel, "message": _rule.message})
CEL_RULES.setdefault("spec.engine", []).extend(
    [
        {
            "rule": "self.kind != 'sglang' || !has(self.extraArgs) || "
            f"self.extraArgs.all(a, !a.matches('{OWNED_FLAGS_RE}'))",
            "messageExpression": "'engine.extraArgs: ' + self.extraArgs.filter(a, a.matches('"
            + OWNED_FLAGS_RE
            + "'))[0] + ' is set by the operator from the plan; use the matching spec field "
            "(model, topology or engine) instead'",
        },
        {
            "rule": "self.kind != 'sglang' || !has(self.extraArgs) || "
            "self.extraArgs.all(a, !a.startsWith('--enable-ep-moe'))",
            "message": "engine.extraArgs: --enable-ep-moe was removed from SGLang; set engine.expertParallel: true",
        },
        *(
            {
                "rule": f"self.kind != '{kind}' || !has(self.extraArgs) || "
                f"self.extraArgs.all(a, !a.matches('{kinds.owned_pattern(kind)}'))",
                "messageExpression": "'engine.extraArgs: ' + self.extraArgs.filter(a, a.matches('"
                + kinds.owned_pattern(kind)
                + f"'))[0] + ' is set by the operator for {kinds.FACTS[kind].display} from the plan; use the matching "
                "spec field (model, topology or engine) instead'",
            }
            for kind in kinds.KINDS
            if kind != "sglang"
        ),
        *(
            {
                "rule": f"self.kind != '{kind}' || !has(self.env) || self.env.all(e, !(e.name in "
                + "["
                + ", ".join(f"'{n}'" for n in sorted(kinds.FACTS[kind].owned_env))
                + "])"
                + "".join(f" && !e.name.startsWith('{p}')" for p in kinds.FACTS[kind].owned_env_prefixes)
                + ")",
                "message": f"engine.env: the operator sets {', '.join(sorted(kinds.FACTS[kind].owned_env))} for "
                f"{kinds.FACTS[kind].display}"
                + (
                    f", and {kinds.FACTS[kind].owned_env_prefixes[0]}* variables would set its options behind the "
                    "operator's back (use engine.extraArgs)"
                    if kinds.FACTS[kind].owned_env_prefixes
                    else ""
                )
                + "; remove them",
            }
            for kind in kinds.KINDS
            if kind != "sglang"
        ),
        {
            "rule": "self.kind == 'llamacpp' || !has(self.quantization)",
            "message": "engine.quantization picks a GGUF file for engine.kind llamacpp; remove it",
        },
    ]
)
CEL_RULES["spec.engine.extraArgs"] = [
    {
        "rule": "self.all(a, !a.startsWith(' ') && !a.endsWith(' '))",
        "message": "engine.extraArgs: an item has leading or trailing spaces; remove them",
    },
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready", "description": "Ready/desired replicas"},
    {
        "name": "Status",
        "type": "string",
        "jsonPath": ".status.state",
        "description": "The Ready reason, or a starting replica's phase, progress and ETA (Loading 45% ETA 3m)",
    },
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.repo"},
    {"name": "Weights", "type": "string", "jsonPath": ".status.weights.progress", "description": "Download"},
    {
        "name": "Queue",
        "type": "integer",
        "jsonPath": ".status.autoscaler.queueDepth",
        "description": "Queued requests",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Plan", "type": "string", "jsonPath": ".status.plan.summary", "priority": 1},
    {
        "name": "Gateway",
        "type": "string",
        "jsonPath": ".status.gateway.summary",
        "priority": 1,
        "description": "Whether a gateway serves, and the workers it sees",
    },
]


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    """Inline $refs recursively."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            merged = copy.deepcopy(defs[name])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            merged.update(extra)
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: Schema) -> Schema:
    """Turn a (resolved) pydantic JSON schema node into a structural Kubernetes OpenAPI v3 schema node."""
    node = dict(node)
    node.pop("title", None)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unsupported union in schema: {any_of}")
        inner = _structural(non_null[0])
        for key in ("description", "default"):
            if key in node and node[key] is not None:
                inner[key] = node[key]
        return inner
    if node.get("default", "missing") is None:
        node.pop("default")
    kind = node.get("type")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if kind == "object":
        props = node.get("properties")
        if props is not None:
            node["properties"] = {k: _structural(v) for k, v in props.items()}
            node.pop("additionalProperties", None)
        else:
            extra = node.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                node["additionalProperties"] = _structural(extra)
            else:
                node.pop("additionalProperties", None)
                node["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        node["items"] = _structural(node.get("items", {}))
    if "maxLength" in node and kind != "string":
        node.pop("maxLength")
    return node


def _object_defaults(model: type[BaseModel], node: Schema) -> None:
    """Give each nested object that the model always fills (default_factory) its full default value.

    The API server applies a default only where a field is absent, and evaluates CEL rules against it, so the
    default of an object must be complete (`{}` would skip its own fields' defaults and fail rules that read them).
    """
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = node.get("properties", {}).get(alias)
        if prop is None:
            continue
        sub = _model_class(field.annotation)
        if sub is None or prop.get("type") != "object":
            continue  # scalars, maps and lists keep pydantic's own default
        if field.default_factory is not None:
            prop["default"] = sub().wire()
        _object_defaults(sub, prop)


def _model_class(annotation: Any) -> type[ApiModel] | None:
    candidates = [annotation, *get_args(annotation)]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, ApiModel):
            return c
    return None


def _attach(schema: Schema, path: str, rules: list[dict[str, str]]) -> None:
    parts = path.split(".")
    node = schema
    for part in parts:
        node = node["properties"][part]
    node["x-kubernetes-validations"] = rules


def _pydantic_schema(model: type[Any]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def spec_schema() -> Schema:
    schema = _pydantic_schema(KimiDeploymentSpec)
    _object_defaults(KimiDeploymentSpec, schema)
    schema["properties"]["topology"]["properties"]["accelerator"]["enum"] = sorted(catalog.ACCELERATORS)
    wrapper: Schema = {"properties": {"spec": schema}}
    for path, rules in CEL_RULES.items():
        if path:
            _attach(wrapper, path, rules)
    return schema


def status_schema() -> Schema:
    schema = _pydantic_schema(KimiDeploymentStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "kimi-operator",
                "app.kubernetes.io/part-of": "kimi-operator",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "kimi"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "KimiDeployment serves a Kimi checkpoint with SGLang.",
                            "x-kubernetes-validations": CEL_RULES.get("", []),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {**spec_schema(), "default": KimiDeploymentSpec().wire()},
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `make crds` from operator/kimi_operator/api/models.py. Do not edit by hand.\n"
FILENAME = f"{GROUP}_{PLURAL}.yaml"


def render_crd_yaml() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", metavar="DIR", help="write the CRD into DIR instead of stdout")
    args = parser.parse_args(argv)
    text = render_crd_yaml()
    if args.write:
        out = Path(args.write) / FILENAME
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
