"""Evaluation suite for generated explanations: PEPLER-style BLEU, sacreBLEU, ROUGE, Distinct, USR,
BERTScore, pair retrieval (specificity) and PETER's feature metrics, with per-bucket tables and JSON/Markdown
reports."""
from explainrec.metrics.features import feature_metrics
from explainrec.metrics.predictions import check_rows, load_predictions
from explainrec.metrics.report import METRICS, evaluate, report_paths, save_report, to_markdown
from explainrec.metrics.semantic import BERTScoreError, BertScoreModel, bertscore
from explainrec.metrics.specificity import chance_levels, pair_retrieval
from explainrec.metrics.text import (
    bleu,
    bleu_details,
    distinct,
    rouge,
    rouge_per_example,
    sacrebleu_corpus,
    sentence_bleu,
    tokenize,
    usr,
)

__all__ = [
    "METRICS",
    "BERTScoreError",
    "BertScoreModel",
    "bertscore",
    "bleu",
    "bleu_details",
    "chance_levels",
    "check_rows",
    "distinct",
    "evaluate",
    "feature_metrics",
    "load_predictions",
    "pair_retrieval",
    "report_paths",
    "rouge",
    "rouge_per_example",
    "sacrebleu_corpus",
    "save_report",
    "sentence_bleu",
    "to_markdown",
    "tokenize",
    "usr",
]
