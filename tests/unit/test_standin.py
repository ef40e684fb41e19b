"""The stand-in engine (SGLang TEST DOUBLE): the HTTP surface and metrics the operator reads."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kimi_testbed.harness import config_from_argv
from kimi_testbed.standin import GAUGES, EngineConfig, StandinEngine

SGLANG_LABELS = {"model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank"}


@pytest.fixture
def engine() -> Iterator[StandinEngine]:
    with StandinEngine("127.0.0.1", 0, EngineConfig(model_name="kimi-k2.5")) as eng:
        yield eng


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers.items())


def samples(engine: StandinEngine, name: str) -> list[tuple[dict[str, str], float]]:
    status, body, _ = get(engine.url + "/metrics")
    assert status == 200
    out = []
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), sample.value))
    return out


def test_metrics_parse_with_sglang_names_and_labels(engine: StandinEngine) -> None:
    _, body, headers = get(engine.url + "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert set(GAUGES) <= set(families)
    for name in GAUGES:
        assert families[name].type == "gauge"
        (sample,) = families[name].samples
        assert set(sample.labels) == SGLANG_LABELS  # no dp_rank without DP attention, as in SGLang
        assert sample.labels["model_name"] == "kimi-k2.5"
        assert sample.labels["engine_type"] == "unified"
    assert "test double" in headers["Server"]


def test_queue_depth_and_running_requests_show_up(engine: StandinEngine) -> None:
    assert samples(engine, "sglang:num_queue_reqs")[0][1] == 0
    engine.queue_depth = 7
    engine.running_requests = 3
    assert samples(engine, "sglang:num_queue_reqs")[0][1] == 7
    assert samples(engine, "sglang:num_running_reqs")[0][1] == 3


def test_one_sample_per_dp_rank_summing_to_the_queue() -> None:
    with StandinEngine(config=EngineConfig(tp_size=8, dp_size=4, ep_size=8)) as eng:
        eng.queue_depth = 10
        rows = samples(eng, "sglang:num_queue_reqs")
        assert sorted(int(labels["dp_rank"]) for labels, _ in rows) == [0, 1, 2, 3]
        assert sum(value for _, value in rows) == 10
        assert {labels["tp_rank"] for labels, _ in rows} == {"0", "2", "4", "6"}
        eng.set_rank(2, num_queue_reqs=5, num_used_tokens=250_000)
        by_rank = {labels["dp_rank"]: value for labels, value in samples(eng, "sglang:token_usage")}
        assert by_rank["2"] == pytest.approx(0.25)


def test_unhealthy_gives_503_then_recovers(engine: StandinEngine) -> None:
    assert get(engine.url + "/health")[0] == 200
    assert get(engine.url + "/health_generate")[0] == 200
    engine.make_unhealthy()
    assert get(engine.url + "/health")[0] == 503
    assert get(engine.url + "/health_generate")[0] == 503
    engine.make_healthy()
    assert get(engine.url + "/health")[0] == 200


def test_silent_engine_accepts_but_never_answers(engine: StandinEngine) -> None:
    engine.make_silent()
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        get(engine.url + "/health", timeout=0.5)
    engine.make_talkative()
    assert get(engine.url + "/health")[0] == 200


def test_stop_listening_refuses_connections_then_resumes(engine: StandinEngine) -> None:
    conn = http.client.HTTPConnection(engine.host, engine.port, timeout=2)
    conn.request("GET", "/health")
    assert conn.getresponse().read() == b""
    engine.stop_listening()
    with pytest.raises(urllib.error.URLError):
        get(engine.url + "/health", timeout=1)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):  # keep-alive dropped too
        conn.request("GET", "/health")
        conn.getresponse()
    engine.resume()
    assert get(engine.url + "/health")[0] == 200


def test_model_endpoints_and_chat_completion(engine: StandinEngine) -> None:
    _, body, _ = get(engine.url + "/v1/models")
    assert json.loads(body)["data"][0]["id"] == "kimi-k2.5"
    _, body, _ = get(engine.url + "/model_info")
    assert json.loads(body)["model_path"] == "moonshotai/Kimi-K2.5"
    req = urllib.request.Request(
        engine.url + "/v1/chat/completions",
        data=json.dumps({"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hi there"}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        answer = json.loads(resp.read())
    assert answer["object"] == "chat.completion"
    assert "test double" in answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] == 2
    assert engine.requests["/v1/chat/completions"] == 1


def test_engine_shape_read_from_an_sglang_command_line() -> None:
    argv = ["python3", "-m", "sglang.launch_server", "--served-model-name=kimi-k2.5-x", "--tp", "16"]
    argv += ["--dp", "8", "--enable-dp-attention", "--ep-size", "16"]
    cfg = config_from_argv(argv, EngineConfig())
    assert (cfg.model_name, cfg.tp_size, cfg.dp_size, cfg.ep_size) == ("kimi-k2.5-x", 16, 8, 16)
    assert config_from_argv(["--tp", "8", "--dp", "3"], EngineConfig()).dp_size == 1  # inconsistent: ignored


def test_prefix_cache_reports_reuse_like_sglang(engine: StandinEngine) -> None:
    def chat(content: str) -> dict[str, Any]:
        req = urllib.request.Request(
            engine.url + "/v1/chat/completions",
            data=json.dumps({"messages": [{"role": "user", "content": content}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out

    system = " ".join(f"w{i}" for i in range(90))
    assert chat(system + " first question")["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    second = chat(system + " second one")["usage"]
    assert (second["prompt_tokens"], second["prompt_tokens_details"]["cached_tokens"]) == (92, 90)
    assert (engine.prompt_tokens_total, engine.cached_tokens_total) == (184, 90)
    _, body, _ = get(engine.url + "/metrics")
    line = next(ln for ln in body.decode().splitlines() if ln.startswith("sglang:cache_hit_rate{"))
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(90 / 184)


def test_an_api_key_is_checked_like_sglangs_except_on_health_and_metrics(engine: StandinEngine) -> None:
    engine.api_key = "sk-right"
    body = json.dumps({"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def chat(key: str | None) -> int:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        req = urllib.request.Request(engine.url + "/v1/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code

    assert [chat(None), chat("sk-wrong"), chat("sk-right")] == [401, 401, 200]
    assert engine.unauthorized == 2 and engine.completions == 1
    assert get(engine.url + "/health")[0] == 200 and get(engine.url + "/metrics")[0] == 200
    assert get(engine.url + "/v1/models")[0] == 401


@pytest.mark.parametrize("flavor", ["sglang", "vllm", "llamacpp"])
def test_each_engines_metric_names_reach_the_autoscalers_scrape(flavor: str) -> None:
    """The stand-in speaks each engine's queue gauges; the autoscaler's own scrape over HTTP reads them per kind
    (and finds nothing under another engine's names)."""
    from kimi_operator.autoscaler import sources

    with StandinEngine(config=EngineConfig(flavor=flavor, tp_size=8, dp_size=2 if flavor == "sglang" else 1)) as eng:
        eng.queue_depth = 7
        eng.running_requests = 3
        load, error = sources.scrape("pod-0", eng.url + "/metrics", kind=flavor)  # type: ignore[arg-type]
        assert (load.queue, load.running, error) == (7, 3, "")
        other = "sglang" if flavor != "sglang" else "vllm"
        load, error = sources.scrape("pod-0", eng.url + "/metrics", kind=other)  # type: ignore[arg-type]
        assert load.queue is None and "no " in error
