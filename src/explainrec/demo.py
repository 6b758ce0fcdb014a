"""`explainrec demo`: train a small GaVaMoE on the built-in data and compare it with the zero-shot baseline.

Two runs of the experiment harness (:mod:`explainrec.bench.runner`) on the same data and the same test pairs:

    OUT/zero-shot/     predictions.jsonl, metrics.json/.md, generation.json, done.json
    OUT/gavamoe/       stage1/ (VAE-GMM, latent plot), model/, train_log.jsonl, loss_curves.png, the same files
    OUT/comparison.md  the side-by-side table printed at the end

A finished run is reused when the demo runs again with the same settings (``fresh=True`` redoes both). Training is
bounded by optimizer steps, not by a clock, so a busy machine takes longer but trains the same model. The budget is
sized for a few minutes on a 2-core laptop CPU with the embedded SmolLM2-135M: the GaVaMoE trained here has seen 48
training pairs (12 steps of 4), so the table shows the pipeline working end to end, not the method's final quality.
"""
from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

from explainrec.io import atomic_write_text

# Smaller than the default "synthetic" (300 users), so stage 1 takes seconds; the same 4 latent user types.
DEMO_DATA = "synthetic:users=120,items=80"
BASELINE, TRAINED = "zero-shot", "gavamoe"  # the two registry entries the demo runs
LABELS = {BASELINE: "zero-shot", TRAINED: "GaVaMoE"}


def demo_specs(model_name: str, *, n: int, batch_size: int, max_new_tokens: int, steps: int) -> dict:
    """The two :class:`~explainrec.bench.runner.RunSpec` of the demo, keyed by method."""
    from explainrec.bench.runner import RunSpec

    generation = {"batch_size": batch_size, "max_new_tokens": max_new_tokens}
    gavamoe = {
        "model": model_name,
        "clusters": 4,  # the synthetic data's number of user types
        # A dozen steps of 4 pairs at 10x the default learning rate: enough on this templated data to repair the
        # upcycling (valid NLL ~1.4) and beat zero-shot on BLEU/ROUGE/BERTScore; lr 1e-4 at batch 8 left it broken.
        "lr": 1e-3,
        "batch_size": 4,
        "max_steps": steps,
        "max_valid_pairs": 16,  # validation after training: a loss figure, not a model selection
        "log_every": 2,
        "checkpoint_every": 1000,  # one checkpoint at the stop is enough here
        # Stage 1 as in docs/results.md: small batches and a long autoencoder warm-up recover the 4 user types
        # (purity 0.99 on this data); the default 4096-pair batch takes one step per epoch here and collapses.
        "stage1": {"batch_size": 128, "lr": 3e-3, "pretrain_epochs": 20, "epochs": 10, "plot_method": "pca"},
    }
    return {
        BASELINE: RunSpec(data=DEMO_DATA, method=BASELINE, options={"model": model_name}, generation=generation,
                          limit=n),
        TRAINED: RunSpec(data=DEMO_DATA, method=TRAINED, options=gavamoe, generation=generation, limit=n),
    }


