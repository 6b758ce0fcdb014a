"""Pair retrieval: does a generated explanation single out its own (user, item) pair, or could it belong to anyone?

Why: a fine-tuned explainer can write near-templates ("great service, great food") for every pair and still score
well on BLEU/ROUGE/BERTScore, because reviews share so many words. Pair retrieval asks a question the overlap metrics
cannot: embed the generated text and every reference of the split (the embedded MiniLM sentence encoder, mean
pooling, cosine similarity), rank the references by similarity to the generated text, and see where the pair's OWN
reference lands. A template sits at about the same distance from every reference, so its own reference lands at a
chance position; an explanation that says what is particular to this user and item pulls its own reference up.

    rank_i   = 1 + #{candidates c : cos(p_i, c) > cos(p_i, own_i)}      (ties go in the pair's favour)
    R@k      = 100 * mean_i [rank_i <= k]           chance 100 * min(k, N) / N
    MRR      = 100 * mean_i 1 / rank_i              chance 100 * H_N / N,  H_N = 1 + 1/2 + ... + 1/N

with N candidates (by default the distinct references of the scored rows). The chance levels are the expectations
under a uniformly random ranking; a constant prediction scores exactly the chance MRR, since every pair's own
reference then takes one position of the same fixed ranking, and the positions 1..N are each taken once.
MRR is reported x100 so it reads like the other percentages.

What it rewards, and how it can be gamed: it rewards content that tells pairs apart, not content that is right.
Copying the item's profile (or the user's past reviews) verbatim wins retrieval, since the profile is close to that
item's references, but loses overlap: it is not an explanation. A long list of every aspect the item has helps too.
So a claim is always overlap AND specificity together: ROUGE/BERTScore say the text reads like the reference, pair
retrieval (with Distinct-n and USR) says it is not the same text for everyone. Read it against its chance level, and
only compare numbers computed over the same candidates (the same split, the same N).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from explainrec.data.schema import DataError

TIE_TOLERANCE = 1e-6  # cosine gaps below this are ties (the same text can embed a hair apart in different batches)
KS = (1, 10)


def harmonic(n: int) -> float:
    """H_n = 1 + 1/2 + ... + 1/n."""
    return math.fsum(1.0 / k for k in range(1, n + 1))


def chance_levels(n_candidates: int) -> dict[str, float]:
    """Expected R@1, R@10 and MRR (x100) of a uniformly random ranking of ``n_candidates`` references."""
    if n_candidates < 1:
        raise ValueError(f"need at least one candidate; got {n_candidates}")
    out = {f"ret_r{k}": 100.0 * min(k, n_candidates) / n_candidates for k in KS}
    out["ret_mrr"] = 100.0 * harmonic(n_candidates) / n_candidates
    return out


def _key(text: str) -> str:
    return text.strip()


def _candidate_list(references: Sequence[str], candidates: Sequence[str] | None) -> list[str]:
    """Distinct (after stripping surrounding whitespace), non-blank candidate texts, first occurrence first."""
    source = references if candidates is None else candidates
    seen: dict[str, None] = {}
    for c in source:
        if not isinstance(c, str):
            raise TypeError(f"candidates must be strings; got {type(c).__name__}")
        if _key(c):
            seen.setdefault(_key(c), None)
    out = list(seen)
    if candidates is not None:
        missing = [r for r in references if _key(r) not in seen]
        if missing:
            raise DataError(f"pair retrieval: {len(missing)} of {len(references)} references are not among the "
                            f"{len(out)} given candidates (first: {missing[0]!r}); the candidates must contain "
                            "every row's reference")
    return out


def pair_retrieval(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    candidates: Sequence[str] | None = None,
    encoder=None,
) -> dict:
    """Rank of each pair's own reference among the candidates, by cosine similarity to the pair's prediction.

    Args:
        predictions, references: one generated text and its reference per pair, aligned.
        candidates: the references to rank. Default: the distinct references of these rows. A larger list (e.g. all
            references of the split when only a sample was generated) must contain every row's reference, else a
            :class:`~explainrec.data.schema.DataError`. Texts equal after stripping surrounding whitespace count
            once, so a pair whose reference text equals another pair's counts that text as its own; blank
            candidates are dropped.
        encoder: anything with ``encode(texts) -> (n, d) tensor`` (re-normalised here), e.g. a loaded
            :class:`~explainrec.metrics.embedding.SentenceEncoder`; default: the embedded MiniLM, loaded now.

    Returns:
        ``{"rank": [int], "reciprocal_rank": [float in (0, 1]], "ret_r1", "ret_r10", "ret_mrr" (x100),
        "n_candidates": N, "chance": chance_levels(N), "encoder": str}``. Rank 1 = the own reference is the
        nearest. Rank = 1 + the number of candidates strictly more similar than the own reference (gaps under
        ``TIE_TOLERANCE`` are ties, counted in the pair's favour). A blank prediction has no content to retrieve
        with and gets the last rank N.
    """
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("pair retrieval needs at least one pair")
    if any(not _key(r) for r in references):
        raise DataError("pair retrieval: a reference is blank")
    pool = _candidate_list(references, candidates)
    index = {c: j for j, c in enumerate(pool)}
    own = torch.tensor([index[_key(r)] for r in references])  # (n,)
    if encoder is None:
        from explainrec.metrics.embedding import SentenceEncoder

        encoder = SentenceEncoder()
    pred_vec = torch.nn.functional.normalize(torch.as_tensor(encoder.encode(predictions)).float(), dim=-1)  # (n, d)
    cand_vec = torch.nn.functional.normalize(torch.as_tensor(encoder.encode(pool)).float(), dim=-1)  # (N, d)
    sims = pred_vec @ cand_vec.T  # (n, N) cosine similarities
    own_sim = sims.gather(1, own.unsqueeze(1))  # (n, 1)
    rank = 1 + (sims > own_sim + TIE_TOLERANCE).sum(1)  # (n,)
    blank = torch.tensor([not _key(p) for p in predictions])
    rank = torch.where(blank, torch.full_like(rank, len(pool)), rank)
    ranks = [int(r) for r in rank]
    n = len(ranks)
    out: dict = {"rank": ranks, "reciprocal_rank": [1.0 / r for r in ranks]}
    for k in KS:
        out[f"ret_r{k}"] = 100.0 * sum(r <= k for r in ranks) / n
    out["ret_mrr"] = 100.0 * math.fsum(out["reciprocal_rank"]) / n
    out["n_candidates"] = len(pool)
    out["chance"] = chance_levels(len(pool))
    out["encoder"] = getattr(encoder, "description", type(encoder).__name__)
    return out


def load_sentence_encoder(model: str = "minilm", **kwargs):
    """``(SentenceEncoder, None)``, or ``(None, why)`` when the encoder cannot be loaded (not installed, offline)."""
    from explainrec.metrics.embedding import SentenceEncoder

    try:
        return SentenceEncoder(model, **kwargs), None
    except (OSError, ValueError, ImportError, RuntimeError) as e:  # FileNotFoundError is an OSError
        return None, f"could not load sentence encoder {model!r}: {type(e).__name__}: {e}"
