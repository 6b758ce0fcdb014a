"""Ctrl-C (SIGINT) and SIGTERM: every stop keeps what was done, and says where it is.

Commands run inside :func:`on_signals`. A signal then ends the command at once (raising :class:`Interrupted`, a
``KeyboardInterrupt``) when nothing would be lost by it: every output is written whole or not at all, and a
training loop's last checkpoint equals its state. While a training loop holds steps its checkpoint does not have
yet (it calls :func:`mark_unsaved` after each optimizer step, and :func:`checkpoint_written` clears it), the signal
is only noted: the loop finishes the step, writes a checkpoint and stops (:func:`requested`). A second signal
always stops at once. The message names the last checkpoint written, so ``--resume`` has something to continue.

Why not Python's default: SIGINT would stop between two steps with the last ``checkpoint_every`` steps lost, and
SIGTERM (a scheduler's stop, ``kill``) would end the process without a word.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal; the message says what was kept. Exit code 128 + the signal's number."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


_STATE: dict = {"unsaved": False, "requested": None, "checkpoint": None}


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def kept() -> str:
    """What the last checkpoint of this command is, for a stop message."""
    last = _STATE["checkpoint"]
    if last is None:
        return "nothing half-written is left (every output is written whole or not at all)"
    path, label = last
    return f"the checkpoint {path} ({label}) is kept: continue with the same command and --resume"


def stopped(signum: int | None = None) -> Interrupted:
    signum = signum or _STATE["requested"] or signal.SIGINT
    return Interrupted(f"stopped by {_name(signum)}; {kept()}", signum)


def _handler(signum, frame) -> None:
    if _STATE["unsaved"] and _STATE["requested"] is None:
        _STATE["requested"] = signum
        print(f"\n{_name(signum)}: finishing this step and writing a checkpoint (send it again to stop at once)",
              file=sys.stderr, flush=True)
        return
    raise stopped(signum)


@contextmanager
def on_signals() -> Iterator[None]:
    """Handle SIGINT and SIGTERM as the module docstring says until the block ends (main thread only; elsewhere
    the block runs with the handlers it has)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    saved = dict(_STATE)
    _STATE.update(unsaved=False, requested=None, checkpoint=None)
    for s in HANDLED:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _STATE.update(saved)


def mark_unsaved() -> None:
    """A training loop took a step its checkpoint does not hold yet: a signal now waits for the next checkpoint."""
    _STATE["unsaved"] = True


def checkpoint_written(path: str | Path, label: str) -> None:
    """A checkpoint holding everything so far was written: a signal may stop at once again."""
    _STATE["unsaved"] = False
    _STATE["checkpoint"] = (str(path), label)


def requested() -> int | None:
    """The signal that asked the loop to stop at the end of its step, if any."""
    return _STATE["requested"]
