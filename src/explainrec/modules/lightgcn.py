"""LightGCN (He et al., SIGIR 2020) trained with BPR on the train interactions.

It turns every user and item into one vector of the interaction graph: XRec's collaborative tokenizer (its MoE
adaptor then maps the vectors into the LLM) and one of RecExplainer's recommenders. This module learns them:

    graph      A: bipartite user-item adjacency of the TRAIN split, nodes = users (0..U-1) then items (U..U+I-1)
    Â          D^{-1/2} A D^{-1/2} (symmetric normalisation; isolated nodes get a zero row)    LightGCN eq. 7
    layers     E^{(k+1)} = Â E^{(k)}, k = 0..L-1                                              eq. 3
    output     E = 1/(L+1) * sum_k E^{(k)}    (layer mean, alpha_k = 1/(L+1))                 eq. 4
    score      y_ui = <e_u, e_i>                                                               eq. 5
    loss       BPR: mean_b -ln sigmoid(y_ui - y_uj) + reg * ||E^{(0)}_batch||^2 / (2B)         eq. 15

Speed: Â is built once as a coalesced CSR float32 matrix and every step propagates the whole graph with
``torch.sparse.mm``. Because Â is symmetric, the backward of ``Â X`` is ``Â G``; a small autograd function reuses
the one CSR matrix in both directions (torch's generic sparse backward transposes the matrix on every call and
was ~3x slower on the google graph). Evaluation ranks all items for users in batches (one matmul + top-k per
batch, train items masked), so no Python loop runs per user.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainrec.data.schema import DataError, Dataset, IdMap
from explainrec.training.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint



# ---------------------------------------------------------------------------------------------------- graph


def split_pairs(dataset: Dataset, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Unique ``(user, item)`` pairs of one split of the interaction graph, sorted by user then item."""
    inter = dataset.interactions.of_split(split)
    keys = np.unique(inter.user.astype(np.int64) * dataset.n_items + inter.item.astype(np.int64))
    return keys // dataset.n_items, keys % dataset.n_items


def normalized_adjacency(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, *, device: str | torch.device | None = None
) -> Tensor:
    """Â = D^{-1/2} A D^{-1/2} of the bipartite graph as a coalesced CSR float32 tensor of shape ``(U+I, U+I)``.

    ``users``/``items`` are the edge list (duplicates must already be removed). A node without edges gets an
    all-zero row, so its propagated layers are zero (its output is its own ego embedding / (L+1)).
    """
    n = n_users + n_items
    rows = np.concatenate([users, items + n_users]).astype(np.int64)
    cols = np.concatenate([items + n_users, users]).astype(np.int64)
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.zeros(n)
    np.power(deg, -0.5, out=inv_sqrt, where=deg > 0)
    values = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
    with warnings.catch_warnings():  # torch flags sparse CSR as "beta"; the ops used here are stable
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(values), (n, n),
                                      check_invariants=False)
        return coo.coalesce().to_sparse_csr().to(device or "cpu")


