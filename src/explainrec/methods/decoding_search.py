"""Choose decoding settings on the validation split, never on test: one rule for every method.

Greedy decoding after fine-tuning loops on phrases ("a spacious pool area, a spacious pool area"); repetition
penalties, n-gram blocking, beams or seeded sampling can help, but which one is a choice that must not look at
test. :func:`choose_decoding` explains the first ``limit`` validation pairs with every candidate, scores each with
the same metrics as the test (``rule``: the mean of ROUGE-L F1 and BERTScore F1 by default, both x100), and returns
the best; ``explainrec tune-decoding RUN --data D`` writes it to ``RUN/decoding.json``, which
``explainrec explain --decoding RUN/decoding.json`` (and the bench's ``tune_decoding``) then apply to test once.
"""
from __future__ import annotations

from pathlib import Path

from explainrec.llm.decoding import GenerationConfig

# Candidates: greedy, the two repetition controls alone and together, beams, and seeded nucleus sampling.
DEFAULT_GRID = (
    {},
    {"repetition_penalty": 1.2},
    {"no_repeat_ngram_size": 3},
    {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3},
    {"num_beams": 4, "no_repeat_ngram_size": 3},
    {"do_sample": True, "top_p": 0.9, "temperature": 0.7, "seed": 0},
)
# ... plus the levers against templates: locally typical sampling, and k sampled candidates per pair reranked by
# closeness to the pair's own inputs (explainrec.methods.rerank). Contrastive search is not among them: in
# transformers 5 it lives on the model hub (custom_generate), which this toolkit cannot reach at run time.
SPECIFICITY_GRID = DEFAULT_GRID + (
    {"do_sample": True, "typical_p": 0.9, "temperature": 0.7, "seed": 0},
    {"do_sample": True, "top_p": 0.9, "temperature": 0.7, "candidates": 4, "seed": 0},
    {"do_sample": True, "top_p": 0.95, "temperature": 1.0, "candidates": 4, "seed": 0},
)
GRIDS = {"default": DEFAULT_GRID, "specificity": SPECIFICITY_GRID}


def overlap(m: dict) -> float:
    """The overlap side of a choice: the mean of ROUGE-L F1 and BERTScore F1 (ROUGE-L alone without BERTScore)."""
    return (m["rougeL"] + m.get("bertscore_f1", m["rougeL"])) / 2


RULES = {
    "rougeL+bertscore": overlap,
    "rougeL": lambda m: m["rougeL"],
    "bleu4": lambda m: m["bleu4"],
}
# Rules that weigh overlap and specificity together need every candidate's figures: the most specific candidate
# (pair-retrieval MRR) among those whose overlap is within TOLERANCE points of greedy's. Why a tolerance and not a
# sum: specificity alone is easy to buy (copying the item profile wins retrieval at ROUGE-L 13); the claim is
# always both, so overlap may give a little and specificity must gain.
TOLERANCE = 1.0
JOINT_RULES = ("mrr@overlap-1",)


def check_search(rule: str, grid) -> None:
    """A search rule and grid :func:`choose_decoding` takes (asked before any model is loaded)."""
    from explainrec.config import ConfigError

    if rule not in (*RULES, *JOINT_RULES):
        raise ConfigError(f"rule {rule!r}: expected one of {', '.join((*RULES, *JOINT_RULES))}")
    if isinstance(grid, str) and grid not in GRIDS:
        raise ConfigError(f"grid {grid!r}: expected one of {', '.join(GRIDS)}")


def choose_decoding(explainer, dataset, base: GenerationConfig, *, grid=DEFAULT_GRID, limit: int | None = 100,
                    rule: str = "rougeL+bertscore", bertscore: bool = True, echo=print) -> dict:
    """Score every candidate (``base`` with the grid's changes) on the valid split; return the record of the choice
    (every candidate's figures too: the trade-off curve, not only the chosen point). ``grid``: a sequence of
    changes or a name in :data:`GRIDS`."""
    from explainrec.config import ConfigError
    from explainrec.methods.explain import explain_split
    from explainrec.metrics import evaluate

    check_search(rule, grid)
    if isinstance(grid, str):
        grid = GRIDS[grid]
    if not grid or grid[0] != {}:
        raise ConfigError("a decoding grid starts with greedy ({}): the baseline every candidate is judged against")
    if not bertscore and rule == "rougeL+bertscore":
        rule = "rougeL"
    joint = rule in JOINT_RULES
    # once for every candidate; every candidate's texts ranked among all references of the valid split
    kw = _loaded_scorers(bertscore, [e.explanation for e in dataset.split_examples("valid")])
    tried = []
    for change in grid:
        generation = GenerationConfig.from_dict({**base.to_dict(), **change}, "decoding candidate")
        rows, stats = explain_split(explainer, dataset, "valid", limit=limit, generation=generation, progress=False)
        metrics = evaluate(rows, bertscore=bertscore, buckets=False, **kw)["metrics"]
        if joint and "ret_mrr" not in metrics:
            raise ConfigError(f"rule {rule}: pair retrieval could not be scored (the sentence encoder did not load)")
        score = metrics["ret_mrr"] if joint else RULES[rule](metrics)
        tried.append({"settings": change, "score": score, "overlap": overlap(metrics),
                      "metrics": {k: metrics[k] for k in ("bleu4", "rougeL", "bertscore_f1", "ret_r1", "ret_mrr",
                                                          "distinct2", "usr") if k in metrics},
                      "seconds": round(stats.seconds, 1)})
        echo(f"[tune-decoding] {change or 'greedy'}: {rule} {score:.2f} (overlap {tried[-1]['overlap']:.2f})")
    if joint:  # greedy is the first candidate; those that give up more overlap than the tolerance are out
        for t in tried:
            t["eligible"] = t["overlap"] >= tried[0]["overlap"] - TOLERANCE
        best = max((t for t in tried if t["eligible"]), key=lambda t: (t["score"], t["overlap"]))
    else:
        best = max(tried, key=lambda t: t["score"])
    return {"rule": rule, "split": "valid", "pairs": len(rows), "chosen": best["settings"],
            "generation": GenerationConfig.from_dict({**base.to_dict(), **best["settings"]}).to_dict(),
            "tried": tried}


def _loaded_scorers(bertscore: bool, candidates: list[str]) -> dict:
    """evaluate()'s keywords with the BERTScore model and the sentence encoder loaded (where they load)."""
    from explainrec.metrics.embedding import SentenceEncoder
    from explainrec.metrics.semantic import BertScoreModel

    kw: dict = {"bertscore_kwargs": {"scorer": BertScoreModel()}} if bertscore else {}
    try:
        kw["specificity_kwargs"] = {"encoder": SentenceEncoder(), "candidates": candidates}
    except (OSError, FileNotFoundError, ValueError):
        kw["specificity"] = False  # overlap rules still work; a joint rule then stops with a message
    return kw


def read_decoding(path: str | Path) -> GenerationConfig:
    """The generation settings a ``decoding.json`` chose."""
    import json

    from explainrec.config import ConfigError

    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return GenerationConfig.from_dict(record["generation"], f"{path}: generation")
    except OSError as err:
        raise ConfigError(f"--decoding {path}: cannot read ({err.strerror or err})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--decoding {path}: not a decoding.json written by explainrec tune-decoding ({err})") from None
