"""Time one MultiGatedMoE layer, batched, against the reference release's per-sample routing (train and decode).

    python benchmarks/bench_moe_layer.py                    # SmolLM2-135M sizes, batch 16, seq 128 and 1
    python benchmarks/bench_moe_layer.py --top-k 2 --reps 3
    python benchmarks/bench_moe_layer.py --upcycle-nll      # also: NLL of the upcycled SmolLM2 at init (slow)

The baseline reproduces how sugarandgugu/GaVaMoE runs its MoE block (batch-size-1 routing with one gate per
call, a Python loop over samples, and Mixtral's loop over experts with ``torch.where`` on an expert mask), but with
LLaMA's SwiGLU and the same weights, so both paths compute the same numbers (checked before timing). Times are the
median of ``--reps`` runs after one warm-up round, the variants taking turns inside every round; wall and process CPU
time are both printed. On a shared machine they move with the other load, so compare the lines of one run, not runs
with each other (``--threads 1`` makes the CPU-time ratio the steadiest). The last line, a dense SwiGLU FFN with
intermediate size ``top_k * expert_size`` (the same multiply-adds per token), is the floor no routing can beat.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE
from explainrec.methods.gavamoe.routing import routing


class ReferenceLayout(nn.Module):
    """The reference's module layout: one ``nn.Linear`` router per gate and one SwiGLU module per expert, holding a
    copy of ``moe``'s weights. Run one sample at a time, experts looped Mixtral-style."""

    def __init__(self, moe: MultiGatedMoE):
        super().__init__()
        self.top_k, self.n_experts, self.scale = moe.top_k, moe.n_experts, float(moe.output_scale)
        self.gates = nn.ModuleList(nn.Linear(moe.hidden_size, moe.n_experts, bias=False) for _ in range(moe.n_gates))
        self.experts = nn.ModuleList(
            LlamaMLP(LlamaConfig(hidden_size=moe.hidden_size, intermediate_size=moe.expert_size))
            for _ in range(moe.n_experts)
        )
        with torch.no_grad():
            for gate, weight in zip(self.gates, moe.router.weight):
                gate.weight.copy_(weight)
            for e, expert in enumerate(self.experts):
                expert.gate_proj.weight.copy_(moe.experts.gate_proj[e])
                expert.up_proj.weight.copy_(moe.experts.up_proj[e])
                expert.down_proj.weight.copy_(moe.experts.down_proj[e])

    def forward(self, x: torch.Tensor, cluster_ids: torch.Tensor) -> torch.Tensor:
        outs = []
        for b in range(x.shape[0]):  # the reference ran batch size 1: one forward per sample
            tokens = x[b]  # (T, H)
            probs = torch.softmax(self.gates[int(cluster_ids[b])](tokens), dim=-1)  # (T, E)
            top_w, top_i = probs.topk(self.top_k, dim=-1)
            top_w = top_w / top_w.sum(-1, keepdim=True) * self.scale
            expert_mask = F.one_hot(top_i, self.n_experts).permute(2, 1, 0)  # (E, k, T)
            out = torch.zeros_like(tokens)
            for e, expert in enumerate(self.experts):
                slot, tok = torch.where(expert_mask[e])
                if tok.numel():
                    out.index_add_(0, tok, expert(tokens[tok]) * top_w[tok, slot, None])
            outs.append(out)
        return torch.stack(outs)


