"""The rubric of GaVaMoE's human evaluation (Section 4.6, Appendix B, Table 6): three dimensions scored 1-5 with
half points, combined as Human-Score = 0.4 P + 0.3 Q + 0.3 U (Eq. 14).

The page, the LLM judge and the report all read the criteria from here, so raters and the judge see the same words.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

DIMENSIONS = ("P", "Q", "U")
NAMES = {"P": "Personalization", "Q": "Text Quality", "U": "User Satisfaction"}

# Appendix B: what each dimension asks the rater to consider
GUIDANCE = {
    "P": "Consider the user's past interactions, stated preferences, and behavioral patterns when assessing "
         "alignment. Look for specific mentions of user-relevant features or experiences.",
    "Q": "Evaluate the explanation's grammatical correctness, logical flow, and appropriate use of language. "
         "Consider whether the text would be easily understood by the average user.",
    "U": "Assess whether the explanation would likely motivate the user to engage further with the recommended "
         "item or the platform. Consider factors such as informativeness, persuasiveness, and appeal.",
}

# Table 6: the description of every score level, 5 down to 1
LEVELS = {
    "P": {5: "Explanation perfectly aligns with user preferences, demonstrating deep understanding of individual "
             "tastes.",
          4: "Explanation shows strong alignment with user preferences, with minor misalignments.",
          3: "Explanation moderately aligns with user preferences, with some noticeable misalignments.",
          2: "Explanation shows weak alignment with user preferences, with significant misalignments.",
          1: "Explanation shows no alignment with user preferences."},
    "Q": {5: "Text is exceptionally clear, coherent, and well-structured, with no errors.",
          4: "Text is clear and coherent, with minimal structural issues or errors.",
          3: "Text is generally clear but has some issues with coherence or structure.",
          2: "Text has notable issues with clarity, coherence, or structure.",
          1: "Text is unclear, incoherent, or poorly structured."},
    "U": {5: "Explanation is highly engaging, likely to prompt immediate user interaction or action.",
          4: "Explanation is engaging and likely to prompt user interaction.",
          3: "Explanation is somewhat engaging, may prompt user interaction.",
          2: "Explanation is unlikely to prompt user interaction.",
          1: "Explanation is likely to discourage user interaction."},
}

HALF_POINTS = "Use the full range, with half points (e.g. 3.5) when an explanation falls between two descriptions."

# Eq. 14 of the paper
PAPER_WEIGHTS = {"P": 0.4, "Q": 0.3, "U": 0.3}


def criteria() -> list[dict]:
    """The rubric as data (for the page and the report): per dimension its key, name, guidance and levels 5..1."""
    return [{"key": d, "name": NAMES[d], "guidance": GUIDANCE[d],
             "levels": [{"score": s, "text": LEVELS[d][s]} for s in (5, 4, 3, 2, 1)]} for d in DIMENSIONS]


def check_score(value: object, *, half_points: bool = True) -> float:
    """A score as a float in [1, 5]; with ``half_points`` (a person's rating) only 1, 1.5, ..., 5.

    The judge's expected value is any real number in [1, 5], so it is checked with ``half_points=False``.
    Raises ValueError saying what was wrong.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number from 1 to 5, got {value!r}")
    score = float(value)
    if not math.isfinite(score) or not 1 <= score <= 5:
        raise ValueError(f"must be from 1 to 5, got {value!r}")
    if half_points and score * 2 != int(score * 2):
        raise ValueError(f"must be a whole or half point (1, 1.5, ..., 5), got {value!r}")
    return score


def parse_weights(text: str | None) -> dict[str, float]:
    """``"0.4,0.3,0.3"`` or ``"P=0.4,Q=0.3,U=0.3"`` -> weights of P, Q, U (non-negative, summing to 1, so the
    Human-Score stays on the 1-5 scale); None gives the paper's."""
    if text is None:
        return dict(PAPER_WEIGHTS)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != len(DIMENSIONS):
        raise ValueError(f"weights take three values for P, Q, U (e.g. 0.4,0.3,0.3); got {text!r}")
    weights = {}
    for i, part in enumerate(parts):
        key, _, value = part.rpartition("=")
        key = key.strip().upper() or DIMENSIONS[i]
        if key not in DIMENSIONS or key in weights:
            raise ValueError(f"weights: {part!r} names no dimension of P, Q, U (or names one twice)")
        try:
            weights[key] = float(value)
        except ValueError:
            raise ValueError(f"weights: {part!r} is not a number") from None
        if not math.isfinite(weights[key]) or weights[key] < 0:
            raise ValueError(f"weights: {part!r} must be a non-negative number")
    if abs(sum(weights.values()) - 1) > 1e-6:
        raise ValueError(f"weights must sum to 1 (so the Human-Score stays on the 1-5 scale); {text!r} sums to "
                         f"{sum(weights.values()):g}")
    return {d: weights[d] for d in DIMENSIONS}


def human_score(scores: Mapping[str, float], weights: Mapping[str, float] = PAPER_WEIGHTS) -> float:
    """Eq. 14: the weighted sum of P, Q and U."""
    return sum(weights[d] * scores[d] for d in DIMENSIONS)
