"""User and item vectors in one space (step 3): the item tower, the user encoder and their InfoNCE training.

Item side (paper eq. 5): for each view m, ``MLP_m(e_m)`` on the standardised raw vector and ``P_m(z_m)``, the
RQ-VAE's quantised vector projected to the width; ``z_m`` is rebuilt from the item's semantic ID with codebooks
that keep training here (against forgetting in the quantiser). The parts are concatenated and mapped to the
width by one linear layer: ``E_V[j] = W [MLP_t(e_t), P_t(z_t), MLP_v(e_v), P_v(z_v), ...]``. With
``use_quantised=False`` only the MLP parts remain (ablation "w/o Multi-SID").

User side: no user content. ``H_U[u]`` comes from the user's TRAIN items:

* ``sasrec`` -- when the interactions have timestamps: a small SASRec (causal transformer, learned positions,
  pre-norm blocks) over the time-ordered items (the ``max_len`` most recent), trained on next-item prediction at
  every position; the user vector is the output at the last position.
* ``mean`` -- when they have none (XRec's data: interactions.csv has no timestamp column, and its file order is
  not a time order we can vouch for): the mean of the items' vectors. Trained leave-one-out: one random train item
  of the user is the positive, the mean over the others (at most ``max_len``) the user vector. An order-free
  encoder is the honest choice when there is no order; positional embeddings over an arbitrary order would fit noise.

``user_encoder="auto"`` picks ``sasrec`` exactly when the dataset has timestamps. Both are trained with eq. 6:
InfoNCE of dot products of the user vector with the positive item and ``negatives`` uniform items shared by the
batch (a negative equal to the positive is masked). The report holds Recall/NDCG@k on the validation split
(full ranking, train items masked) -- a sanity check that the space scores user-item pairs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainrec.data.schema import DataError, Dataset
from explainrec.methods.mmp_refer.config import VectorConfig
from explainrec.methods.mmp_refer.content import ItemContent
from explainrec.methods.mmp_refer.rqvae import RQVAEResult, standardise


class ItemTower(nn.Module):
    """``E_V`` of any item ids: MLP(raw view vectors) and projected quantised vectors, concatenated, mapped to ``dim``.

    Raw (standardised) features and semantic IDs are buffers; the codebooks are trainable parameters initialised
    from the RQ-VAE. Views are addressed by position (``names`` keeps the view names).
    """

    def __init__(self, features: list[Tensor], dim: int, *, codes: list[Tensor] | None = None,
                 codebooks: list[Tensor] | None = None, dropout: float = 0.2, names: list[str] | None = None) -> None:
        super().__init__()
        self.names = names or [str(i) for i in range(len(features))]
        self.n_items = int(features[0].shape[0])
        self.use_quantised = codes is not None
        for i, f in enumerate(features):
            self.register_buffer(f"feat{i}", f.float(), persistent=False)  # (I, d_i), rebuilt from the content
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(f.shape[1], dim), nn.GELU(), nn.Dropout(dropout),
                                                nn.Linear(dim, dim)) for f in features)
        parts = len(features)
        if self.use_quantised:
            if codebooks is None or len(codes) != len(features) or len(codebooks) != len(features):
                raise ValueError("codes and codebooks are needed for every view")
            for i, c in enumerate(codes):
                self.register_buffer(f"codes{i}", c.long(), persistent=False)  # (I, L)
            self.codebooks = nn.ParameterList(nn.Parameter(cb.detach().clone().float()) for cb in codebooks)
            self.quant_proj = nn.ModuleList(nn.Linear(cb.shape[2], dim) for cb in codebooks)
            parts *= 2
        self.out = nn.Linear(parts * dim, dim)

    def quantised(self, i: int, items: Tensor) -> Tensor:
        codes = getattr(self, f"codes{i}")[items]  # (N, L)
        cb = self.codebooks[i]  # (L, K, D)
        return sum(cb[level][codes[:, level]] for level in range(cb.shape[0]))

    def forward(self, items: Tensor) -> Tensor:
        """``(N,)`` item ids -> ``(N, dim)``."""
        parts = []
        for i, mlp in enumerate(self.mlps):
            parts.append(mlp(getattr(self, f"feat{i}")[items]))
            if self.use_quantised:
                parts.append(self.quant_proj[i](self.quantised(i, items)))
        return self.out(torch.cat(parts, -1))


class SASRec(nn.Module):
    """Causal self-attention over left-padded item-vector sequences (Kang & McAuley 2018, pre-norm blocks)."""

    def __init__(self, dim: int, max_len: int, blocks: int = 2, heads: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.max_len, self.heads = max_len, heads
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, seq: Tensor, pad: Tensor) -> Tensor:
        """``seq (B, T, d)`` left-padded, ``pad (B, T)`` True at padding -> ``(B, T, d)``.

        Position ``max_len - 1`` is always the latest item. Every position may attend to itself, so padding rows
        never see an all-masked row (which would give NaN in softmax and its backward).
        """
        t = seq.shape[1]
        pos = torch.arange(self.max_len - t, self.max_len, device=seq.device)
        x = self.drop(seq + self.pos(pos))
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=seq.device), 1)  # True = blocked
        blocked = causal.unsqueeze(0) | pad.unsqueeze(1)  # (B, T, T)
        blocked = blocked & ~torch.eye(t, dtype=torch.bool, device=seq.device)
        mask = blocked.repeat_interleave(self.heads, 0)  # (B * heads, T, T)
        return self.norm(self.blocks(x, mask=mask))


@dataclass
class UserItemVectors:
    """``H_U`` and ``E_V`` (CPU float32) in one space, and how they were made.

    ``user_known`` marks users with train items (the others have zero vectors: cosine similarity 0 to anything).
    """

    user: Tensor  # (U, dim)
    item: Tensor  # (I, dim)
    user_known: Tensor  # (U,) bool
    encoder: str  # "sasrec" | "mean"
    reason: str  # why that encoder
    report: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def node_table(self) -> Tensor:
        """``(U + I, dim)``: users then items, the graph stages' node order."""
        return torch.cat([self.user, self.item])

    def tensors(self) -> dict[str, Tensor]:
        return {"user": self.user.contiguous(), "item": self.item.contiguous(),
                "user_known": self.user_known.to(torch.uint8)}

    def meta(self) -> dict:
        return {"encoder": self.encoder, "reason": self.reason, "report": self.report, "history": self.history,
                "config": self.config}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict) -> "UserItemVectors":
        return cls(user=tensors["user"].float(), item=tensors["item"].float(), user_known=tensors["user_known"].bool(),
                   encoder=meta["encoder"], reason=meta.get("reason", ""), report=meta.get("report", {}),
                   history=meta.get("history", []), config=meta.get("config", {}))


