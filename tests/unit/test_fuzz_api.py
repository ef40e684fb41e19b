"""Property test over the API: hostile and edge-case specs never crash the planner or the renderer, and no input
escapes its field. (tests/cluster/test_fuzz_dry_run.py sends a sample of the rendered manifests to the API server.)

Specs are drawn from the API's own fields: each field gets either a value of its type or a hostile string (YAML and
template syntax, quotes, newlines, very long, unicode). Every spec either fails validation (pydantic, the same rules
the CRD has), is refused by the planner with a PlanError, or renders; in every rendered manifest each hostile string
that was accepted appears only as a whole scalar value (never split into keys or other fields).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kimi_operator import planner, render
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.config import OperatorConfig

HOSTILE = [
    "token, name: someone-elses-secret",
    "tok}en",
    "{{ 7*7 }}",
    "{% raw %}",
    "a\nb: c",
    "'\"",
    "- x",
    "[1, 2]",
    "&anchor",
    "*alias",
    "!!python/object",
    "\u202e\u00e9",
    "x" * 600,
    "",
    " ",
    "--tp=4",
    "main/../../etc",
]
QUANTITIES = ["64Gi", "0", "96000m", "1048576Mi", "lots", "-1", "1e3", "700Gi", "100Gi"]
ACCELERATORS = ["H200", "H100", "B200", "MI300X", "TPU", "h200"]

text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
number = st.one_of(st.integers(min_value=-2, max_value=70), st.sampled_from([0, 1, 2, 4, 6, 8, 16, 1024, 262144]))


ABSENT = object()


def field(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = text) -> st.SearchStrategy[Any]:
    """Absent (9 in 20), valid (10 in 20) or hostile (1 in 20), so that specs reach all three outcomes: a validation
    error, a planner refusal and a render (with hostile strings in the fields that accept free text)."""
    return st.integers(min_value=0, max_value=19).flatmap(
        lambda n: st.just(ABSENT) if n < 9 else (good if n < 19 else bad)
    )


name_like = st.sampled_from(["hf-token", "a", "gpu-pool", "x.y"])


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    model = {
        "repo": draw(
            field(
                st.sampled_from(["moonshotai/Kimi-K2.5", "moonshotai/Kimi-K2-Thinking"]), st.sampled_from(["a/b", "x"])
            )
        ),
        "revision": draw(field(st.sampled_from(["main", "v1", "0" * 40]))),
        "servedModelName": draw(field(st.one_of(st.sampled_from(["kimi", "k2"]), text))),
        "tokenSecretRef": draw(
            field(
                st.fixed_dictionaries({"name": name_like, "key": st.sampled_from(["token", "t.k"])}),
                st.fixed_dictionaries({"name": text, "key": text}),
            )
        ),
    }
    topology = {
        "accelerator": draw(
            field(
                st.sampled_from(["H200", "H100", "B200", "MI300X", "MI325X", "H20", "B300"]),
                st.sampled_from(["TPU", "h200"]),
            )
        ),
        "gpusPerNode": draw(field(st.sampled_from([8, 4]), number)),
        "nodesPerReplica": draw(field(st.sampled_from([0, 1, 2]), number)),
        "gpusPerReplica": draw(field(st.sampled_from([0, 4, 8]), number)),
        "nodeSelector": draw(
            field(
                st.dictionaries(
                    st.sampled_from(["pool", "nvidia.com/gpu.product"]),
                    st.sampled_from(["a", "NVIDIA-H100-80GB-HBM3"]),
                    max_size=2,
                ),
                st.dictionaries(text, text, max_size=2),
            )
        ),
        "priorityClassName": draw(field(st.sampled_from(["high"]))),
        "network": draw(
            field(
                st.fixed_dictionaries(
                    {
                        "shmSize": st.sampled_from(["64Gi", "32Gi", "0"]),
                        "rdmaResource": st.sampled_from(["", "rdma/ib"]),
                    }
                ),
                st.fixed_dictionaries({"shmSize": st.sampled_from(QUANTITIES)}),
            )
        ),
    }
    engine = {
        "contextLength": draw(field(st.sampled_from([131072, 65536, 262144]), number)),
        "memFractionStaticPercent": draw(field(st.sampled_from([70, 80, 90]), number)),
        "kvCacheDtype": draw(field(st.sampled_from(["auto", "fp8_e4m3", "bf16"]), st.sampled_from(["int3"]))),
        "dataParallelAttention": draw(field(st.booleans())),
        "pipelineParallel": draw(field(st.booleans())),
        "extraArgs": draw(
            field(
                st.sampled_from([["--chunked-prefill-size", "8192"], ["--max-running-requests=64"]]),
                st.lists(text, max_size=3),
            )
        ),
        "env": draw(
            field(
                st.just([{"name": "NCCL_DEBUG", "value": "INFO"}]),
                st.lists(st.fixed_dictionaries({"name": text, "value": text}), max_size=2),
            )
        ),
        "resources": draw(
            field(
                st.just({"requests": {"cpu": "96000m", "memory": "1Ti"}}),
                st.fixed_dictionaries(
                    {
                        "requests": st.dictionaries(
                            st.sampled_from(["cpu", "memory"]), st.sampled_from(QUANTITIES), max_size=2
                        )
                    }
                ),
            )
        ),
        "speculative": draw(field(st.just({}), st.fixed_dictionaries({"maxRunningRequests": number}))),
    }
    weights = {
        "size": draw(field(st.sampled_from(["700Gi", "1Ti"]), st.sampled_from(QUANTITIES))),
        "retainOnDelete": draw(field(st.booleans())),
    }
    out = {
        "model": model,
        "topology": topology,
        "engine": engine,
        "weights": weights,
        "replicas": draw(field(st.sampled_from([1, 2]), number)),
        "service": {"annotations": draw(field(st.dictionaries(st.sampled_from(["a.io/x", "b"]), text, max_size=2)))},
    }
    spec: dict[str, Any] = _drop_absent(out)
    return spec


def _drop_absent(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_absent(v) for k, v in value.items() if v is not ABSENT}
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _verbatim(raw: dict[str, Any]) -> list[str]:
    """The accepted free-text values that the children carry unchanged."""
    model, engine = raw.get("model", {}), raw.get("engine", {})
    out = list((raw.get("service", {}).get("annotations") or {}).values())
    if isinstance(model.get("tokenSecretRef"), dict):
        out += [model["tokenSecretRef"]["name"], model["tokenSecretRef"]["key"]]
    if model.get("servedModelName"):
        out.append(model["servedModelName"])
    out += [e["value"] for e in engine.get("env") or [] if e.get("value")]
    out += list(engine.get("extraArgs") or [])
    return [v for v in out if isinstance(v, str) and v]


OUTCOMES: dict[str, int] = {"invalid": 0, "refused": 0, "rendered": 0}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_hostile_specs_are_refused_or_render_and_nothing_escapes_its_field(raw: dict[str, Any]) -> None:
    try:
        spec = KimiDeploymentSpec.model_validate(raw)
    except ValidationError:
        OUTCOMES["invalid"] += 1
        return
    try:
        p = planner.plan(spec)
    except planner.PlanError as err:
        assert err.reason and err.message
        OUTCOMES["refused"] += 1
        return
    OUTCOMES["rendered"] += 1
    owner = render.Owner("kd", "ns", "00000000-0000-0000-0000-000000000000")
    config = OperatorConfig()
    manifests = render.render_all(owner, spec, p, config, weights_ready=False) + render.render_all(
        owner, spec, p, config, weights_ready=True
    )
    rendered = set(_strings(manifests))
    for value in _verbatim(raw):
        # a value the manifests carry verbatim is there as one whole scalar, never cut into YAML structure
        assert value in rendered, f"{value!r} did not come through as itself"
    for m in manifests:
        assert isinstance(m, dict) and m["kind"] and m["metadata"]["name"]


def test_the_fuzzer_reached_every_outcome() -> None:
    """Runs after the property test (file order): the generator is not stuck on one branch."""
    print(OUTCOMES)
    assert all(OUTCOMES.values()), OUTCOMES
