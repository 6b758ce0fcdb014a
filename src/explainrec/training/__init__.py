"""Training helpers shared by every recipe: atomic checkpoints and small loop utilities."""
from explainrec.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_extra_tensors,
    save_checkpoint,
)
from explainrec.training.loop_utils import progress, resolve_device, seed_everything

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_extra_tensors",
    "progress",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]
