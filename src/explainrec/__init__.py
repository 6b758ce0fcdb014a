"""explainrec: LLM-based explainable recommendation."""
__version__ = "0.2.0"
