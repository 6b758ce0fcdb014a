"""Explaining a dataset split with any loaded explainer, and the one prediction-row format every method writes.

A row is ``{user, item, prediction, reference, features, bucket, method, cold_start, ...}`` plus what the method
knows about the pair (GaVaMoE: cluster and top experts); :mod:`explainrec.metrics` reads exactly these files.
"""
from __future__ import annotations

from pathlib import Path

from explainrec.config import ConfigError
from explainrec.data.schema import SPLITS, DataError, Dataset

SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}


def normalise_split(split: str) -> str:
    """``validation``/``val`` -> ``valid``; a clear error for anything else."""
    value = SPLIT_ALIASES.get(str(split).strip().lower())
    if value is None:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} (or validation/val)")
    return value


def explain_split(explainer, dataset: Dataset, split: str = "test", *, limit: int | None = None,
                  out: str | Path | None = None, generation=None, progress: bool = True, chunk_size: int | None = None,
                  resume: bool = False, identity: dict | None = None, launch=None, echo=print):
    """Explain the first ``limit`` (default: all) pairs of ``split``; write JSONL to ``out`` when given.

    ``chunk_size`` (with ``out``): explain and write the pairs in chunks (:func:`explain_in_chunks`), so that a
    stopped run keeps what it wrote and ``resume=True`` continues it; ``identity`` is what else must not change
    between a run and its resume (the model); ``launch`` shares the chunks among the processes of a launch
    (:mod:`explainrec.methods.sharding`; a process that did not write ``out`` returns no rows). Returns
    ``(rows, stats)`` (:class:`~explainrec.llm.generate.GenerationStats`; a resumed run's stats count this call's
    pairs only).
    """
    from explainrec.io import atomic_write_jsonl
    from explainrec.llm.generate import GenerationStats

    split = normalise_split(split)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    examples = dataset.split_examples(split)[:limit]
    if not examples:
        raise DataError(f"dataset {dataset.name!r} has no explained pairs in split {split!r}")
    stats = GenerationStats()
    if out is not None and chunk_size:
        plan = {"data": dataset.name, "split": split, "limit": limit, **(identity or {})}
        wrote = explain_in_chunks(explainer, SplitSource(dataset, examples, chunk_size), Path(out), plan=plan,
                                  generation=generation, resume=resume, stats=stats, progress=progress, echo=echo,
                                  launch=launch)
        from explainrec.data.readers import iter_jsonl

        return ([obj for _, obj in iter_jsonl(Path(out))] if wrote else []), stats
    rows = _explain_rows(explainer, dataset, examples, generation, stats, progress)
    if out is not None:
        atomic_write_jsonl(out, rows)
    return rows, stats


def explain_pairs(explainer, stream, out: str | Path, *, chunk_size: int, generation=None, resume: bool = False,
                  identity: dict | None = None, text=None, launch=None, echo=print):
    """Explain every pair of ``stream`` (:class:`~explainrec.data.pair_stream.PairStream`) into ``out``, chunk by
    chunk with :func:`explain_in_chunks` (sharded over the processes of ``launch``; ``resume`` continues a stopped
    run). ``text``: a :class:`~explainrec.data.pair_stream.DatasetText` filling what the records leave out.
    Memory holds one chunk, never the stream. Returns ``(wrote, stats)``: whether this process wrote ``out``, and
    this process's :class:`~explainrec.llm.generate.GenerationStats` (this call's pairs only).
    """
    from explainrec.llm.generate import GenerationStats

    stats = GenerationStats()
    source = StreamSource(stream, stream.scan(chunk_size), text)
    plan = {"limit": stream.limit, "data": text.dataset.name if text is not None else None, **(identity or {})}
    wrote = explain_in_chunks(explainer, source, Path(out), plan=plan, generation=generation, resume=resume,
                              stats=stats, echo=echo, launch=launch)
    return wrote, stats