class _SymmetricSpMM(torch.autograd.Function):
    """``Â @ X`` with the backward ``Â @ G``, valid because Â is symmetric (no transpose built per call)."""

    @staticmethod
    def forward(ctx, adj: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, torch.sparse.mm(ctx.adj, grad.contiguous())


def propagate(adj: Tensor, ego: Tensor, layers: int) -> Tensor:
    """LightGCN eq. 3-4: the mean of ``ego, Â ego, ..., Â^L ego``. ``(N, d) -> (N, d)``; ``adj`` must be symmetric."""
    total, h = ego, ego
    for _ in range(layers):
        h = _SymmetricSpMM.apply(adj, h)
        total = total + h
    return total / (layers + 1)


class LightGCN(nn.Module):
    """Ego embeddings of all nodes (users first, then items) plus the parameter-free propagation.

    Args:
        n_users, n_items: node counts (contiguous ids).
        dim: embedding width (XRec: 64).
        layers: propagation depth L (LightGCN: 1-4; XRec's release 4 with a layer sum; 2 here by default).
        init_std: std of the normal initialisation (LightGCN's PyTorch release uses 0.1).
        generator: optional ``torch.Generator`` for a reproducible initialisation.
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, layers: int = 2, *, init_std: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n_users < 1 or n_items < 1:
            raise ValueError(f"LightGCN needs at least one user and one item; got {n_users=}, {n_items=}")
        if layers < 0 or dim < 1:
            raise ValueError(f"need layers >= 0 and dim >= 1; got {layers=}, {dim=}")
        self.n_users, self.n_items, self.layers = int(n_users), int(n_items), int(layers)
        self.ego = nn.Parameter(torch.empty(n_users + n_items, dim))
        with torch.no_grad():
            self.ego.normal_(0.0, init_std, generator=generator)

    def forward(self, adj: Tensor) -> tuple[Tensor, Tensor]:
        """Final (layer-mean) embeddings ``(U, d), (I, d)``."""
        out = propagate(adj, self.ego, self.layers)
        return out[: self.n_users], out[self.n_users:]


def bpr_loss(final: Tensor, ego: Tensor, users: Tensor, pos: Tensor, neg: Tensor, n_users: int, reg: float
             ) -> tuple[Tensor, Tensor, Tensor]:
    """LightGCN eq. 15 on one batch. ``final``/``ego``: ``(N, d)`` node embeddings; ``users, pos, neg``: ``(B,)``.

    Returns ``(loss, bpr, l2)`` with ``bpr = mean -ln sigmoid(y_ui - y_uj)`` (as ``softplus(-x)``, stable) and
    ``l2 = ||e_u^0||^2 + ||e_i^0||^2 + ||e_j^0||^2`` summed over the batch / (2B) -- the regulariser acts on the
    batch's ego embeddings only, as in LightGCN's release; ``loss = bpr + reg * l2``.
    """
    b = users.shape[0]
    nodes = torch.cat([users, pos + n_users, neg + n_users])  # (3B,): one gather = one scatter in backward
    u, p, n = final[nodes].view(3, b, -1)  # (B, d) each
    diff = (u * (p - n)).sum(-1)  # (B,) = y_ui - y_uj
    bpr = F.softplus(-diff).mean()
    l2 = ego[nodes].pow(2).sum() / (2 * b)
    return bpr + reg * l2, bpr, l2


class NegativeSampler:
    """Uniform negative items that are not train positives of the user (vectorised rejection sampling).

    Draws are redrawn where they hit a positive, ``rounds`` times; draws still bad after that (users who
    interacted with most items) are replaced by an exact draw from the user's non-positive items: rank r is drawn
    uniformly in ``[0, n_items - deg_u)`` and mapped to the r-th free item by the fixed point
    ``x = r + #{positives <= x}``. A user who interacted with every item keeps a random (positive) item.
    Positives are stored as sorted keys ``u * n_items + i``.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, *, rounds: int = 3) -> None:
        self.n_items, self.rounds = int(n_items), rounds
        self.keys = torch.from_numpy(np.unique(users.astype(np.int64) * n_items + items.astype(np.int64)))

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users * self.n_items + items
        if len(self.keys) == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        at = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        return self.keys[at] == keys

    def sample(self, users: Tensor, generator: torch.Generator) -> Tensor:
        """``(B,)`` CPU long user ids -> ``(B,)`` negative item ids."""
        neg = torch.randint(0, self.n_items, users.shape, generator=generator)
        for _ in range(self.rounds):
            bad = self.is_positive(users, neg)
            n_bad = int(bad.sum())
            if n_bad == 0:
                return neg
            neg[bad] = torch.randint(0, self.n_items, (n_bad,), generator=generator)
        bad = self.is_positive(users, neg)
        if bad.any():
            neg[bad] = self._exact(users[bad], neg[bad], generator)
        return neg

    def _exact(self, users: Tensor, fallback: Tensor, generator: torch.Generator) -> Tensor:
        """Uniform draws from each user's non-positive items (``fallback`` where none exists)."""
        start = torch.searchsorted(self.keys, users * self.n_items)  # first key of each user
        deg = torch.searchsorted(self.keys, (users + 1) * self.n_items) - start
        free = self.n_items - deg
        has_free = free > 0
        rank = (torch.rand(users.shape, generator=generator) * free.clamp(min=1)).long().clamp_(max=(free - 1).clamp(min=0))
        x = rank.clone()
        while True:  # x = r + #{positives of u <= x}; increases monotonically to the r-th free item
            count = torch.searchsorted(self.keys, users * self.n_items + x, right=True) - start
            nxt = rank + count
            if torch.equal(nxt, x):
                break
            x = nxt
        return torch.where(has_free, x, fallback)


# ---------------------------------------------------------------------------------------------------- evaluation


