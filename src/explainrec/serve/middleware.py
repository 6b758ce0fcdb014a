"""ASGI middleware: every request's id, phase check, metrics and log line (:class:`RequestContext`), and the body's
size and time limits (:class:`BodyLimit`).

Plain ASGI classes rather than Starlette's ``BaseHTTPMiddleware``, which buffers streamed answers and hides the
client's disconnect from the routes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from starlette.responses import JSONResponse
from starlette.routing import Match

access_log = logging.getLogger("explainrec.serve.access")
ERRORS = {400: "bad_json", 401: "auth", 404: "not_found", 405: "method_not_allowed", 408: "body_timeout",
          413: "too_large", 415: "unsupported_media_type", 429: "queue_full", 503: "unavailable", 504: "timeout"}
PROBES = ("/healthz", "/readyz", "/metrics")  # polled every few seconds: logged only on a 500 (a bug)
REQUEST_ID_CHARS = 128


def error(status: int, message: str, error_type: str | None = None, field: str | None = None,
          headers: dict | None = None) -> JSONResponse:
    """Every refusal's body: ``{"error", "error_type", "field"}``."""
    return JSONResponse({"error": message, "error_type": error_type or ERRORS.get(status, "error"), "field": field},
                        status_code=status, headers=headers)


def request_id_of(headers: dict[bytes, bytes]) -> str:
    """The client's ``X-Request-Id`` when it is a sane token (visible ASCII, at most 128 characters), else a new
    one: the id ends up in logs and headers, so nothing that could forge a log line is echoed."""
    given = headers.get(b"x-request-id", b"")
    if 0 < len(given) <= REQUEST_ID_CHARS and all(0x21 <= b <= 0x7E for b in given):
        return given.decode("ascii")
    return uuid.uuid4().hex


class RequestContext:
    """Outermost: gives each request an id (``request.state.request_id``, echoed in ``X-Request-Id``), answers 503
    on ``/v1`` while the model loads or the server drains, counts requests in flight for the drain, and after the
    answer records the metrics and writes one log line (with what the route put into ``request.state.log``)."""

    def __init__(self, app, lifecycle, routes: list, log_requests: bool = True):
        """``routes``: the app's routes, to name a request's route by its template."""
        self.app, self.lifecycle, self.routes, self.log_requests = app, lifecycle, routes, log_requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = request_id_of(headers)
        scope.setdefault("state", {}).update(request_id=request_id, log={})
        status = 500  # what an exception escaping the app becomes
        draining = self.lifecycle.phase == "draining"

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                if draining or self.lifecycle.phase == "draining":
                    extra.append((b"connection", b"close"))  # clients reconnect to a server that stays
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        self.lifecycle.in_flight += 1
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.lifecycle.in_flight -= 1
            seconds = time.perf_counter() - start
            route = self._route(scope)
            self.lifecycle.metrics.request(route, status, seconds)
            if self.log_requests and (route not in PROBES or status == 500):
                self._log(scope, request_id, route, status, seconds)

    def _refusal(self, scope):
        """503 for the API while the model loads or the server drains (preflights pass: CORS answers them)."""
        phase = self.lifecycle.phase
        if phase == "ready" or not scope["path"].startswith("/v1/") or scope.get("method") == "OPTIONS":
            return None
        if self.lifecycle.load_error is not None:
            return error(503, "the model failed to load; the server is stopping", "unavailable")
        if phase == "loading":
            return error(503, "the model is still loading", "unavailable", headers={"Retry-After": "5"})
        return error(503, "the server is shutting down; retry elsewhere", "unavailable",
                     headers={"Retry-After": "1"})

    def _route(self, scope) -> str:
        """The template of the route the path belongs to (``/static/{name}``), else ``unmatched``."""
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                return route.path
        return "unmatched"

    def _log(self, scope, request_id: str, route: str, status: int, seconds: float) -> None:
        client = scope.get("client") or ("", 0)
        fields = {"request_id": request_id, "method": scope.get("method"), "path": scope["path"], "route": route,
                  "status": status, "ms": round(seconds * 1000, 1), "client": client[0],
                  **scope["state"].get("log", {})}
        level = logging.ERROR if status == 500 else logging.WARNING if status >= 500 else logging.INFO
        access_log.log(level, "%s %s %d", scope.get("method"), scope["path"], status, extra={"fields": fields})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (413) or not complete within ``timeout_s`` of the request's start
    (408; a client that announces a body and stalls would otherwise hold its connection and task for ever), before
    any route parses them."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await error(400, "Content-Length is not a number", "bad_request")(scope, receive, send)
            if int(length) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0  # a chunked body (no Content-Length) is counted as it arrives
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                response = error(408, f"the request body did not arrive within {self.timeout_s:g} s",
                                 headers={"Connection": "close"})
                return await response(scope, receive, send)
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # afterwards: the client's disconnect

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        response = error(413, f"request body larger than {self.max_bytes} bytes", headers={"Connection": "close"})
        return await response(scope, receive, send)


class StderrHandler(logging.StreamHandler):
    """A handler on ``sys.stderr`` as it is when a record is written, not when logging was configured: a caller
    that swaps the stream for a while (a test runner, an embedding application) and closes its copy afterwards
    must not leave the server's loggers writing into a closed file."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler sets it in __init__; the current sys.stderr is always used
        pass


class LogFormatter(logging.Formatter):
    """One line per record: ``text`` (``time level message key=value ...``) or ``json`` (one object per line)."""

    def __init__(self, style: str = "text"):
        super().__init__()
        self.json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        if self.json:
            out = {"time": when, "level": record.levelname.lower(), "logger": record.name,
                   "message": record.getMessage(), **fields}
            if record.exc_info:
                out["traceback"] = self.formatException(record.exc_info)
            return json.dumps(out, ensure_ascii=False, default=str)
        text = f"{when} {record.levelname:<7} {record.getMessage()}"
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items()
                                   if k not in ("method", "path", "status") and v is not None)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text
