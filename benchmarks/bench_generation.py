"""CPU explanation throughput (issue 21): today's path (float32, batch 16, HF's own cache, no prefix reuse) vs the
new default (int8 weights, shared-prefix reuse, reserved KV cache, batch 32), in one run, on the same pairs, for
zero-shot, Base and GaVaMoE.

    python benchmarks/bench_generation.py --methods zero-shot --nll        # 64 google test pairs (~5 min per method)
    python benchmarks/bench_generation.py --pairs 16 --methods base        # a quick check
    python benchmarks/bench_generation.py --methods zero-shot --no-old --no-fp32-check --sweep 16 32 64
    python benchmarks/bench_generation.py --model tiny --pairs 8           # smoke test (seconds)

Today's path is frozen here (:func:`legacy_generate_texts`, the loop of ``generate_texts`` before this issue), so
the comparison survives later changes. Models are untrained, which is fine for speed: Base is the dense LLM with
GaVaMoE's soft tokens (``MoEConfig(variant="base")``), GaVaMoE the upcycled MoE with the paired router, both built
as the GaVaMoE recipe builds them, on a randomly initialised stage-1 VAE-GMM whose mixture means are set on the
pairs' latent means (so the pairs spread over the clusters, as trained ones do). Per method the runs take turns
(old, new; then new, old with --rounds 2), so a change in the shared machine's load hits both; each line also
gives this process's CPU time per explanation, which the load inflates far less than wall time.

Printed per method: explanations/s of each path and their ratio (target >= 2); how int8 changes the greedy texts
against float32 (count, identical words before the first difference, ROUGE-L and BLEU-4 of both against the
references); and, unless --no-fp32-check, whether ``generate_texts`` in float32 (prefix reuse, reserved cache,
batch 32) gives today's texts exactly. ``--nll`` adds the teacher-forced NLL of the reference explanations in
float32 and int8 (zero-shot model).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from explainrec.data import load_dataset
from explainrec.data.prompts import build_messages, render_prompt
from explainrec.llm.generate import GenerationStats, generate_texts
from explainrec.llm.hooks import GenerationHooks
from explainrec.llm.load import load_llm
from explainrec.llm.quantize import outlier_channels, quantize_for_cpu

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xrec" / "google"
METHODS = ("zero-shot", "base", "gavamoe")


def load_pairs(path: str, n: int):
    """``(examples, n_users, n_items, note)``: the first n test pairs of XRec's google data, or synthetic ones."""
    if Path(path).exists():
        data = load_dataset(path)
        note = f"{path}, split test"
    else:
        data = load_dataset("synthetic")
        note = f"SYNTHETIC data ({path} is absent): figures are not comparable with the google ones"
    examples = data.split_examples("test")[:n]
    return examples, data.n_users, data.n_items, note


def build_gavamoe(variant: str, model_name: str, examples, n_users: int, n_items: int, clusters: int = 4):
    """A GaVaMoE as the recipe builds it (placeholder tokens, surgery, soft-token projections) on a random VAE-GMM."""
    from explainrec.methods.gavamoe.modeling import GaVaMoE
    from explainrec.methods.gavamoe.vae_gmm import VaeGmm

    try:
        from explainrec.methods.gavamoe.config import MoEConfig
    except ImportError:  # before the method-contract refactor
        from explainrec.methods.gavamoe.modeling import MoEConfig
    try:
        from explainrec.methods.gavamoe.surgery import moe_upcycle
    except ImportError:
        from explainrec.llm.surgery import moe_upcycle

    torch.manual_seed(0)
    llm, tok = load_llm(model_name)
    user_id, item_id = GaVaMoE.prepare_tokenizer(llm, tok)
    surgery = MoEConfig(variant=variant).surgery_kwargs(clusters)
    if surgery:
        moe_upcycle(llm, **surgery)
    vae = VaeGmm(n_users, n_items, n_clusters=clusters)
    user = torch.tensor([e.user for e in examples])
    item = torch.tensor([e.item for e in examples])
    with torch.no_grad(), vae.inference():
        mu, _ = vae.encode(user, item)
        centers = mu[torch.linspace(0, len(examples) - 1, clusters).long()]
        vae.init_prior(torch.full((clusters,), 1.0 / clusters), centers, mu.var(0, keepdim=True).expand(clusters, -1))
    model = GaVaMoE(llm, vae, user_token_id=user_id, item_token_id=item_id,
                    multi_gate=variant in ("full", "coarse")).eval()
    return model, tok, user, item