def ranking_metrics(user_emb: Tensor, item_emb: Tensor, train: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray], *, k: int = 20, user_batch: int = 2048) -> dict[str, float]:
    """Recall@k and NDCG@k of a full ranking of the embeddings, train items masked (:mod:`explainrec.metrics.ranking`
    holds the definitions)."""
    from explainrec.metrics.ranking import embedding_score_fn
    from explainrec.metrics.ranking import ranking_metrics as full_ranking

    m = full_ranking(embedding_score_fn(user_emb, item_emb), user_emb.shape[0], item_emb.shape[0], train, test,
                     ks=(k,), user_batch=user_batch)
    return {f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"], "eval_users": m["eval_users"]}


# ---------------------------------------------------------------------------------------------------- result


@dataclass
class LightGCNResult:
    """Trained collaborative embeddings and how they were made.

    ``user_emb``/``item_emb`` are the final (layer-mean) embeddings, float32 on CPU; ``user_known``/``item_known``
    mark ids with at least one train interaction (the others never received a gradient: XRec's model treats them
    as cold-start). ``users``/``items`` are the raw-id maps the rows follow (when trained from a dataset).
    """

    user_emb: Tensor  # (n_users, d)
    item_emb: Tensor  # (n_items, d)
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    user_known: Tensor | None = None  # (n_users,) bool
    item_known: Tensor | None = None  # (n_items,) bool
    users: IdMap | None = None
    items: IdMap | None = None

    def tensors(self) -> dict[str, Tensor]:
        """What the model folder stores (safetensors: no pickle)."""
        out = {"user_emb": self.user_emb, "item_emb": self.item_emb}
        if self.user_known is not None:
            out["user_known"] = self.user_known.to(torch.uint8)
        if self.item_known is not None:
            out["item_known"] = self.item_known.to(torch.uint8)
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], where: str, **fields) -> "LightGCNResult":
        for name in ("user_emb", "item_emb"):
            t = tensors.get(name)
            if t is None or t.dim() != 2:
                raise DataError(f"{where}: tensor '{name}' is missing or not 2-d")
        if tensors["user_emb"].shape[1] != tensors["item_emb"].shape[1]:
            raise DataError(f"{where}: user and item embeddings differ in width")
        known = {k: tensors[k].bool() if k in tensors else None for k in ("user_known", "item_known")}
        return cls(user_emb=tensors["user_emb"].float(), item_emb=tensors["item_emb"].float(), **known, **fields)


# ---------------------------------------------------------------------------------------------------- training