def comparison_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per metric, one column per run (``results`` maps a column name to done.json)."""
    from explainrec.metrics.report import METRICS

    names = list(results)
    lines = ["| Metric | " + " | ".join(names) + " | Better |", "|---|" + "---:|" * len(names) + ":---:|"]
    for key, (label, higher, _) in METRICS.items():
        values = [results[name]["metrics"].get(key) for name in names]
        if all(v is None for v in values):
            continue
        digits = 4 if key in ("usr", "fmr", "fcr") else 2
        cells = ["–" if v is None else f"{v:.{digits}f}" for v in values]
        better = "↑" if higher else ("↓" if higher is False else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {better} |")
    return "\n".join(lines) + "\n"


def run_demo(
    out: Path = Path("runs/demo"),
    *,
    model_name: str = "smollm2-135m",
    n: int = 16,
    batch_size: int = 32,
    max_new_tokens: int = 48,
    steps: int = 12,
    bertscore: bool = True,
    fresh: bool = False,
    progress: bool = True,
    echo=print,
) -> dict:
    """Zero-shot and a freshly trained GaVaMoE on the same ``n`` test pairs; print and return both runs' results.

    Returns ``{"zero-shot": done, "gavamoe": done}`` with each run's ``done.json`` content (metrics, timings,
    generation throughput). ``steps`` bounds GaVaMoE's stage-2 training.
    """
    from explainrec.bench.runner import check_run_dir
    from explainrec.data import load_dataset
    from explainrec.folders import session
    from explainrec.methods.runs import check_training

    out = Path(out)
    specs = demo_specs(model_name, n=n, batch_size=batch_size, max_new_tokens=max_new_tokens, steps=steps)
    for method, spec in specs.items():  # everything checked before any work: neither run starts if one cannot
        check_run_dir(out / method)  # never adopt (or, with --fresh, delete) a run the demo did not make
        spec.config(f"demo {method}")
    ds = load_dataset(DEMO_DATA)
    for spec in specs.values():
        check_training(spec.method_entry(), ds, spec.config())
    with session(out, kind="demo", command=f"explainrec demo --out {out}", adopt=_legacy_demo):
        return _run_demo(out, specs, ds, model_name=model_name, n=n, batch_size=batch_size,
                         max_new_tokens=max_new_tokens, steps=steps, bertscore=bertscore, fresh=fresh,
                         progress=progress, echo=echo)


def _legacy_demo(names: list[str]) -> list[str]:
    """A demo folder from before ownership markers: its two runs and its table."""
    return [n for n in names if n in (BASELINE, TRAINED, "comparison.md")]


def _run_demo(out: Path, specs: dict, ds, *, model_name, n, batch_size, max_new_tokens, steps, bertscore, fresh,
              progress, echo) -> dict:
    from explainrec.bench.runner import HARNESS, legacy_run, run_one
    from explainrec.folders import remove_owned, session

    echo(f"[demo] built-in synthetic data ({DEMO_DATA}): {ds.n_users} users, {ds.n_items} items, "
         f"{len(ds.interactions)} interactions, {len(ds.split_examples('train'))} training pairs")
    echo(f"[demo] explaining the same {n} test pairs with zero-shot {model_name} and a GaVaMoE trained here "
         f"({steps} training steps)")

    results, reused, wall = {}, [], {}
    for method, spec in specs.items():
        run_dir = out / method
        if fresh and run_dir.exists():
            with session(run_dir, kind=HARNESS, command="explainrec demo --fresh", adopt=legacy_run):
                remove_owned(run_dir, option="--fresh")  # only what the demo wrote there
        if (run_dir / "done.json").exists() and (run_dir / "run.json").exists() \
                and spec.matches(json.loads((run_dir / "run.json").read_text())):
            reused.append(method)
        echo(f"\n[demo] {LABELS[method]} -> {run_dir}")
        t = time.perf_counter()
        results[method] = run_one(spec, run_dir, dataset=ds, bertscore=bertscore, progress=progress, echo=echo,
                                  command="explainrec demo")
        wall[method] = time.perf_counter() - t

    table = comparison_table({LABELS[m]: r for m, r in results.items()})
    header = f"# zero-shot vs GaVaMoE on {DEMO_DATA} (test, n = {results[TRAINED]['n']})\n\n"
    atomic_write_text(out / "comparison.md", header + table)
    echo("\n" + header + table)

    g = results[TRAINED]
    echo(f"[demo] GaVaMoE training: {g['train_steps']} stage-2 steps in {g['train_seconds']:.0f} s; "
         f"stage 1 + stage 2 with loading and saving {g['seconds_this_call']['train']:.0f} s")
    stage1 = json.loads((out / TRAINED / "stage1" / "metrics.json").read_text())
    truth = stage1.get("agreement_with_user_types")  # present on synthetic data, which knows each user's type
    echo(f"[demo] stage-1 clusters: sizes {stage1['cluster_sizes']}"
         + (f", purity {truth['purity']:.2f} / NMI {truth['nmi']:.2f} against the data's true user types" if truth else ""))
    echo("[demo] generation (same pairs, batch size "
         f"{batch_size}, at most {max_new_tokens} new tokens):")
    base = results[BASELINE]["generation"]["explanations_per_s"]
    for method, r in results.items():
        s = r["generation"]
        ratio = f", {s['explanations_per_s'] / base:.2f}x zero-shot" if base > 0 and r is not results[BASELINE] else ""
        echo(f"  {LABELS[method]:<10} {s['explanations_per_s']:.2f} explanations/s, {s['tokens_per_s']:.1f} tokens/s{ratio}")

    _print_examples(out, echo)
    ran = {m: s for m, s in wall.items() if m not in reused}
    if ran:
        echo("\n[demo] wall time: " + ", ".join(f"{LABELS[m]} {s:.0f} s" for m, s in ran.items()))
    if reused:
        echo(f"[demo] reused the finished run(s) {', '.join(reused)} (same settings); --fresh runs them again")
    echo(f"[demo] wrote {out / 'comparison.md'}; per run: predictions.jsonl, metrics.md, done.json in "
         f"{out / BASELINE} and {out / TRAINED}; GaVaMoE's clusters and latent plot in {out / TRAINED / 'stage1'}, "
         f"its model in {out / TRAINED / 'model'} (explainrec explain --model {out / TRAINED} ...)")
    return results


def _print_examples(out: Path, echo, k: int = 3) -> None:
    """A few pairs side by side: GaVaMoE's cluster and top experts, both explanations and the reference."""
    from explainrec.data.readers import iter_jsonl

    def rows(method: str) -> list[dict]:  # the raw rows: load_predictions drops fields it does not score (experts)
        return [obj for _, obj in iter_jsonl(out / method / "predictions.jsonl")]

    zero_shot = {(r["user"], r["item"]): r for r in rows(BASELINE)}
    echo("\n[demo] examples (GaVaMoE routes each pair by its stage-1 cluster; top experts = most used, all layers):")
    for row in rows(TRAINED)[:k]:
        echo(f"- user {row['user']}, item {row['item']}: cluster {row.get('cluster')}, "
             f"top experts {row.get('top_experts')}")
        other = zero_shot.get((row["user"], row["item"]))
        for label, text in (("GaVaMoE", row["prediction"]), ("zero-shot", other and other["prediction"]),
                            ("reference", row["reference"])):
            if text is not None:
                echo(textwrap.indent(textwrap.fill(f"{label}: {text}", 100), "    "))
