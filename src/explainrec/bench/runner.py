"""One run of the experiment harness: train (if the method trains) -> explain a split -> evaluate, resumably.

A run folder holds ``run.json`` (the run's full settings), then what each stage leaves behind::

    run.json            the spec; a folder whose run.json differs is cleared and redone
    stage1/ lightgcn/   checkpoint/ model/ train_summary.json     (trained methods; see their recipes)
                        (method vae-gmm: stage1/ only -- no LLM, no predictions; done.json carries stage 1's metrics)
    predictions.jsonl   the explained split (atomic)
    metrics.json/.md    the evaluation (explainrec.metrics)
    done.json           written last: timings and generation throughput

Each stage is skipped when its output exists, and training resumes from ``checkpoint/``, so an interrupted run
picks up where it stopped and a finished one costs nothing to "rerun".
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from explainrec.io import atomic_write_json

METHODS = ("zero-shot", "gavamoe", "xrec", "vae-gmm")  # vae-gmm: GaVaMoE's stage 1 alone (cluster sweeps, Figure 5)
VAE_GMM_OPTIONS = ("clusters", "stage1", "seed")  # the stage-1 part of gavamoe's options, same names
GENERATION_KEYS = ("batch_size", "max_new_tokens", "do_sample", "temperature", "top_p", "num_beams", "seed")


@dataclass
class RunSpec:
    """Everything that decides a run's result; two runs with equal specs are the same run."""

    data: str  # anything explainrec.data.load_dataset reads: "synthetic", "synthetic:n_users=200", a folder
    method: str  # one of METHODS
    seed: int = 0
    options: dict = field(default_factory=dict)  # the method's config fields (TrainConfig / XRecConfig / zero-shot)
    generation: dict = field(default_factory=dict)  # GENERATION_KEYS
    split: str = "test"
    limit: int | None = None  # explain only the first N pairs of the split

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        bad = set(self.generation) - set(GENERATION_KEYS)
        if bad:
            raise ValueError(f"unknown generation option(s) {sorted(bad)}; choose from {GENERATION_KEYS}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), sort_keys=True))  # plain JSON types, so saved == fresh


def _train(spec: RunSpec, dataset, run_dir: Path, echo, progress: bool) -> dict | None:
    """Train the spec's method into ``run_dir`` unless ``model/`` is already there. Returns the train summary."""
    summary_path = run_dir / "train_summary.json"
    if spec.method == "zero-shot":
        return None
    if (run_dir / "model").exists() and summary_path.exists():
        return json.loads(summary_path.read_text())
    resume = (run_dir / "checkpoint").exists()
    options = dict(spec.options)
    options.setdefault("seed", spec.seed)
    if spec.method == "gavamoe":
        from explainrec.methods.gavamoe.recipe import TrainConfig, train

        return train(dataset, run_dir, TrainConfig.from_dict(options), resume=resume, progress_bar=progress, echo=echo)
    from explainrec.methods.xrec.recipe import XRecConfig, train

    return train(dataset, run_dir, XRecConfig(**options), resume=resume, progress_bar=progress, echo=echo)


def _explain(spec: RunSpec, dataset, run_dir: Path) -> dict:
    """Write ``predictions.jsonl`` for the spec's split. Returns the generation stats."""
    out = run_dir / "predictions.jsonl"
    generation = {"seed": spec.seed, **spec.generation}
    if spec.method == "zero-shot":
        from explainrec.methods.zero_shot import recipe

        stats = recipe.run(dataset, split=spec.split, out=out, limit=spec.limit,
                           model_name=spec.options.get("model", "smollm2-135m"), **generation)
    else:
        if spec.method == "gavamoe":
            from explainrec.methods.gavamoe.explain import explain_split
        else:
            from explainrec.methods.xrec.recipe import explain_split
        _, stats = explain_split(run_dir, dataset, spec.split, limit=spec.limit, out=out, **generation)
    return stats.as_dict()


def stage1_settings(spec: RunSpec) -> dict | None:
    """What GaVaMoE's stage 1 of this run depends on (data, K, seed, fit_clusters options); None without a stage 1.

    Two runs with equal settings train the same VAE-GMM, so one may start from a copy of the other's ``stage1/``
    (see ``stage1_from`` in :func:`run_one`).
    """
    if spec.method not in ("gavamoe", "vae-gmm"):
        return None
    from explainrec.methods.gavamoe.recipe import TrainConfig

    return {"data": spec.data, "clusters": spec.options.get("clusters", TrainConfig.clusters),
            "seed": spec.options.get("seed", spec.seed), "stage1": spec.options.get("stage1") or {}}


def _copy_stage1(source: Path, run_dir: Path, echo) -> None:
    """Copy a finished ``stage1/`` (without its training checkpoint) into ``run_dir``, atomically."""
    from explainrec.io import atomic_dir

    echo(f"[bench] {run_dir}: stage 1 copied from {source}")
    with atomic_dir(run_dir / "stage1") as tmp:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("checkpoint"), dirs_exist_ok=True)