def train_lightgcn(
    dataset: Dataset,
    *,
    dim: int = 64,
    layers: int = 2,
    epochs: int = 30,
    batch_size: int = 8192,
    lr: float = 1e-2,
    reg: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    eval_every: int = 0,
    eval_k: int = 20,
    max_seconds: float | None = None,
    device: str | torch.device | None = "cpu",
    echo: Callable[[str], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> LightGCNResult:
    """Train LightGCN with BPR on ``dataset``'s train interactions; evaluate Recall/NDCG@``eval_k`` on test.

    Each step propagates the whole graph (LightGCN eq. 3-4), scores a batch of ``(user, positive)`` train edges
    against uniformly sampled non-positive items and takes one Adam step on eq. 15. Epochs visit every train edge
    once in a seeded random order. ``eval_every`` > 0 also records validation Recall/NDCG every that many epochs
    in ``history`` (no model selection: the last epoch is returned). ``max_seconds`` stops early (after the
    current epoch) once the wall-clock budget is spent. ``device`` is where the graph and embeddings live.
    ``checkpoint_dir``: a checkpoint after every epoch; with ``resume=True`` training continues from it exactly
    (same weights, optimizer state, sampling RNG and history as an uninterrupted run).

    Defaults are tuned for CPU: a large batch (each step propagates the whole graph, so fewer steps per epoch
    means a faster epoch) with a larger step than LightGCN's paper (batch 2048, lr 1e-3). On the google graph
    (330k train edges) validation Recall@20 peaked around epoch 30 (0.130; 0.117 at 10, 0.125 at 40). One epoch
    took ~7 s on one torch thread of the shared 2-core machine, ~15 s under heavy load, and 25 s with two threads
    under load (OpenMP hand-offs): set ``torch.set_num_threads(1)`` there. Everything is seeded by ``seed``
    through private generators (the global RNG is untouched).
    """
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"need batch_size >= 1 and epochs >= 0; got {batch_size=}, {epochs=}")
    say = echo or (lambda _msg: None)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    tr_u, tr_i = split_pairs(dataset, "train")
    if len(tr_u) == 0:
        raise DataError(f"dataset {dataset.name!r}: no train interactions to fit LightGCN on")
    n_users, n_items = dataset.n_users, dataset.n_items
    adj = normalized_adjacency(tr_u, tr_i, n_users, n_items, device=dev)
    gen = torch.Generator().manual_seed(seed)
    model = LightGCN(n_users, n_items, dim, layers, generator=gen).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = NegativeSampler(tr_u, tr_i, n_items)
    edges_u, edges_i = torch.from_numpy(tr_u), torch.from_numpy(tr_i)
    n_edges = len(tr_u)
    config = dict(dim=dim, layers=layers, epochs=epochs, batch_size=batch_size, lr=lr, reg=reg, seed=seed,
                  eval_k=eval_k, n_train_edges=int(n_edges))
    history: list[dict] = []
    first = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt is not None and checkpoint_exists(ckpt):
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, expected_config=config,
                                ignore_config_keys=("epochs",), generators={"data": gen}, restore_rng=False)
        history, first = state["history"], state["epoch"]
        say(f"[lightgcn] resumed from {ckpt} after epoch {first}")
    start = time.perf_counter() - sum(h["seconds"] for h in history)

    from explainrec.training.loop_utils import progress as bar

    for epoch in bar(range(first, epochs), enabled=progress, desc="lightgcn", total=epochs - first):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n_edges, generator=gen)
        sums = {"loss": 0.0, "bpr": 0.0, "l2": 0.0}
        for lo in range(0, n_edges, batch_size):
            idx = order[lo: lo + batch_size]
            users, pos = edges_u[idx], edges_i[idx]
            neg = sampler.sample(users, gen)
            users, pos, neg = users.to(dev), pos.to(dev), neg.to(dev)
            final = propagate(adj, model.ego, layers)  # (N, d)
            loss, bpr, l2 = bpr_loss(final, model.ego, users, pos, neg, n_users, reg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            w = len(idx) / n_edges
            sums["loss"] += loss.item() * w
            sums["bpr"] += bpr.item() * w
            sums["l2"] += l2.item() * w
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, **sums, "seconds": round(seconds, 3), "edges_per_s": round(n_edges / seconds, 1)}
        if eval_every > 0 and (epoch + 1) % eval_every == 0:
            row.update({f"valid_{k}": v for k, v in _evaluate(model, adj, dataset, (tr_u, tr_i), "valid", eval_k).items()})
        history.append(row)
        if ckpt is not None:
            save_checkpoint(ckpt, model=model, optimizer=optimizer, state={"epoch": epoch + 1, "history": history},
                            config=config, generators={"data": gen})
        say(f"[lightgcn] epoch {epoch + 1}/{epochs} loss {row['loss']:.4f} bpr {row['bpr']:.4f} ({seconds:.1f}s)"
            + "".join(f" {k} {v:.4f}" for k, v in row.items() if k.startswith("valid_") and isinstance(v, float)))
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            say(f"[lightgcn] time budget of {max_seconds:.0f}s reached after {epoch + 1} epochs")
            break

    model.eval()
    with torch.no_grad():
        user_emb, item_emb = model(adj)
    metrics = {
        **_evaluate(model, adj, dataset, (tr_u, tr_i), "test", eval_k),
        "epochs_done": len(history),
        "train_seconds": round(time.perf_counter() - start, 2),
        "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in history])), 3) if history else float("nan"),
    }
    say(f"[lightgcn] test recall@{eval_k} {metrics[f'recall@{eval_k}']:.4f} ndcg@{eval_k} {metrics[f'ndcg@{eval_k}']:.4f}")
    known_u = torch.zeros(n_users, dtype=torch.bool)
    known_u[torch.from_numpy(tr_u)] = True
    known_i = torch.zeros(n_items, dtype=torch.bool)
    known_i[torch.from_numpy(tr_i)] = True
    return LightGCNResult(
        user_emb=user_emb.detach().float().cpu(), item_emb=item_emb.detach().float().cpu(), metrics=metrics,
        history=history, config=config, user_known=known_u, item_known=known_i,
        users=IdMap(dataset.users.to_list()), items=IdMap(dataset.items.to_list()),
    )


def _evaluate(model: LightGCN, adj: Tensor, dataset: Dataset, train: tuple[np.ndarray, np.ndarray], split: str,
              k: int) -> dict[str, float]:
    with torch.no_grad():
        user_emb, item_emb = model(adj)
    return ranking_metrics(user_emb, item_emb, train, split_pairs(dataset, split), k=k)

