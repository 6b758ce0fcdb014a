"""Training rows and batches: token ids plus each pair's paths and sampled neighbours as small id arrays.

Per-example graph data travels in the batch, never in the model. One row holds, next to the tokens:

    path_nodes  (k, P)     int32   global node ids of the k paths, -1 padded (P = max_hops + 1; a missing path: -1)
    path_nbrs   (k, P, S)  int32   up to S = max_neighbours sampled 1-hop TRAIN neighbours per path node, -1 padded

so a batch carries ``B * k * P * (1 + S)`` ints (198 per pair with k 3, 5 hops, 10 neighbours) and the model
looks the vectors up in its node table. Neighbours are drawn once per pair, when the row is built, from a
generator seeded by ``(seed, user, item)``: the same pair gets the same neighbours in every epoch, every resumed
run and at generation time, whatever the batch order. A path's own nodes are never drawn as its neighbours (they
are in G_p already), nor is the pair's item a neighbour of its user or vice versa (for a train pair the edge is
in the train graph, for a test pair it is not: leaving it out keeps the two alike).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from explainrec.data.collate import collate, encode_pair
from explainrec.data.prompts import render_prompt
from explainrec.data.schema import Example
from explainrec.methods.mmp_refer.paths import PathSet, TrainGraph

GRAPH_KEYS = ("path_nodes", "path_nbrs")


def pair_graph(graph: TrainGraph, paths: Sequence[Sequence[int]], user: int, item: int, *, k: int, width: int,
               max_neighbours: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(path_nodes (k, width), path_nbrs (k, width, max_neighbours))`` int32 for one pair (module docstring)."""
    nodes = np.full((k, width), -1, dtype=np.int32)
    nbrs = np.full((k, width, max_neighbours), -1, dtype=np.int32)
    rng = np.random.default_rng([int(seed), int(user), int(item)])
    u_node, i_node = int(user), graph.item_node(item)
    for j, path in enumerate(list(paths)[:k]):
        if len(path) > width:
            raise ValueError(f"path of {len(path)} nodes does not fit width {width} (pair {user}, {item})")
        nodes[j, : len(path)] = path
        on_path = np.asarray(path, dtype=np.int64)
        for pos, node in enumerate(path):
            if not max_neighbours:
                break
            nb = graph.neighbours(int(node)).astype(np.int64)
            drop = on_path
            if node == u_node:
                drop = np.append(drop, i_node)
            elif node == i_node:
                drop = np.append(drop, u_node)
            nb = nb[~np.isin(nb, drop)]
            if len(nb) > max_neighbours:
                nb = np.sort(rng.choice(nb, max_neighbours, replace=False))
            nbrs[j, pos, : len(nb)] = nb
    return nodes, nbrs


def encode_rows(examples: Sequence[Example], tokenizer, prompt_fn: Callable[[Example, list], list[dict]],
                path_set: PathSet, graph: TrainGraph, *, k: int, width: int, max_neighbours: int, seed: int = 0,
                max_prompt_tokens: int = 1024, max_target_tokens: int = 96) -> list[dict]:
    """Rows for :func:`make_collate`: the encoded (prompt, explanation), user, item and the pair's graph arrays.

    ``prompt_fn(example, paths) -> chat messages`` (e.g. ``lambda ex, p: mmp_prompt(ex, p, texts, ...)``) gets the
    pair's paths (global node ids, best first, at most k). ``width`` = the paths' ``max_hops + 1``. Prompts hold up
    to k paths of profiles: keep ``max_prompt_tokens`` near 1k (the paper's limit is 2048 tokens in all).
    """
    rows = []
    for ex in examples:
        paths = path_set.get(ex.user, ex.item)[:k]
        enc = encode_pair(tokenizer, render_prompt(tokenizer, prompt_fn(ex, paths)), ex.explanation,
                          max_prompt_tokens=max_prompt_tokens, max_target_tokens=max_target_tokens)
        nodes, nbrs = pair_graph(graph, paths, ex.user, ex.item, k=k, width=width, max_neighbours=max_neighbours,
                                 seed=seed)
        rows.append({"enc": enc, "user": ex.user, "item": ex.item, "path_nodes": nodes, "path_nbrs": nbrs})
    return rows


def stack_graphs(rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """``path_nodes (B, k, P)`` and ``path_nbrs (B, k, P, S)`` long tensors of rows (training rows or
    ``{"path_nodes": ..., "path_nbrs": ...}`` dicts from :func:`pair_graph`)."""
    return {key: torch.from_numpy(np.stack([np.asarray(r[key]) for r in rows]).astype(np.int64)) for key in GRAPH_KEYS}


def select_graphs(graphs: Mapping[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows ``index`` of a stacked graph batch (what a generation batch needs)."""
    return {key: graphs[key][index.to(graphs[key].device)] for key in GRAPH_KEYS}


def make_collate(pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Collate rows of :func:`encode_rows`: ``input_ids``, ``attention_mask``, ``labels`` (B, T) right-padded,
    ``user``, ``item`` (B,), ``path_nodes`` (B, k, P), ``path_nbrs`` (B, k, P, S)."""

    def fn(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate([r["enc"] for r in rows], pad_id)
        batch["user"] = torch.tensor([r["user"] for r in rows], dtype=torch.long)
        batch["item"] = torch.tensor([r["item"] for r in rows], dtype=torch.long)
        batch.update(stack_graphs(rows))
        return batch

    return fn