def _vae_gmm(spec: RunSpec, dataset, run_dir: Path, progress: bool) -> dict:
    """Stage 1 alone: fit the VAE-GMM into ``run_dir/stage1`` (resuming its checkpoint); return done.json's content."""
    from explainrec.methods.gavamoe.stage1 import fit_clusters

    unknown = set(spec.options) - set(VAE_GMM_OPTIONS)
    if unknown:
        raise ValueError(f"vae-gmm: unknown option(s) {sorted(unknown)}; expected some of {VAE_GMM_OPTIONS}")
    settings = stage1_settings(spec)
    stage1_dir = run_dir / "stage1"
    t0 = time.perf_counter()
    if not (stage1_dir / "metrics.json").exists():
        fit_clusters(dataset, settings["clusters"], stage1_dir, seed=settings["seed"], progress=progress,
                     **settings["stage1"], resume=(stage1_dir / "checkpoint").exists())
    metrics = json.loads((stage1_dir / "metrics.json").read_text())
    keep = ("n_clusters", "cluster_sizes", "cluster_sizes_examples", "small_clusters", "test_auc", "test_rmse",
            "test_mae", "agreement_with_user_types", "epochs_run", "best_epoch", "stopped_early")
    return {
        "metrics": {}, "std": {}, "buckets": {}, "n": 0,  # no explanations: nothing to score
        "train_seconds": round(metrics.get("seconds_total", 0.0), 1), "train_steps": metrics.get("epochs_run"),
        "generation": None, "stage1": {k: metrics[k] for k in keep if k in metrics},
        "seconds_this_call": {"train": round(time.perf_counter() - t0, 1), "explain": 0.0, "evaluate": 0.0},
    }


def run_one(spec: RunSpec, run_dir: str | Path, *, dataset=None, bertscore: bool = True, progress: bool = True,
            echo=print, stage1_from: str | Path | None = None) -> dict:
    """Do whatever of train -> explain -> evaluate ``run_dir`` still lacks; return ``done.json``'s content.

    ``stage1_from``: a finished ``stage1/`` folder of a run with equal :func:`stage1_settings`, copied in when this
    run has no stage 1 yet (the harness passes one, so a config's GaVaMoE variants fit their VAE-GMM once).
    """
    from explainrec.metrics import evaluate, save_report
    from explainrec.metrics.predictions import load_predictions

    run_dir = Path(run_dir)
    wanted = spec.to_dict()
    spec_path = run_dir / "run.json"
    if spec_path.exists() and json.loads(spec_path.read_text()) != wanted:
        echo(f"[bench] {run_dir}: settings changed since it ran; starting it again")
        shutil.rmtree(run_dir)
    done_path = run_dir / "done.json"
    if done_path.exists():
        return json.loads(done_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_path, wanted)
    if stage1_from is not None and spec.method in ("gavamoe", "vae-gmm") and not (run_dir / "stage1").exists():
        _copy_stage1(Path(stage1_from), run_dir, echo)
    if dataset is None:
        from explainrec.data import load_dataset

        dataset = load_dataset(spec.data)
    if spec.method == "vae-gmm":
        done = _vae_gmm(spec, dataset, run_dir, progress)
        atomic_write_json(done_path, done)
        return done

    t0 = time.perf_counter()
    summary = _train(spec, dataset, run_dir, echo, progress)
    t1 = time.perf_counter()
    gen_path = run_dir / "generation.json"
    if not (run_dir / "predictions.jsonl").exists() or not gen_path.exists():
        atomic_write_json(gen_path, _explain(spec, dataset, run_dir))
    t2 = time.perf_counter()
    result = evaluate(load_predictions(run_dir / "predictions.jsonl"), bertscore=bertscore)
    save_report(result, run_dir / "metrics.json", title=f"{spec.method} on {spec.data} ({spec.split})")
    done = {
        "metrics": result["metrics"],
        "std": result.get("std", {}),
        "buckets": result.get("buckets", {}),
        "n": result["n"],
        "train_seconds": None if summary is None else summary.get("train_seconds"),
        "train_steps": None if summary is None else summary.get("steps"),
        "generation": json.loads(gen_path.read_text()),
        "seconds_this_call": {"train": round(t1 - t0, 1), "explain": round(t2 - t1, 1),
                              "evaluate": round(time.perf_counter() - t2, 1)},
    }
    atomic_write_json(done_path, done)
    return done
