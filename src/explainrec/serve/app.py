"""The FastAPI application: routes, error shapes, the API key, CORS, health, readiness and metrics.

Every refusal is JSON ``{"error", "error_type", "field"}`` with a 4xx status: 422 for a value out of range or of
the wrong type (``field`` names it, dotted when nested: ``pairs.2.user``) or an ungrounded pair the server was told
to refuse, 400 for a body that is not JSON, 413 for a body over the limit, 408 for a body that does not arrive in
time, 429 (with ``Retry-After``) when the queue is full, 401 for a missing or wrong key, 504 when a request's time
runs out; 503 (with ``Retry-After``) while the model loads or the server drains. A 500 means a bug.

The routes are plain module functions; what they share (settings, the loaded service, metrics) is the app's
:class:`~explainrec.serve.lifecycle.Lifecycle`, reached through ``request.app.state.lifecycle``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import random
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from explainrec.serve.batcher import END, STARTED, Job, QueueFull, Unavailable
from explainrec.serve.lifecycle import Lifecycle
from explainrec.serve.metrics import finish_reason
from explainrec.serve.middleware import BodyLimit, RequestContext, error
from explainrec.serve.schemas import (
    STREAM_EVENTS,
    BatchRequest,
    BatchResponse,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    FieldError,
    Health,
    KnownPair,
    ModelInfo,
    Readiness,
    SearchResponse,
    generation_config,
)
from explainrec.serve.service import COLD_START_NOTE, UNGROUNDED_NOTE, Service

log = logging.getLogger("explainrec.serve")
ROW_FIELDS = ("user", "item", "prediction", "cold_start")
# The page may load only what this server serves (no CDN, no fonts, nothing from outside).
PAGE_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
REFUSALS = {code: {"model": ErrorBody} for code in (400, 401, 408, 413, 422, 429, 503, 504)}
STREAM_PATH = "/v1/explain/stream"
_rng = random.Random()


def lifecycle_of(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


def service_of(request: Request) -> Service:
    """The loaded service (the request middleware answers 503 on /v1 until there is one)."""
    return request.app.state.lifecycle.service


# ---------------------------------------------------------------------------------------------------- the key


def require_key(request: Request,
                x_api_key: str | None = Header(None, description="the server's key, when it has one"),
                authorization: str | None = Header(None, description="or: Bearer <the server's key>")) -> None:
    """``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (what OpenAI-compatible clients send)."""
    key = lifecycle_of(request).settings.api_key
    if key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    offered = [x_api_key, token.strip() if scheme.lower() == "bearer" else None]
    if not any(k is not None and hmac.compare_digest(k.encode(), key.encode()) for k in offered):
        raise StarletteHTTPException(401, "missing or wrong API key (X-API-Key: KEY or Authorization: Bearer KEY)",
                                     headers={"WWW-Authenticate": "Bearer"})


api = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=REFUSALS)
ops = APIRouter()
page = APIRouter(include_in_schema=False)


# ---------------------------------------------------------------------------------------------------- explain


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


def answer(service: Service, job: Job, row: dict, prompt: dict, request_id: str) -> dict:
    """One pair's answer (:class:`ExplainResponse`) from its job and row."""
    counts = job.counts
    cold = bool(row.get("cold_start"))
    grounded = service.grounded(job.pair)
    generation = job.generation.to_dict()
    generation.pop("batch_size", None)
    prompt_tokens = counts.prompt_tokens if counts.counted else None
    completion = counts.new_tokens if counts.counted else None
    first = counts.first_token_at
    return {
        "request_id": request_id, "user": job.pair.user, "item": job.pair.item, "explanation": row["prediction"],
        "finish_reason": finish_reason(counts),
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                  "total_tokens": None if prompt_tokens is None or completion is None else prompt_tokens + completion},
        "method": service.explainer.method, "cold_start": cold, "known": service.known(job.pair),
        "grounded": grounded, "note": UNGROUNDED_NOTE if not grounded else COLD_START_NOTE if cold else None,
        "extras": {k: jsonable(v) for k, v in row.items() if k not in ROW_FIELDS}, "prompt": prompt,
        "generation": generation,
        "timing": {"queue_ms": _ms(job.started - job.enqueued), "generation_ms": _ms(job.finished - job.started),
                   "first_token_ms": None if first is None else _ms(first - job.enqueued),
                   "total_ms": _ms(time.perf_counter() - job.enqueued), "batch_size": job.batch_size},
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _log_answer(request: Request, result: dict) -> None:
    """What the request's log line says about its answer."""
    usage, timing = result["usage"], result["timing"]
    request.state.log.update(user=result["user"], item=result["item"], finish=result["finish_reason"],
                             prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                             queue_ms=timing["queue_ms"], generation_ms=timing["generation_ms"],
                             batch=timing["batch_size"], grounded=result["grounded"])


