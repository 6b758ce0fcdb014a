"""The FastAPI application: routes, error shapes, the body-size limit and the optional API key.

Every refusal is JSON ``{"error", "error_type", "field"}`` with a 4xx status: 422 for a value out of range or of
the wrong type (``field`` names it, dotted when nested: ``pairs.2.user``), 400 for a body that is not JSON, 413 for
a body over the limit, 429 (with ``Retry-After``) when the queue is full, 401 for a missing or wrong key, 504 when a
request's time runs out. A 500 means a bug.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from explainrec.serve.batcher import END, Job, QueueFull
from explainrec.serve.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    FieldError,
    Health,
    SearchResponse,
    generation_config,
)
from explainrec.serve.service import COLD_START_NOTE, Service

log = logging.getLogger("explainrec.serve")
ROW_FIELDS = ("user", "item", "prediction", "cold_start")
# The page may load only what this server serves (no CDN, no fonts, nothing from outside).
PAGE_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
ERRORS = {400: "bad_request", 401: "auth", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
          415: "unsupported_media_type", 429: "queue_full", 503: "unavailable", 504: "timeout"}
REFUSALS = {code: {"model": ErrorBody} for code in (400, 401, 413, 422, 429, 504)}


def error(status: int, message: str, error_type: str | None = None, field: str | None = None,
          headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type or ERRORS.get(status, "error"), "field": field},
                        status_code=status, headers=headers)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before any route parses them (ASGI middleware)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await error(400, "Content-Length is not a number")(scope, receive, send)
            if int(length) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0  # a chunked body (no Content-Length) is counted as it arrives
        while True:
            message = await receive()
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


def jsonable(value: Any) -> Any:
    """A method's extra row field as plain JSON (tensors, numpy values, tuples, dataclasses; NaN -> null)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return str(value)


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")]
    return ".".join(parts) or "body"