@torch.no_grad()
def legacy_generate_texts(model, tokenizer, prompts, *, batch_size, max_new_tokens, embed_fn=None, batch_context=None,
                          stats=None, **_):
    """Today's path, frozen here so the comparison survives changes to ``generate_texts``: its loop before issue 21
    (prompts sorted longest first, left-padded batches, ``model.generate`` with HF's own cache, greedy)."""
    from explainrec.llm.generate import _count_new_tokens, _eos_ids, _left_pad

    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    texts, new_tokens = [""] * len(prompts), 0
    model.eval()
    for lo in range(0, len(order), batch_size):
        batch = order[lo: lo + batch_size]
        ids, mask = _left_pad([encoded[i] for i in batch], pad_id)
        index = torch.tensor(batch)
        extra = {"inputs_embeds": embed_fn(ids, index)} if embed_fn is not None else {}
        with batch_context(ids, index) if batch_context is not None else nullcontext():
            out = model.generate(input_ids=ids, attention_mask=mask, **extra, max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=sorted(eos_ids))
        new = out[:, ids.shape[1]:]
        new_tokens += _count_new_tokens(new, eos_ids)
        for i, text in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
            texts[i] = text.strip()
    if stats is not None:
        stats.explanations += len(prompts)
        stats.new_tokens += new_tokens
    return texts


def method_setup(method: str, model_name: str, examples, n_users: int, n_items: int):
    """``(float model, prompts, run(model, **kw) -> (texts, stats), nll model or None)`` for one method.

    ``run`` passes what the method's explainer passes (embed_fn, a routing batch_context that counts each sample's
    experts) plus, for the new path, the prefix group of GaVaMoE's gates.
    """
    if method == "zero-shot":
        llm, tok = load_llm(model_name)
        prompts = [render_prompt(tok, build_messages(e)) for e in examples]

        def run(model, legacy: bool = False, **kw):
            stats = GenerationStats()
            generate = legacy_generate_texts if legacy else generate_texts
            return generate(model, tok, prompts, stats=stats, progress=False, **kw), stats

        return llm, tok, prompts, run

    from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE
    from explainrec.methods.gavamoe.prompting import gavamoe_prompt
    from explainrec.methods.gavamoe.routing import routing

    gav, tok, user, item = build_gavamoe("base" if method == "base" else "full", model_name, examples, n_users, n_items)
    with torch.no_grad():
        clusters = gav.clusters(user, item)
    prompts = [render_prompt(tok, gavamoe_prompt(e)) for e in examples]

    def run(llm, legacy: bool = False, **kw):
        n_experts = next((m.n_experts for m in llm.modules() if isinstance(m, MultiGatedMoE)), 0)
        usage = torch.zeros(len(prompts), max(n_experts, 1), dtype=torch.long)

        @contextmanager
        def batch_context(_ids, index):
            with routing(clusters[index], track_samples=n_experts > 0) as state:
                yield
            if state.sample_usage is not None:
                usage[index.cpu()] += state.sample_usage.cpu()

        gav.llm = llm  # embed() reads the input embedding, which int8 leaves float
        stats = GenerationStats()
        embed_fn = lambda ids, index: gav.embed(ids, user[index], item[index])  # noqa: E731
        if legacy:
            texts = legacy_generate_texts(llm, tok, prompts, stats=stats, progress=False, embed_fn=embed_fn,
                                          batch_context=batch_context, **kw)
        else:  # what the explainer passes: the gates route the prefix, so one prefix per cluster
            hooks = GenerationHooks(embed_fn=embed_fn, batch_context=batch_context,
                                    prefix_group=lambda index: clusters[index])
            texts = generate_texts(llm, tok, prompts, stats=stats, progress=False, hooks=hooks, **kw)
        return texts, stats

    print(f"  clusters of the pairs: {torch.bincount(clusters, minlength=4).tolist()}")
    return gav.llm, tok, prompts, run


