"""What one client may hold open at the gateway: deadlines for each request's headers
and body, and how long a keep-alive connection may idle.

uvicorn closes a keep-alive connection that idles for ``timeout_keep_alive``, but it
has no deadline for a request's headers or body: a client that connects and sends
nothing, sends a header line now and then, or declares a Content-Length and sends a
few bytes, holds its socket, a file descriptor (and, once its headers are in, the
request's task) until it leaves; a few hundred such clients exhaust the gateway's
descriptors.

``serve`` runs an app on uvicorn with the gateway's settings (``veilpay gateway
serve``, and the tcp tests): the keep-alive, and a connection whose request headers
are not in ``HEADERS_TIMEOUT_S`` after it opened, or after the request's first byte,
is closed. ``BodyDeadline`` gives each request's body ``seconds`` from the
request's start (its headers read), over all of its pieces, so that a byte sent now
and then does not extend it. Past it the app reads the client as gone (it stores
nothing) and the client gets 408 ``REQUEST_TIMEOUT``, unsigned (its request was
never read), with ``Connection: close``, on which uvicorn closes the socket. An answer sent before its
request's body was read whole (413 on a declared length, 415) closes the connection
too: the rest of that body is never read, and every byte of it a client trickled
would reset the keep-alive timer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veilpay.gateway.codes import result
from veilpay.sdk import wirejson

__all__ = ["BODY_TIMEOUT_S", "HEADERS_TIMEOUT_S", "KEEP_ALIVE_S", "BodyDeadline", "serve"]

# A request's body (at most max_body_bytes, 64 KiB by default) must arrive within
# this many seconds of its headers: about 50 kbit/s for a full 64 KiB.
BODY_TIMEOUT_S = 10.0
# A request's headers must arrive whole within this many seconds of the connection's
# opening (or of the request's first byte, on a kept-alive connection).
HEADERS_TIMEOUT_S = 10.0
# An idle keep-alive connection is closed after this many seconds (uvicorn's default,
# stated here so that it cannot change under us).
KEEP_ALIVE_S = 5

_TIMEOUT_BODY = wirejson.dumps({"result": result("REQUEST_TIMEOUT")})
_CLOSE = (b"connection", b"close")


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class BodyDeadline:
    """ASGI middleware: each HTTP request's body within ``seconds`` of its start, or
    408 and the connection closed (module docstring). ``on_timeout(path)`` is told of
    each request cut off."""

    def __init__(self, app: ASGIApp, seconds: float, on_timeout: Callable[[str], None] | None = None) -> None:
        if not seconds > 0:
            raise ValueError("the body deadline must be positive")
        self.app, self.seconds, self.on_timeout = app, seconds, on_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        read = not _has_body(scope)  # the body is in (or there is none)
        timed_out = started = False

        async def receive_by_deadline() -> Message:
            nonlocal read, timed_out
            if read:
                return await receive()
            if timed_out:
                return {"type": "http.disconnect"}
            try:
                async with asyncio.timeout_at(deadline):
                    msg = await receive()
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}
            read = msg["type"] != "http.request" or not msg.get("more_body", False)
            return msg

        async def send_unless_cut_off(msg: Message) -> None:
            nonlocal started
            if timed_out and not started:
                return  # the app answers a client it saw leave; the 408 goes instead
            if msg["type"] == "http.response.start":
                started = True
                if not read:  # the rest of the body stays unread: no next request on this connection
                    msg = {**msg, "headers": [*msg.get("headers", ()), _CLOSE]}
            await send(msg)

        try:
            await self.app(scope, receive_by_deadline, send_unless_cut_off)
        except Exception:
            if not timed_out or started:
                raise  # a failure of its own; an app that failed on the missing body is answered below
        if timed_out and not started:
            if self.on_timeout is not None:
                self.on_timeout(scope.get("path", ""))
            await send({"type": "http.response.start", "status": 408, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(_TIMEOUT_BODY)).encode()), _CLOSE]})
            await send({"type": "http.response.body", "body": _TIMEOUT_BODY})


def _with_header_deadline(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers are
    not in ``seconds`` after it opened or after the request's first byte."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadline(HttpToolsProtocol):
        _late: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._late is None:
                self._late = self.loop.call_later(seconds, self._headers_late)

        def _disarm(self) -> None:
            if self._late is not None:
                self._late.cancel()
                self._late = None

        def _headers_late(self) -> None:
            self._late = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:  # the request's first byte
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:  # the body's deadline is the app's (BodyDeadline)
            self._disarm()
            super().on_headers_complete()

    return HeaderDeadline


def serve(app: ASGIApp, host: str, port: int) -> None:
    """Run ``app`` on uvicorn (uvloop, httptools) until stopped, with the gateway's
    header deadline and keep-alive; the body deadline is the app's own
    (``BodyDeadline``, which ``create_app`` adds)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, loop="uvloop",
                http=_with_header_deadline(HEADERS_TIMEOUT_S), timeout_keep_alive=KEEP_ALIVE_S,
                timeout_graceful_shutdown=5)
