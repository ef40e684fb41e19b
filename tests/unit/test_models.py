"""The KimiDeployment models: defaults, wire names, and refusals that name what is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kimi_operator.api.models import KimiDeploymentSpec


def test_empty_spec_defaults_to_k25_on_one_h200_node() -> None:
    spec = KimiDeploymentSpec.model_validate({})
    assert spec.model.repo == "moonshotai/Kimi-K2.5"
    assert spec.topology.accelerator == "H200"
    assert spec.topology.nodes_per_replica == 0
    assert spec.weights.retain_on_delete is True
    assert spec.weights.access_mode == "ReadWriteMany"
    assert spec.rollout.max_surge == 0 and spec.rollout.max_unavailable == 1


def test_wire_names_are_camel_case() -> None:
    spec = KimiDeploymentSpec.model_validate({"engine": {"memFractionStaticPercent": 80, "kvCacheDtype": "fp8_e4m3"}})
    wire = spec.wire()
    assert wire["engine"]["memFractionStaticPercent"] == 80
    assert "mem_fraction_static_percent" not in wire["engine"]


def test_unknown_field_is_refused_not_ignored() -> None:
    with pytest.raises(ValidationError, match="replicaz"):
        KimiDeploymentSpec.model_validate({"replicaz": 2})


@pytest.mark.parametrize(
    ("arg", "said"),
    [
        ("--tp", "--tp (= --tp-size) is set by the operator"),
        ("--tp=4", "--tp (= --tp-size) is set by the operator"),
        ("--model-path", "--model-path is set by the operator"),
        ("--enable-metrics", "--enable-metrics is set by the operator"),
        ("--port=9000", "--port is set by the operator"),
        # What a hostile but realistic user tried (issue 15): aliases, abbreviations and = forms that SGLang's
        # parser maps to a field the plan sets.
        ("--mem-frac=0.95", "--mem-frac (= --mem-fraction-static) is set by the operator"),
        ("--tp-s", "--tp-s (= --tp-size) is set by the operator"),
        ("--model-p=/x", "--model-p (= --model-path) is set by the operator"),
        ("--speculative-draft-model", "(= --speculative-draft-model-path) is set by the operator"),
        ("--pipeline-parallel=2", "(= --pp-size) is set by the operator"),
        ("--model", "--model (= --model-path) is set by the operator"),
        (" --tp=4", "leading or trailing whitespace"),
        ("--tp 4", "holds a flag and a value in one item"),
        ("--m", "--m is ambiguous for SGLang 0.5.23"),
        ("--no-such-flag", "--no-such-flag is not an option of SGLang 0.5.23"),
    ],
)
def test_extra_args_are_judged_by_what_sglangs_parser_maps_them_to(arg: str, said: str) -> None:
    with pytest.raises(ValidationError) as err:
        KimiDeploymentSpec.model_validate({"engine": {"extraArgs": [arg]}})
    assert said in str(err.value)


def test_removed_enable_ep_moe_flag_points_to_expert_parallel() -> None:
    with pytest.raises(ValidationError, match="expertParallel"):
        KimiDeploymentSpec.model_validate({"engine": {"extraArgs": ["--enable-ep-moe"]}})


def test_harmless_extra_args_pass() -> None:
    args = ["--chunked-prefill-size", "8192", "--max-running-requests=64", "--moe-runner-backend", "auto", "-1"]
    spec = KimiDeploymentSpec.model_validate({"engine": {"extraArgs": args}})
    assert spec.engine.extra_args == args


def test_the_crd_rule_refuses_the_same_owned_abbreviations_as_the_models() -> None:
    """The CEL pattern (admission) is generated from the same table: every owned option string, alias and unique
    abbreviation matches it; harmless options do not."""
    import re

    from kimi_operator.engine import flags
    from kimi_operator.engine.sglang_flags import OPTIONS

    pattern = re.compile(flags.owned_pattern())
    for arg in ["--tp=4", "--mem-frac=0.95", "--model-p=/x", "--pipeline-parallel=2", "--tp-size 4", "--model"]:
        assert pattern.match(arg), arg
    for arg in ["--chunked-prefill-size=8192", "--max-running-requests", "--moe-runner-backend", "--mamba-backend"]:
        assert not pattern.match(arg), arg
    for option, dest in OPTIONS.items():
        assert bool(pattern.match(option)) == (dest in flags.OWNED_DESTS), option


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"replicas": -1}, "replicas"),
        ({"model": {"repo": "not a repo"}}, "repo"),
        ({"weights": {"size": "lots"}}, "size"),
        ({"engine": {"memFractionStaticPercent": 99}}, "memFractionStaticPercent"),
        ({"engine": {"kvCacheDtype": "int2"}}, "kvCacheDtype"),
    ],
)
def test_bad_values_are_refused(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        KimiDeploymentSpec.model_validate(patch)


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("HF_TOKEN", "store it in a Secret and set model.tokenSecretRef"),
        ("OPENAI_API_KEY", "looks like a credential"),
        ("HF_HUB_OFFLINE", "HF_HUB_OFFLINE is set by the operator"),
        ("SGLANG_CACHE_DIR", "SGLANG_CACHE_DIR is set by the operator"),
    ],
)
def test_engine_env_refuses_credentials_and_names_the_operator_owns(name: str, said: str) -> None:
    with pytest.raises(ValidationError, match=said):
        KimiDeploymentSpec.model_validate({"engine": {"env": [{"name": name, "value": "x"}]}})


def test_engine_resources_are_typed_quantities() -> None:
    with pytest.raises(ValidationError):
        KimiDeploymentSpec.model_validate({"engine": {"resources": {"requests": "lots"}}})
    with pytest.raises(ValidationError):
        KimiDeploymentSpec.model_validate({"engine": {"resources": {"requests": {"cpu": "lots"}}}})
    ok = KimiDeploymentSpec.model_validate({"engine": {"resources": {"requests": {"cpu": "96000m", "memory": "1Ti"}}}})
    assert ok.engine.resources is not None and ok.engine.resources.requests["cpu"] == "96000m"


def test_every_cross_field_rule_has_cel_and_the_python_rules_agree_with_the_examples() -> None:
    from kimi_operator.api import rules

    assert all(r.cel and r.message for r in rules.RULES)
    assert rules.name_problem("kimi-k25") is None
    assert rules.name_problem("my.model") and rules.name_problem("a" * 50) and rules.name_problem("9lives")


@pytest.mark.parametrize("revision", ["main/../../etc", "a//b", "x/", "v1.lock"])
def test_a_revision_that_could_leave_its_directory_is_refused(revision: str) -> None:
    with pytest.raises(ValidationError, match="git ref name"):
        KimiDeploymentSpec.model_validate({"model": {"revision": revision}})
    for ok in ("main", "v1.0", "refs/pr/1", "0" * 40):
        KimiDeploymentSpec.model_validate({"model": {"revision": ok}})
