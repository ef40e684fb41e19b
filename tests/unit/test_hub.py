"""hub.Resolver against a tiny local Hub (http.server on 127.0.0.1 answering the model-info API it calls)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kimi_operator.hub import Resolver

REPO = "moonshotai/Kimi-K2.5"
COMMIT = "c" * 40
TOKEN = "hf_not_a_real_token_0123456789"


class Hub:
    """GET /api/models/<org>/<repo>/revision/<revision>: the model info with its sha, as the Hub answers."""

    def __init__(self) -> None:
        self.revisions = {"main": COMMIT, "nosha": ""}
        self.requests: list[tuple[str, str]] = []  # (path, Authorization header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.requests.append((self.path, self.headers.get("Authorization", "")))
                prefix = f"/api/models/{REPO}/revision/"
                revision = self.path.split("?")[0].removeprefix(prefix)
                if revision == "denied":
                    # refused, with a request id that echoes the credentials (a careless proxy): huggingface_hub
                    # puts the request id in the first line of its error, the line the Resolver reports
                    echo = {"X-Request-Id": f"echo {self.headers.get('Authorization')}"}
                    self._answer(403, {"error": "Access denied"}, echo)
                    return
                if not self.path.startswith(prefix) or revision not in hub.revisions:
                    self._answer(404, {"error": "Revision Not Found"}, {"X-Error-Code": "RevisionNotFound"})
                    return
                sha = hub.revisions[revision]
                self._answer(200, {"id": REPO, "modelId": REPO, **({"sha": sha} if sha else {})})

            def _answer(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hub() -> Iterator[Hub]:
    h = Hub()
    thread = threading.Thread(target=h.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


def test_a_branch_resolves_to_its_commit_once_then_from_the_cache(hub: Hub) -> None:
    resolver = Resolver(hub.endpoint)
    assert resolver.resolve(REPO, "main") == (COMMIT, "")
    assert resolver.resolve(REPO, "main") == (COMMIT, "")
    assert [p for p, _ in hub.requests] == [f"/api/models/{REPO}/revision/main"]
    assert hub.requests[0][1] == "", "no token: no Authorization header (and no token read from disk)"


def test_a_commit_needs_no_call(hub: Hub) -> None:
    assert Resolver(hub.endpoint).resolve(REPO, "d" * 40) == ("d" * 40, "")
    assert hub.requests == []


def test_a_revision_the_hub_does_not_have_is_a_definitive_answer(hub: Hub) -> None:
    resolver = Resolver(hub.endpoint)
    assert resolver.resolve(REPO, "v9") == (None, f"the Hub has no revision 'v9' in {REPO}")
    assert resolver.missing(REPO, "v9") and not resolver.missing(REPO, "main")


def test_a_refusal_is_an_error_that_names_the_revision_and_never_the_token(hub: Hub) -> None:
    resolver = Resolver(hub.endpoint)
    commit, error = resolver.resolve(REPO, "denied", token=TOKEN)
    assert commit is None and not resolver.missing(REPO, "denied"), "not definitive: the fetcher decides"
    assert error.startswith(f"cannot resolve {REPO}@denied through the Hub: ")
    assert hub.requests[0][1] == f"Bearer {TOKEN}", "the token is sent"
    assert TOKEN not in error and "(Request ID: echo Bearer ***)" in error, error


def test_an_answer_without_a_commit_is_an_error(hub: Hub) -> None:
    assert Resolver(hub.endpoint).resolve(REPO, "nosha") == (None, f"the Hub returned no commit for {REPO}@nosha")


def test_an_unreachable_hub_is_an_error_not_an_exception() -> None:
    commit, error = Resolver("http://127.0.0.1:9").resolve(REPO, "main")  # the discard port: nothing listens
    assert commit is None and error.startswith(f"cannot resolve {REPO}@main through the Hub: ")


# ------------------------------------------------------------------------------ background mode (the work queue's)
class Gate(Resolver):
    """A Resolver whose Hub answers only when the test opens the gate; counts the asks."""

    def __init__(self, answers: dict[str, tuple[str | None, str, bool]], **kwargs: Any) -> None:
        super().__init__(None, **kwargs)
        self.answers = answers
        self.open = threading.Event()
        self.asks: list[str] = []

    def _ask(self, repo: str, revision: str, token: str | None) -> tuple[str | None, str, bool]:  # noqa: ARG002
        self.asks.append(revision)
        assert self.open.wait(10), "the test never opened the gate"
        return self.answers[revision]


def test_in_the_background_the_caller_never_waits_and_one_ask_serves_every_caller() -> None:
    notified: list[tuple[tuple[str, str], set[Any]]] = []
    done = threading.Event()

    def notify(key: tuple[str, str], waiters: set[Any]) -> None:
        notified.append((key, waiters))
        done.set()

    r = Gate({"main": (COMMIT, "", False)}, background=True, notify=notify)
    assert r.resolve(REPO, "main", waiter=("ns", "a")) == (None, "")  # the Hub hangs: no wait
    assert r.pending(REPO, "main")
    assert r.resolve(REPO, "main", waiter=("ns", "b")) == (None, "")
    r.open.set()
    assert done.wait(10)
    assert r.asks == ["main"], "single-flight: one ask for both"
    assert notified == [((REPO, "main"), {("ns", "a"), ("ns", "b")})], "both waiters are told"
    assert r.resolve(REPO, "main") == (COMMIT, "") and not r.pending(REPO, "main")
    r.close()


def test_a_failed_answer_is_kept_briefly_and_longer_after_each_failure() -> None:
    now = [1000.0]
    r = Gate({"main": (None, "cannot resolve: hub unreachable", False)}, clock=lambda: now[0])
    r.open.set()
    assert r.resolve(REPO, "main")[0] is None and r.asks == ["main"]
    now[0] += 4.9
    r.resolve(REPO, "main")
    assert r.asks == ["main"], "within 5 s of a failure the Hub is not asked again"
    now[0] += 0.2
    r.resolve(REPO, "main")
    assert r.asks == ["main"] * 2, "after 5 s it is"
    now[0] += 9.9
    r.resolve(REPO, "main")
    assert len(r.asks) == 2, "a second failure in a row is kept 10 s"
    now[0] += 0.2
    r.answers["main"] = (COMMIT, "", False)  # the Hub is back
    assert r.resolve(REPO, "main") == (COMMIT, "")
    now[0] += 299
    assert r.resolve(REPO, "main") == (COMMIT, "") and len(r.asks) == 3, "a commit is kept 5 minutes"


def test_in_the_background_an_expired_answer_is_served_while_it_is_asked_again() -> None:
    now = [0.0]
    done = threading.Event()
    r = Gate({"main": (COMMIT, "", False)}, background=True, notify=lambda *_: done.set(), clock=lambda: now[0])
    r.open.set()
    r.resolve(REPO, "main")
    assert done.wait(10)
    done.clear()
    now[0] += 301
    r.answers["main"] = ("e" * 40, "", False)  # the branch moved
    assert r.resolve(REPO, "main") == (COMMIT, ""), "the old answer, not nothing, while the new one is asked"
    assert not r.pending(REPO, "main")
    assert done.wait(10)
    assert r.resolve(REPO, "main") == ("e" * 40, "")
    r.close()


def test_the_resolver_talks_to_its_endpoint_only_never_to_huggingface_co(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured in the operator pod on the real node: huggingface_hub's telemetry looked up huggingface.co first,
    and where that name does not resolve (a mirror, an air-gapped cluster) the first answer took 10.04 s (0.03 s
    without it). Every name the Resolver looks up is recorded here."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)  # as a process without the env var has it
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    assert Resolver(hub.endpoint).resolve(REPO, "v1-telemetry-check")[0] is None  # any ask will do
    assert Resolver(hub.endpoint).resolve(REPO, "main") == (COMMIT, "")
    assert set(looked_up) <= {"127.0.0.1"}, looked_up