@torch.no_grad()
def reference_nll(model, tok, prompts, examples) -> float:
    """Mean NLL per token of the reference explanations after their prompts (teacher forcing, one pair at a time)."""
    total, count = 0.0, 0
    for prompt, ex in zip(prompts, examples):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(" " + (ex.explanation or ""), add_special_tokens=False)["input_ids"]
        if not t:
            continue
        ids = torch.tensor([p + t])
        labels = ids.clone()
        labels[0, : len(p)] = -100
        loss = model(input_ids=ids, labels=labels).loss
        total += float(loss) * len(t)
        count += len(t)
    return total / max(count, 1)


def text_changes(old: list[str], new: list[str], references: list[str]) -> str:
    """How int8's greedy texts differ from float32's: count, words before the first difference, ROUGE-L F1 and
    BLEU-4 of both against the reference explanations."""
    from explainrec.metrics.text import bleu, rouge, tokenize

    changed = [(a, b) for a, b in zip(old, new) if a != b]
    lead = []
    for a, b in changed:
        wa, wb = tokenize(a), tokenize(b)
        lead.append(next((i for i, (x, y) in enumerate(zip(wa, wb)) if x != y), min(len(wa), len(wb))))
    r_old, r_new = rouge(old, references), rouge(new, references)
    key = next(k for k in r_old if "l" in k.lower())
    out = f"int8 changed {len(changed)}/{len(old)} greedy texts"
    if lead:
        out += f" (median {statistics.median(lead):.0f} identical words before the first difference)"
    return (out + f"; vs references: {key} fp32 {r_old[key]:.4f} / int8 {r_new[key]:.4f}, BLEU-4 fp32 "
            f"{bleu(old, references):.4f} / int8 {bleu(new, references):.4f}")


def timed(run, model, **kw):
    """``(texts, stats, wall seconds)``; ``stats.cpu_seconds`` gets this process's CPU time, which a loaded
    machine inflates far less than wall time (it still slows memory access)."""
    t, c = time.perf_counter(), time.process_time()
    texts, stats = run(model, **kw)
    stats.cpu_seconds = time.process_time() - c
    return texts, stats, time.perf_counter() - t


def per_expl(stats: GenerationStats, seconds: float) -> str:
    n = stats.explanations
    return (f"{n / seconds:5.2f} expl/s ({stats.new_tokens / n:.0f} new tokens/expl, "
            f"{stats.cpu_seconds / n:.3f} CPU s/expl)  {load_note()}")


