"""A tiny stdlib HTTP(S) client for the supervisor: health checks and the few API calls made while starting.

The supervisor stays light (no kubernetes client import, one thread); tests use the real kubernetes client.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JsonObj = dict[str, Any]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> JsonObj:
        data = json.loads(self.body or b"{}")
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return data

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def request(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    ca_file: Path | None = None,
    timeout: float = 5.0,
) -> Response:
    """Make one request; HTTP error statuses are returned, connection failures raise OSError."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    ctx = tls_context(ca_file) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return Response(resp.status, resp.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, err.read())
    except urllib.error.URLError as err:
        reason = err.reason
        raise OSError(f"{method} {url}: {reason}") from err


@dataclass(frozen=True)
class KubeRest:
    """Bearer-token access to one API server."""

    server: str
    token: str
    ca_file: Path

    def call(
        self,
        method: str,
        path: str,
        obj: JsonObj | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> Response:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if obj is not None:
            data = json.dumps(obj).encode()
            headers["Content-Type"] = content_type
        return request(
            self.server + path, method=method, body=data, headers=headers, ca_file=self.ca_file, timeout=timeout
        )

    def apply(self, path: str, obj: JsonObj, manager: str = "kimi-testbed") -> Response:
        """Server-side apply (JSON is valid YAML, so the apply-patch+yaml content type takes it)."""
        sep = "&" if "?" in path else "?"
        return self.call(
            "PATCH",
            f"{path}{sep}fieldManager={manager}&force=true",
            obj,
            content_type="application/apply-patch+yaml",
            timeout=60.0,
        )
