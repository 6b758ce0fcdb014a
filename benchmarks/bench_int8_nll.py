"""Where int8 generation loses accuracy (issue 21): the teacher-forced NLL of the reference explanations on a
trained run's *valid* pairs, in float32 and under int8 variants, through the run's own explainer (its prompt,
soft tokens and routing).

    python benchmarks/bench_int8_nll.py runs/bench/mmp/amazon/base/seed0 ../shared/data/xrec/amazon --pairs 48
    python benchmarks/bench_int8_nll.py RUN DATA --variants fp32 int8 default      # a subset
    python benchmarks/bench_int8_nll.py RUN DATA --variants default --channels 8    # the default with 8 float channels

Variants: ``fp32``; ``int8`` = every projection and the head int8, no float channels (the first scheme);
``default`` = what ``--precision int8`` does now (:func:`explainrec.methods.model_folder.apply_precision`: the
outlier input channels of each projection in float); ``weights`` / ``activations`` = int8 rounding of the weights
only / of the projections' inputs only, simulated in float32 (where the loss comes from); ``mlp-input`` = the
simulated activation rounding at the MLP input (gate/up) only; ``down-float`` / ``ends-float`` = the first scheme
with down_proj / the first and last layers left float32.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch import nn

from explainrec.data import load_dataset
from explainrec.data.prompts import render_prompt
from explainrec.llm.quantize import quantize_for_cpu, quantize_rows, quantize_weight
from explainrec.llm.surgery import decoder_layers
from explainrec.methods.model_folder import apply_precision, load_run


class _StaysFloat(nn.Linear):
    """A Linear that :func:`quantize_for_cpu` skips (it replaces plain ``nn.Linear`` only)."""


def _projections(llm, names: set[str] | None = None):
    for i, layer in enumerate(decoder_layers(llm)):
        for name, m in layer.named_modules():
            if type(m) is nn.Linear and (names is None or name.rsplit(".", 1)[-1] in names):
                yield i, name, m


def _round_weights(llm) -> None:
    for _, _, m in _projections(llm):
        q, scale = quantize_weight(m.weight)
        m.weight.data = q.float() * scale.unsqueeze(-1)


def _round_inputs(llm, names: set[str] | None = None) -> None:
    def hook(_module, args):
        x = args[0]
        q, scale = quantize_rows(x.reshape(-1, x.shape[-1]))
        return ((q.float() * scale).view_as(x),)

    for _, _, m in _projections(llm, names):
        m.register_forward_pre_hook(hook)


def _int8_except(llm, keep) -> None:
    for i, name, m in list(_projections(llm)):
        if keep(i, name):
            m.__class__ = _StaysFloat
    quantize_for_cpu(llm, "int8")


VARIANTS = {
    "fp32": lambda ex: None,
    "int8": lambda ex: quantize_for_cpu(ex.model if ex.model is not None else ex.llm, "int8"),
    "default": lambda ex: apply_precision(ex, "int8"),
    "weights": lambda ex: _round_weights(ex.llm),
    "activations": lambda ex: _round_inputs(ex.llm),
    "mlp-input": lambda ex: _round_inputs(ex.llm, {"gate_proj", "up_proj"}),
    "down-float": lambda ex: _int8_except(ex.llm, lambda i, name: name.endswith("down_proj")),
    "ends-float": lambda ex: _int8_except(ex.llm, lambda i, name: i in (0, len(decoder_layers(ex.llm)) - 1)),
}


@torch.no_grad()
def reference_nll(explainer, pairs, examples) -> float:
    """Mean NLL per token of each reference explanation (+ EOS) after its prompt, one pair at a time."""
    tok = explainer.tokenizer
    prepared = explainer.prepare(pairs) if explainer.prepare is not None else None
    total, count = 0.0, 0
    for k, (pair, ex) in enumerate(zip(pairs, examples)):
        prompt = tok(render_prompt(tok, explainer.prompt(pair)), add_special_tokens=False)["input_ids"]
        target = tok(" " + ex.explanation, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids, index = torch.tensor([prompt + target]), torch.tensor([k])
        embed = prepared.hooks.embed_fn if prepared is not None else None
        emb = embed(ids, index) if embed else explainer.llm.get_input_embeddings()(ids)
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        context = prepared.hooks.batch_context(ids, index) if prepared is not None and prepared.hooks.batch_context \
            else None
        with context or contextlib.nullcontext():
            loss = explainer.llm(inputs_embeds=emb, labels=labels).loss
        total += float(loss) * len(target)
        count += len(target)
    return total / max(count, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a trained run folder (or model folder)")
    ap.add_argument("data", help="the dataset it was trained on")
    ap.add_argument("--pairs", type=int, default=48, help="the first N valid pairs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--channels", type=int, default=None,
                    help="float input channels per projection for 'default' (else OUTLIER_CHANNELS)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    ds = load_dataset(args.data)
    examples = [e for e in ds.split_examples("valid") if e.explanation][: args.pairs]
    pairs = [ds.pair_of(e) for e in examples]
    print(f"{len(pairs)} valid pairs of {args.data}; run {args.run}")
    variants = dict(VARIANTS)
    if args.channels is not None:
        variants["default"] = lambda ex: apply_precision(ex, "int8", channels=args.channels)
    base = None
    for name in args.variants:
        explainer = load_run(args.run, precision="fp32")
        variants[name](explainer)
        t0 = time.perf_counter()
        nll = reference_nll(explainer, pairs, examples)
        base = nll if name == "fp32" else base
        extra = f"  ({nll - base:+.4f} vs fp32)" if base is not None and name != "fp32" else ""
        print(f"{name:<12} reference NLL {nll:.4f}{extra}   [{time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
