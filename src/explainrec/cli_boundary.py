"""The command line's one error boundary, and the checks every command runs before it starts any work.

Expected failures end in one line naming what is wrong and how to fix it: exit code 2 for usage errors (a bad
option or setting), 1 for failures (unreadable data, a damaged model folder, a loss that became NaN, a disk
that refuses a write). ``--debug`` or ``EXPLAINREC_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import typer

DEBUG = {"on": False}


def debug_enabled() -> bool:
    return DEBUG["on"] or os.environ.get("EXPLAINREC_DEBUG", "") not in ("", "0")


class UsageError(Exception):
    """A bad option value or combination (exit code 2)."""


def fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def boundary(fn=None, *, signals: bool = True):
    """Run a command; turn the exceptions users can cause into one line and an exit code.

    ``signals``: SIGINT and SIGTERM stop the command keeping its work (:mod:`explainrec.interrupt`); off for a
    command whose server handles them itself.
    """
    if fn is None:
        return functools.partial(boundary, signals=signals)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from explainrec.config import ConfigError
        from explainrec.data.schema import DataError
        from explainrec.interrupt import Interrupted, on_signals

        try:
            if not signals:
                return fn(*args, **kwargs)
            with on_signals():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except (typer.BadParameter, UsageError, ConfigError) as err:
            if debug_enabled():
                raise
            fail(_one_line(err), 2)
        except KeyboardInterrupt as err:
            if debug_enabled():
                raise
            if isinstance(err, Interrupted):
                fail(_one_line(err), err.exit_code)
            fail("interrupted; every output is written whole or not at all, so nothing half-written is left", 130)
        except (DataError, OSError, MemoryError) as err:
            if debug_enabled():
                raise
            fail(_one_line(err), 1)
        except Exception as err:  # noqa: BLE001 -- the boundary: a bug still ends in one line
            if debug_enabled():
                raise
            from explainrec.training.loop import TrainingError

            if isinstance(err, TrainingError):
                fail(_one_line(err), 1)
            fail(f"unexpected {type(err).__name__}: {_one_line(err)} -- this is a bug; rerun with --debug for the "
                 "traceback and report it", 1)

    return wrapper


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = " ".join(str(err).split())
    return text if len(text) <= 800 else text[:780] + " ... (truncated)"


# ---------------------------------------------------------------------------------------------------- checks


# The output checks live in explainrec.folders (the bench, the demo and training use them too); the commands import
# them from here with the input checks.
from explainrec.data.readers import data_path  # noqa: E402,F401
from explainrec.folders import check_output_file, check_output_folder, check_run_folder, check_writable_folder  # noqa: E402,F401


def check_input_file(path: Path, *, option: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file")
    return path


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
