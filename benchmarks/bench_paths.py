"""MMP-Refer retrieval paths: our k-shortest-loopless-paths search against networkx's, on the same pruned graphs.

    python benchmarks/bench_paths.py                       # google's test pairs (~290), both searches
    python benchmarks/bench_paths.py --pairs 50            # the first 50 test pairs only
    python benchmarks/bench_paths.py --cost degree         # the G-Refer-style cost (many ties)
    python benchmarks/bench_paths.py --data synthetic      # no real data needed

For every pair the subgraph is cut and pruned once (3-hop union, target edge removed, degree cap 200, 2-core
keeping both ends) and its node costs computed once; then both searches run on the same arrays:

* baseline: networkx ``shortest_simple_paths`` (Yen + bidirectional Dijkstra) on a DiGraph of the pruned graph;
  its time is reported without and with building the DiGraph (the baseline needs one; ours reads the arrays).
* ours: :func:`explainrec.methods.mmp_refer.paths.shortest_paths` (reverse Dijkstra in scipy, tree shortcut and
  A* spur searches, Lawler's rule).

Both go through the same :func:`select_paths` (G-Refer's rule: first 10 paths in cost order, at most 5 hops, top
3; equal costs ordered by node ids), and the two path lists -- nodes and costs -- must be identical for every pair.
Ratios are baseline / ours. The last line is the end-to-end time of ``find_paths`` (cut + prune + costs + search)
over all test pairs of the dataset.

Vectors: the MMP cost needs user and item vectors. By default they are cheap stand-ins with the structure of
step 3's mean-pooling user encoder (items: seeded Gaussian vectors, users: the mean of their train items'
vectors), so the benchmark needs no training; ``--vectors FILE.safetensors`` (tensors ``user``, ``item``) uses
real ones. The search cost does not depend on which vectors are used beyond which paths win.

The machine is shared, so absolute times move with the load: compare the lines of one run.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from explainrec.data import load_dataset
from explainrec.methods.mmp_refer.config import PathConfig
from explainrec.methods.mmp_refer.paths import (
    TrainGraph, extract_subgraph, find_paths, networkx_paths, node_costs, select_paths, shortest_paths, to_networkx,
    unit_rows,
)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xrec" / "google"


def stand_in_vectors(graph: TrainGraph, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items: seeded Gaussian vectors; users: the mean of their train items' vectors (step 3's mean encoder)."""
    rng = np.random.default_rng(seed)
    item = rng.standard_normal((graph.n_items, dim))
    user = np.zeros((graph.n_users, dim))
    for u in range(graph.n_users):
        nb = graph.neighbours(u)
        if len(nb):
            user[u] = item[nb - graph.n_users].mean(0)
    return user, item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="dataset folder or 'synthetic'")
    parser.add_argument("--split", default="test", help="explained pairs of this split")
    parser.add_argument("--pairs", type=int, default=None, help="only the first N pairs (default: all)")
    parser.add_argument("--cost", default="mmp", choices=("mmp", "degree"))
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--vectors", default=None, help="safetensors file with 'user' (U, d) and 'item' (I, d)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-end-to-end", action="store_true", help="leave out the last line")
    args = parser.parse_args()
    if args.data != "synthetic" and not Path(args.data).exists():
        raise SystemExit(f"{args.data}: not found (pass --data synthetic to run without the real data)")

    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    graph = TrainGraph.from_dataset(ds)
    if args.vectors:
        from safetensors.numpy import load_file

        vec = load_file(args.vectors)
        user, item = vec["user"], vec["item"]
    else:
        user, item = stand_in_vectors(graph, args.dim, args.seed)
    user_unit, item_unit = unit_rows(user), unit_rows(item)
    examples = ds.split_examples(args.split)
    all_pairs = list(dict.fromkeys((e.user, e.item) for e in examples))
    pairs = all_pairs[: args.pairs] if args.pairs else all_pairs
    cfg = PathConfig(k=args.k, cost=args.cost)
    print(f"data {ds.name}: {ds.n_users} users, {ds.n_items} items, {graph.n_edges} train edges; "
          f"{len(pairs)} {args.split} pairs; cost {cfg.cost}, k {cfg.k}, {cfg.hops}-hop, {cfg.core}-core, "
          f"degree cap {cfg.max_degree}, <= {cfg.max_hops} hops, {cfg.max_candidates} candidates "
          f"(setup {time.perf_counter() - t0:.1f}s)")

    t_cut = t_ours = t_build = t_nx = 0.0
    sizes, n_paths, mismatches = [], 0, []
    for u, i in pairs:
        a = time.perf_counter()
        sub = extract_subgraph(graph, u, i, hops=cfg.hops, max_degree=cfg.max_degree, core=cfg.core)
        cost = node_costs(sub, graph.n_users, u, i, user_unit=user_unit, item_unit=item_unit, cost=cfg.cost,
                          user_anchor=cfg.user_anchor, degree=cfg.degree, graph_degree=graph.degree)
        b = time.perf_counter()
        ours = select_paths(shortest_paths(sub.indptr, sub.indices, cost, sub.source, sub.target),
                            k=cfg.k, max_hops=cfg.max_hops, max_candidates=cfg.max_candidates)
        c = time.perf_counter()
        g = to_networkx(sub.indptr, sub.indices, cost)
        d = time.perf_counter()
        base = select_paths(networkx_paths(g, cost, sub.source, sub.target),
                            k=cfg.k, max_hops=cfg.max_hops, max_candidates=cfg.max_candidates)
        e = time.perf_counter()
        t_cut += b - a
        t_ours += c - b
        t_build += d - c
        t_nx += e - d
        sizes.append((sub.n_nodes, sub.n_edges))
        n_paths += len(ours)
        if ours != base:
            mismatches.append((u, i, ours, base))
    sizes_a = np.array(sizes)
    print(f"pruned subgraphs: mean {sizes_a[:, 0].mean():.0f} nodes / {sizes_a[:, 1].mean():.0f} edges "
          f"(max {sizes_a[:, 0].max()} / {sizes_a[:, 1].max()}); {n_paths / len(pairs):.2f} paths per pair")
    print(f"cut + prune + costs (shared):  {t_cut:8.2f}s  ({1000 * t_cut / len(pairs):.1f} ms/pair)")
    print(f"baseline networkx search:      {t_nx:8.2f}s  ({1000 * t_nx / len(pairs):.1f} ms/pair)")
    print(f"baseline DiGraph build:        {t_build:8.2f}s  ({1000 * t_build / len(pairs):.1f} ms/pair)")
    print(f"ours search:                   {t_ours:8.2f}s  ({1000 * t_ours / len(pairs):.1f} ms/pair)")
    print(f"ratio search only:             {t_nx / t_ours:8.1f}x")
    print(f"ratio search + graph build:    {(t_nx + t_build) / t_ours:8.1f}x")
    same = len(pairs) - len(mismatches)
    print(f"identical path sets (nodes and costs): {same}/{len(pairs)} pairs"
          + ("" if not mismatches else f"  FIRST MISMATCH {mismatches[0]}"))
    if not args.skip_end_to_end:
        start = time.perf_counter()
        result = find_paths(graph, all_pairs, cfg, user_vectors=user, item_vectors=item)
        total = time.perf_counter() - start
        stats = result.stats()
        print(f"end to end, all {len(all_pairs)} {args.split} pairs of {ds.name} (ours: cut + prune + costs + "
              f"search): {total:.2f}s ({1000 * total / len(all_pairs):.1f} ms/pair); "
              f"{stats['mean_paths']:.2f} paths/pair, {stats['pairs_without_paths']} pairs without a path, "
              f"mean {stats['mean_hops']:.2f} hops")
    if mismatches:
        raise SystemExit(f"{len(mismatches)} pairs differ between networkx and ours")


if __name__ == "__main__":
    main()
