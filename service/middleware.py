"""ASGI middleware: request-body size limit enforced while streaming, and request metrics.

The limit is checked against Content-Length before any byte is read, and then the bytes that
actually arrive are counted (chunked uploads, lying headers): past the limit the body is cut
off and the client gets 413, whatever the route was doing with it. Metrics are labelled by the
route template (`/v1/reports/{report_id}`), never the raw path, to keep their number bounded.

A client that goes away before its body has arrived (disconnect mid-upload; a malformed
chunked body, which the server answers with 400 and then reports as a disconnect) is not a
server error: it is logged in one line, counted as status 499 ("client closed request", as
nginx does) and in `metaiqa_client_aborts_total`, and nothing is sent.
"""

import json
import logging
import time
from collections.abc import Callable

from metaiqa.service.metrics import ServiceMetrics
from starlette.requests import ClientDisconnect

log = logging.getLogger("metaiqa.service.middleware")
CLIENT_CLOSED = 499

Scope = dict
ASGIApp = Callable


class _BodyTooLarge(Exception):
    pass


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _is_client_abort(exc: BaseException, state: dict) -> bool:
    """The app failed because the client left: ClientDisconnect (maybe inside an exception
    group), or anything raised after the server told us the client is gone, before a response."""
    if isinstance(exc, ClientDisconnect):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_client_abort(e, state) for e in exc.exceptions)
    return bool(state["disconnected"]) and not state["sent"]


class LimitAndMeasure:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[str], int],
        metrics: ServiceMetrics,
        template_of: Callable[[object], str | None] = lambda r: getattr(r, "path", None),
        fixed_path: Callable[[str], str | None] = lambda p: None,
    ):
        self.app = app
        self.fixed_path = fixed_path
        self.template_of = template_of
        self.limit_for = limit_for
        self.metrics = metrics

    def _record(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        template = (
            (self.template_of(route) if route is not None else self.fixed_path(scope.get("path", "")))
            or ("unmatched" if status == 404 else "other")
        )
        self.metrics.requests.inc(route=template, method=scope.get("method", ""), status=str(status))
        self.metrics.latency.observe(time.perf_counter() - started, route=template)

    def _client_aborted(self, scope: Scope, state: dict, started: float, exc: BaseException) -> None:
        log.info("%s %s: client disconnected after %d body bytes (%s); request abandoned",
                 scope.get("method", ""), scope.get("path", ""), state["received"], type(exc).__name__)
        self.metrics.client_aborts.inc()
        self._record(scope, CLIENT_CLOSED, started)

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        limit = self.limit_for(scope.get("path", ""))
        state = {"status": 500, "sent": False, "received": 0, "too_large": False, "disconnected": False}

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                n = -1
            if n < 0:
                await _send_json(send, 400, f"invalid Content-Length header {declared[:40].decode('latin-1')!r}")
                self._record(scope, 400, started)
                return
            if n > limit:
                await _send_json(send, 413, f"request body is {n} bytes, more than the limit of {limit} bytes")
                self._record(scope, 413, started)
                return

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                state["disconnected"] = True
            elif message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["too_large"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            if state["too_large"]:
                return  # whatever the app answers, the client gets our 413
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["sent"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception as exc:
            if not _is_client_abort(exc, state):
                self._record(scope, 500, started)
                raise
            self._client_aborted(scope, state, started, exc)
            return
        if state["too_large"] and not state["sent"]:
            await _send_json(send, 413, f"request body exceeds the limit of {limit} bytes")
            state["status"] = 413
        self._record(scope, state["status"], started)
