"""Run the server: the explainer and data are loaded once, then uvicorn serves :func:`create_app` on one process."""
from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from explainrec.serve.schemas import ServeSettings

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_service(open_explainer: Callable[[], object], dataset, settings: ServeSettings, precision: str):
    """The :class:`~explainrec.serve.service.Service`, timing how long the model took to load."""
    from explainrec.serve.service import Service

    start = time.perf_counter()
    explainer = open_explainer()
    return Service(explainer, dataset, settings, load_seconds=round(time.perf_counter() - start, 2),
                   precision=precision)


def run(service, *, host: str, port: int, log_level: str = "info", access_log: bool = True) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM end it cleanly)."""
    import uvicorn

    from explainrec.serve.app import create_app

    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, access_log=access_log,
                timeout_graceful_shutdown=5)
