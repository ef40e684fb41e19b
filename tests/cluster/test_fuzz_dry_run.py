"""A sample of the fuzzer's specs (tests/unit/test_fuzz_api.py) against the real API server, server-side dry-run.

Node kind: none (only the API server, the CRD and the LeaderWorkerSet CRD). For each drawn spec that the models
accept: the KimiDeployment itself is accepted by the CRD (schema and CEL: the offline rules are not stricter than
the server's in the other direction either, which would refuse at `kubectl apply` a spec `kimi-operator plan`
passed), and every child the operator would render for it, before and after the weights are ready, is accepted by
the API server as it stands (`kubectl apply --server-side --dry-run=server`: admission, defaulting, validation).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from kimi_operator import planner, render
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.config import OperatorConfig
from tests.unit.test_fuzz_api import _drop_absent, specs

from .support import Kubectl, kd

pytestmark = pytest.mark.cluster

NAMESPACE = "fuzz-dry-run"
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_ns(kubectl: Kubectl, crd_installed: None) -> str:
    kubectl.run("create", "namespace", NAMESPACE, check=False)
    return NAMESPACE


def dry_run(kubectl: Kubectl, objects: list[dict[str, Any]]) -> tuple[bool, str]:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    out = kubectl.run(
        "apply", "--server-side", "--dry-run=server", "--field-manager=fuzz", "-f", "-", stdin=body, check=False
    )
    return out.returncode == 0, out.stderr.strip()


@settings(
    max_examples=60,  # about 20 the models accept, 5 that render (the rest: refused offline, as they should be)
    derandomize=True,  # the same sample every run: a failure here is reproducible
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
@given(raw=specs())
def test_rendered_children_of_fuzzed_specs_are_accepted_by_the_api_server(
    kubectl: Kubectl, fuzz_ns: str, raw: dict[str, Any]
) -> None:
    raw = _drop_absent(raw)
    try:
        spec = KimiDeploymentSpec.model_validate(raw)
    except ValidationError:
        OUTCOMES["invalid"] += 1
        return
    ok, err = dry_run(kubectl, [{**kd("fuzz", **raw), "metadata": {"name": "fuzz", "namespace": fuzz_ns}}])
    assert ok, f"the models accept this spec but the CRD refuses it:\n{json.dumps(raw)[:2000]}\n{err}"
    OUTCOMES["valid"] += 1
    try:
        p = planner.plan(spec)
    except planner.PlanError:
        OUTCOMES["refused"] += 1
        return
    owner = render.Owner("fuzz", fuzz_ns, "00000000-0000-0000-0000-000000000000")
    config = OperatorConfig(operator_image="kimi-operator.local/operator:dry-run")
    manifests = render.render_all(owner, spec, p, config, weights_ready=False)
    manifests += [m for m in render.render_all(owner, spec, p, config, weights_ready=True) if m not in manifests]
    ok, err = dry_run(kubectl, manifests)
    kinds = sorted({m["kind"] for m in manifests})
    assert ok, f"the API server refuses what the operator renders ({kinds}) for:\n{json.dumps(raw)[:2000]}\n{err}"
    OUTCOMES["rendered"] += 1


def test_the_sample_reached_the_api_server() -> None:
    """Runs after the property test (file order): some specs rendered and were dry-run, not all refused early."""
    print(f"fuzz dry-run outcomes: {dict(OUTCOMES)}")
    assert OUTCOMES["valid"] >= 5 and OUTCOMES["rendered"] >= 1, OUTCOMES
