"""LightGCN (XRec's collaborative tokenizer) on CPU: seconds per epoch, edges/s, Recall@20 / NDCG@20.

    python benchmarks/bench_lightgcn.py --threads 1                     # google graph, 30 epochs
    python benchmarks/bench_lightgcn.py --epochs 2 --threads 2
    python benchmarks/bench_lightgcn.py --data synthetic --epochs 20    # no real data needed

Two measurements, both in the same run:

1. Propagation step (forward + backward of the L-layer mean over the whole graph, the cost every BPR step pays),
   ours against a baseline on the same graph and the same inputs: the textbook code path that XRec's and
   LightGCN's releases use -- ``torch.sparse.mm`` on a COO adjacency with torch's generic sparse autograd -- versus
   ours: one coalesced CSR matrix and a custom backward that reuses it (Â is symmetric, so d(ÂX)/dX^T G = ÂG).
   Both are checked to give the same gradients before timing. The ratio is baseline / ours.
2. Full training with :func:`train_lightgcn` (BPR, uniform negatives, Adam) for ``--epochs`` epochs, then the
   test-split Recall@20 / NDCG@20 (full ranking over all items, train items masked).

Times are medians after one warm-up. The machine is shared with other engineers' jobs, so absolute timings move
with the load (by 2-3x at times): compare the two lines of one run, not runs with each other. On a loaded 2-core
machine, one torch thread (``--threads 1``) is often faster than two (OpenMP hand-offs wait for a busy core).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from explainrec.data import load_dataset
from explainrec.modules.lightgcn import normalized_adjacency, propagate, split_pairs, train_lightgcn

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xrec" / "google"


def baseline_propagate(adj_coo: torch.Tensor, ego: torch.Tensor, layers: int) -> torch.Tensor:
    """The releases' propagation: ``torch.sparse.mm`` on COO with torch's own sparse backward."""
    total, h = ego, ego
    for _ in range(layers):
        h = torch.sparse.mm(adj_coo, h)
        total = total + h
    return total / (layers + 1)


def time_step(fn, adj, ego, weight, layers: int, reps: int) -> tuple[float, torch.Tensor]:
    """Median seconds of forward + backward of ``(fn(adj, ego) * weight).sum()``, and the gradient."""
    times, grad = [], None
    for rep in range(reps + 1):
        x = ego.detach().clone().requires_grad_()
        start = time.perf_counter()
        (fn(adj, x, layers) * weight).sum().backward()
        if rep:  # the first run is a warm-up
            times.append(time.perf_counter() - start)
        grad = x.grad
    return statistics.median(times), grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="dataset folder or 'synthetic'")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of the propagation step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data != "synthetic" and not Path(args.data).exists():
        raise SystemExit(f"{args.data}: not found (pass --data synthetic to run without the real data)")

    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    users, items = split_pairs(ds, "train")
    print(f"data {ds.name}: {ds.n_users} users, {ds.n_items} items, {len(users)} unique train edges "
          f"(loaded in {time.perf_counter() - t0:.1f}s); torch threads {torch.get_num_threads()}")

    # 1. propagation step: ours vs the releases' code path
    t0 = time.perf_counter()
    adj = normalized_adjacency(users, items, ds.n_users, ds.n_items)
    build = time.perf_counter() - t0
    adj_coo = adj.to_sparse_coo().coalesce()
    gen = torch.Generator().manual_seed(args.seed)
    ego = torch.randn(ds.n_users + ds.n_items, args.dim, generator=gen) * 0.1
    weight = torch.randn(ego.shape, generator=gen)
    ours_s, ours_g = time_step(propagate, adj, ego, weight, args.layers, args.reps)
    base_s, base_g = time_step(baseline_propagate, adj_coo, ego, weight, args.layers, args.reps)
    assert torch.allclose(ours_g, base_g, atol=1e-5), "ours and the baseline disagree"
    print(f"adjacency build (once): {build:.2f}s, nnz {adj.values().numel()}")
    print(f"propagation fwd+bwd, {args.layers} layers, d={args.dim}: ours (CSR, symmetric backward) {ours_s * 1e3:.1f} ms"
          f" | baseline (COO torch.sparse.mm autograd) {base_s * 1e3:.1f} ms | ratio {base_s / ours_s:.2f}x")

    # 2. full training + ranking metrics
    result = train_lightgcn(ds, dim=args.dim, layers=args.layers, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed, progress=False)
    secs = [h["seconds"] for h in result.history]
    median_epoch = statistics.median(secs) if secs else float("nan")
    m = result.metrics
    print(f"training: {len(secs)} epochs, batch {args.batch_size}, lr {args.lr}: median {median_epoch:.1f} s/epoch "
          f"(min {min(secs, default=float('nan')):.1f}, max {max(secs, default=float('nan')):.1f}), "
          f"{len(users) / median_epoch:,.0f} train edges/s, total {m['train_seconds']:.0f}s incl. evaluation")
    print(f"final BPR loss {result.history[-1]['bpr'] if secs else float('nan'):.4f}; "
          f"test ({m['eval_users']} users): Recall@20 {m['recall@20']:.4f}  NDCG@20 {m['ndcg@20']:.4f}  "
          f"(random ranking: Recall@20 ~ {20 / ds.n_items:.4f})")


if __name__ == "__main__":
    main()
