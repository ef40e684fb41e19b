"""handlers.py's settings for kopf's own API client: watches resume within 2 s of the API server's return, for as
long as an outage lasts, and only the first failed attempt of each request is an ERROR line."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import aiohttp
import kopf
import pytest
from kopf._cogs.clients import api as kopf_api

from kimi_operator.handlers import KOPF_CLIENT_LOGGERS, FirstRetryOnly, WatchBackoffs


def test_backoffs_never_run_out_and_stay_at_two_seconds() -> None:
    b = WatchBackoffs()
    assert list(itertools.islice(b, 6)) == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert list(itertools.islice(b, 3)) == [0.5, 1.0, 2.0], "a fresh iterator per request"
    assert max(itertools.islice(b, 10_000)) == 2.0


def test_kopf_retries_a_request_with_them_and_logs_only_the_first_failure_as_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """kopf's own request() against a server that refuses 5 connections, then answers: it keeps retrying with our
    backoffs (its default gives up after 8), and our filter leaves one ERROR line."""
    slept: list[float] = []
    attempts = 0

    class Response:
        status = 200

    class Session:
        closed = False

        async def request(self, **_: Any) -> Response:
            nonlocal attempts
            attempts += 1
            if attempts <= 5:
                raise aiohttp.ClientConnectionError("Connection refused")
            return Response()

    class Context:
        server = "https://127.0.0.1:6443"
        session = Session()

    async def no_sleep(delay: float) -> None:
        slept.append(delay)

    async def ok(_: Any) -> None:
        return None

    monkeypatch.setattr("kopf._cogs.clients.api.asyncio.sleep", no_sleep)
    monkeypatch.setattr("kopf._cogs.clients.api.errors.check_response", ok)
    settings = kopf.OperatorSettings()
    settings.networking.error_backoffs = WatchBackoffs()
    logger = logging.getLogger(KOPF_CLIENT_LOGGERS[1])
    logger.addFilter(FirstRetryOnly())
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            request = getattr(kopf_api.request, "__wrapped__")  # noqa: B009 - undecorated: the test gives the context
            asyncio.run(request("get", "/api/v1/pods", settings=settings, logger=logger, context=Context()))
    finally:
        logger.filters.clear()
    assert attempts == 6 and slept == [0.5, 1.0, 2.0, 2.0, 2.0]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("Request attempt #1 failed; will retry"), errors


def test_the_operator_gives_kopf_its_identity_so_kopf_never_looks_up_a_user_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real-node e2e caught it: without POD_ID (kopf's peering variable, gone with peering) kopf asked
    getpass.getuser(), and uid 65532 has no passwd entry in the image: every operator pod crash-looped."""
    from kimi_operator import cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setenv("POD_NAME", "kimi-operator-7d9-abc")
    monkeypatch.delenv("POD_ID", raising=False)
    monkeypatch.setenv("KIMI_LEADER_ELECTION_LEASE", "")  # restored after: cli.main sets it for the run
    assert cli.main(["run", "--leader-election-lease", "kimi"]) == 0
    assert seen["identity"] == "kimi-operator-7d9-abc" and seen["standalone"] is True
