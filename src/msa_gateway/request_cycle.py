"""One request's exchange with the application, as uvicorn's httptools cycle runs it, compiled.

``HttpConnection`` builds one ``RequestCycle`` per request: the ASGI ``receive`` and ``send`` of
that request, the state the parser callbacks fill in (body, more body, disconnect) and the state
of the response (started, complete, framing). It does what uvicorn's cycle does, message for
message and byte for byte (tests/unit/test_request_cycle.py runs both on the same messages), so
the gateway's own endpoints are served as under uvicorn. It is compiled rather than uvicorn's
for the request path's sake: uvicorn's is an interpreted object whose constructor (eleven keyword
arguments) and attribute reads from the compiled code around it cost more per request than the
rest of what it does for a proxied answer (``uvicorn_cycle.py`` writes those in one piece).

``MessageEvent`` is ``asyncio.Event`` as the cycle uses it, compiled: asyncio's is interpreted
and its constructor alone (a deque per event) cost more than all a request's other uses of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

Message = dict[str, Any]
App = Callable[[dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Any]

NO_BODY_STATUS = (204, 304)  # answers that never have a body, whatever their head says
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ERROR_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"21"),
    (b"connection", b"close"),
]


def _nothing() -> None:
    """The cycle's ``on_response`` once its application has returned."""


class MessageEvent:
    """``asyncio.Event``'s ``set``, ``clear``, ``is_set`` and ``wait``, for one request's cycle.

    ``wait`` takes the loop given here rather than asking for the running one (on Python 3.11
    that asks the kernel for the pid).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        """Set the flag and wake every waiter (each resumes in a later turn of the loop, as asyncio's)."""
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        if waiters is not None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        """Return True once the flag is set (at once when it is)."""
        if self._value:
            return True
        waiter: asyncio.Future[None] = self._loop.create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        await waiter  # a cancelled waiter stays listed until ``set``, which skips it
        return True


class RequestCycle:
    """The ASGI ``receive``/``send`` of one request and the state both sides of it share."""

    def __init__(  # noqa: PLR0913 - the state uvicorn's cycle is built with, by position
        self,
        scope: dict[str, Any],
        transport: Any,
        flow: Any,
        logger: logging.Logger,
        access_logger: logging.Logger,
        access_log: bool,
        default_headers: list[tuple[bytes, bytes]],
        message_event: MessageEvent,
        expect_100_continue: bool,
        keep_alive: bool,
        on_response: Callable[[], None],
    ) -> None:
        self.scope = scope
        self.transport = transport
        self.flow = flow
        self.logger = logger
        self.access_logger = access_logger
        self.access_log = access_log
        self.default_headers = default_headers
        self.message_event = message_event
        self.on_response = on_response
        self.disconnected = False  # the client went away (or its body was broken)
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.body = bytearray()  # request body received and not yet taken
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None  # None: the response head set no framing (yet)
        self.expected_content_length = 0

    async def run_asgi(self, app: App) -> None:
        """Run ``app``; answer 500, or close, when it fails or leaves the response unfinished."""
        failure: BaseException | None = None
        result: Any = None
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:  # uvicorn's rule: any failure is answered, not raised
            failure = exc
        try:
            await self._settle(failure, result)
        finally:  # only now: a 500 written by ``_settle`` still completes the response on the connection
            self.on_response = _nothing

    async def _settle(self, failure: BaseException | None, result: Any) -> None:
        if failure is not None:
            self.logger.error("Exception in ASGI application\n", exc_info=failure)
            await self._fail(not self.response_started)
        elif result is not None:
            self.logger.error("ASGI callable should return None, but returned '%s'.", result)
            self.transport.close()
        elif not self.response_started and not self.disconnected:
            self.logger.error("ASGI callable returned without starting response.")
            await self._fail(True)
        elif not self.response_complete and not self.disconnected:
            self.logger.error("ASGI callable returned without completing response.")
            self.transport.close()

    async def _fail(self, answer: bool) -> None:
        if answer:
            await self.send_500_response()
        else:
            self.transport.close()

    async def send_500_response(self) -> None:
        await self.send({"type": "http.response.start", "status": 500, "headers": _ERROR_HEADERS})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error", "more_body": False})

    async def send(self, message: Message) -> None:
        """Write the response head, then body parts (chunked unless a length was given)."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self._start(message)
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                )
            self._body(message.get("body", b""), bool(message.get("more_body", False)))
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
            )

    def _start(self, message: Message) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        status: int = message["status"]
        if self.access_log:
            scope = self.scope
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),  # type: ignore[arg-type]  # uvicorn's HTTPScope: the same keys
                scope["method"],
                get_path_with_query_string(scope),  # type: ignore[arg-type]
                scope["http_version"],
                status,
            )
        content = [STATUS_LINE[status]]
        closing = False
        for given, value in [*self.default_headers, *message.get("headers", [])]:
            if HEADER_RE.search(given):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = given.lower()
            closing = self._framing_header(name, value) or closing
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not closing:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in NO_BODY_STATUS:
            self.chunked_encoding = True  # neither Content-Length nor Transfer-Encoding given
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))

    def _framing_header(self, name: bytes, value: bytes) -> bool:
        """Note what a response header says about framing; return whether it is ``Connection: close``."""
        if name == b"content-length" and self.chunked_encoding is None:
            self.expected_content_length = int(value.decode())
            self.chunked_encoding = False
        elif name == b"transfer-encoding" and value.lower() == b"chunked":
            self.expected_content_length = 0
            self.chunked_encoding = True
        elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
            self.keep_alive = False
            return True
        return False

    def _body(self, body: bytes, more_body: bool) -> None:
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more_body:
                content.append(b"0\r\n\r\n")
            self.transport.write(b"".join(content))
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            self.transport.write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    async def receive(self) -> Message:
        """Return the body received so far (waiting for some), or a disconnect once the exchange is over."""
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(_CONTINUE)
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message = {"type": "http.request", "body": bytes(self.body), "more_body": self.more_body}
        self.body = bytearray()
        return message