def time_fns(fns: dict[str, Callable], x: torch.Tensor, reps: int, backward: bool) -> dict[str, tuple[float, float]]:
    """Median (wall, process CPU) seconds of ``fn(x)`` for each fn, plus the backward of ``fn(x).square().mean()``
    when ``backward`` (else under ``no_grad``, as in decoding).

    The fns take turns within every repetition, after one warm-up round, so load from other processes hits them
    alike; process CPU time (all threads of this process) moves less than wall time when the CPU is shared.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(reps + 1):
        for name, fn in fns.items():
            x.grad = None
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            if backward:
                fn(x).square().mean().backward()
            else:
                with torch.no_grad():
                    fn(x)
            if i:
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def bench_layer(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    moe = MultiGatedMoE(args.hidden, args.intermediate // args.granularity, args.experts, args.top_k, args.gates,
                        router_init_std=0.02, output_scale=args.granularity)
    reference = ReferenceLayout(moe)
    ids = torch.randint(0, args.gates, (args.batch,))
    print(f"MoE layer: hidden {args.hidden}, {args.experts} experts x {args.intermediate // args.granularity} "
          f"(r={args.granularity}), top-{args.top_k}, {args.gates} gates, batch {args.batch}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians")

    def batched(dispatch: str) -> Callable:
        def run(inp: torch.Tensor) -> torch.Tensor:
            moe.dispatch = dispatch
            with routing(ids):
                return moe(inp)

        return run

    fns = {"per-sample loop (reference layout)": lambda inp: reference(inp, ids)}
    fns |= {f"batched, dispatch={mode}": batched(mode) for mode in ("grouped", "loop")}
    active = LlamaMLP(LlamaConfig(hidden_size=args.hidden, intermediate_size=args.top_k * moe.expert_size))
    for seq in args.seq:
        x = torch.randn(args.batch, seq, args.hidden, requires_grad=True)
        with torch.no_grad():
            expected = reference(x, ids)
            for name, fn in fns.items():
                torch.testing.assert_close(fn(x), expected, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        fns_with_floor = fns | {"dense FFN, same active size (floor)": active}
        reps = min(50, args.reps * max(1, 128 // seq))  # short inputs are cheap and noisy: more repetitions
        backward = seq > 1  # seq 1 stands for a cached decoding step: forward only
        what = "forward+backward" if backward else "forward only (decoding step)"
        print(f" seq {seq} ({args.batch * seq} tokens), {what}, {reps} repetitions")
        times = time_fns(fns_with_floor, x, reps, backward)
        base_wall, base_cpu = next(iter(times.values()))
        for name, (wall, cpu) in times.items():
            print(f"  {name:36s} wall {wall * 1e3:8.1f} ms  cpu {cpu * 1e3:8.1f} ms   "
                  f"ratio wall x{base_wall / wall:.1f}  cpu x{base_cpu / cpu:.1f}")


def bench_upcycle_nll(n_texts: int = 32) -> None:
    """NLL at init of the embedded SmolLM2-135M on Amazon test explanations: dense vs upcycled MoE settings."""
    import copy
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from explainrec.llm.load import embedded_gguf_path
    from explainrec.methods.gavamoe.surgery import moe_upcycle

    data = Path(__file__).resolve().parents[1].parent / "shared/data/xrec/amazon/explanations.jsonl"
    if not data.exists():
        print(f"skip --upcycle-nll: {data} not found")
        return
    texts = []
    with data.open() as f:
        for line in f:
            record = json.loads(line)
            if record["split"] == "test":
                texts.append(record["explanation"])
            if len(texts) == n_texts:
                break
    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    dense = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    tok.padding_side = "right"
    tok.pad_token = tok.pad_token or tok.eos_token
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)

    def nll(model) -> float:
        with torch.no_grad():
            return model(**enc, labels=labels).loss.item()

    print(f"NLL at init, {len(texts)} Amazon test explanations ({int(enc.attention_mask.sum())} tokens), one gate")
    print(f"  dense SmolLM2-135M             {nll(dense):.3f}")
    settings = {
        "8x384 top-4 (default)": dict(n_experts=8, top_k=4, granularity=4),
        "8x384 top-2": dict(n_experts=8, top_k=2, granularity=4),
        "8x384 top-2, output scale 1": dict(n_experts=8, top_k=2, granularity=4, output_scale=1.0),
        "12x128 top-2 (paper ratio)": dict(n_experts=12, top_k=2, granularity=12),
        "8x384 top-2, random experts": dict(n_experts=8, top_k=2, granularity=4, init="random"),
        "coarse 2x1536 top-1": dict(n_experts=2, top_k=1, granularity=1),
    }
    for name, kw in settings.items():
        model = copy.deepcopy(dense)
        torch.manual_seed(0)
        moe_upcycle(model, n_clusters=1, **kw)
        print(f"  {name:30s} {nll(model):.3f}")
        del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--granularity", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--gates", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 1], help="128: training; 1: a decoding step")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--upcycle-nll", action="store_true")
    args = parser.parse_args()
    bench_layer(args)
    if args.upcycle_nll:
        bench_upcycle_nll()


if __name__ == "__main__":
    main()
