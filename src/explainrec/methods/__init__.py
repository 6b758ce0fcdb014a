"""Explanation methods. Each lives in its own subpackage (``zero_shot``, ``gavamoe``, ...) and writes predictions
in the one JSONL format that :mod:`explainrec.metrics` reads."""