def submit(service: Service, jobs: list[Job]) -> Response | None:
    """Queue the jobs; the refusal's response when there is no room (429) or the server is closing (503)."""
    try:
        service.batcher.submit(jobs)
    except QueueFull as err:
        return error(429, str(err), headers={"Retry-After": str(err.retry_after)})
    except Unavailable as err:
        return error(503, str(err), headers={"Retry-After": "1"})
    return None


def failure(err: BaseException) -> Response:
    """The answer to a job that ended without a text."""
    if isinstance(err, (Unavailable, asyncio.CancelledError)):
        return error(503, str(err) or "the server is shutting down", headers={"Retry-After": "1"})
    return error(500, f"generation failed: {type(err).__name__}: {err}", "generation")


async def wait_for_jobs(request: Request, service: Service, jobs: list[Job]) -> list[dict] | Response:
    """The jobs' rows, or the response when the client left (nobody reads it), the time ran out (504) or the
    server closed (503)."""
    timeout_s = service.settings.timeout_s
    rows = asyncio.gather(*(j.future for j in jobs))
    left = asyncio.ensure_future(_disconnected(request))
    remaining = jobs[0].enqueued + timeout_s - time.perf_counter()
    try:
        done, _ = await asyncio.wait({rows, left}, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if rows in done:
        if rows.cancelled():
            return failure(asyncio.CancelledError())
        if rows.exception() is not None:
            return failure(rows.exception())
        return rows.result()
    for job in jobs:
        service.batcher.cancel(job)
    rows.cancel()
    if left in done:
        request.state.log["cancelled"] = True
        return Response(status_code=499)
    return error(504, f"no answer within {timeout_s:g} s (queue and generation)")


@api.post("/explain", response_model=ExplainResponse, response_model_exclude_unset=True, operation_id="explain",
          summary="Explain one pair")
async def explain(body: ExplainRequest, request: Request):
    service = service_of(request)
    generation = generation_config(body, service.settings)
    pair, prompt = service.resolve(body)
    job = Job(pair, generation)
    refused = submit(service, [job])
    if refused is not None:
        return refused
    rows = await wait_for_jobs(request, service, [job])
    if isinstance(rows, Response):
        return rows
    result = answer(service, job, rows[0], prompt, request.state.request_id)
    _log_answer(request, result)
    return result


@api.post("/explain/batch", response_model=BatchResponse, response_model_exclude_unset=True,
          operation_id="explain_batch", summary="Explain several pairs")
async def explain_batch(body: BatchRequest, request: Request):
    service = service_of(request)
    settings = service.settings
    if len(body.pairs) > settings.pairs_per_request:
        why = (f"the queue (--queue {settings.queue}) holds no more" if settings.queue < settings.max_pairs
               else f"--max-pairs {settings.max_pairs}")
        raise FieldError("pairs", f"at most {settings.pairs_per_request} pairs per request ({why}), got "
                                  f"{len(body.pairs)}: split the batch")
    generation = generation_config(body, settings)
    resolved = [service.resolve(p, f"pairs.{k}.") for k, p in enumerate(body.pairs)]
    jobs = [Job(pair, generation) for pair, _ in resolved]
    refused = submit(service, jobs)
    if refused is not None:
        return refused
    rows = await wait_for_jobs(request, service, jobs)
    if isinstance(rows, Response):
        return rows
    request_id = request.state.request_id
    results = [answer(service, j, r, prompt, request_id) for j, r, (_, prompt) in zip(jobs, rows, resolved)]
    request.state.log.update(pairs=len(results), completion_tokens=sum(r["usage"]["completion_tokens"] or 0
                                                                      for r in results))
    return {"request_id": request_id, "results": results}


@api.post("/explain/stream", operation_id="explain_stream", response_class=StreamingResponse,
          summary="Explain one pair, streaming the text (server-sent events)",
          responses={200: {"content": {"text/event-stream": {}},
                           "description": "events: meta (queued; the prompt, known ids), start (its batch began), "
                                          "delta {text} as the text grows, then done (the full answer, as "
                                          "/v1/explain) or error"}})
async def explain_stream(body: ExplainRequest, request: Request):
    service = service_of(request)
    generation = generation_config(body, service.settings)
    pair, prompt = service.resolve(body)
    job = Job(pair, generation, stream=asyncio.Queue())
    refused = submit(service, [job])
    if refused is not None:
        return refused
    return StreamingResponse(stream_events(request, service, job, prompt), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def stream_events(request: Request, service: Service, job: Job, prompt: dict):
    """``meta``, ``start``, ``delta`` ... then ``done`` or ``error``: the stream always ends with one of the two."""
    request_id = request.state.request_id
    timeout_s = service.settings.timeout_s
    try:
        yield _sse("meta", {"request_id": request_id, "user": job.pair.user, "item": job.pair.item,
                            "method": service.explainer.method, "known": service.known(job.pair),
                            "grounded": service.grounded(job.pair), "prompt": prompt})
        deadline = job.enqueued + timeout_s
        while True:
            piece = await asyncio.wait_for(job.stream.get(), max(deadline - time.perf_counter(), 0))
            if piece is END:
                break
            if piece is STARTED:
                yield _sse("start", {"queue_ms": _ms(job.started - job.enqueued), "batch_size": job.batch_size})
            else:
                yield _sse("delta", {"text": piece})
        if not job.future.done() or job.future.cancelled():
            yield _sse("error", {"error": "the server is shutting down", "error_type": "unavailable", "field": None})
        elif job.future.exception() is not None:
            body = json.loads(failure(job.future.exception()).body)
            yield _sse("error", body)
        else:
            result = answer(service, job, job.future.result(), prompt, request_id)
            _log_answer(request, result)
            yield _sse("done", result)
    except TimeoutError:
        yield _sse("error", {"error": f"no answer within {timeout_s:g} s", "error_type": "timeout", "field": None})
    finally:
        if job.future is not None and not job.future.done():
            service.batcher.cancel(job)  # the client left (Stop on the page), or the time ran out
            request.state.log["cancelled"] = True


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps({'event': event, **data}, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------------------------------------------- search, model


@api.get("/items", response_model=SearchResponse, operation_id="search_items", summary="Search item ids and titles")
async def search_items(request: Request, q: str = Query("", max_length=200, description="part of an id or title "
                                                                                          "(empty: the first)"),
                       limit: int = Query(10, ge=1, description="at most limits.max_search")):
    return _search(service_of(request), "items", q, limit)


@api.get("/users", response_model=SearchResponse, operation_id="search_users",
         summary="Search user ids and profiles")
async def search_users(request: Request, q: str = Query("", max_length=200, description="part of an id or profile "
                                                                                          "(empty: the first)"),
                       limit: int = Query(10, ge=1, description="at most limits.max_search")):
    return _search(service_of(request), "users", q, limit)


def _search(service: Service, kind: str, q: str, limit: int) -> dict:
    if limit > service.settings.max_search:
        raise FieldError("limit", f"must be <= {service.settings.max_search}, got {limit}")
    return {"query": q, "source": service.search_source, "results": service.search(kind, q, limit)}


@api.get("/pairs/random", response_model=KnownPair, operation_id="random_pair",
         summary="A pair that exists in --data (from its test split when it has one)",
         responses={404: {"model": ErrorBody, "description": "the server has no --data"}})
async def random_pair(request: Request):
    found = service_of(request).random_pair(_rng)
    if found is None:
        raise StarletteHTTPException(404, "this server knows no pairs (start it with --data)")
    return found


@api.get("/model", response_model=ModelInfo, operation_id="model_info",
         summary="What is being served: method, config, data, limits, version")
async def model_info(request: Request):
    return jsonable(service_of(request).model_info())


# ---------------------------------------------------------------------------------------------------- operations


@ops.get("/healthz", response_model=Health, operation_id="healthz",
         summary="Liveness: any answer means the process is alive; status says loading / ready / draining")
async def healthz(request: Request):
    lifecycle = lifecycle_of(request)
    return {"status": lifecycle.phase, **lifecycle.batcher_state(), "auth": lifecycle.settings.api_key is not None}


@ops.get("/readyz", response_model=Readiness, operation_id="readyz",
         summary="Readiness: 200 when requests are taken, 503 while the model loads or the server drains",
         responses={503: {"model": Readiness, "description": "loading or draining"}})
async def readyz(request: Request):
    phase = lifecycle_of(request).phase
    if phase == "ready":
        return {"status": phase}
    return JSONResponse({"status": phase}, status_code=503, headers={"Retry-After": "5" if phase == "loading" else "1"})


@ops.get("/metrics", operation_id="metrics", response_class=Response,
         summary="Prometheus metrics (text exposition format)",
         responses={200: {"content": {"text/plain": {}, "application/openmetrics-text": {}},
                           "description": "the metrics, in the format the Accept header asks for"}})
async def metrics(request: Request):
    body, content_type = lifecycle_of(request).metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


# ---------------------------------------------------------------------------------------------------- the page


@page.get("/")
async def index(request: Request):
    return Response(request.app.state.page["index.html"], media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})


@page.get("/static/{name}")
async def static(name: str, request: Request):
    if name not in STATIC:
        raise StarletteHTTPException(404, f"no static file {name!r}")
    return Response(request.app.state.page[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


@page.get("/docs")
async def docs(request: Request):
    """The API reference, rendered here from the OpenAPI schema (Swagger UI would load its code from a CDN)."""
    return HTMLResponse(render_docs(request.app.openapi()))


# ---------------------------------------------------------------------------------------------------- error shapes


async def invalid(_request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return error(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                     "bad_json")
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    return error(422, message, "validation", _field_of(tuple(first.get("loc", ()))))


async def refused(_request, exc: FieldError):
    return error(422, str(exc), exc.error_type, exc.field)


async def http_error(_request, exc: StarletteHTTPException):
    kind = "bad_json" if exc.status_code == 400 else None  # FastAPI's 400: a body it could not decode
    return error(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None))


async def bug(_request, exc: Exception):  # pragma: no cover -- a bug; logged with its traceback
    log.exception("unexpected error")
    return error(500, f"unexpected {type(exc).__name__}: {exc}", "internal")


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")]
    return ".".join(parts) or "body"


# ---------------------------------------------------------------------------------------------------- the app


def create_app(service: Service | Lifecycle, *, log_requests: bool = True) -> FastAPI:
    """The ASGI app serving a loaded ``service`` (tests), or a :class:`Lifecycle` that loads one (the server)."""
    from explainrec import __version__

    lifecycle = service if isinstance(service, Lifecycle) else Lifecycle(service.settings, service)
    settings = lifecycle.settings

    @asynccontextmanager
    async def lifespan(_app):
        await lifecycle.start()
        yield
        await lifecycle.stop()

    app = FastAPI(title="explainrec", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Explainable recommendation: why would this user like this item? Requests arriving "
                              "together are generated in one batch. The page at / uses this API.")
    app.state.lifecycle = lifecycle
    app.state.page = _static_files()
    for router in (api, ops, page):
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(FieldError, refused)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, bug)
    app.openapi = lambda: openapi_with_events(app)
    # Middleware: the last added is the outermost.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-Request-Id"],
                           expose_headers=["X-Request-Id", "Retry-After"], max_age=600)
    routes = [r for router in (api, ops, page) for r in router.routes]
    app.add_middleware(RequestContext, lifecycle=lifecycle, routes=routes, log_requests=log_requests)
    return app


def openapi_with_events(app: FastAPI) -> dict:
    """FastAPI's schema plus what it cannot infer: the stream's event schemas (a ``oneOf`` keyed by ``event``)."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = FastAPI.openapi(app)
    _, defs = models_json_schema([(m, "serialization") for m in STREAM_EVENTS],
                                 ref_template="#/components/schemas/{model}")
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    refs = {m.__name__: f"#/components/schemas/{m.__name__}" for m in STREAM_EVENTS}
    ok = spec["paths"][STREAM_PATH]["post"]["responses"]["200"]
    ok["content"] = {"text/event-stream": {"schema": {
        "oneOf": [{"$ref": ref} for ref in refs.values()],
        "discriminator": {"propertyName": "event", "mapping": {
            m.model_fields["event"].default: refs[m.__name__] for m in STREAM_EVENTS}}}}}
    app.openapi_schema = spec
    return spec


def _static_files() -> dict[str, bytes]:
    folder = resources.files("explainrec.serve") / "static"
    return {name: (folder / name).read_bytes() for name in ("index.html", *STATIC)}


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def render_docs(spec: dict) -> str:
    """A self-contained HTML page listing every endpoint of an OpenAPI schema: method, path, summary, parameters,
    request body and responses, with the schemas' fields and their descriptions."""
    import html

    esc = html.escape
    schemas = spec.get("components", {}).get("schemas", {})

    def ref_name(obj: dict) -> str:
        if "$ref" in obj:
            return obj["$ref"].rsplit("/", 1)[-1]
        if "anyOf" in obj or "oneOf" in obj:
            return " | ".join(ref_name(o) for o in obj.get("anyOf") or obj["oneOf"])
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
            codes = []
            for code, r in op.get("responses", {}).items():
                shapes = [ref_name(c["schema"]) for c in r.get("content", {}).values() if "schema" in c]
                codes.append(f"{esc(code)} {esc(r.get('description', ''))}"
                             + (f" ({esc(', '.join(shapes))})" if shapes else ""))
            parts.append(f"<p>Responses: {'; '.join(codes)}</p>")
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
