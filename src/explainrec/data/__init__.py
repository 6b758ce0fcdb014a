"""Datasets: the shared schema, the readers of every supported format, synthetic data, splits, stats."""
from explainrec.data.readers import load_dataset
from explainrec.data.schema import DataError, Dataset, Example, IdMap, Interactions, Pair
from explainrec.data.splits import hash_split, sparsity_buckets, train_interaction_counts
from explainrec.data.stats import dataset_stats, format_stats
from explainrec.data.synthetic import make_synthetic

__all__ = [
    "DataError",
    "Dataset",
    "Example",
    "IdMap",
    "Interactions",
    "Pair",
    "dataset_stats",
    "format_stats",
    "hash_split",
    "load_dataset",
    "make_synthetic",
    "sparsity_buckets",
    "train_interaction_counts",
]
