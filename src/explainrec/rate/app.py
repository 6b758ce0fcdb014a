"""The rating page and its small JSON API (FastAPI, served by uvicorn on loopback by default).

A rater signs in with a name (or, with a tokens file, a token that stands for a name), then meets the study's
pairs in the study's order: the pair's context and its explanations in the pair's fixed random order, with no
method names anywhere in what is sent (the page is blind). Every rating is appended to the ratings file before the
answer goes back; the server keeps no other state, so a restart (or a killed process) resumes from the file.
"""
from __future__ import annotations

import hmac
import json
import threading
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from explainrec.data.schema import DataError
from explainrec.rate.ratings import HUMAN, append_rating, check_rater, rating_record, read_ratings
from explainrec.rate.rubric import DIMENSIONS, HALF_POINTS, check_score, criteria

# The page may load only what this server serves (no CDN, no inline script).
PAGE_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"
STATIC = {"rate.js": "text/javascript; charset=utf-8", "rate.css": "text/css; charset=utf-8"}
MAX_BODY = 64 * 1024


class Refusal(Exception):
    """A 4xx answer: ``{"error", "field"}``."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def read_tokens(path: str | Path) -> dict[str, str]:
    """A tokens file: one ``NAME TOKEN`` per line (``#`` comments, blank lines skipped) -> token -> name."""
    path = Path(path)
    tokens: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path} line {line_no}: expected 'NAME TOKEN', got {len(parts)} field(s)")
        name, token = parts
        try:
            check_rater(name)
        except ValueError as err:
            raise DataError(f"{path} line {line_no}: {err}") from None
        if len(token) < 8:
            raise DataError(f"{path} line {line_no}: the token of {name} is shorter than 8 characters")
        if token in tokens:
            raise DataError(f"{path} line {line_no}: the token of {name} is also {tokens[token]}'s")
        tokens[token] = name
    if not tokens:
        raise DataError(f"{path}: no 'NAME TOKEN' lines")
    return tokens


class Desk:
    """The study, each rater's latest rating per pair (read from the file at start), and the one writer."""

    def __init__(self, study, tokens: dict[str, str] | None = None):
        self.study, self.tokens = study, tokens
        ratings = read_ratings(study)
        self.problems = ratings.problems
        self.latest = {k: r for k, r in ratings.latest().items() if r["kind"] == HUMAN}
        self.lock = threading.Lock()

    def rater(self, credential: str | None) -> str:
        """The rater a request speaks for: a valid name, or the name of a known token."""
        if not credential:
            raise Refusal(401, "sign in first (header X-Rater)", "X-Rater")
        if self.tokens is None:
            try:
                return check_rater(credential)
            except ValueError as err:
                raise Refusal(422, str(err), "name") from None
        for token, name in self.tokens.items():
            if hmac.compare_digest(token.encode(), credential.encode()):
                return name
        raise Refusal(401, "unknown token", "token")

    def progress(self, rater: str) -> dict:
        done = sorted(p for (r, p) in self.latest if r == rater)
        todo = [k for k in range(len(self.study.pairs)) if (rater, k) not in self.latest]
        return {"rater": rater, "done": len(done), "total": len(self.study.pairs), "next": todo[0] if todo else None}

    def pair(self, rater: str, k: int) -> dict:
        if not 0 <= k < len(self.study.pairs):
            raise Refusal(404, f"no pair {k}; pairs are 0 to {len(self.study.pairs) - 1}", "pair")
        saved = self.latest.get((rater, k))
        order = self.study.pairs[k]["order"]
        context = {key: v for key, v in self.study.pairs[k]["context"].items()}
        return {"pair": k, "context": context, "explanations": self.study.shown(k),
                "saved": [saved["scores"][m] for m in order] if saved else None, **self.progress(rater)}

    def rate(self, rater: str, body: object) -> dict:
        """Check a page's rating (scores in the order shown), map it to the methods, append it, answer progress."""
        if not isinstance(body, dict):
            raise Refusal(422, "expected a JSON object {pair, scores}", None)
        unknown = set(body) - {"pair", "scores"}
        if unknown:
            raise Refusal(422, f"unknown field(s) {sorted(unknown)}", sorted(unknown)[0])
        k = body.get("pair")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self.study.pairs):
            raise Refusal(422, f"pair must be an index from 0 to {len(self.study.pairs) - 1}", "pair")
        order = self.study.pairs[k]["order"]
        shown = body.get("scores")
        if not isinstance(shown, list) or len(shown) != len(order):
            raise Refusal(422, f"scores must list {len(order)} explanations' scores, in the order shown", "scores")
        scores = {}
        for slot, (method, given) in enumerate(zip(order, shown)):
            if not isinstance(given, dict) or set(given) != set(DIMENSIONS):
                raise Refusal(422, f"give {', '.join(DIMENSIONS)} for explanation {slot + 1}", f"scores.{slot}")
            for d in DIMENSIONS:
                try:
                    check_score(given[d])
                except ValueError as err:
                    raise Refusal(422, f"explanation {slot + 1}, {d}: {err}", f"scores.{slot}.{d}") from None
            scores[method] = {d: float(given[d]) for d in DIMENSIONS}
        record = rating_record(self.study, rater, HUMAN, k, scores)
        with self.lock:
            append_rating(self.study.ratings_path, record)  # on disk before the page hears "saved"
            self.latest[(rater, k)] = record
        return self.progress(rater)


def create_app(study, *, tokens: dict[str, str] | None = None) -> FastAPI:
    """The app for one study; ``tokens`` (token -> name) makes raters sign in with a token instead of a name."""
    desk = Desk(study, tokens)
    app = FastAPI(title="explainrec rating study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.desk = desk
    folder = resources.files("explainrec.rate") / "static"
    page = {name: (folder / name).read_bytes() for name in ("index.html", *STATIC)}

    @app.exception_handler(Refusal)
    async def refused(_request, err: Refusal):
        return JSONResponse({"error": err.message, "field": err.field}, status_code=err.status)

    async def body_of(request: Request) -> object:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise Refusal(413, f"body over {MAX_BODY} bytes")
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Refusal(400, "the body is not JSON") from None

    @app.get("/", include_in_schema=False)
    def index():
        return Response(page["index.html"], media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        if name not in STATIC:
            raise Refusal(404, f"no static file {name!r}")
        return Response(page[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "study": study.id}

    @app.get("/api/study")
    def about():
        return {"study": study.id, "pairs": len(study.pairs), "explanations": len(study.method_names),
                "sign_in": "token" if tokens is not None else "name", "criteria": criteria(), "note": HALF_POINTS}

    @app.post("/api/sign-in")
    async def sign_in(request: Request):
        body = await body_of(request)
        if not isinstance(body, dict) or not isinstance(body.get("as"), str):
            raise Refusal(422, "expected {\"as\": NAME or TOKEN}", "as")
        return desk.progress(desk.rater(body["as"].strip()))

    @app.get("/api/pair/{k}")
    def pair(k: int, request: Request):
        return desk.pair(desk.rater(request.headers.get("x-rater")), k)

    @app.post("/api/rate")
    async def rate(request: Request):
        rater = desk.rater(request.headers.get("x-rater"))
        return desk.rate(rater, await body_of(request))

    return app


def run(app, *, host: str, port: int, access_log: bool = False) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM end it cleanly; a kill loses at most the rating in flight)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=access_log,
                timeout_graceful_shutdown=5)
