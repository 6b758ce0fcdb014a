"""Zero-shot explanations from the untrained LLM: the floor every trained method must beat (registry entry
``zero-shot``, in :mod:`.method`)."""