# ---------------------------------------------------------------------------------------------------- data


def train_sequences(dataset: Dataset, ordered: bool) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr (U+1,), items)`` of every user's unique train items: by timestamp (then file order) when
    ``ordered``, else by item id."""
    inter = dataset.interactions.of_split("train")
    u, i = inter.user.astype(np.int64), inter.item.astype(np.int64)
    keys, first = np.unique(u * dataset.n_items + i, return_index=True)  # one row per (user, item)
    u, i = keys // dataset.n_items, keys % dataset.n_items
    if ordered:
        ts = inter.timestamp[first]
        order = np.lexsort((first, ts, u))  # user, then time, then file position
    else:
        order = np.lexsort((i, u))
    indptr = np.zeros(dataset.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=dataset.n_users), out=indptr[1:])
    return indptr, i[order]


def choose_encoder(dataset: Dataset, requested: str) -> tuple[str, str]:
    """``(encoder, reason)`` for ``requested`` in auto / sasrec / mean."""
    ts = dataset.interactions.timestamp
    has_time = ts is not None and len(ts) > 0 and bool(np.isfinite(ts).all())
    if requested == "sasrec":
        if not has_time:
            raise DataError(f"dataset {dataset.name!r} has no timestamps, so SASRec has no order to model; "
                            "use user_encoder=mean (or auto)")
        return "sasrec", "requested; the interactions have timestamps"
    if requested == "mean":
        return "mean", "requested"
    if has_time:
        return "sasrec", "auto: the interactions have timestamps, so items are ordered by time"
    return "mean", "auto: the interactions have no timestamps, so there is no order for SASRec; mean of item vectors"


# ---------------------------------------------------------------------------------------------------- model


class UserItemModel(nn.Module):
    """Item tower + user encoder; ``users(...)`` and ``items(...)`` give vectors in the shared space."""

    def __init__(self, tower: ItemTower, encoder: str, cfg: VectorConfig) -> None:
        super().__init__()
        self.tower, self.encoder = tower, encoder
        self.sasrec = SASRec(cfg.dim, cfg.max_len, cfg.blocks, cfg.heads, cfg.dropout) if encoder == "sasrec" else None

    def user_vectors(self, seq_vecs: Tensor, pad: Tensor) -> Tensor:
        """``(B, T, d)`` item vectors of left-padded sequences -> ``(B, d)`` user vectors (mean or SASRec last)."""
        if self.sasrec is None:
            keep = (~pad).unsqueeze(-1).float()
            return (seq_vecs * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.sasrec(seq_vecs, pad)[:, -1]


def _pad_left(rows: list[np.ndarray], width: int) -> tuple[Tensor, Tensor]:
    """``(ids (B, width) long, pad (B, width) bool)``; ids are 0 at padding."""
    ids = np.zeros((len(rows), width), dtype=np.int64)
    pad = np.ones((len(rows), width), dtype=bool)
    for r, row in enumerate(rows):
        if len(row):
            ids[r, width - len(row):] = row
            pad[r, width - len(row):] = False
    return torch.from_numpy(ids), torch.from_numpy(pad)


def _infonce(h: Tensor, pos: Tensor, negs: Tensor, pos_ids: Tensor, neg_ids: Tensor) -> Tensor:
    """Eq. 6: ``h (N, d)``, ``pos (N, d)``, shared ``negs (M, d)``; a negative that is the positive is masked."""
    logits = torch.cat([(h * pos).sum(-1, keepdim=True), h @ negs.T], 1)  # (N, 1 + M)
    clash = pos_ids.unsqueeze(1) == neg_ids.unsqueeze(0)  # (N, M)
    logits[:, 1:] = logits[:, 1:].masked_fill(clash, -torch.inf)
    return F.cross_entropy(logits, torch.zeros(len(h), dtype=torch.long))


def _tower_on(tower: ItemTower, *id_tensors: Tensor) -> list[Tensor]:
    """Run the tower once on the union of the ids and return the vectors shaped like each input."""
    flat = torch.cat([t.reshape(-1) for t in id_tensors])
    uniq, inverse = torch.unique(flat, return_inverse=True)
    vecs = tower(uniq)[inverse]  # (sum of sizes, d)
    out, lo = [], 0
    for t in id_tensors:
        out.append(vecs[lo: lo + t.numel()].reshape(*t.shape, -1))
        lo += t.numel()
    return out


# ---------------------------------------------------------------------------------------------------- training


def train_vectors(dataset: Dataset, content: ItemContent, rq: RQVAEResult | None, cfg: VectorConfig | None = None,
                  *, progress: bool = False, echo: Callable[[str], None] | None = None) -> UserItemVectors:
    """Train the item tower and user encoder on ``dataset``'s train interactions; return ``H_U`` and ``E_V``.

    ``rq`` may be None only with ``cfg.use_quantised=False``.
    """
    cfg = cfg or VectorConfig()
    say = echo or (lambda _msg: None)
    start = time.perf_counter()
    if cfg.use_quantised and rq is None:
        raise ValueError("use_quantised=True needs the RQ-VAE result")
    encoder, reason = choose_encoder(dataset, cfg.user_encoder)
    names = content.names
    feats = [standardise(content.views[v])[0] for v in names]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        tower = ItemTower(feats, cfg.dim, dropout=cfg.dropout, names=names,
                          codes=[rq.codes[v] for v in names] if cfg.use_quantised else None,
                          codebooks=[rq.codebooks[v] for v in names] if cfg.use_quantised else None)
        model = UserItemModel(tower, encoder, cfg)
    indptr, items = train_sequences(dataset, ordered=encoder == "sasrec")
    counts = np.diff(indptr)
    trainable_users = np.flatnonzero(counts >= 2)
    if not len(trainable_users):
        raise DataError(f"dataset {dataset.name!r}: no user has two train items to learn from")
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history = []
    from explainrec.training.loop_utils import progress as bar

    # dropout draws from the global RNG: a private, seeded copy of it makes the vectors depend on the seed alone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        for epoch in bar(range(cfg.epochs), enabled=progress, desc="user-item vectors", total=cfg.epochs):
            model.train()
            order = trainable_users[rng.permutation(len(trainable_users))]
            total, steps = 0.0, 0
            t0 = time.perf_counter()
            for lo in range(0, len(order), cfg.batch_size):
                users = order[lo: lo + cfg.batch_size]
                seqs = [items[indptr[u]: indptr[u + 1]] for u in users]
                negs = torch.randint(0, dataset.n_items, (cfg.negatives,), generator=gen)
                if encoder == "mean":
                    ctx, pos = [], []
                    for s in seqs:
                        j = int(rng.integers(len(s)))
                        rest = np.delete(s, j)
                        if len(rest) > cfg.max_len:
                            rest = rng.choice(rest, cfg.max_len, replace=False)
                        ctx.append(rest)
                        pos.append(s[j])
                    ids, pad = _pad_left(ctx, max(len(c) for c in ctx))
                    pos_ids = torch.tensor(pos)
                    seq_vecs, pos_vecs, neg_vecs = _tower_on(model.tower, ids, pos_ids, negs)
                    h = model.user_vectors(seq_vecs, pad)
                    loss = _infonce(h, pos_vecs, neg_vecs, pos_ids, negs)
                else:
                    seqs = [s[-(cfg.max_len + 1):] for s in seqs]
                    width = max(len(s) for s in seqs) - 1
                    ids, pad = _pad_left([s[:-1] for s in seqs], width)  # inputs
                    tgt, tpad = _pad_left([s[1:] for s in seqs], width)  # next items, aligned with the inputs
                    seq_vecs, tgt_vecs, neg_vecs = _tower_on(model.tower, ids, tgt, negs)
                    out = model.sasrec(seq_vecs, pad)  # (B, T, d)
                    valid = ~tpad
                    loss = _infonce(out[valid], tgt_vecs[valid], neg_vecs, tgt[valid], negs)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                steps += 1
            row = {"epoch": epoch + 1, "loss": round(total / max(steps, 1), 5),
                   "seconds": round(time.perf_counter() - t0, 2)}
            history.append(row)
            say(f"[vectors] epoch {epoch + 1}/{cfg.epochs} ({encoder}) loss {row['loss']:.4f} ({row['seconds']:.1f}s)")

    user, item = _final_vectors(model, indptr, items, dataset.n_users, cfg)
    known = torch.from_numpy(counts > 0)
    report = {"encoder": encoder, "reason": reason, "use_quantised": cfg.use_quantised,
              "users_with_train_items": int(known.sum()), "trained_users": int(len(trainable_users)),
              "seconds": round(time.perf_counter() - start, 2)}
    report.update(validation_ranking(user, item, dataset, indptr, items, cfg.eval_k))
    say("[vectors] " + " ".join(f"{k} {v}" for k, v in report.items() if k.startswith("valid_")))
    return UserItemVectors(user=user, item=item, user_known=known, encoder=encoder, reason=reason, report=report,
                           history=history, config=cfg.to_dict())


@torch.no_grad()
def _final_vectors(model: UserItemModel, indptr: np.ndarray, items: np.ndarray, n_users: int, cfg: VectorConfig
                   ) -> tuple[Tensor, Tensor]:
    """Every item's vector and every user's vector from all (mean) or the latest ``max_len`` (SASRec) train items."""
    model.eval()
    n_items = model.tower.n_items
    item = torch.cat([model.tower(torch.arange(lo, min(lo + 4096, n_items))) for lo in range(0, n_items, 4096)])
    user = torch.zeros(n_users, item.shape[1])
    counts = np.diff(indptr)
    if model.encoder == "mean":
        from scipy.sparse import csr_matrix

        rows = np.repeat(np.arange(n_users), counts)
        weights = (1.0 / np.maximum(counts, 1))[rows]
        mat = csr_matrix((weights, (rows, items)), shape=(n_users, n_items))
        user = torch.from_numpy(np.asarray(mat @ item.double().numpy(), dtype=np.float32))
    else:
        users = np.flatnonzero(counts > 0)
        for lo in range(0, len(users), 512):
            batch = users[lo: lo + 512]
            seqs = [items[indptr[u]: indptr[u + 1]][-cfg.max_len:] for u in batch]
            ids, pad = _pad_left(seqs, max(len(s) for s in seqs))
            user[torch.from_numpy(batch)] = model.sasrec(item[ids], pad)[:, -1]
    return user.float(), item.float()


@torch.no_grad()
def validation_ranking(user: Tensor, item: Tensor, dataset: Dataset, indptr: np.ndarray, items: np.ndarray,
                       k: int = 20) -> dict:
    """Recall@k and NDCG@k of dot-product scores on the validation split (train items masked)."""
    inter = dataset.interactions.of_split("valid")
    if len(inter) == 0:
        return {}
    by_user: dict[int, set[int]] = {}
    for u, i in zip(inter.user.tolist(), inter.item.tolist()):
        by_user.setdefault(u, set()).add(i)
    users = np.array(sorted(by_user))
    recall = ndcg = 0.0
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for lo in range(0, len(users), 1024):
        batch = users[lo: lo + 1024]
        scores = user[torch.from_numpy(batch)] @ item.T  # (b, I)
        for r, u in enumerate(batch):
            scores[r, torch.from_numpy(items[indptr[u]: indptr[u + 1]])] = -torch.inf
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices.numpy()
        for r, u in enumerate(batch):
            truth = by_user[int(u)]
            hits = np.array([t in truth for t in top[r]], dtype=np.float64)
            recall += hits.sum() / len(truth)
            ndcg += (hits * discount[: len(hits)]).sum() / discount[: min(len(truth), k)].sum()
    n = len(users)
    return {f"valid_recall@{k}": round(float(recall / n), 4), f"valid_ndcg@{k}": round(float(ndcg / n), 4),
            "valid_users": int(n)}