def _explain_rows(explainer, dataset: Dataset, examples: list, generation, stats, progress: bool) -> list[dict]:
    """Prediction rows (:func:`prediction_row`) of ``examples``: the explainer's rows plus reference, features,
    sparsity bucket and method."""
    from explainrec.data.splits import sparsity_buckets

    rows = explainer.explain([dataset.pair_of(e) for e in examples], generation, stats=stats, progress=progress)
    for row, ex, bucket in zip(rows, examples, sparsity_buckets(dataset, examples)):
        row.update(reference=ex.explanation, features=list(ex.features), bucket=bucket, method=explainer.method)
    return [prediction_row(r) for r in rows]


PARTS_SUFFIX = ".parts"
PLAN_FILE = "plan.json"


def parts_folder(out: str | Path) -> Path:
    """Where the chunks of ``out`` are kept until the whole file is written: ``OUT.parts/`` beside it."""
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def chunk_file(parts: Path, k: int) -> Path:
    return parts / f"chunk-{k:06d}.jsonl"


def check_chunked_output(out: str | Path, *, resume: bool, overwrite: bool = False) -> Path:
    """The parts folder of ``out``, after refusing what the flags do not allow: an interrupted explain continued
    without ``--resume``, a ``--resume`` with nothing to continue, a folder there that is not explainrec's;
    ``overwrite`` removes an interrupted explain's parts (unless another process is writing them)."""
    import shutil

    from explainrec.folders import FolderBusy, FolderError, entries, lock_holder

    parts = parts_folder(out)
    ours = (parts / PLAN_FILE).is_file()
    if resume and overwrite:
        raise FolderError("--resume and --overwrite contradict each other: pick one")
    if parts.exists() and not ours and entries(parts):
        raise FolderError(f"{parts}: exists and is not explainrec's chunk folder of {out} (no {PLAN_FILE}); move it away")
    holder = lock_holder(parts) if parts.exists() else None
    if holder is not None:
        raise FolderBusy(f"{parts}: pid {holder.get('pid')} is writing these chunks of {out}; wait for it to end")
    if ours and overwrite:
        shutil.rmtree(parts)
    elif ours and not resume:
        done = len(list(parts.glob("chunk-*.jsonl")))
        raise FolderError(f"{parts}: holds an interrupted explain of {out} ({done} chunks written); pass --resume to "
                          "continue it, or --overwrite to start again")
    elif resume and not ours:
        raise FolderError(f"--resume: there is no interrupted explain of {out} to continue ({parts / PLAN_FILE} is "
                          "missing); drop --resume")
    return parts


