"""How the gateway posts to partners (calls to MPPs, webhooks to ACQPs).

Two implementations of one small interface: ``AiohttpLink`` for real servers
(aiohttp's client costs a fraction of httpx's per request, and the gateway makes two
partner calls per payment; see docs/gateway.md, performance), and ``HttpxLink`` over
any httpx transport, which tests use to route to in-process partner apps."""

from __future__ import annotations

from typing import Protocol

import httpx

__all__ = ["AiohttpLink", "HttpxLink", "LinkError", "PartnerLink"]


class LinkError(Exception):
    """The partner could not be reached or did not answer in time."""


class PartnerLink(Protocol):
    async def post(self, url: str, content: bytes, headers: dict[str, str],
                   timeout: float) -> tuple[int, dict[str, str], bytes]: ...

    async def aclose(self) -> None: ...


class HttpxLink:
    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, connections: int = 64) -> None:
        self._client = httpx.AsyncClient(transport=transport, limits=httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections))

    async def post(self, url: str, content: bytes, headers: dict[str, str],
                   timeout: float) -> tuple[int, dict[str, str], bytes]:
        try:
            r = await self._client.post(url, content=content, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise LinkError(type(exc).__name__) from exc
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content

    async def aclose(self) -> None:
        await self._client.aclose()


class AiohttpLink:
    def __init__(self, connections: int = 64) -> None:
        self._connections = connections
        self._session: object | None = None

    def _get(self) -> object:
        from veilpay.sdk.transport import aiohttp_session

        if self._session is None:
            self._session = aiohttp_session(self._connections)
        return self._session

    async def post(self, url: str, content: bytes, headers: dict[str, str],
                   timeout: float) -> tuple[int, dict[str, str], bytes]:
        import aiohttp

        session = self._get()
        try:
            async with session.post(url, data=content, headers=headers,  # type: ignore[attr-defined]
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                body = await r.read()
                return r.status, {k.lower(): v for k, v in r.headers.items()}, body
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LinkError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()  # type: ignore[attr-defined]
