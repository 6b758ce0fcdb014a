"""Run the server: uvicorn listens at once, the model loads in the background, SIGTERM drains (``lifecycle.py``)."""
from __future__ import annotations

import asyncio
import gc
import ipaddress
import time
from collections.abc import Callable

import uvicorn

from explainrec.serve.schemas import ServeSettings

LOOPBACK_NAMES = ("localhost",)
# After the drain every answer has been written; uvicorn then only closes idle connections.
CLOSE_SECONDS = 5


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


def logging_config(style: str, level: str = "info", access_log: bool = True) -> dict:
    """One handler on stderr for uvicorn's and the server's records, as text or one JSON object per line."""
    handler = {"()": "explainrec.serve.middleware.StderrHandler", "formatter": "explainrec"}
    logger = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"explainrec": {"()": "explainrec.serve.middleware.LogFormatter", "style": style}},
        "handlers": {"default": handler},
        "loggers": {"uvicorn": logger, "uvicorn.error": {"level": level.upper()},
                    "uvicorn.access": {"handlers": [], "propagate": False},  # replaced by explainrec.serve.access
                    "explainrec.serve": logger,
                    "explainrec.serve.access": {"level": "INFO" if access_log else "WARNING"}},
    }


def quiet_progress_bars() -> None:
    """Loading prints tqdm bars (transformers' "Loading weights", the hub's downloads): not in a server's log."""
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def run(lifecycle, *, host: str, port: int, log_format: str = "text", log_level: str = "info",
        access_log: bool = True) -> None:
    """Serve ``lifecycle`` (its service loads once uvicorn listens) until SIGTERM / Ctrl-C have drained it; raises
    the loading error, if loading failed."""
    from explainrec.serve.app import create_app

    quiet_progress_bars()
    app = create_app(lifecycle, log_requests=access_log)
    config = uvicorn.Config(app, host=host, port=port, log_config=logging_config(log_format, log_level, access_log),
                            access_log=False, timeout_graceful_shutdown=CLOSE_SECONDS, lifespan="on")
    server = DrainingServer(config, lifecycle)
    lifecycle.on_failed = server.stop
    server.run()
    # Every answer is written: spare the exit the interpreter's last full collection over the model and libraries
    # (measured: 7.7 s -> 1.5 s from SIGTERM to exit with the tiny model on the loaded 2-core machine).
    gc.freeze()
    if lifecycle.load_error is not None:
        raise lifecycle.load_error


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first SIGTERM / SIGINT drains before it stops (:meth:`Lifecycle.drain`); a second
    signal ends the grace period at once, a third quits without waiting (uvicorn's forced exit)."""

    def __init__(self, config: uvicorn.Config, lifecycle):
        super().__init__(config)
        self.lifecycle = lifecycle
        self.signals = 0
        self.drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame) -> None:
        """Runs in the main thread between bytecodes: only hands work to the event loop."""
        loop = self.lifecycle.loop
        if loop is None or self.lifecycle.phase == "loading" or self.should_exit:
            return super().handle_exit(sig, frame)  # nothing to drain, or the drain is over: uvicorn's way
        self.signals += 1
        if self.signals == 1:
            loop.call_soon_threadsafe(self._begin_drain)
        elif self.signals == 2:
            loop.call_soon_threadsafe(self.lifecycle.hurry)
        else:
            self.should_exit = self.force_exit = True

    def _begin_drain(self) -> None:
        self.drain_task = asyncio.ensure_future(self._drain_then_stop())  # kept: the loop holds tasks weakly

    async def _drain_then_stop(self) -> None:
        await self.lifecycle.drain()
        self.should_exit = True

    def stop(self) -> None:
        self.should_exit = True
