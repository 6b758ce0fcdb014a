"""The `explainrec` command line. Each command parses its options, calls one library function and prints a table."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="LLM-based explainable recommendation: train, explain, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
gavamoe_app = typer.Typer(help="GaVaMoE: VAE-GMM clusters (stage 1) + multi-gated MoE LLM (stage 2).", no_args_is_help=True)
app.add_typer(data_app, name="data")
xrec_app = typer.Typer(help="XRec: LightGCN embeddings + MoE adaptors injected into every LLM layer.", no_args_is_help=True)
app.add_typer(gavamoe_app, name="gavamoe")
app.add_typer(xrec_app, name="xrec")

DATA_HELP = (
    "Dataset: 'synthetic' (built-in; 'synthetic:users=300,types=4' to change it), an XRec-style folder "
    "(explanations.jsonl + interactions.csv), a PETER folder (reviews.pickle + 1/*.index; needs --trust-pickle), "
    "or a .csv / .jsonl file with named columns."
)
TRUST_HELP = "Allow unpickling PETER's reviews.pickle. Pickles can run code: only for files you trust."


def _friendly_errors(fn):
    """Bad input ends with one clear line (file, line, field), not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from explainrec.data.schema import DataError

        try:
            return fn(*args, **kwargs)
        except (DataError, FileNotFoundError) as err:
            typer.secho(f"error: {err}", fg="red", err=True)
            raise typer.Exit(2)

    return wrapper


