"""Zero-shot baseline: the instruction-tuned LLM explains each pair from the prompt alone, with no training."""
from explainrec.methods.zero_shot.recipe import METHOD, explain, run

__all__ = ["METHOD", "explain", "run"]