class SplitSource:
    """The chunks of a dataset split's examples (in memory: a split is small), for :func:`explain_in_chunks`."""

    def __init__(self, dataset: Dataset, examples: list, chunk_size: int) -> None:
        self.dataset, self.examples, self.chunk_size = dataset, examples, chunk_size
        self.pairs = len(examples)
        self.n_chunks = -(-self.pairs // chunk_size)

    def _keys(self, examples) -> list[list[str]]:
        return [[self.dataset.users.decode(e.user), self.dataset.items.decode(e.item)] for e in examples]

    def identity(self) -> dict:
        import hashlib
        import json

        keys = json.dumps(self._keys(self.examples)).encode()
        return {"pairs": self.pairs, "pairs_sha256": hashlib.sha256(keys).hexdigest()}

    def chunks(self, ks):
        for k in ks:
            yield k, self.examples[k * self.chunk_size:(k + 1) * self.chunk_size]

    def explain(self, explainer, items, generation, stats) -> list[dict]:
        return _explain_rows(explainer, self.dataset, items, generation, stats, False)

    def keys(self):
        for _, items in self.chunks(range(self.n_chunks)):
            yield self._keys(items)


class StreamSource:
    """The chunks of a pair stream (:mod:`explainrec.data.pair_stream`), read from the file as they are needed."""

    def __init__(self, stream, index, text=None) -> None:
        self.stream, self.index, self.text = stream, index, text
        self.pairs, self.chunk_size, self.n_chunks = index.pairs, index.chunk_size, index.n_chunks

    def identity(self) -> dict:
        return {"pairs": self.pairs, "records": self.index.records, "pairs_file_sha256": self.index.sha256}

    def chunks(self, ks):
        return self.stream.chunks(self.index, ks)

    def explain(self, explainer, items, generation, stats) -> list[dict]:
        pairs = [self.text.fill(sp.pair) if self.text is not None else sp.pair for sp in items]
        rows = explainer.explain(pairs, generation, stats=stats)
        for row, sp, pair in zip(rows, items, pairs):
            row.update(sp.extra, method=explainer.method)
            if pair.explanation:
                row["reference"] = pair.explanation
            if pair.features:
                row["features"] = list(pair.features)
        return [prediction_row(r) for r in rows]

    def keys(self):
        for _, items in self.chunks(range(self.n_chunks)):
            yield [[sp.pair.user, sp.pair.item] for sp in items]


class Progress:
    """One line every ``every`` seconds on the whole launch (the main process counts every process's chunk
    files): pairs done, rate since this run began, ETA."""

    def __init__(self, source, parts: Path, todo: list[int], world: int, echo, every: float = 10.0) -> None:
        import time

        self.source, self.parts, self.world, self.echo, self.every = source, parts, world, echo, every
        self.missing = set(todo)
        self.before = self.done = source.pairs - sum(map(self._size, todo))
        self.start = self.last = time.monotonic()

    def _size(self, k: int) -> int:
        return min(self.source.chunk_size, self.source.pairs - k * self.source.chunk_size)

    def _refresh(self) -> None:
        found = {k for k in self.missing if chunk_file(self.parts, k).is_file()}
        self.missing -= found
        self.done += sum(map(self._size, found))

    def update(self, force: bool = False) -> None:
        """Print the line when it is due (``force``: now)."""
        import time

        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self._refresh()
        self.last = now
        total, rate = self.source.pairs, (self.done - self.before) / max(now - self.start, 1e-9)
        eta = (total - self.done) / rate if rate > 0 else float("inf")
        eta_text = ("?" if eta == float("inf")
                    else f"{int(eta // 3600)}h{int(eta % 3600 // 60):02d}m{int(eta % 60):02d}s")
        self.echo(f"[explain] {self.done:,} of {total:,} pairs ({100 * self.done / total:.1f}%) by {self.world} "
                  f"process{'es' if self.world > 1 else ''}: {rate:.1f} pairs/s, ETA {eta_text}")

    def wait(self) -> None:
        """Until every chunk is written (the other processes' included), then the last line."""
        import time

        self._refresh()
        while self.missing:
            time.sleep(0.2)
            self._refresh()
            self.update()
        self.update(force=True)


def explain_in_chunks(explainer, source, out: Path, *, plan: dict, generation=None, resume: bool = False,
                      stats=None, progress: bool = True, echo=print, launch=None) -> bool:
    """Explain ``source``'s chunks into ``OUT.parts/chunk-K.jsonl`` (each written atomically), then write ``out``
    whole (atomically, in the source's order) and remove the parts. Returns whether this process wrote ``out``.

    ``source`` is a :class:`SplitSource` or a :class:`StreamSource`. Chunk ``k`` always holds pairs
    ``k*chunk_size .. (k+1)*chunk_size - 1`` and is generated by its own call (sampling seeded with ``seed + k``),
    so a run stopped anywhere and resumed (``resume=True``: chunks already written are kept) writes the same file
    as an uninterrupted one, with no pair missing or twice, and so does a launch of several processes
    (``launch``, :mod:`explainrec.methods.sharding`: each takes its share of the missing chunks; the main process
    holds the lock, writes the plan, reports progress, waits for the others' chunks and merges). ``plan.json``
    records what decides the texts (``plan``: data, model; the pairs, chunk size and decoding are added); a resume
    with anything else is refused. The merge checks every chunk holds its pairs and streams them into ``out``.

    Why chunk files rather than appending to one: each chunk is whole or absent, whoever wrote it.
    """
    import json
    import shutil
    import signal
    from contextlib import ExitStack

    from explainrec import interrupt
    from explainrec.folders import writer_lock
    from explainrec.io import atomic_write_jsonl
    from explainrec.llm.decoding import GenerationConfig
    from explainrec.methods.sharding import Launch

    launch = launch or Launch()
    generation = generation or GenerationConfig()
    n_chunks = source.n_chunks
    plan = {**plan, **source.identity(), "chunk_size": source.chunk_size, "chunks": n_chunks,
            "generation": generation.to_dict()}
    plan = json.loads(json.dumps(plan, default=str))
    parts = parts_folder(out)
    with ExitStack() as held:
        def claim() -> list[int]:
            check_chunked_output(out, resume=resume)
            held.enter_context(writer_lock(parts, command=f"explain --out {out}"))
            return _start_or_continue(parts, plan, out, source, echo)

        todo = launch.main_decides(claim)
        tracker = Progress(source, parts, todo, launch.world, echo) if launch.is_main and progress else None
        try:
            for k, items in source.chunks(launch.share(todo)):
                chunk_generation = generation.replace(seed=generation.seed + k) if generation.do_sample else generation
                atomic_write_jsonl(chunk_file(parts, k), source.explain(explainer, items, chunk_generation, stats))
                if tracker is not None:
                    tracker.update()
            if not launch.is_main:
                return False  # the main process merges once every process's chunks are there
            if tracker is not None:
                tracker.wait()
            else:
                _wait_for(parts, todo)
        except KeyboardInterrupt as err:
            written = sum(chunk_file(parts, j).is_file() for j in range(n_chunks))
            signum = getattr(err, "signum", signal.SIGINT)
            raise interrupt.Interrupted(
                f"stopped by {signal.Signals(signum).name}: {written} of {n_chunks} chunks of {out} are kept in "
                f"{parts}; continue with the same command and --resume", signum) from None
        _merge(parts, out, source)
        shutil.rmtree(parts, ignore_errors=True)
    return True


def _start_or_continue(parts: Path, plan: dict, out: Path, source, echo) -> list[int]:
    """Write the plan of a new run, or check a resumed one's; return the chunks still missing."""
    import json

    from explainrec.folders import FolderError
    from explainrec.io import atomic_write_json

    n_chunks = source.n_chunks
    if (parts / PLAN_FILE).is_file():
        saved = json.loads((parts / PLAN_FILE).read_text(encoding="utf-8"))
        diffs = [f"{k}: was {saved.get(k)!r}, now {plan.get(k)!r}" for k in sorted(set(saved) | set(plan))
                 if saved.get(k) != plan.get(k)]
        if diffs:
            raise FolderError(f"--resume of {out} with other settings than it was started with ({'; '.join(diffs)});"
                              " resume with the same ones, or --overwrite to start again")
        todo = [k for k in range(n_chunks) if not chunk_file(parts, k).is_file()]
        have = n_chunks - len(todo)
        done = source.pairs - sum(min(source.chunk_size, source.pairs - k * source.chunk_size) for k in todo)
        echo(f"resuming {out}: {have} of {n_chunks} chunks ({done} of {source.pairs} pairs) already written; "
             f"continuing with chunk {(todo[0] if todo else n_chunks) + 1}")
        return todo
    atomic_write_json(parts / PLAN_FILE, plan)
    return list(range(n_chunks))


def _wait_for(parts: Path, todo: list[int]) -> None:
    import time

    missing = list(todo)
    while missing:
        missing = [k for k in missing if not chunk_file(parts, k).is_file()]
        if missing:
            time.sleep(0.2)


def _merge(parts: Path, out: Path, source) -> None:
    """Stream every chunk into ``out`` (atomically), after checking that each holds exactly its pairs."""
    import json

    from explainrec.data.readers import iter_jsonl
    from explainrec.io import atomic_writer

    with atomic_writer(out) as f:
        for k, want in enumerate(source.keys()):
            part = [obj for _, obj in iter_jsonl(chunk_file(parts, k))]
            if [[str(r.get("user")), str(r.get("item"))] for r in part] != want:
                raise DataError(f"{chunk_file(parts, k)}: does not hold the pairs of chunk {k + 1} (damaged, or "
                                f"written for other pairs); delete it and run again with --resume")
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part).encode("utf-8"))


ROW_ORDER = ("user", "item", "prediction", "reference", "features", "bucket", "method", "cold_start")


def prediction_row(row: dict) -> dict:
    """The row with the shared fields first (stable, readable JSONL), method-specific fields after."""
    return {**{k: row[k] for k in ROW_ORDER if k in row}, **{k: v for k, v in row.items() if k not in ROW_ORDER}}
