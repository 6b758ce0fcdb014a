"""Zero-shot explanations: render each example's prompt, generate with the (untrained) LLM, write predictions.

The floor every trained method must beat, and a smoke test of the whole prompt -> generate -> evaluate chain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from explainrec.data.prompts import PROMPT_FIELDS, build_messages, render_prompt
from explainrec.data.schema import Dataset, Example
from explainrec.llm.generate import GenerationStats, generate_texts

METHOD = "zero-shot"


def _buckets(dataset: Dataset, examples: Sequence[Example]) -> list[str | None]:
    """Sparsity bucket of every example (ds1 = most active users), or None where the helper is unavailable."""
    try:
        from explainrec.data.splits import sparsity_buckets
    except ImportError:
        return [None] * len(examples)
    return list(sparsity_buckets(dataset, examples))


def explain(
    examples: Sequence[Example],
    dataset: Dataset,
    *,
    model_name: str = "smollm2-135m",
    batch_size: int = 8,
    max_new_tokens: int = 60,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_beams: int = 1,
    seed: int = 0,
    system: str | None = None,
    include: Sequence[str] = PROMPT_FIELDS,
    device=None,
    dtype=None,
    cache_dir=None,
    progress: bool = True,
    model=None,
    tokenizer=None,
) -> tuple[list[dict], GenerationStats]:
    """Generate one explanation per example; return ``(rows, stats)``.

    Each row is ``{user, item (raw ids), prediction, reference, features, bucket, method}``. Pass ``model`` and
    ``tokenizer`` to reuse a loaded LLM; otherwise ``model_name`` is loaded with :func:`explainrec.llm.load.load_llm`.
    """
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither")
    if model is None:
        from explainrec.llm.load import load_llm

        model, tokenizer = load_llm(model_name, device=device, dtype=dtype, cache_dir=cache_dir)
    examples = list(examples)
    prompts = [render_prompt(tokenizer, build_messages(e, system=system, include=include)) for e in examples]
    stats = GenerationStats()
    texts = generate_texts(
        model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, do_sample=do_sample,
        temperature=temperature, top_p=top_p, num_beams=num_beams, seed=seed, progress=progress, stats=stats,
    )
    buckets = _buckets(dataset, examples)
    rows = [
        {
            "user": dataset.users.decode(e.user),
            "item": dataset.items.decode(e.item),
            "prediction": text,
            "reference": e.explanation,
            "features": list(e.features),
            "bucket": bucket,
            "method": METHOD,
        }
        for e, text, bucket in zip(examples, texts, buckets)
    ]
    return rows, stats


def run(
    data_source: str | Path | Dataset,
    split: str = "test",
    out: str | Path = "preds.jsonl",
    limit: int | None = None,
    *,
    trust_pickle: bool = False,
    **kw,
) -> GenerationStats:
    """Explain the first ``limit`` (all by default) examples of ``split`` and write them to ``out`` as JSONL.

    ``data_source`` is anything :func:`explainrec.data.load_dataset` reads, or a loaded :class:`Dataset`;
    ``kw`` goes to :func:`explain`. The file is written atomically. Returns the generation stats.
    """
    from explainrec.io import atomic_write_jsonl

    if isinstance(data_source, Dataset):
        dataset = data_source
    else:
        from explainrec.data import load_dataset

        dataset = load_dataset(data_source, trust_pickle=trust_pickle)
    examples = dataset.split_examples(split)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        examples = examples[:limit]
    if not examples:
        raise ValueError(f"{data_source}: no examples in split {split!r}")
    rows, stats = explain(examples, dataset, **kw)
    atomic_write_jsonl(out, rows)
    return stats