def load_note() -> str:
    try:
        return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load avg n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--old-batch", type=int, default=16, help="today's batch size")
    ap.add_argument("--new-batch", type=int, default=32, help="the new default batch size")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--rounds", type=int, default=1, help="turns of (old, new); order flips every round")
    ap.add_argument("--no-fp32-check", dest="fp32_check", action="store_false",
                    help="skip the float32 run of the new path (prefix reuse + new batch: token-identical?)")
    ap.add_argument("--no-old", dest="old", action="store_false", help="skip today's path (with --sweep)")
    ap.add_argument("--sweep", type=int, nargs="*", default=[], help="also time the new path at these batch sizes")
    ap.add_argument("--nll", action="store_true", help="reference NLL in float32 vs int8 (zero-shot model)")
    args = ap.parse_args()

    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    examples, n_users, n_items, note = load_pairs(args.data, args.pairs)
    print(f"{len(examples)} pairs from {note}; model {args.model}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); {load_note()}")
    old_kw = dict(batch_size=args.old_batch, max_new_tokens=args.max_new_tokens)
    new_kw = dict(batch_size=args.new_batch, max_new_tokens=args.max_new_tokens)
    summary = []
    for method in args.methods:
        print(f"\n[{method}]")
        fp32, tok, prompts, run = method_setup(method, args.model, examples, n_users, n_items)
        int8 = copy.deepcopy(fp32)
        # the default's float outlier channels, found on one float prefill of these prompts (the shipped path,
        # apply_precision, finds them on one fixed pair: the channels, not the speed, may differ)
        found = outlier_channels(int8, lambda: run(int8, max_new_tokens=1, batch_size=args.new_batch))
        print(f"  {quantize_for_cpu(int8, 'int8', outliers=found)}")
        lengths = [len(r) for r in tok(prompts, add_special_tokens=False)["input_ids"]]
        print(f"  prompt tokens: min {min(lengths)}, mean {statistics.mean(lengths):.0f}, max {max(lengths)}")
        warm = {"max_new_tokens": 2, "batch_size": 2}
        for model in (fp32, int8):  # first calls pay one-off costs (allocator growth, lazy inits): not timed
            run(model, **warm)
            run(model, legacy=True, **warm)
        old_times, new_times, old_cpu, new_cpu = [], [], [], []
        old_texts = new_texts = None
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for which in order:
                if which == "old" and args.old:
                    old_texts, stats, dt = timed(run, fp32, legacy=True, **old_kw)
                    old_times.append(dt)
                    old_cpu.append(stats.cpu_seconds)
                    print(f"  old: fp32, batch {args.old_batch}, today's path      {per_expl(stats, dt)}", flush=True)
                elif which == "new":
                    new_texts, stats, dt = timed(run, int8, **new_kw)
                    new_times.append(dt)
                    new_cpu.append(stats.cpu_seconds)
                    print(f"  new: int8, batch {args.new_batch}, generate_texts    {per_expl(stats, dt)}", flush=True)
        line = {"method": method}
        if old_times and new_times:
            old_rate, new_rate = len(prompts) / min(old_times), len(prompts) / min(new_times)
            changed = sum(a != b for a, b in zip(old_texts, new_texts))
            cpu_ratio = min(old_cpu) / min(new_cpu)
            line.update(old=old_rate, new=new_rate, ratio=new_rate / old_rate, cpu_ratio=cpu_ratio, changed=changed)
            print(f"  => {new_rate / old_rate:.2f}x explanations/s (target >= 2), {cpu_ratio:.2f}x less CPU time per "
                  f"explanation")
            print(f"  {text_changes(old_texts, new_texts, [e.explanation or '' for e in examples])}")
        if args.fp32_check and old_texts is not None:
            check, _, dt = timed(run, fp32, **new_kw)
            same = sum(a == b for a, b in zip(old_texts, check))
            line["fp32_identical"] = same
            print(f"  fp32 through generate_texts (prefix reuse, reserved cache, batch {args.new_batch}): "
                  f"{len(prompts) / dt:.2f} expl/s, "
                  f"{same}/{len(prompts)} texts identical to the old path")
        for batch in args.sweep:
            _, stats, dt = timed(run, int8, batch_size=batch, max_new_tokens=args.max_new_tokens)
            print(f"  sweep: int8, generate_texts, batch {batch:3d}: {per_expl(stats, dt)}", flush=True)
        if args.nll and method == "zero-shot":
            f, q = reference_nll(fp32, tok, prompts, examples), reference_nll(int8, tok, prompts, examples)
            line.update(nll_fp32=f, nll_int8=q)
            print(f"  reference NLL per token: fp32 {f:.4f}, int8 {q:.4f} (+{q - f:.4f})")
        summary.append(line)
        del fp32, int8
    if any("ratio" in s for s in summary):
        print("\nmethod       old expl/s  new expl/s  ratio  CPU-time ratio  int8 changed texts")
        for s in summary:
            if "ratio" in s:
                print(f"{s['method']:<12} {s['old']:10.2f}  {s['new']:10.2f}  {s['ratio']:5.2f}  {s['cpu_ratio']:14.2f}  "
                      f"{s['changed']}/{len(examples)}")


if __name__ == "__main__":
    main()
