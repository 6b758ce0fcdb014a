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
                  resume: bool = False, identity: dict | None = None, echo=print):
    """Explain the first ``limit`` (default: all) pairs of ``split``; write JSONL to ``out`` when given.

    ``chunk_size`` (with ``out``): explain and write the pairs in chunks (:func:`explain_in_chunks`), so that a
    stopped run keeps what it wrote and ``resume=True`` continues it; ``identity`` is what else must not change
    between a run and its resume (the model). Returns ``(rows, stats)``
    (:class:`~explainrec.llm.generate.GenerationStats`; a resumed run's stats count this call's pairs only).
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
        rows = explain_in_chunks(explainer, dataset, examples, Path(out), chunk_size=chunk_size, plan=plan,
                                 generation=generation, resume=resume, stats=stats, progress=progress, echo=echo)
        return rows, stats
    rows = _explain_rows(explainer, dataset, examples, generation, stats, progress)
    if out is not None:
        atomic_write_jsonl(out, rows)
    return rows, stats


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


def explain_in_chunks(explainer, dataset: Dataset, examples: list, out: Path, *, chunk_size: int, plan: dict,
                      generation=None, resume: bool = False, stats=None, progress: bool = True,
                      chunks: list[int] | None = None, echo=print) -> list[dict]:
    """Explain ``examples`` chunk by chunk into ``OUT.parts/chunk-K.jsonl`` (each written atomically), then write
    ``out`` whole (atomically, in the examples' order) and remove the parts; return every row.

    Chunk ``k`` always holds examples ``k*chunk_size .. (k+1)*chunk_size - 1`` and is generated by its own call
    (sampling seeded with ``seed + k``), so a run stopped anywhere and resumed (``resume=True``: chunks already
    written are kept) writes the same file as an uninterrupted one, with no pair missing or twice. ``plan.json``
    records what decides the texts (``plan``: data, split, model; the pairs, chunk size and decoding are added);
    a resume with anything else is refused. The parts folder is locked while it is written (one writer).

    Why chunk files rather than appending to one: each chunk is whole or absent, and ``chunks`` (default: all)
    lets several processes each write their own share of one split into the same folder (a later sharded
    ``accelerate launch``); whoever finds every chunk present writes ``out``.
    """
    import hashlib
    import json
    import shutil
    import signal

    from explainrec import interrupt
    from explainrec.data.readers import iter_jsonl
    from explainrec.folders import FolderError, writer_lock
    from explainrec.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
    from explainrec.llm.decoding import GenerationConfig

    generation = generation or GenerationConfig()
    keys = [[dataset.users.decode(e.user), dataset.items.decode(e.item)] for e in examples]
    n_chunks = -(-len(examples) // chunk_size)
    plan = {**plan, "pairs": len(examples), "pairs_sha256": hashlib.sha256(json.dumps(keys).encode()).hexdigest(),
            "chunk_size": chunk_size, "chunks": n_chunks, "generation": generation.to_dict()}
    plan = json.loads(json.dumps(plan, default=str))
    parts = check_chunked_output(out, resume=resume)
    with writer_lock(parts, command=f"explain --out {out}"):
        if (parts / PLAN_FILE).is_file():
            saved = json.loads((parts / PLAN_FILE).read_text(encoding="utf-8"))
            diffs = [f"{k}: was {saved.get(k)!r}, now {plan.get(k)!r}" for k in sorted(set(saved) | set(plan))
                     if saved.get(k) != plan.get(k)]
            if diffs:
                raise FolderError(f"--resume of {out} with other settings than it was started with ({'; '.join(diffs)});"
                                  " resume with the same ones, or --overwrite to start again")
            have = [k for k in range(n_chunks) if chunk_file(parts, k).is_file()]
            echo(f"resuming {out}: {len(have)} of {n_chunks} chunks ({min(len(have) * chunk_size, len(examples))} of "
                 f"{len(examples)} pairs) already written; continuing with chunk {next((k for k in range(n_chunks) if k not in have), n_chunks) + 1}")
        else:
            atomic_write_json(parts / PLAN_FILE, plan)
        todo = [k for k in (chunks if chunks is not None else range(n_chunks)) if not chunk_file(parts, k).is_file()]
        try:
            for k in todo:
                lo = k * chunk_size
                chunk_generation = generation.replace(seed=generation.seed + k) if generation.do_sample else generation
                rows = _explain_rows(explainer, dataset, examples[lo:lo + chunk_size], chunk_generation, stats,
                                     progress)
                atomic_write_jsonl(chunk_file(parts, k), rows)
        except KeyboardInterrupt as err:
            written = sum(chunk_file(parts, j).is_file() for j in range(n_chunks))
            signum = getattr(err, "signum", signal.SIGINT)
            raise interrupt.Interrupted(
                f"stopped by {signal.Signals(signum).name}: {written} of {n_chunks} chunks of {out} are kept in "
                f"{parts}; continue with the same command and --resume", signum) from None
        if not all(chunk_file(parts, k).is_file() for k in range(n_chunks)):
            return []  # another process writes the rest; whoever completes the set writes ``out``
        rows, lines = [], []
        for k in range(n_chunks):
            part = [obj for _, obj in iter_jsonl(chunk_file(parts, k))]
            want = keys[k * chunk_size:(k + 1) * chunk_size]
            if [[str(r.get("user")), str(r.get("item"))] for r in part] != want:
                raise DataError(f"{chunk_file(parts, k)}: does not hold the pairs of chunk {k + 1} (damaged, or "
                                f"written for another split); delete it and run again with --resume")
            rows += part
            lines += [json.dumps(r, ensure_ascii=False) + "\n" for r in part]
        atomic_write_text(out, "".join(lines))
        shutil.rmtree(parts, ignore_errors=True)
    return rows


ROW_ORDER = ("user", "item", "prediction", "reference", "features", "bucket", "method", "cold_start")


def prediction_row(row: dict) -> dict:
    """The row with the shared fields first (stable, readable JSONL), method-specific fields after."""
    return {**{k: row[k] for k in ROW_ORDER if k in row}, **{k: v for k, v in row.items() if k not in ROW_ORDER}}
