"""An httpx transport that sends through aiohttp's connection pool.

``AsyncGatewayClient(..., transport=AiohttpTransport())`` keeps the SDK's httpx
interface (requests, responses, errors) and swaps only the wire. httpcore's pool
checks every idle connection with a ``poll`` call and re-scans its queue on every
request; at 16 requests in flight that was most of a load generator's CPU per
payment (bench/gateway.py). aiohttp's pool does neither. Errors come back as the
httpx exceptions the SDK already handles (``httpx.TimeoutException``,
``httpx.ConnectError``, ``httpx.TransportError``).

``post_raw`` is the SDK client's own path for its signed POSTs: the same request on
the same pool, without building an httpx request and response around it (together a
fifth of a load generator's CPU per payment)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from yarl import URL

__all__ = ["AiohttpTransport", "RawAnswer", "aiohttp_session"]


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """An HTTP answer as the SDK reads it: status, headers (names lower-case; a header
    sent more than once joined with ", ", as httpx joins them) and body."""

    status_code: int
    headers: dict[str, str]
    content: bytes


def aiohttp_session(connections: int, keepalive_s: float = 30.0) -> aiohttp.ClientSession:
    """A pooled aiohttp session that adds no headers of its own and leaves bodies as sent
    (signatures cover the exact bytes); the SDK's transport and the gateway's partner
    link both use it."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=keepalive_s),
        skip_auto_headers=("User-Agent", "Accept-Encoding"), auto_decompress=False)


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, connections: int = 100, keepalive_s: float = 30.0) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self._connections, self._keepalive = connections, keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, Any], aiohttp.ClientTimeout] = {}
        self._urls: dict[str, URL] = {}

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp_session(self._connections, self._keepalive)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t: dict[str, Any] = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.get("connect"), sock_read=t.get("read"))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                   if k.lower() not in (b"host", b"content-length", b"transfer-encoding")]
        body = await request.aread()
        try:
            async with self._get().request(request.method, str(request.url), data=body or None, headers=headers,
                                           timeout=timeout, allow_redirects=False) as r:
                content = await r.read()
                return httpx.Response(r.status, headers=[(k.decode("latin-1"), v.decode("latin-1"))
                                                         for k, v in r.raw_headers], content=content,
                                      request=request)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}") from exc

    async def post_raw(self, url: str, content: bytes, headers: dict[str, str],
                       timeout: dict[str, Any]) -> RawAnswer:
        """POST ``content`` with ``headers`` (no Host or Content-Length: aiohttp sets
        them), ``timeout`` as httpx's ``Timeout.as_dict()``; the same errors as
        ``handle_async_request``."""
        key = (timeout.get("connect"), timeout.get("read"))
        limits = self._timeouts.get(key)
        if limits is None:
            limits = self._timeouts[key] = aiohttp.ClientTimeout(total=None, sock_connect=key[0], sock_read=key[1])
        target = self._urls.get(url)
        if target is None:
            if len(self._urls) > 256:
                self._urls.clear()
            target = self._urls[url] = URL(url)
        try:
            async with self._get().request("POST", target, data=content or None, headers=headers, timeout=limits,
                                           allow_redirects=False) as r:
                body = await r.read()
                hdrs: dict[str, str] = {}
                for k, v in r.headers.items():
                    name = k.lower()
                    hdrs[name] = f"{hdrs[name]}, {v}" if name in hdrs else v
                return RawAnswer(r.status, hdrs, body)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
