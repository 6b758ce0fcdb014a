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
RULES = {
    "rougeL+bertscore": lambda m: (m["rougeL"] + m.get("bertscore_f1", m["rougeL"])) / 2,
    "rougeL": lambda m: m["rougeL"],
    "bleu4": lambda m: m["bleu4"],
}


def choose_decoding(explainer, dataset, base: GenerationConfig, *, grid=DEFAULT_GRID, limit: int | None = 100,
                    rule: str = "rougeL+bertscore", bertscore: bool = True, echo=print) -> dict:
    """Score every candidate (``base`` with the grid's changes) on the valid split; return the record of the choice."""
    from explainrec.methods.explain import explain_split
    from explainrec.metrics import evaluate

    if rule not in RULES:
        from explainrec.config import ConfigError

        raise ConfigError(f"rule {rule!r}: expected one of {', '.join(RULES)}")
    if not bertscore and rule == "rougeL+bertscore":
        rule = "rougeL"
    tried = []
    for change in grid:
        generation = GenerationConfig.from_dict({**base.to_dict(), **change}, "decoding candidate")
        rows, stats = explain_split(explainer, dataset, "valid", limit=limit, generation=generation, progress=False)
        metrics = evaluate(rows, bertscore=bertscore)["metrics"]
        score = RULES[rule](metrics)
        tried.append({"settings": change, "score": score, "metrics": {k: metrics[k] for k in
                      ("bleu4", "rougeL", "bertscore_f1", "distinct2", "usr") if k in metrics},
                      "seconds": round(stats.seconds, 1)})
        echo(f"[tune-decoding] {change or 'greedy'}: {rule} {score:.2f}")
    best = max(tried, key=lambda t: t["score"])
    return {"rule": rule, "split": "valid", "pairs": len(rows), "chosen": best["settings"],
            "generation": GenerationConfig.from_dict({**base.to_dict(), **best["settings"]}).to_dict(),
            "tried": tried}


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
