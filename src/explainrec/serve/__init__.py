"""``explainrec serve``: an HTTP API (FastAPI) with dynamic batching, streaming, metrics, a graceful drain and a page.

    app.py         routes (module functions), error shapes, the API key, CORS, health, readiness, /metrics
    middleware.py  every request's id, phase check, metrics and log line; the body's size and time limits
    lifecycle.py   loading -> ready -> draining: background loading and the SIGTERM drain
    batcher.py     gathers concurrent requests into one explain call on one worker thread
    streamer.py    streams every row of a batched generate call to its own request, counting its tokens
    metrics.py     the Prometheus metrics (prometheus-client)
    schemas.py     request/response models, stream events and the server's limits
    service.py     the pairs' text from --data, id search, known pairs, the model's description
    server.py      runs uvicorn on the app, the drain on SIGTERM, the log format
    static/        the page (plain HTML, script and CSS)
"""
from explainrec.serve.schemas import ServeSettings

__all__ = ["ServeSettings"]
