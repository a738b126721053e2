"""Cutting off slow clients ("slow loris"): a request's headers, and then its body, must arrive
within `--read-timeout` seconds.

Uvicorn has a keep-alive timeout but none for a request being received: a client that sends one
header byte every few seconds keeps its connection (and a file descriptor) forever, and enough of
them exhaust the server. Two pieces close that gap:

- headers: `timed_h11(seconds)` is uvicorn's own h11 protocol (passed as `Config(http=...)`, its
  documented way to choose a protocol class) with a timer armed when a connection opens, and on a
  kept-alive connection when the next request's first bytes come; if that request's headers have
  not been parsed when it fires, the client gets a 408 in OpenAI's error shape and the connection
  is closed;
- body: app.py's guard middleware gives the body the same time once the headers are in (a 408 too).

A slow client never holds a worker thread either way: the routes run in threads only once the whole
body has been read on the event loop.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from lmtune.serve.protocol import error_body

DEFAULT_READ_TIMEOUT = 30.0


def timeout_message(seconds: float, part: str) -> str:
    return (
        f"The request's {part} did not arrive within {seconds:g} seconds (lmtune serve --read-timeout); "
        "the connection is closed."
    )


def timed_h11(seconds: float) -> type[H11Protocol]:
    """Uvicorn's h11 protocol, closing connections whose request headers are not complete in time."""

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            # the first bytes of a next request on a kept-alive connection start its clock (an idle
            # connection is uvicorn's keep-alive timeout's business)
            between_requests = self.cycle is None or self.cycle.response_complete
            timing = getattr(self, "_header_timer", None) is not None and self._waiting_for is self.cycle
            if between_requests and not timing:
                self._arm()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._waiting_for = self.cycle  # a new request's headers make a new cycle
            self._header_timer = self.loop.call_later(seconds, self._too_slow, self._waiting_for)

        def _disarm(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._header_timer = None

        def _too_slow(self, waiting_for: Any) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.cycle is not waiting_for:
                return  # closed already, or the headers came: the body has its own deadline
            if waiting_for is not None and not waiting_for.response_complete:
                return  # still answering the previous request
            body = json.dumps(
                error_body(timeout_message(seconds, "headers"), code="request_timeout")
            ).encode()
            head = (
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)  # raw: h11 cannot answer a request it never parsed
            self.transport.close()

    return TimedH11Protocol
