"""``explainrec serve``: an HTTP API (FastAPI) with dynamic batching, streaming and a web page.

    app.py        routes, error shapes, body-size limit, API key
    batcher.py    gathers concurrent requests into one explain call on one worker thread
    streamer.py   streams every row of a batched generate call to its own request
    schemas.py    request/response models and the server's limits
    service.py    the pairs' text from --data, id search, the model's description
    server.py     builds the service from a run folder or a method and runs uvicorn
    static/       the page (plain HTML, script and CSS)
"""
from explainrec.serve.schemas import ServeSettings

__all__ = ["ServeSettings"]
