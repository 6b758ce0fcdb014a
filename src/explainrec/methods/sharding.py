"""The processes of one launch sharing one explain: who takes which chunks, who holds the folder, who merges.

Under ``accelerate launch`` or ``torchrun`` every process runs the same command; :func:`current_launch` finds this
one's place through the same process state training uses (:func:`explainrec.training.loop.process_state`: gloo on
CPUs, NCCL on GPUs, each process on its own GPU). One process alone is a launch of one.

How the work is shared: the pairs are cut into chunks (:mod:`explainrec.methods.explain`); the main process
lists the chunks not yet written and every process takes every ``world``-th of that list (``todo[rank::world]``).
Chunks, not single pairs, are the unit, so each file is whole or absent; the list is of the *missing* chunks, so
a resume spreads what is left over all processes again, with any number of them.

The lock model (one writer per folder, :mod:`explainrec.folders`): a launch is one writer. Its main process takes
the lock of ``OUT.parts/`` (and of a run folder the output goes into) before any process writes, holds it until
``OUT`` is written, and is the only one to write the plan, to merge and to remove the parts. The other processes
write nothing but their own chunk files, each atomically, and only after the main process has taken the lock and
told them which chunks are theirs (:meth:`Launch.main_decides`); when the main process is refused (a second launch
on the same output, a plan that does not match), every process stops with its message before writing anything.
A process that finishes its share exits; the main process waits for the others' chunk files, reporting progress,
rather than in a collective barrier, whose timeout a slow last chunk could exceed.

A process killed mid-run takes the launch down with it (the launcher ends the others); every finished chunk is on
disk, and the same command with ``--resume`` (any number of processes) generates only the missing ones.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from explainrec.data.schema import DataError

T = TypeVar("T")


@dataclass
class Launch:
    """This process's ``rank`` among ``world`` processes of a launch."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, todo: list[int]) -> list[int]:
        """This process's chunks of ``todo`` (the main process's list of missing chunks)."""
        return list(todo[self.rank::self.world])

    def _broadcast(self, value):
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def main_decides(self, decide: Callable[[], T]) -> T:
        """``decide()`` run by the main process only; every process gets its result, or raises its refusal.

        Why: checks and claims on a shared output (is it ours to write, is there an interrupted run, the lock)
        must be made once, before any process writes, and a refusal must stop every process, not only the main.
        """
        if self.world == 1:
            return decide()
        result: Any = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = ("ok", decide())
            except Exception as err:  # handed over as it is: each process then fails with the same message and code
                error, result = err, ("error", err)
            except BaseException as err:
                error, result = err, ("error", DataError(f"the main process stopped ({type(err).__name__})"))
        try:
            result = self._broadcast(result)
        except Exception:  # an exception that cannot be pickled
            result = self._broadcast(("error", DataError(f"the main process refused: {error}")))
        if error is not None:
            raise error
        kind, value = result
        if kind == "ok":
            return value
        raise value


def current_launch() -> Launch:
    """This process's place: from the launcher's ``WORLD_SIZE`` / ``RANK`` through accelerate's process state."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return Launch()
    from explainrec.training.loop import process_state

    state = process_state()
    return Launch(rank=state.process_index, world=state.num_processes)
