"""BERTScore (Zhang et al., 2020) through the ``bert_score`` package, offline, with the embedded MiniLM by default.

XRec and its followers report BERTScore with roberta-large (layer 17, rescaled with the baseline that
ships inside ``bert_score``). That model is 1.4 GB and not embedded, so the default here is the small
all-MiniLM-L6-v2 that ships with explainrec: good for comparing our own runs, *not* comparable with
published numbers. Pass ``model="roberta-large", rescale_with_baseline=True`` (layer 17 is bert_score's
default for it) to reproduce the XRec setting when that model is in the local HF cache.

All scores are percentages (x100 of bert_score's fractions), like every other metric in this package.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from explainrec.llm.load import DEFAULT_ENCODER, resolve_encoder_path

MINILM_NOTE = "not comparable to published BERTScore (papers use roberta-large)"
XREC_SETTING = "roberta-large, num_layers=17, rescale_with_baseline=True"


class BERTScoreError(RuntimeError):
    """The BERTScore encoder could not be loaded or configured; evaluate(..., bertscore=False) skips it."""


def _is_minilm(name: str) -> bool:
    return name in ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def _layers_of_folder(folder: Path) -> int | None:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    n = cfg.get("num_hidden_layers", cfg.get("n_layers", cfg.get("num_layers")))
    return int(n) if isinstance(n, int) else None


def _default_layers(name: str, path: str) -> int:
    """bert_score's tuned layer for ids it knows (roberta-large: 17); else the encoder's last layer.

    For MiniLM the last (6th) layer is the one its sentence-embedding training shaped, so we use all 6.
    """
    from bert_score.utils import model2layers

    if not _is_minilm(name) and name in model2layers:
        return int(model2layers[name])
    if Path(path).is_dir():
        n = _layers_of_folder(Path(path))
        if n is not None:
            return n
    raise BERTScoreError(f"BERTScore: no default layer known for {name!r}; pass num_layers=...")


class BertScoreModel:
    """A loaded ``bert_score.BERTScorer`` plus the settings a result must record.

    Build once and reuse when scoring many subsets; :func:`bertscore` builds one when none is given.
    """

    def __init__(
        self,
        model: str = DEFAULT_ENCODER,
        *,
        num_layers: int | None = None,
        rescale_with_baseline: bool = False,
        baseline_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        use_fast_tokenizer: bool = False,
    ) -> None:
        try:
            path = resolve_encoder_path(model)
        except FileNotFoundError as e:
            raise BERTScoreError(f"BERTScore encoder {model!r}: {e}") from e
        layers = num_layers if num_layers is not None else _default_layers(model, path)
        if rescale_with_baseline and baseline_path is None:
            shipped = self._shipped_baseline(path)
            if shipped is None:
                raise BERTScoreError(
                    f"BERTScore: no rescale baseline ships with bert_score for {model!r}; "
                    "pass baseline_path=... or rescale_with_baseline=False"
                )
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar inside a metrics run; restored below
        try:
            from bert_score import BERTScorer

            self.scorer = BERTScorer(
                model_type=path,
                num_layers=layers,
                lang="en",  # only used to find the rescale baseline file
                rescale_with_baseline=rescale_with_baseline,
                baseline_path=baseline_path,
                device=device,
                batch_size=batch_size,
                use_fast_tokenizer=use_fast_tokenizer,
            )
        except Exception as e:  # noqa: BLE001 -- OSError offline, ValueError/AssertionError on bad layers, ...
            raise BERTScoreError(
                f"BERTScore: could not load encoder {model!r} (path {path!r}, num_layers={layers}): "
                f"{type(e).__name__}: {e}. Models must be local (embedded, a folder, or in the HF cache; "
                "no downloads at run time); evaluate(..., bertscore=False) skips BERTScore."
            ) from e
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self.config = {
            "encoder": "all-MiniLM-L6-v2 (embedded)" if _is_minilm(model) else model,
            "encoder_path": path,
            "num_layers": layers,
            "rescale_with_baseline": bool(rescale_with_baseline),
            "idf": False,
            "scale": "x100",
        }
        if _is_minilm(model):
            self.config["note"] = MINILM_NOTE
        elif not (model == "roberta-large" and layers == 17 and rescale_with_baseline):
            self.config["note"] = f"comparable to XRec only with {XREC_SETTING}"

    @staticmethod
    def _shipped_baseline(model_type: str) -> Path | None:
        import bert_score

        f = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{model_type}.tsv"
        return f if f.is_file() else None

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
        """Per-example BERTScore precision/recall/F1 x100.

        With contextual embeddings x (reference) and y (prediction), cosine similarities matched greedily:
        R = mean_{x_i} max_{y_j} cos(x_i, y_j), P = mean_{y_j} max_{x_i} cos(x_i, y_j), F1 = 2PR / (P + R);
        when rescaled, s' = (s - b) / (1 - b) with bert_score's baseline b. An empty (or blank) prediction or
        reference has no token to match and scores 0 (bert_score itself crashes on one under transformers 5).
        """
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        out: dict[str, list[float]] = {"precision": [0.0] * len(predictions), "recall": [0.0] * len(predictions),
                                       "f1": [0.0] * len(predictions)}
        keep = [i for i, (c, r) in enumerate(zip(predictions, references)) if c.strip() and r.strip()]
        if not keep:
            return out
        p, r, f = self.scorer.score([predictions[i] for i in keep], [references[i] for i in keep], verbose=False)
        for name, values in (("precision", p), ("recall", r), ("f1", f)):
            for i, v in zip(keep, values):
                out[name][i] = 100.0 * float(v)
        return out


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    model: str = DEFAULT_ENCODER,
    *,
    scorer: BertScoreModel | None = None,
    **kwargs,
) -> dict:
    """Per-example BERTScore P/R/F1 (x100) plus the encoder settings under ``"config"``.

    ``kwargs`` go to :class:`BertScoreModel` (num_layers, rescale_with_baseline, baseline_path, device,
    batch_size). Raises :class:`BERTScoreError` with a clear message when the encoder cannot be loaded.
    """
    scorer = scorer or BertScoreModel(model, **kwargs)
    out: dict = dict(scorer.score(predictions, references))
    out["config"] = dict(scorer.config)
    return out