@data_app.command("stats")
@_friendly_errors
def data_stats(
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Users, items, interactions and explained pairs per split, density."""
    from explainrec.data import dataset_stats, load_dataset
    from explainrec.data.stats import format_stats

    stats = dataset_stats(load_dataset(data, trust_pickle=trust_pickle))
    typer.echo(json.dumps(stats, indent=2) if as_json else format_stats(stats))


@app.command()
@_friendly_errors
def explain(
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    method: str = typer.Option("zero-shot", "--method", help="Method when no trained --model folder is given: zero-shot."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="A trained run folder (from `explainrec gavamoe train` or `explainrec xrec train`), or for zero-shot the "
        "LLM: 'smollm2-135m' (embedded default), a Hugging Face id or a local folder.",
    ),
    user: Optional[str] = typer.Option(None, "--user", help="Explain one pair: the raw user id (with --item and a trained --model)."),
    item: Optional[str] = typer.Option(None, "--item", help="Explain one pair: the raw item id."),
    split: str = typer.Option("test", "--split", help="Which split of --data to explain: train, valid or test."),
    out: Path = typer.Option(Path("preds.jsonl"), "--out", help="Predictions file (JSON lines) to write."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Explain only the first N pairs of the split."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts generated together (left-padded, KV-cached)."),
    max_new_tokens: int = typer.Option(60, "--max-new-tokens", help="Longest explanation, in tokens."),
    do_sample: bool = typer.Option(False, "--sample", help="Sample (nucleus) instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (with --sample)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with --sample)."),
    num_beams: int = typer.Option(1, "--num-beams", help="Beam search width (1 = no beam search)."),
    seed: int = typer.Option(0, "--seed", help="Random seed for sampling."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
) -> None:
    """Write an explanation for every user-item pair of a split (then run `explainrec evaluate`), or for one pair."""
    generation = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                      top_p=top_p, num_beams=num_beams, seed=seed)
    run_dir = Path(model) if model and Path(model).is_dir() else None
    kind = _run_kind(run_dir) if run_dir else None
    if user is not None or item is not None:
        if user is None or item is None or kind is None:
            raise typer.BadParameter("--user and --item go together, with a trained run folder as --model")
        typer.echo(json.dumps(_explain_one(kind, run_dir, user, item, generation), indent=2, ensure_ascii=False))
        return
    if data is None:
        raise typer.BadParameter("--data is required", param_hint="--data")
    from explainrec.data import load_dataset

    ds = load_dataset(data, trust_pickle=trust_pickle)
    if kind == "gavamoe":
        from explainrec.methods.gavamoe.explain import explain_split
    elif kind == "xrec":
        from explainrec.methods.xrec.recipe import explain_split
    elif method == "zero-shot":
        from explainrec.methods.zero_shot import recipe

        stats = recipe.run(ds, split=split, out=out, limit=limit, model_name=model or "smollm2-135m", **generation)
        typer.echo(f"wrote {out}\n{_format_throughput(stats)}")
        return
    else:
        raise typer.BadParameter(f"unknown method {method!r}; available: zero-shot (or a trained --model folder)")
    _, stats = explain_split(run_dir, ds, split, limit=limit, out=out, **generation)
    typer.echo(f"wrote {out}\n{_format_throughput(stats)}")


def _run_kind(run_dir: Path) -> str:
    for kind, marker in (("gavamoe", "gavamoe.json"), ("xrec", "xrec.json")):
        if (run_dir / marker).exists() or (run_dir / "model" / marker).exists():
            return kind
    from explainrec.data.schema import DataError

    raise DataError(f"{run_dir}: not a trained model folder (no model/gavamoe.json or model/xrec.json)")


def _explain_one(kind: str, run_dir: Path, user: str, item: str, generation: dict) -> dict:
    """One pair from raw ids alone (no dataset): the prompt holds the soft tokens and nothing else."""
    from explainrec.data.schema import Example

    ex = Example(user=-1, item=-1, split="test")
    if kind == "gavamoe":
        from explainrec.methods.gavamoe.explain import explain_pairs
        from explainrec.methods.gavamoe.persist import load

        m, tok, users, items, _ = load(run_dir)
        row = explain_pairs(m, tok, [ex], [user], [item], users, items, progress=False, **generation)[0]
    else:
        from explainrec.data import Dataset, IdMap, Interactions
        import numpy as np

        from explainrec.methods.xrec.recipe import explain_split

        ds = Dataset("one", Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, "<U5")),
                     [Example(user=0, item=0, split="test")], IdMap([user]), IdMap([item]))
        row = explain_split(run_dir, ds, "test", progress=False, **generation)[0][0]
    row.pop("reference", None)
    return row


def _format_throughput(stats) -> str:
    s = stats.as_dict()
    keys = [k for k in ("explanations", "new_tokens", "seconds", "explanations_per_s", "tokens_per_s") if k in s]
    return "  ".join(f"{k}={s[k]:.3g}" if isinstance(s[k], float) else f"{k}={s[k]}" for k in keys)


@app.command()
@_friendly_errors
def evaluate(
    predictions: Path = typer.Argument(..., help="JSON lines with prediction and reference (optional user, features, bucket)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for metrics.json and metrics.md (default: beside the file)."),
    bertscore: bool = typer.Option(True, "--bertscore/--no-bertscore", help="Compute BERTScore (needs the encoder)."),
    bertscore_model: str = typer.Option(
        "minilm",
        "--bertscore-model",
        help="Encoder for BERTScore: 'minilm' (embedded; not comparable to published numbers), "
        "or an HF id such as roberta-large (what XRec reports, with --rescale).",
    ),
    bertscore_layers: Optional[int] = typer.Option(None, "--bertscore-layers", help="Encoder layer to use (default: bert-score's choice or all for MiniLM)."),
    rescale: bool = typer.Option(False, "--rescale", help="Rescale BERTScore with bert-score's baseline (roberta-large etc.)."),
) -> None:
    """BLEU-1/4, ROUGE-1/2/L, Distinct-1/2, USR, BERTScore P/R/F1, FMR/FCR/DIV, with std and per-bucket tables."""
    from explainrec.metrics import evaluate as run_eval
    from explainrec.metrics import load_predictions, save_report, to_markdown

    rows = load_predictions(predictions)
    kwargs = {}
    if bertscore_layers is not None:
        kwargs["num_layers"] = bertscore_layers
    if rescale:
        kwargs["rescale_with_baseline"] = True
    result = run_eval(rows, bertscore=bertscore, bertscore_model=bertscore_model, bertscore_kwargs=kwargs or None)
    out_dir = out or predictions.parent
    save_report(result, out_dir)
    typer.echo(to_markdown(result, title=str(predictions)))
    typer.echo(f"\nwrote {out_dir / 'metrics.json'} and {out_dir / 'metrics.md'}")


@app.command()
@_friendly_errors
def compare(
    predictions_a: Path = typer.Argument(..., help="Predictions of method A (JSON lines, as for evaluate)."),
    predictions_b: Path = typer.Argument(..., help="Predictions of method B on the same test pairs."),
    names: Optional[str] = typer.Option(None, "--names", help="Labels 'A,B' for the table (default: the parent folders)."),
    bertscore: bool = typer.Option(True, "--bertscore/--no-bertscore", help="Compare BERTScore too (needs the encoder)."),
    resamples: int = typer.Option(10_000, "--resamples", help="Bootstrap and permutation resamples."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the result as JSON here."),
) -> None:
    """Paired test of B against A on the pairs both explained: mean gap, bootstrap 95% interval, permutation p."""
    from explainrec.io import atomic_write_json
    from explainrec.metrics import load_predictions
    from explainrec.metrics.significance import compare as run_compare
    from explainrec.metrics.significance import to_markdown as compare_markdown

    labels = tuple(names.split(",", 1)) if names else (predictions_a.parent.name, predictions_b.parent.name)
    if len(labels) != 2 or not all(label.strip() for label in labels):
        raise typer.BadParameter(f"--names takes two labels 'A,B'; got {names!r}")
    result = run_compare(load_predictions(predictions_a), load_predictions(predictions_b), names=labels,
                         bertscore=bertscore, n_resamples=resamples)
    typer.echo(compare_markdown(result))
    if out is not None:
        atomic_write_json(out, result)
        typer.echo(f"\nwrote {out}")


@app.command()
@_friendly_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for both runs and the comparison table."),
    model: str = typer.Option("smollm2-135m", "--model", help="LLM: embedded default, HF id, local folder, or 'tiny'."),
    n: int = typer.Option(16, "--n", help="Test pairs to explain (the same pairs for both methods)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Generation batch size."),
    steps: int = typer.Option(12, "--steps", help="Most GaVaMoE stage-2 training steps."),
    minutes: float = typer.Option(3.0, "--minutes", help="Most minutes of GaVaMoE stage-2 training (a safety stop)."),
    bertscore: bool = typer.Option(True, "--bertscore/--no-bertscore", help="Compute BERTScore (embedded MiniLM)."),
    fresh: bool = typer.Option(False, "--fresh", help="Redo both runs even if --out holds finished ones."),
) -> None:
    """Train a small GaVaMoE on the built-in data and compare it with zero-shot on the same test pairs."""
    from explainrec.demo import run_demo

    run_demo(out=out, model_name=model, n=n, batch_size=batch_size, steps=steps, minutes=minutes,
             bertscore=bertscore, fresh=fresh, echo=typer.echo)


@gavamoe_app.command("fit-clusters")
@_friendly_errors
def gavamoe_fit_clusters(
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    clusters: int = typer.Option(..., "--clusters", help="Number of GMM clusters K (= gates of stage 2)."),
    out: Path = typer.Option(..., "--out", help="Run folder (weights, config, id maps, clusters, plots)."),
    epochs: int = typer.Option(30, "--epochs", help="Most ELBO epochs (early stopping on validation loss)."),
    pretrain_epochs: int = typer.Option(10, "--pretrain-epochs", help="Plain autoencoder epochs before the GMM fit."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Pairs per step (the paper uses 4096)."),
    lr: float = typer.Option(2e-3, "--lr", help="AdamW learning rate (paper: 1e-5 on its 768-d model)."),
    beta: float = typer.Option(0.1, "--beta", help="Weight of the KL terms in the ELBO (paper: 0.1)."),
    embed_dim: int = typer.Option(64, "--embed-dim", help="User/item embedding size (paper: 768)."),
    latent_dim: int = typer.Option(32, "--latent-dim", help="Latent size (paper: 128)."),
    likelihood: Optional[str] = typer.Option(None, "--likelihood", help="categorical | gaussian | bernoulli (default: from the data)."),
    plot: str = typer.Option("tsne", "--plot", help="Latent plot projection: tsne (paper's Figure 5) or pca (fast)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
) -> None:
    """Stage 1: train the VAE-GMM, cluster every user-item pair, write metrics and plots."""
    from explainrec.data import load_dataset
    from explainrec.methods.gavamoe.stage1 import fit_clusters

    ds = load_dataset(data, trust_pickle=trust_pickle, seed=seed)
    result = fit_clusters(
        ds,
        clusters,
        out,
        epochs=epochs,
        pretrain_epochs=pretrain_epochs,
        batch_size=batch_size,
        lr=lr,
        beta=beta,
        embed_dim=embed_dim,
        latent_dim=latent_dim,
        likelihood=likelihood,
        plot_method=plot,
        seed=seed,
        resume=resume,
    )
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else getattr(result, "metrics", {})
    typer.echo(json.dumps(metrics, indent=2))
    typer.echo(f"wrote {out}")


@gavamoe_app.command("train")
@_friendly_errors
def gavamoe_train(
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    clusters: int = typer.Option(4, "--clusters", help="GMM clusters K = gates per MoE layer."),
    out: Path = typer.Option(..., "--out", help="Run folder; stage 1 is trained first unless OUT/stage1 exists."),
    model: str = typer.Option("smollm2-135m", "--model", help="Base LLM: embedded default, HF id (e.g. meta-llama/Llama-3.1-8B-Instruct), local folder, or 'tiny'."),
    variant: str = typer.Option("full", "--variant", help="full | single-gate (w/o multi-gating) | coarse (w/o fine-grained experts) | base (dense)."),
    experts: int = typer.Option(8, "--experts", help="Fine-grained experts per layer (paper, 8B: 12)."),
    top_k: int = typer.Option(4, "--top-k", help="Experts active per token (paper, 8B: 2; 4 keeps SmolLM2's FFN compute)."),
    granularity: int = typer.Option(4, "--granularity", help="r: an expert has 1/r of the dense FFN's neurons."),
    init: str = typer.Option("upcycle", "--init", help="upcycle (split the pretrained FFN) or random (reference release)."),
    paired_router: bool = typer.Option(True, "--paired-router/--free-router", help="Tie the router rows of each doubly covered expert pair (upcycled, top-k = experts/2), so every token keeps one copy of each neuron group."),
    alpha: float = typer.Option(0.1, "--alpha", help="Weight of the ELBO in alpha*ELBO + (1-alpha)*NLL."),
    lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate (paper: 3e-5 on 8B)."),
    epochs: int = typer.Option(1, "--epochs", help="Passes over the training explanations (paper: 3)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per forward pass."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Forward passes per optimizer step (paper: 8)."),
    clip: float = typer.Option(0.3, "--clip", help="Gradient norm clipping (paper: 0.3)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget for stage 2; saves and stops when reached."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    trainable: str = typer.Option("experts,gates,soft,vae", "--trainable", help="Comma list of: experts, gates, soft, vae, ffn, attention, all."),
    lora_r: int = typer.Option(0, "--lora-r", help="LoRA rank on attention q/k/v/o through peft (0 = off)."),
    stage1_epochs: int = typer.Option(30, "--stage1-epochs", help="Most VAE-GMM epochs when stage 1 runs here."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
) -> None:
    """Train GaVaMoE (stage 1 VAE-GMM, then the multi-gated MoE LLM) and save it to OUT/model."""
    from explainrec.data import load_dataset
    from explainrec.methods.gavamoe.modeling import MoEConfig
    from explainrec.methods.gavamoe.recipe import TrainConfig, train

    cfg = TrainConfig(
        model=model, clusters=clusters, alpha=alpha, lr=lr, epochs=epochs, batch_size=batch_size,
        grad_accum=grad_accum, clip=clip, max_minutes=max_minutes, max_steps=max_steps,
        trainable=tuple(t.strip() for t in trainable.split(",") if t.strip()), lora_r=lora_r, seed=seed,
        moe=MoEConfig(variant=variant, n_experts=experts, top_k=top_k, granularity=granularity, init=init,
                      paired_router=paired_router),
        stage1={"epochs": stage1_epochs},
    )
    summary = train(load_dataset(data, trust_pickle=trust_pickle, seed=seed), out, cfg, resume=resume)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


@xrec_app.command("train")
@_friendly_errors
def xrec_train(
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Run folder; LightGCN is trained first unless OUT/lightgcn exists."),
    model: str = typer.Option("smollm2-135m", "--model", help="Base LLM (frozen): embedded default, HF id (paper: meta-llama/Llama-2-7b-chat-hf), local folder, or 'tiny'."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate of the adaptors."),
    epochs: int = typer.Option(1, "--epochs", help="Passes over the training explanations."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per forward pass."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Forward passes per optimizer step."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget; saves and stops when reached."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    lora_r: int = typer.Option(0, "--lora-r", help="LoRA rank on q/v through peft (0 = LLM fully frozen, as XRec)."),
    gcn_epochs: int = typer.Option(30, "--gcn-epochs", help="LightGCN epochs."),
    gcn_dim: int = typer.Option(64, "--gcn-dim", help="LightGCN embedding size (XRec: 64)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
) -> None:
    """Train XRec (LightGCN, then the MoE adaptors injected into every layer of a frozen LLM); save to OUT/model."""
    from explainrec.data import load_dataset
    from explainrec.methods.xrec.recipe import XRecConfig, train

    cfg = XRecConfig(model=model, lr=lr, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
                     max_minutes=max_minutes, max_steps=max_steps, lora_r=lora_r, seed=seed,
                     lightgcn={"epochs": gcn_epochs, "dim": gcn_dim})
    summary = train(load_dataset(data, trust_pickle=trust_pickle, seed=seed), out, cfg, resume=resume)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


@app.command()
@_friendly_errors
def bench(
    config: Path = typer.Argument(..., help="Bench config (.yaml/.yml or .toml): datasets x runs x seeds, experiments."),
    only: Optional[list[str]] = typer.Option(
        None, "--only", help="Run only these runs: globs over DATASET/RUN/seedK, DATASET/RUN or RUN (repeatable, or comma-separated)."),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", min=1, help="Runs at a time, each in its own process with its share of the cores (output in "
        "OUT/logs/); default: the config's 'jobs', else 1."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and each run's state; run nothing."),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild OUT/report.md from the finished runs; run nothing."),
) -> None:
    """Run an experiment grid (resumable: finished runs are skipped), then write OUT/report.md with tables and figures."""
    import shlex
    import sys

    from explainrec.bench.harness import run_bench

    words = ["explainrec", "bench", str(config)] + [f"--only={o}" for o in only or []]
    words += [f"--jobs={jobs}"] if jobs else []
    result = run_bench(config, only=only, jobs=jobs, dry_run=dry_run, report_only=report_only,
                       progress=sys.stderr.isatty(), command=" ".join(shlex.quote(w) for w in words), echo=typer.echo)
    if result.failed:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
