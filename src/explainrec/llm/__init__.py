"""LLM and sentence-encoder loading, surgery, soft tokens and generation."""
