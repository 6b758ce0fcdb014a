"""Word-overlap metrics for generated explanations: BLEU, sacreBLEU, ROUGE, Distinct-n, USR.

BLEU, Distinct and USR run on the PEPLER/PETER/GaVaMoE token normalisation (:func:`tokenize`) so that
numbers line up with those papers; sacreBLEU and ROUGE use their libraries' own tokenisers so that
they line up with everybody else. Percentages (x100) everywhere except USR, which the papers report
as a fraction.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

TOKENIZER_DESCRIPTION = (
    "PEPLER/PETER-style: lower-case; ’ -> '; clitics ('s 're 've 'd 'll 'm n't) split off as tokens; "
    "each punctuation mark split off as a token (a run of the same mark, e.g. '...' or '!!', is one token); "
    "hyphens/apostrophes inside a word are kept; then whitespace tokens"
)

# Insert a space before a clitic that ends a word: "don't" -> "do n't", "it's" -> "it 's".
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'d|'ll|'m)(?!\w)")
# A clitic on its own, a word (intra-word - and ' allowed), or a run of one punctuation character.
_TOKEN = re.compile(r"n't(?!\w)|'(?:s|re|ve|d|ll|m)(?!\w)|\w+(?:[-']\w+)*|([^\w\s])\1*")


def tokenize(text: str) -> list[str]:
    """Normalise like PEPLER/PETER/GaVaMoE before BLEU: see :data:`TOKENIZER_DESCRIPTION`.

    >>> tokenize("I don't like it's plot... Great!!")
    ['i', 'do', "n't", 'like', 'it', "'s", 'plot', '.', 'great', '!']

    PEPLER's own post-processing additionally maps ':' to ',' and ';' to '.'; we keep the marks as
    they are (they are rare in explanations and the mapping is arbitrary).
    """
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = _CLITIC.sub(r" \1", text)
    return [m.group(0)[0] if m.group(1) else m.group(0) for m in _TOKEN.finditer(text)]


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu_details(hyp_tokens: Sequence[Sequence[str]], ref_tokens: Sequence[Sequence[str]], max_order: int = 4) -> dict:
    """Corpus BLEU on token lists, unsmoothed, one reference per hypothesis (PEPLER's ``bleu_score``).

    p_n = sum_i sum_g min(c_i(g), r_i(g)) / sum_i sum_g c_i(g)   (clipped n-gram counts summed over the corpus)
    BP  = exp(1 - r / c) if c < r else 1                        (r, c = total reference / hypothesis length)
    BLEU = 100 * BP * exp(sum_{n=1..N} log(p_n) / N)            (0 when any p_n is 0)
    """
    if len(hyp_tokens) != len(ref_tokens):
        raise ValueError(f"{len(hyp_tokens)} hypotheses but {len(ref_tokens)} references")
    matches = [0] * max_order
    totals = [0] * max_order
    hyp_len = ref_len = 0
    for hyp, ref in zip(hyp_tokens, ref_tokens):
        hyp_len += len(hyp)
        ref_len += len(ref)
        for n in range(1, max_order + 1):
            h = _ngrams(hyp, n)
            matches[n - 1] += sum((h & _ngrams(ref, n)).values())  # & keeps min counts = clipping
            totals[n - 1] += sum(h.values())
    precisions = [m / t if t > 0 else 0.0 for m, t in zip(matches, totals)]
    if hyp_len == 0:
        bp = 0.0
    elif hyp_len < ref_len:
        bp = math.exp(1.0 - ref_len / hyp_len)
    else:
        bp = 1.0
    geo = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) > 0 else 0.0
    return {
        "bleu": 100.0 * bp * geo,
        "precisions": precisions,
        "matches": matches,
        "totals": totals,
        "brevity_penalty": bp,
        "hyp_len": hyp_len,
        "ref_len": ref_len,
    }


def bleu(predictions: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU-``max_order`` x100 on :func:`tokenize` tokens, unsmoothed (see :func:`bleu_details`).

    ``max_order=1`` gives BLEU-1, ``max_order=4`` BLEU-4 as in PETER/PEPLER/GaVaMoE tables.
    """
    return bleu_details([tokenize(p) for p in predictions], [tokenize(r) for r in references], max_order)["bleu"]


def sacrebleu_corpus(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """sacreBLEU corpus BLEU-4 with its defaults (13a tokeniser, case-sensitive, exp smoothing) on raw text.

    Returned with sacreBLEU's signature string; it is *not* the PEPLER BLEU-4 and is labelled apart.
    """
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    score = metric.corpus_score(list(predictions), [list(references)])
    return float(score.score), metric.get_signature().format()


def sentence_bleu(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-example smoothed BLEU x100, identical to ``sacrebleu.sentence_bleu`` with its defaults.

    BLEU of a single sentence needs smoothing (most 4-gram precisions are 0), hence sacreBLEU's 'exp'
    smoothing with effective order; it exists to give BLEU a per-example spread (std), not a headline.
    """
    from sacrebleu.metrics import BLEU

    metric = BLEU(effective_order=True)  # == sacrebleu.sentence_bleu defaults, built once
    return [float(metric.sentence_score(p, [r]).score) for p, r in zip(predictions, references)]


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
ROUGE_USE_STEMMER = False
ROUGE_DESCRIPTION = (
    "rouge_score.RougeScorer(['rouge1','rouge2','rougeL'], use_stemmer=False), F1 x100 per example, averaged; "
    "rouge_score's own tokeniser (lower-case, alphanumeric runs, punctuation dropped), no stemming as in "
    "PEPLER/PETER's ROUGE; rougeL is sentence-level LCS"
)


def rouge_per_example(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = ROUGE_USE_STEMMER
) -> dict[str, list[float]]:
    """ROUGE-1/2/L F1 x100 for every (prediction, reference) pair.

    F1 = 2PR / (P + R) with P = overlap / |prediction n-grams|, R = overlap / |reference n-grams|
    (for ROUGE-L the overlap is the longest common subsequence). No stemmer by default: the ROUGE
    used by PETER/PEPLER (and so GaVaMoE) does not stem, and rouge_score's default is also False.
    """
    from rouge_score.rouge_scorer import RougeScorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    out: dict[str, list[float]] = {k: [] for k in ROUGE_TYPES}
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # rouge_score takes (target, prediction)
        for k in ROUGE_TYPES:
            out[k].append(100.0 * scores[k].fmeasure)
    return out


def rouge(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = ROUGE_USE_STEMMER) -> dict[str, float]:
    """Mean over examples of :func:`rouge_per_example` (x100)."""
    per = rouge_per_example(predictions, references, use_stemmer)
    return {k: sum(v) / len(v) if v else 0.0 for k, v in per.items()}


def distinct(predictions: Sequence[str], n: int) -> float:
    """Distinct-n x100: distinct n-grams / all n-grams, pooled over all predictions (corpus level).

    Distinct-n = |union_i set(ngrams_n(pred_i))| / sum_i |ngrams_n(pred_i)|, on :func:`tokenize` tokens;
    0 when the predictions hold no n-gram at all.
    """
    seen: set[tuple[str, ...]] = set()
    total = 0
    for pred in predictions:
        grams = _ngrams(tokenize(pred), n)
        seen.update(grams)
        total += sum(grams.values())
    return 100.0 * len(seen) / total if total else 0.0


def usr(predictions: Sequence[str]) -> float:
    """Unique Sentence Ratio as a fraction in [0, 1] (PETER, XRec): |unique predictions| / |predictions|.

    Two predictions are the same when their :func:`tokenize` token sequences are equal, so case and
    spacing around punctuation do not make a sentence "unique".
    """
    if not predictions:
        raise ValueError("usr needs at least one prediction")
    return len({tuple(tokenize(p)) for p in predictions}) / len(predictions)
