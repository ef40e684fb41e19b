"""SGLang command lines, environment and probes from the plan."""

from __future__ import annotations

from typing import Any

import pytest

from kimi_operator import planner
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.engine import flags, sglang


def _args(**spec: Any) -> list[str]:
    s = KimiDeploymentSpec.model_validate(spec)
    return sglang.server_args(planner.plan(s), s)


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_tp8_line_has_kimi_parsers_metrics_and_multithreaded_load() -> None:
    args = _args()
    assert _value(args, "--tp-size") == "8"
    assert _value(args, "--tool-call-parser") == "kimi_k2"
    assert _value(args, "--reasoning-parser") == "kimi_k2"
    assert "--trust-remote-code" in args and "--enable-metrics" in args
    assert _value(args, "--model-path") == "/models/moonshotai/Kimi-K2.5/main"
    assert '"enable_multithread_load":true' in _value(args, "--model-loader-extra-config")
    assert "--ep-size" not in args and "--attn-dp-size" not in args


def test_each_owned_flag_appears_at_most_once() -> None:
    args = _args(engine={"dataParallelAttention": True, "expertParallel": True, "kvCacheDtype": "fp8_e4m3"})
    dests = [flags.resolve(a.split("=", 1)[0])[0] for a in args if a.startswith("--")]
    assert len(dests) == len(set(dests)), "a ServerArgs field is set twice"


def test_dp_attention_reports_metrics_from_every_scheduler() -> None:
    args = _args(engine={"dataParallelAttention": True})
    assert "--dp-size" not in args, "0.5.23 refuses --dp-size N with --attn-dp-size N (whole extra model copies)"
    assert _value(args, "--attn-dp-size") == "8"
    assert _value(args, "--chunked-prefill-size") == "32768"
    assert "--enable-metrics-for-all-schedulers" in args


def test_extra_args_come_last_verbatim() -> None:
    assert _args(engine={"extraArgs": ["--chunked-prefill-size", "8192"]})[-2:] == [
        "--chunked-prefill-size",
        "8192",
    ]


def test_eagle3_defaults_to_the_mla_draft_caps_requests_and_sets_no_unread_env() -> None:
    spec = KimiDeploymentSpec.model_validate({"engine": {"speculative": {}}})
    p = planner.plan(spec)
    args = sglang.server_args(p, spec)
    assert _value(args, "--speculative-algorithm") == "EAGLE3"
    assert _value(args, "--speculative-draft-model-path") == "/models/lightseekorg/kimi-k2.5-eagle3-mla/main"
    assert _value(args, "--max-running-requests") == "48"
    names = {e["name"] for e in sglang.env(p, spec)}
    assert "SGLANG_ENABLE_SPEC_V2" not in names  # read nowhere in the 0.5.23 wheel


def test_multi_node_sets_a_rendezvous_timeout_and_pipeline_stages() -> None:
    spec = KimiDeploymentSpec.model_validate({"topology": {"accelerator": "H100"}})
    args = sglang.server_args(planner.plan(spec), spec, multi_node=True)
    assert _value(args, "--pp-size") == "2"
    assert _value(args, "--dist-timeout") == "3600"


def test_kernel_cache_lives_on_the_weights_volume_per_image() -> None:
    spec = KimiDeploymentSpec()
    p = planner.plan(spec)
    assert {"name": "SGLANG_CACHE_DIR", "value": "/cache/sglang"} in sglang.env(p, spec)
    assert sglang.kernel_cache_subpath("lmsysorg/sglang:v0.5.23") == ".kernel-cache/lmsysorg_sglang_v0.5.23"


def test_probes_outlast_sglang_health_timeout_and_startup_covers_the_load_budget() -> None:
    p = planner.plan(KimiDeploymentSpec())
    probes = sglang.probes(p)
    for probe in probes.values():
        assert probe["timeoutSeconds"] > 20
        assert probe["httpGet"]["path"] == "/health"
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= p.startup_budget_seconds


def test_user_env_cannot_override_offline_mode_it_is_refused_not_dropped() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="HF_HUB_OFFLINE is set by the operator"):
        KimiDeploymentSpec.model_validate({"engine": {"env": [{"name": "HF_HUB_OFFLINE", "value": "0"}]}})
    spec = KimiDeploymentSpec.model_validate({"engine": {"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]}})
    env = sglang.env(planner.plan(spec), spec)
    assert [e for e in env if e["name"] == "HF_HUB_OFFLINE"] == [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in env
    owned = {
        e["name"]
        for e in sglang.env(
            planner.plan(KimiDeploymentSpec.model_validate({"topology": {"accelerator": "MI300X"}})), spec
        )
    }
    assert owned - {"NCCL_DEBUG"} <= set(flags.OWNED_ENV), "every env name the operator sets is refused in engine.env"