def create_app(service: Service) -> FastAPI:
    """The ASGI app serving ``service`` (its batcher starts with the app, or on the first request)."""
    from explainrec import __version__

    settings = service.settings
    batcher = service.batcher

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="explainrec", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Explainable recommendation: why would this user like this item? Requests arriving "
                              "together are generated in one batch. The page at / uses this API.")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        """The API reference, rendered here from the OpenAPI schema (Swagger UI would load its code from a CDN)."""
        return HTMLResponse(render_docs(app.openapi()))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    # ------------------------------------------------------------------ error shapes

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                         "bad_json")
        message = first.get("msg", "invalid request")
        return error(422, message, "validation", _field_of(tuple(first.get("loc", ()))))

    @app.exception_handler(FieldError)
    async def refused(_request, exc: FieldError):
        return error(422, str(exc), "validation", exc.field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        kind = "bad_json" if exc.status_code == 400 else None  # FastAPI's 400: a body it could not decode
        return error(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(_request, exc: Exception):  # pragma: no cover -- a bug; logged with its traceback
        log.exception("unexpected error")
        return error(500, f"unexpected {type(exc).__name__}: {exc}", "internal")

    # ------------------------------------------------------------------ key

    def require_key(x_api_key: str | None = Header(None, description="the server's key, when it has one")):
        if settings.api_key is None:
            return
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), settings.api_key.encode()):
            raise StarletteHTTPException(401, "missing or wrong X-API-Key header")

    api = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=REFUSALS)

    # ------------------------------------------------------------------ explain

    def answer(job: Job, row: dict, prompt: dict) -> dict:
        extras = {k: jsonable(v) for k, v in row.items() if k not in ROW_FIELDS}
        cold = bool(row.get("cold_start"))
        generation = job.generation.to_dict()
        generation.pop("batch_size", None)
        return {
            "user": job.pair.user, "item": job.pair.item, "explanation": row["prediction"],
            "method": service.explainer.method, "cold_start": cold, "known": service.known(job.pair),
            "note": COLD_START_NOTE if cold else None, "extras": extras, "prompt": prompt,
            "generation": generation,
            "timing": {"queue_ms": round((job.started - job.enqueued) * 1000, 2),
                       "generation_ms": round((job.finished - job.started) * 1000, 2),
                       "total_ms": round((time.perf_counter() - job.enqueued) * 1000, 2),
                       "batch_size": job.batch_size},
        }

    async def wait_for_jobs(request: Request, jobs: list[Job]) -> list[dict] | Response:
        """The jobs' rows, or the response when the client left (nobody reads it) or the time ran out (504)."""
        rows = asyncio.gather(*(j.future for j in jobs))
        left = asyncio.ensure_future(_disconnected(request))
        remaining = jobs[0].enqueued + settings.timeout_s - time.perf_counter()
        try:
            done, _ = await asyncio.wait({rows, left}, timeout=max(remaining, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
        if rows in done:
            if rows.cancelled():  # the batcher was stopped: the server is shutting down
                return error(503, "the server is shutting down", "unavailable")
            error_ = rows.exception()
            if error_ is not None:
                return error(500, f"generation failed: {type(error_).__name__}: {error_}", "generation")
            return rows.result()
        for job in jobs:
            batcher.cancel(job)
        rows.cancel()
        if left in done:
            return Response(status_code=499)
        return error(504, f"no answer within {settings.timeout_s:g} s (queue and generation)")

    def submit(jobs: list[Job]) -> Response | None:
        try:
            batcher.submit(jobs)
        except QueueFull as err:
            return error(429, str(err), headers={"Retry-After": str(err.retry_after)})
        return None

    @api.post("/explain", response_model=ExplainResponse, summary="Explain one pair")
    async def explain(body: ExplainRequest, request: Request):
        generation = generation_config(body, settings)
        pair, prompt = service.resolve(body)
        job = Job(pair, generation)
        refused_ = submit([job])
        if refused_ is not None:
            return refused_
        rows = await wait_for_jobs(request, [job])
        return rows if isinstance(rows, Response) else answer(job, rows[0], prompt)

    @api.post("/explain/batch", response_model=BatchResponse, summary="Explain several pairs")
    async def explain_batch(body: BatchRequest, request: Request):
        if len(body.pairs) > settings.max_pairs:
            raise FieldError("pairs", f"at most {settings.max_pairs} pairs per request, got {len(body.pairs)}")
        generation = generation_config(body, settings)
        resolved = [service.resolve(p) for p in body.pairs]
        jobs = [Job(pair, generation) for pair, _ in resolved]
        refused_ = submit(jobs)
        if refused_ is not None:
            return refused_
        rows = await wait_for_jobs(request, jobs)
        if isinstance(rows, Response):
            return rows
        return {"results": [answer(j, r, prompt) for j, r, (_, prompt) in zip(jobs, rows, resolved)]}

    @api.post("/explain/stream", summary="Explain one pair, streaming the text (server-sent events)",
              response_class=StreamingResponse,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "events: meta (prompt, known ids), delta {text} as the text grows, "
                                              "then done (the full answer, as /v1/explain) or error"}})
    async def explain_stream(body: ExplainRequest):
        generation = generation_config(body, settings)
        pair, prompt = service.resolve(body)
        job = Job(pair, generation, stream=asyncio.Queue())
        refused_ = submit([job])
        if refused_ is not None:
            return refused_

        async def events():
            try:
                yield _sse("meta", {"user": pair.user, "item": pair.item, "method": service.explainer.method,
                                    "known": service.known(pair), "prompt": prompt})
                deadline = job.enqueued + settings.timeout_s
                while True:
                    piece = await asyncio.wait_for(job.stream.get(), max(deadline - time.perf_counter(), 0))
                    if piece is END:
                        break
                    yield _sse("delta", {"text": piece})
                if not job.future.done() or job.future.cancelled():
                    yield _sse("error", {"error": "the server is shutting down", "error_type": "unavailable"})
                elif job.future.exception() is not None:
                    failure = job.future.exception()
                    yield _sse("error", {"error": f"generation failed: {type(failure).__name__}: {failure}",
                                         "error_type": "generation"})
                else:
                    yield _sse("done", answer(job, job.future.result(), prompt))
            except TimeoutError:
                yield _sse("error", {"error": f"no answer within {settings.timeout_s:g} s", "error_type": "timeout"})
            finally:
                if job.future is not None and not job.future.done():
                    batcher.cancel(job)  # the client left, or the time ran out

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ search, model

    def search(kind: str):
        async def route(q: str = Query("", max_length=200, description="part of an id or title (empty: the first)"),
                        limit: int = Query(10, ge=1, le=settings.max_search)):
            return {"query": q, "source": service.search_source, "results": service.search(kind, q, limit)}
        return route

    api.get("/items", response_model=SearchResponse, summary="Search item ids and titles")(search("items"))
    api.get("/users", response_model=SearchResponse, summary="Search user ids and profiles")(search("users"))

    @api.get("/model", summary="What is being served: method, config, data, limits, version")
    async def model():
        return jsonable(service.model_info())

    app.include_router(api)

    @app.get("/healthz", response_model=Health, summary="Liveness (answered while a batch generates)")
    async def healthz():
        return {"status": "ok", **batcher.state(), "auth": settings.api_key is not None}

    # ------------------------------------------------------------------ the page

    page = _static_files()

    @app.get("/", include_in_schema=False)
    async def index():
        return Response(page["index.html"], media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:
            raise StarletteHTTPException(404, f"no static file {name!r}")
        return Response(page[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    return app


def _static_files() -> dict[str, bytes]:
    folder = resources.files("explainrec.serve") / "static"
    return {name: (folder / name).read_bytes() for name in ("index.html", *STATIC)}


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def render_docs(spec: dict) -> str:
    """A self-contained HTML page listing every endpoint of an OpenAPI schema: method, path, summary, parameters,
    request body and responses, with the schemas' fields and their descriptions."""
    import html

    esc = html.escape
    schemas = spec.get("components", {}).get("schemas", {})

    def ref_name(obj: dict) -> str:
        if "$ref" in obj:
            return obj["$ref"].rsplit("/", 1)[-1]
        if "anyOf" in obj:
            return " | ".join(ref_name(o) for o in obj["anyOf"])
        if obj.get("type") == "array":
            return f"list of {ref_name(obj.get('items', {}))}"
        return obj.get("type", "object")

    parts = [f"<h1>{esc(spec['info']['title'])} {esc(spec['info']['version'])}</h1>",
             f"<p>{esc(spec['info'].get('description', ''))}</p>",
             "<p>Machine-readable schema: <a href='/openapi.json'>/openapi.json</a></p>"]
    for path, methods in spec.get("paths", {}).items():
        for verb, op in methods.items():
            parts.append(f"<h2><code>{verb.upper()} {esc(path)}</code></h2><p>{esc(op.get('summary', ''))}</p>")
            if op.get("description"):
                parts.append(f"<p>{esc(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>meaning</th></tr>" + "".join(
                    f"<tr><td>{esc(p['name'])}</td><td>{esc(p['in'])}</td><td>{esc(ref_name(p.get('schema', {})))}"
                    f"</td><td>{esc(p.get('description', ''))}</td></tr>" for p in params) + "</table>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                parts.append(f"<p>Body: <a href='#schema-{esc(ref_name(body))}'>{esc(ref_name(body))}</a></p>")
            codes = ", ".join(f"{esc(code)} {esc(r.get('description', ''))}" for code, r in op.get("responses", {}).items())
            parts.append(f"<p>Responses: {codes}</p>")
    parts.append("<h1>Schemas</h1>")
    for name, schema in schemas.items():
        rows = "".join(f"<tr><td>{esc(field)}</td><td>{esc(ref_name(prop))}</td><td>{esc(prop.get('description', ''))}"
                       f"</td></tr>" for field, prop in schema.get("properties", {}).items())
        parts.append(f"<h3 id='schema-{esc(name)}'>{esc(name)}</h3><p>{esc(schema.get('description', ''))}</p>"
                     f"<table><tr><th>field</th><th>type</th><th>meaning</th></tr>{rows}</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
             "text-align:left;vertical-align:top}code{background:#f3f3f3;padding:.1em .3em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>explainrec API</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
