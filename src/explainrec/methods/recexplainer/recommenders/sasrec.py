"""SASRec (Kang & McAuley, 2018): causal self-attention over a user's last items; RecExplainer's default
recommender on data with an order."""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainrec.data.schema import DataError, Dataset
from explainrec.methods.recexplainer.recommenders.base import DEFAULT_HISTORY_LEN, Recommender, train_histories
from explainrec.training.loop_utils import progress as progress_bar


class _SASRecBlock(nn.Module):
    """Pre-LN causal self-attention + position-wise FFN, both residual (SASRec, Kang & McAuley 2018)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """``x (B, N, d)``, ``attn_mask (B, 1, N, N)`` bool (True = may attend) -> ``(B, N, d)``."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, N, d/h)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRecRecommender(Recommender):
    """SASRec: causal self-attention over the last N items; the last position's output is the user vector.

    Items are embedded with one table (``n_items + 1`` rows, the last = padding) that also scores the next item
    (score = <h_last, e_i>), scaled by sqrt(d) at the input as in SASRec, plus learned absolute positions over the
    left-padded window. Padding positions are zeroed after every block and never attended to.
    """

    kind = "sasrec"

    def __init__(self, n_users: int, n_items: int, dim: int, hist_ptr, hist_items,
                 history_len: int = DEFAULT_HISTORY_LEN, *, layers: int = 2, heads: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__(n_users, n_items, dim, hist_ptr, hist_items, history_len)
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.layers, self.heads, self.dropout = int(layers), int(heads), float(dropout)
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        self.pos_emb = nn.Embedding(history_len, dim)
        self.blocks = nn.ModuleList([_SASRecBlock(dim, heads, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.item_emb.weight, 0.0, dim ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[n_items].zero_()

    def _extra_config(self) -> dict:
        return {"layers": self.layers, "heads": self.heads, "dropout": self.dropout}

    @classmethod
    def _empty(cls, config, hist_ptr, hist_items):
        return cls(config["n_users"], config["n_items"], config["dim"], hist_ptr, hist_items, config["history_len"],
                   layers=config["layers"], heads=config["heads"], dropout=config["dropout"])

    def encode(self, seq: Tensor) -> Tensor:
        """``(B, N)`` item ids (left-padded with -1, oldest first) -> ``(B, N, d)`` outputs per position."""
        n = seq.shape[1]
        if n > self.history_len:
            seq, n = seq[:, -self.history_len:], self.history_len
        valid = seq >= 0  # (B, N)
        ids = torch.where(valid, seq, torch.full_like(seq, self.n_items))
        pos = torch.arange(self.history_len - n, self.history_len, device=seq.device)
        x = self.item_emb(ids) * math.sqrt(self.dim) + self.pos_emb(pos).unsqueeze(0)
        x = self.drop(x) * valid.unsqueeze(-1)
        causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
        # may attend: causal and a real key; each position also sees itself, so an all-padding row is no NaN
        mask = (causal & valid.unsqueeze(1)) | torch.eye(n, dtype=torch.bool, device=seq.device)
        mask = mask.unsqueeze(1)  # (B, 1, N, N)
        for block in self.blocks:
            x = block(x, mask) * valid.unsqueeze(-1)
        return self.norm(x)

    def user_vectors_from_history(self, seq: Tensor) -> Tensor:
        """``(B, N)`` histories -> ``(B, d)`` the last position's output."""
        return self.encode(seq)[:, -1]

    def _user_vectors(self, users: Tensor) -> Tensor:
        return self.user_vectors_from_history(self.recent_history(users))

    def _item_table(self) -> Tensor:
        return self.item_emb.weight[: self.n_items]

    @torch.no_grad()
    def history_influence(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Leave-one-out: ``score(u, i | history) - score(u, i | history without item n)`` for each position n."""
        hist = self.recent_history(users)  # (B, N)
        b, n = hist.shape
        # drop position j: the items before j shift one step right, a -1 enters at the left
        keep = ~torch.eye(n, dtype=torch.bool, device=hist.device)  # (N, N): row j keeps all but j
        dropped = hist.unsqueeze(1).expand(b, n, n)[:, keep].view(b, n, n - 1)  # (B, N, N-1)
        loo = torch.cat([torch.full((b, n, 1), -1, dtype=hist.dtype, device=hist.device), dropped], dim=-1)
        target = self.item_vectors(items)  # (B, d)
        full = (self.user_vectors_from_history(hist) * target).sum(-1)  # (B,)
        without = (self.user_vectors_from_history(loo.view(b * n, n)).view(b, n, -1) * target.unsqueeze(1)).sum(-1)
        return hist, (full.unsqueeze(1) - without).masked_fill(hist < 0, float("nan"))


def _sasrec_windows(ptr: np.ndarray, items: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Training windows over every user's sequence: ``(inputs (W, N), targets (W, N))``, left-padded with -1.

    Each user's transitions (item t -> item t+1) are cut into windows of N from the end, so every transition is
    trained exactly once (SASRec's release trains only the last N of each user).
    """
    counts = np.diff(ptr)
    trans = np.maximum(counts - 1, 0)  # transitions per user
    n_win = -(-trans // length)  # ceil
    user = np.repeat(np.arange(len(counts)), n_win)
    k = np.arange(int(n_win.sum())) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # window index from the end
    end = ptr[user] + counts[user] - 1 - k * length  # offset of the window's last target
    tgt_idx = end[:, None] - length + 1 + np.arange(length)[None]  # (W, N)
    inp_idx = tgt_idx - 1
    ok = inp_idx >= ptr[user][:, None]
    inputs = np.where(ok, items[np.clip(inp_idx, 0, None)] if len(items) else -1, -1)
    targets = np.where(ok, items[np.clip(tgt_idx, 0, None)] if len(items) else -1, -1)
    return inputs.astype(np.int64), targets.astype(np.int64)


def train_sasrec(
    dataset: Dataset,
    *,
    dim: int = 64,
    layers: int = 2,
    heads: int = 1,
    dropout: float = 0.2,
    history_len: int = DEFAULT_HISTORY_LEN,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    max_seconds: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> SASRecRecommender:
    """SASRec with a full softmax over all items at every position (RecExplainer's UniRec setting), Adam.

    lr 3e-3 (the release: 3.1e-4 at batch 2048 on 31k interactions): on the ordered synthetic data (300 users)
    lr 1e-3 left it under-trained after 30 epochs (valid HR@10 0.38 vs 0.82).

    Sequences are the users' train items in time order (:func:`train_histories`); see :func:`_sasrec_windows`.
    Deterministic per ``seed``: the initialisation and dropout draw from a forked global RNG, the batch order from a
    private generator.
    """
    say = echo or (lambda _m: None)
    ptr, items = train_histories(dataset)
    inputs, targets = _sasrec_windows(ptr, items, history_len)
    if len(inputs) == 0:
        raise DataError(f"dataset {dataset.name!r}: no user has two train interactions; SASRec needs sequences")
    inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SASRecRecommender(dataset.n_users, dataset.n_items, dim, ptr, items, history_len, layers=layers,
                                  heads=heads, dropout=dropout)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        start = time.perf_counter()
        model.train()
        for epoch in progress_bar(range(epochs), enabled=progress, desc="sasrec", total=epochs):
            order = torch.randperm(len(inputs), generator=gen)
            total, count = 0.0, 0
            for lo in range(0, len(order), batch_size):
                idx = order[lo: lo + batch_size]
                out = model.encode(inputs[idx])  # (b, N, d)
                tgt = targets[idx]
                keep = tgt >= 0
                logits = out[keep] @ model._item_table().T  # (positions, I)
                loss = F.cross_entropy(logits, tgt[keep])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():  # keep the padding row at zero (Adam's weight decay would move it)
                    model.item_emb.weight[model.n_items].zero_()
                total += loss.item() * int(keep.sum())
                count += int(keep.sum())
            model.train_log.append({"epoch": epoch + 1, "ce": total / max(count, 1)})
            say(f"[sasrec] epoch {epoch + 1}/{epochs} ce {total / max(count, 1):.4f}")
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
    model.train_config = dict(dim=dim, layers=layers, heads=heads, dropout=dropout, epochs=epochs,
                              batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed)
    return model.eval().requires_grad_(False)
