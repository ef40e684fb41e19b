"""engine.kind: vLLM and llama.cpp beside SGLang - validation, the budget planner, rendering, metric names."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kimi_operator import catalog, planner, render, weights
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.autoscaler import sources
from kimi_operator.config import OperatorConfig
from kimi_operator.engine import kinds, llamacpp
from kimi_operator.reasons import Reason

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GGUF = "unsloth/Kimi-K2.5-GGUF"


def gguf_spec(**topology: Any) -> dict[str, Any]:
    return {
        "model": {"repo": GGUF},
        "engine": {"kind": "llamacpp"},
        "topology": {"accelerator": "L40S", "gpusPerNode": 1, "hostMemory": "512Gi", **topology},
    }


def plan(spec: dict[str, Any]) -> planner.Plan:
    return planner.plan(KimiDeploymentSpec.model_validate(spec))


def refusal(spec: dict[str, Any]) -> planner.PlanError:
    with pytest.raises(planner.PlanError) as err:
        plan(spec)
    return err.value


# ------------------------------------------------------------------------------------------------ budget planner
def test_the_largest_quantization_that_fits_is_chosen_with_the_experts_in_ram() -> None:
    p = plan(gguf_spec())
    assert (p.engine, p.quant, p.experts_on_cpu) == ("llamacpp", "UD-Q2_K_XL", True)
    assert p.fetch_include == ("UD-Q2_K_XL/*.gguf", "mmproj-*.gguf")
    assert [r.fits for r in p.budget] == [True, True]
    # the experts (97% of 375 GB) plus the process's 8 GiB are what the pod asks of the node
    assert p.host_memory_bytes == 375 * catalog.GB - round(375 * catalog.GB * 0.03) + 8 * catalog.GIB
    assert planner.engine_requests(p, None) == (16, 347)
    assert p.summary == "1x L40S llama.cpp UD-Q2_K_XL (experts in RAM)"
    # reading 375 GB at 250 MB/s, then 5 min
    assert p.startup_budget_seconds == 1800


def test_less_ram_picks_the_smaller_quantization() -> None:
    p = plan(gguf_spec(hostMemory="256Gi"))
    assert p.quant == "UD-TQ1_0"
    assert [r.quant for r in p.budget if not r.fits] == ["UD-Q2_K_XL"]


def test_ram_plus_vram_below_every_quantization_is_refused_with_the_numbers() -> None:
    err = refusal(gguf_spec(hostMemory="128Gi"))
    assert err.reason == Reason.DOES_NOT_FIT
    assert "UD-TQ1_0 (240 GB)" in err.message and "RAM + VRAM = 128.0 + 45.0 GiB" in err.message


def test_a_named_quantization_that_does_not_fit_names_one_that_does() -> None:
    spec = gguf_spec(hostMemory="256Gi")
    spec["engine"]["quantization"] = "UD-Q2_K_XL"
    err = refusal(spec)
    assert err.reason == Reason.DOES_NOT_FIT and "use engine.quantization: UD-TQ1_0" in err.message
    spec["engine"]["quantization"] = "Q9_NOPE"
    assert "known: UD-TQ1_0, UD-Q2_K_XL" in refusal(spec).message


def test_a_quantization_that_fits_the_gpus_keeps_every_layer_there() -> None:
    p = plan(gguf_spec(accelerator="H200", gpusPerNode=8, hostMemory="64Gi"))
    assert (p.quant, p.experts_on_cpu) == ("UD-Q2_K_XL", False)
    assert "--override-tensor" not in render.engine_command(p, KimiDeploymentSpec.model_validate(gguf_spec()))


def test_llamacpp_needs_host_memory_and_a_gguf_repo() -> None:
    spec = gguf_spec()
    del spec["topology"]["hostMemory"]
    assert "topology.hostMemory is required" in refusal(spec).message
    err = refusal({"engine": {"kind": "llamacpp"}, "topology": {"hostMemory": "512Gi"}})
    assert err.reason == Reason.UNSUPPORTED_BY_ENGINE and f"set model.repo: {GGUF}" in err.message
    err = refusal({"model": {"repo": GGUF}})
    assert "set engine.kind: llamacpp, or model.repo: moonshotai/Kimi-K2.5 for SGLang" in err.message
    spec = gguf_spec()
    spec["engine"]["speculative"] = {}
    assert "engine.speculative is an SGLang/vLLM setting" in refusal(spec).message


def test_budget_only_gpus_are_refused_for_sglang_and_vllm() -> None:
    for kind in ("sglang", "vllm"):
        err = refusal({"engine": {"kind": kind}, "topology": {"accelerator": "RTX4090"}})
        assert "llama.cpp's budget mode only" in err.message


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("kind", "item", "message"),
    [
        ("vllm", "--max_model_len", "--max_model_len is set by the operator for vLLM from the plan; use "),
        ("vllm", "--tensor-parallel-size=4", "--tensor-parallel-size is set by the operator for vLLM"),
        ("vllm", "--max-model", "--max-model (= --max-model-len) is set by the operator for vLLM"),
        ("vllm", "--gpu_memory", "--gpu_memory (= --gpu-memory-utilization) is set by the operator"),
        ("llamacpp", "-ngl", "-ngl is set by the operator for llama.cpp (the planner offloads"),
        ("llamacpp", "--ctx-size=4096", "--ctx-size is set by the operator for llama.cpp from the plan"),
    ],
)
def test_extra_args_the_engine_owns_are_refused(kind: str, item: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        KimiDeploymentSpec.model_validate({"engine": {"kind": kind, "extraArgs": [item, "8"]}})
    assert message in str(err.value)


def test_each_engine_takes_its_own_tunables_and_not_the_others_rules() -> None:
    # an SGLang-owned flag means nothing to vLLM's rule; vLLM's own tunable passes
    KimiDeploymentSpec.model_validate({"engine": {"kind": "vllm", "extraArgs": ["--max-num-seqs", "64"]}})
    KimiDeploymentSpec.model_validate({"engine": {"kind": "llamacpp", "extraArgs": ["--parallel", "4"]}})
    with pytest.raises(ValidationError, match="--tp-size"):
        KimiDeploymentSpec.model_validate({"engine": {"extraArgs": ["--tp-size", "4"]}})


def test_engine_env_and_quantization_rules() -> None:
    with pytest.raises(ValidationError, match=r"LLAMA_ARG_CTX_SIZE sets a llama\.cpp option"):
        KimiDeploymentSpec.model_validate({"engine": {"kind": "llamacpp", "env": [{"name": "LLAMA_ARG_CTX_SIZE"}]}})
    with pytest.raises(ValidationError, match="VLLM_CACHE_ROOT is set by the operator for vLLM"):
        KimiDeploymentSpec.model_validate({"engine": {"kind": "vllm", "env": [{"name": "VLLM_CACHE_ROOT"}]}})
    with pytest.raises(ValidationError, match=r"engine\.quantization picks a GGUF file for engine\.kind llamacpp"):
        KimiDeploymentSpec.model_validate({"engine": {"quantization": "UD-TQ1_0"}})


def test_owned_patterns_match_what_the_models_refuse() -> None:
    import re

    for kind in ("vllm", "llamacpp"):
        pattern = re.compile(kinds.owned_pattern(kind))
        for option in kinds.FACTS[kind].owned_options:
            assert pattern.match(option) and pattern.match(option + "=1"), option
            assert kinds.option_problems(kind, [option]), option
        assert not pattern.match("--max-num-seqs") and not pattern.match("--parallel")
    assert re.match(kinds.owned_pattern("vllm"), "--gpu_memory_utilization=0.5")
    assert re.match(kinds.owned_pattern("vllm"), "--max-model=4096")  # vLLM takes abbreviations
    assert not re.match(kinds.owned_pattern("llamacpp"), "--ctx=4096")  # llama.cpp does not


# ------------------------------------------------------------------------------------------------ rendering
def _children(spec_dict: dict[str, Any], *, weights_ready: bool) -> list[dict[str, Any]]:
    spec = KimiDeploymentSpec.model_validate(spec_dict)
    p = render.pin(planner.plan(spec), spec, OperatorConfig(), commit=COMMIT)
    return render.render_all(render.Owner("kd", "ns", "u"), spec, p, OperatorConfig(), weights_ready=weights_ready)


def _engine_container(children: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [m for m in children if m["kind"] == "Deployment"]
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def test_the_fetch_job_downloads_only_the_chosen_quantization() -> None:
    (job,) = [m for m in _children(gguf_spec(), weights_ready=False) if m["kind"] == "Job"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-4:] == ["--include", "UD-Q2_K_XL/*.gguf", "--include", "mmproj-*.gguf"]
    include = ("UD-Q2_K_XL/*.gguf", "mmproj-*.gguf")
    assert weights.wanted("UD-Q2_K_XL/Kimi-K2.5-UD-Q2_K_XL-00001-of-00008.gguf", include)
    assert weights.wanted("mmproj-F16.gguf", include)
    assert not weights.wanted("UD-TQ1_0/Kimi-K2.5-UD-TQ1_0-00001-of-00005.gguf", include)
    assert not weights.wanted("README.md", include)


def test_llamacpp_pod_requests_the_ram_the_plan_sized_and_threads_follow_the_cpu() -> None:
    container = _engine_container(_children(gguf_spec(), weights_ready=True))
    assert container["name"] == "llamacpp"
    assert container["resources"]["requests"] == {"cpu": "16", "memory": "347Gi", "nvidia.com/gpu": "1"}
    command = container["command"]
    assert command[command.index("--threads") + 1] == "16"
    assert command[command.index("--override-tensor") + 1] == ".ffn_.*_exps.=CPU"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_the_llamacpp_prologue_picks_the_first_shard_and_the_projector(tmp_path: Path) -> None:
    """The rendered `sh -c` prologue, run by a real sh against a directory laid out like the GGUF repo."""
    snap = tmp_path / "snap"
    (snap / "UD-TQ1_0").mkdir(parents=True)
    for name in ("K-UD-TQ1_0-00002-of-00002.gguf", "K-UD-TQ1_0-00001-of-00002.gguf"):
        (snap / "UD-TQ1_0" / name).write_bytes(b"")
    (snap / "mmproj-F16.gguf").write_bytes(b"")
    fake = tmp_path / "bin" / "llama-server"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    spec = KimiDeploymentSpec.model_validate(gguf_spec(hostMemory="256Gi"))
    p = planner.plan(spec).model_copy(update={"revision": COMMIT})
    command = llamacpp.command(p, spec, cpu=4)
    command[command.index(f"/models/{GGUF}/{COMMIT}")] = str(snap)
    command[2] = command[2].replace("$$(", "$(")  # what the kubelet makes of the escape
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=10)
    args = out.stdout.split()
    first = str(snap / "UD-TQ1_0" / "K-UD-TQ1_0-00001-of-00002.gguf")
    assert args[:4] == ["--model", first, "--mmproj", str(snap / "mmproj-F16.gguf")], args
    assert "llama.cpp: serving" in out.stderr
    assert "--alias" in args and args[args.index("--threads") + 1] == "4"
    for f in (snap / "UD-TQ1_0").iterdir():
        f.unlink()
    failed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=10)
    assert failed.returncode == 1 and "no .gguf file under" in failed.stderr


def test_vllm_serving_pod_gets_the_api_key_in_vllms_own_variable() -> None:
    spec = {"engine": {"kind": "vllm"}, "auth": {"apiKeySecretRef": {"name": "key"}}}
    container = _engine_container(_children(spec, weights_ready=True))
    assert container["name"] == "vllm" and container["command"][:2] == ["vllm", "serve"]
    (key,) = [e for e in container["env"] if e["name"] == "VLLM_API_KEY"]
    assert key["valueFrom"] == {"secretKeyRef": {"name": "key", "key": "api-key"}}
    assert "--api-key" not in container["command"]


# ------------------------------------------------------------------------------------------------ autoscaler
@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("sglang", 'sglang:num_queue_reqs{tp_rank="0"} 3\nsglang:num_running_reqs{tp_rank="0"} 2\n'),
        ("vllm", 'vllm:num_requests_waiting{engine="0"} 3\nvllm:num_requests_running{engine="0"} 2\n'),
        ("llamacpp", "llamacpp:requests_deferred 3\nllamacpp:requests_processing 2\n"),
    ],
)
def test_queue_depth_is_read_from_each_engines_own_gauges(kind: str, text: str) -> None:
    assert sources.parse_load(text, kind) == (3.0, 2.0)  # type: ignore[arg-type]
    other = "vllm" if kind != "vllm" else "sglang"
    with pytest.raises(sources.SourceError, match=kinds.FACTS[other].queue_metric):  # type: ignore[index]
        sources.parse_load(text, other)  # type: ignore[arg-type]


def test_the_default_prometheus_query_follows_the_engine() -> None:
    query = 'sum by (pod) (sglang:num_queue_reqs{namespace="$NAMESPACE"})'
    assert sources.default_query(query, "vllm") == 'sum by (pod) (vllm:num_requests_waiting{namespace="$NAMESPACE"})'
    assert sources.default_query(query, "sglang") == query
