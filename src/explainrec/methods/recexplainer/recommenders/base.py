"""The recommenders RecExplainer explains: SASRec, MF with BPR, and the toolkit's LightGCN.

Each is trained on the train split only (``interactions.split == "train"``) and frozen afterwards; the LLM then
learns to imitate it. One interface, :class:`Recommender`:

    history          every user's train items in time order (timestamps when the data has them, else the
                     interaction table's row order), kept as a CSR in two buffers (``hist_ptr``, ``hist_items``)
    recent_history   (B,) users -> (B, N) their last N history items, left-padded with -1 (oldest first)
    user_vectors     (B, d) the vectors the LLM's user projector reads: MF/LightGCN their table row, SASRec the
                     last-position output of its encoder over the last N history items
    item_vectors     (I, d) the vectors the item projector reads (SASRec: its item embedding table)
    score            (B,) users -> (B, I) dot-product scores, history items masked with -inf (one matmul)
    history_influence  how much each of the last N history items moves score(u, i): SASRec leave-one-out score
                     drop; MF/LightGCN (whose user vector is not a function of the history) the dot product of
                     the history item's vector with the target's

Persisting: ``tensors()`` is a plain ``{name: tensor}`` dict (safetensors-ready: contiguous CPU tensors, nothing
shared, no pickle) and ``config`` a JSON-able dict; :func:`recommender_from_tensors` rebuilds the same model.
Training is seeded by private generators (plus a forked global RNG for dropout), so the caller's RNG is untouched
and the same seed gives the same weights.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainrec.data.schema import DataError, Dataset
from explainrec.train.loop_utils import progress as progress_bar

KINDS = ("sasrec", "mf", "lightgcn")
DEFAULT_HISTORY_LEN = 9  # RecExplainer's SASRec: max_seq_len 9 on Video Games


# ---------------------------------------------------------------------------------------------------- histories


def train_histories(dataset: Dataset, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(ptr (U+1,), items (nnz,))``: each user's ``split`` items in time order, each item once (first time seen).

    Time order = the ``timestamp`` column when present (ties and its absence: the interaction table's row order).
    """
    inter = dataset.interactions.of_split(split)
    n = len(inter)
    users, items = inter.user.astype(np.int64), inter.item.astype(np.int64)
    when = inter.timestamp if inter.timestamp is not None else np.zeros(n)
    order = np.lexsort((np.arange(n), when, users))  # by user, then time, then row
    _, first = np.unique(users[order] * dataset.n_items + items[order], return_index=True)
    order = order[np.sort(first)]  # first occurrence of each pair, still by user then time
    ptr = np.zeros(dataset.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users[order], minlength=dataset.n_users), out=ptr[1:])
    return ptr, items[order]


def _history_rows(ptr: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
    """``(row_in_batch, offset into hist_items)`` of every history entry of the batch users; both 1-D."""
    starts, ends = ptr[users], ptr[users + 1]
    counts = ends - starts  # (B,)
    rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
    first = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
    return rows, first + torch.arange(int(counts.sum()), device=users.device)


# ---------------------------------------------------------------------------------------------------- interface


class Recommender(nn.Module):
    """The frozen recommender an LLM is aligned to (module docstring). Subclasses set ``kind`` and the vectors."""

    kind = ""

    def __init__(self, n_users: int, n_items: int, dim: int, hist_ptr: Tensor | np.ndarray,
                 hist_items: Tensor | np.ndarray, history_len: int = DEFAULT_HISTORY_LEN) -> None:
        super().__init__()
        if n_users < 1 or n_items < 1 or dim < 1 or history_len < 1:
            raise ValueError(f"need n_users, n_items, dim, history_len >= 1; got {n_users=}, {n_items=}, {dim=}, "
                             f"{history_len=}")
        ptr = torch.as_tensor(np.asarray(hist_ptr), dtype=torch.long)
        if ptr.shape != (n_users + 1,):
            raise ValueError(f"hist_ptr must have shape ({n_users + 1},); got {tuple(ptr.shape)}")
        self.n_users, self.n_items, self.dim, self.history_len = int(n_users), int(n_items), int(dim), int(history_len)
        self.register_buffer("hist_ptr", ptr)  # (U+1,)
        self.register_buffer("hist_items", torch.as_tensor(np.asarray(hist_items), dtype=torch.long))  # (nnz,)
        self.train_log: list[dict] = []  # per-epoch losses of the run that made it (not part of the tensors)
        self.train_config: dict = {}  # the training settings of that run (for the record, JSON-able)

    # ------------------------------------------------------------------ persisted form

    @property
    def config(self) -> dict:
        """What :func:`recommender_from_tensors` needs besides the tensors (JSON-able)."""
        return {"kind": self.kind, "n_users": self.n_users, "n_items": self.n_items, "dim": self.dim,
                "history_len": self.history_len, **self._extra_config()}

    def _extra_config(self) -> dict:
        return {}

    def tensors(self) -> dict[str, Tensor]:
        """``state_dict`` as contiguous CPU tensors, ready for ``safetensors.torch.save_file``."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], config: dict) -> Recommender:
        n_users = int(config["n_users"])
        with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the caller's RNG
            model = cls._empty(config, torch.zeros(n_users + 1, dtype=torch.long),
                               torch.zeros(tensors["hist_items"].shape[0], dtype=torch.long))
        model.load_state_dict(tensors, strict=True)
        return model.eval().requires_grad_(False)

    @classmethod
    def _empty(cls, config: dict, hist_ptr: Tensor, hist_items: Tensor) -> Recommender:
        raise NotImplementedError

    # ------------------------------------------------------------------ history

    def history_counts(self) -> Tensor:
        """``(U,)`` number of train items of every user."""
        return self.hist_ptr[1:] - self.hist_ptr[:-1]

    def history_of(self, user: int) -> list[int]:
        """All train items of one user, oldest first."""
        return self.hist_items[self.hist_ptr[user]: self.hist_ptr[user + 1]].tolist()

    def recent_history(self, users: Tensor, length: int | None = None) -> Tensor:
        """``(B,)`` users -> ``(B, N)`` their last N train items, oldest first, left-padded with -1."""
        n = self.history_len if length is None else int(length)
        users = users.to(self.hist_ptr.device, torch.long)
        starts, ends = self.hist_ptr[users], self.hist_ptr[users + 1]
        idx = ends.unsqueeze(1) - n + torch.arange(n, device=users.device)  # (B, N)
        valid = idx >= starts.unsqueeze(1)
        if self.hist_items.numel() == 0:
            return torch.full_like(idx, -1)
        return torch.where(valid, self.hist_items[idx.clamp(min=0)], torch.full_like(idx, -1))

    def mask_history_(self, scores: Tensor, users: Tensor) -> Tensor:
        """Set every user's train items to -inf in ``scores`` ``(B, I)`` (in place) and return it."""
        rows, offsets = _history_rows(self.hist_ptr, users.to(self.hist_ptr.device, torch.long))
        scores[rows.to(scores.device), self.hist_items[offsets].to(scores.device)] = -torch.inf
        return scores

    # ------------------------------------------------------------------ vectors and scores

    def user_vectors(self, users: Tensor | None = None, *, batch_size: int = 4096) -> Tensor:
        """``(B, d)`` user vectors (all users when ``users`` is None)."""
        if users is None:
            users = torch.arange(self.n_users, device=self.hist_ptr.device)
        users = users.to(self.hist_ptr.device, torch.long)
        with torch.no_grad():
            return torch.cat([self._user_vectors(users[lo: lo + batch_size])
                              for lo in range(0, max(len(users), 1), batch_size)])[: len(users)]

    def _user_vectors(self, users: Tensor) -> Tensor:
        raise NotImplementedError

    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        """``(I, d)`` item vectors (or the rows of ``items``)."""
        table = self._item_table().detach()
        return table if items is None else table[items.to(table.device, torch.long)]

    def _item_table(self) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, users: Tensor, *, mask_history: bool = True, user_vectors: Tensor | None = None) -> Tensor:
        """``(B,)`` users -> ``(B, I)`` scores <user vector, item vector>, their train items at -inf when masked.

        ``user_vectors`` (B, d) may be passed to skip recomputing them (e.g. a precomputed table's rows).
        """
        users = users.to(self.hist_ptr.device, torch.long)
        u = self.user_vectors(users) if user_vectors is None else user_vectors
        scores = u @ self._item_table().detach().T  # (B, I)
        return self.mask_history_(scores, users) if mask_history else scores

    @torch.no_grad()
    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        """``(B,)`` raw scores of ``(users[b], items[b])`` (no masking)."""
        u = self.user_vectors(users)
        return (u * self.item_vectors(items)).sum(-1)

    @torch.no_grad()
    def history_influence(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """How much each of the user's last N history items moves ``score(u, i)``.

        Returns ``(history (B, N), influence (B, N))``: the items (left-padded with -1) and a float influence
        (NaN at padding); higher = pushes the score up more. Default: the dot product of the history item's vector
        with the target item's (MF, LightGCN); SASRec overrides with the leave-one-out score drop.
        """
        hist = self.recent_history(users)  # (B, N)
        target = self.item_vectors(items)  # (B, d)
        h = self.item_vectors(hist.clamp(min=0))  # (B, N, d)
        infl = (h * target.unsqueeze(1)).sum(-1)
        return hist, infl.masked_fill(hist < 0, float("nan"))


# ---------------------------------------------------------------------------------------------------- MF (BPR)


class MFRecommender(Recommender):
    """Matrix factorisation: score = <p_u, q_i>, trained with BPR against uniform non-positive items."""

    kind = "mf"

    def __init__(self, n_users: int, n_items: int, dim: int, hist_ptr, hist_items,
                 history_len: int = DEFAULT_HISTORY_LEN, *, init_std: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(n_users, n_items, dim, hist_ptr, hist_items, history_len)
        self.user_emb = nn.Parameter(torch.empty(n_users, dim).normal_(0.0, init_std, generator=generator))
        self.item_emb = nn.Parameter(torch.empty(n_items, dim).normal_(0.0, init_std, generator=generator))

    @classmethod
    def _empty(cls, config, hist_ptr, hist_items):
        return cls(config["n_users"], config["n_items"], config["dim"], hist_ptr, hist_items, config["history_len"])

    def _user_vectors(self, users: Tensor) -> Tensor:
        return self.user_emb[users]

    def _item_table(self) -> Tensor:
        return self.item_emb


def train_mf(
    dataset: Dataset,
    *,
    dim: int = 64,
    epochs: int = 30,
    batch_size: int = 4096,
    lr: float = 5e-3,
    reg: float = 1e-4,
    history_len: int = DEFAULT_HISTORY_LEN,
    seed: int = 0,
    progress: bool = True,
    max_seconds: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> MFRecommender:
    """MF with BPR on the train edges: each epoch visits every edge once with one uniform non-positive negative.

    Loss per batch = mean softplus(-(y_ui - y_uj)) + reg * (|p_u|^2 + |q_i|^2 + |q_j|^2) / 2 (mean over the batch).
    Adam; seeded by ``seed``; ``max_seconds`` stops after the epoch that spends the budget.
    """
    from explainrec.methods.xrec.lightgcn import NegativeSampler, split_pairs

    say = echo or (lambda _m: None)
    tr_u, tr_i = split_pairs(dataset, "train")
    if len(tr_u) == 0:
        raise DataError(f"dataset {dataset.name!r}: no train interactions to fit MF on")
    ptr, items = train_histories(dataset)
    gen = torch.Generator().manual_seed(seed)
    model = MFRecommender(dataset.n_users, dataset.n_items, dim, ptr, items, history_len, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = NegativeSampler(tr_u, tr_i, dataset.n_items)
    eu, ei = torch.from_numpy(tr_u), torch.from_numpy(tr_i)
    start = time.perf_counter()
    for epoch in progress_bar(range(epochs), enabled=progress, desc="mf", total=epochs):
        order = torch.randperm(len(eu), generator=gen)
        total = 0.0
        for lo in range(0, len(eu), batch_size):
            idx = order[lo: lo + batch_size]
            u, p = eu[idx], ei[idx]
            n = sampler.sample(u, gen)
            pu, qp, qn = model.user_emb[u], model.item_emb[p], model.item_emb[n]  # (b, d) each
            bpr = F.softplus(-(pu * (qp - qn)).sum(-1)).mean()
            l2 = (pu.pow(2).sum() + qp.pow(2).sum() + qn.pow(2).sum()) / (2 * len(idx))
            loss = bpr + reg * l2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += bpr.item() * len(idx)
        model.train_log.append({"epoch": epoch + 1, "bpr": total / len(eu)})
        say(f"[mf] epoch {epoch + 1}/{epochs} bpr {total / len(eu):.4f}")
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    model.train_config = dict(dim=dim, epochs=epochs, batch_size=batch_size, lr=lr, reg=reg, seed=seed)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------- LightGCN


class LightGCNRecommender(Recommender):
    """The toolkit's LightGCN (``explainrec.methods.xrec.lightgcn``): its final layer-mean embeddings as tables."""

    kind = "lightgcn"

    def __init__(self, user_emb: Tensor, item_emb: Tensor, hist_ptr, hist_items,
                 history_len: int = DEFAULT_HISTORY_LEN) -> None:
        super().__init__(user_emb.shape[0], item_emb.shape[0], user_emb.shape[1], hist_ptr, hist_items, history_len)
        self.register_buffer("user_emb", user_emb.detach().float().clone())  # (U, d)
        self.register_buffer("item_emb", item_emb.detach().float().clone())  # (I, d)

    @classmethod
    def from_result(cls, result, dataset: Dataset, history_len: int = DEFAULT_HISTORY_LEN) -> LightGCNRecommender:
        """Wrap a :class:`~explainrec.methods.xrec.lightgcn.LightGCNResult` trained on ``dataset``."""
        if result.user_emb.shape[0] != dataset.n_users or result.item_emb.shape[0] != dataset.n_items:
            raise ValueError("the LightGCN result does not match the dataset's users/items")
        ptr, items = train_histories(dataset)
        model = cls(result.user_emb, result.item_emb, ptr, items, history_len)
        model.train_log = list(result.history)
        model.train_config = dict(result.config)
        return model.eval()

    @classmethod
    def _empty(cls, config, hist_ptr, hist_items):
        return cls(torch.zeros(config["n_users"], config["dim"]), torch.zeros(config["n_items"], config["dim"]),
                   hist_ptr, hist_items, config["history_len"])

    def _user_vectors(self, users: Tensor) -> Tensor:
        return self.user_emb[users]

    def _item_table(self) -> Tensor:
        return self.item_emb


def train_lightgcn_recommender(dataset: Dataset, *, history_len: int = DEFAULT_HISTORY_LEN, seed: int = 0,
                               progress: bool = True, **lightgcn_kwargs) -> LightGCNRecommender:
    """:func:`~explainrec.methods.xrec.lightgcn.train_lightgcn` (its keyword arguments pass through), wrapped."""
    from explainrec.methods.xrec.lightgcn import train_lightgcn

    result = train_lightgcn(dataset, seed=seed, progress=progress, **lightgcn_kwargs)
    return LightGCNRecommender.from_result(result, dataset, history_len)


# ---------------------------------------------------------------------------------------------------- SASRec


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


# ---------------------------------------------------------------------------------------------------- entry points

_CLASSES = {"sasrec": SASRecRecommender, "mf": MFRecommender, "lightgcn": LightGCNRecommender}


def default_kind(dataset: Dataset) -> str:
    """``sasrec`` when the interactions carry an order (a timestamp column), else ``lightgcn`` (notes sec. 7)."""
    return "sasrec" if dataset.interactions.timestamp is not None else "lightgcn"


def fit_recommender(dataset: Dataset, kind: str = "auto", *, seed: int = 0, progress: bool = True,
                    **options) -> Recommender:
    """Train the recommender ``kind`` (``auto`` = :func:`default_kind`) on ``dataset``'s train split; frozen.

    ``options`` go to :func:`train_sasrec`, :func:`train_mf` or :func:`train_lightgcn_recommender`.
    """
    kind = default_kind(dataset) if kind == "auto" else kind
    trainers = {"sasrec": train_sasrec, "mf": train_mf, "lightgcn": train_lightgcn_recommender}
    if kind not in trainers:
        raise ValueError(f"unknown recommender {kind!r}; expected 'auto' or one of {KINDS}")
    return trainers[kind](dataset, seed=seed, progress=progress, **options)


def recommender_from_tensors(tensors: dict[str, Tensor], config: dict) -> Recommender:
    """Rebuild a recommender from :meth:`Recommender.tensors` and :attr:`Recommender.config` (frozen, eval mode)."""
    kind = config.get("kind")
    if kind not in _CLASSES:
        raise ValueError(f"unknown recommender kind {kind!r} in config; expected one of {KINDS}")
    return _CLASSES[kind].from_tensors(tensors, config)


def evaluate_recommender(rec: Recommender, dataset: Dataset, split: str = "test", *, ks=(10, 20),
                         user_batch: int = 1024) -> dict[str, dict[str, float]]:
    """Full-ranking HR/Recall/NDCG@k of ``rec`` and of the popularity baseline on ``split`` (train items masked)."""
    from explainrec.methods.xrec.lightgcn import split_pairs
    from explainrec.metrics.ranking import popularity_metrics, ranking_metrics

    train, test = split_pairs(dataset, "train"), split_pairs(dataset, split)
    fn = lambda users: rec.score(users, mask_history=False)
    return {
        rec.kind: ranking_metrics(fn, dataset.n_users, dataset.n_items, train, test, ks=ks, user_batch=user_batch),
        "popularity": popularity_metrics(dataset.n_users, dataset.n_items, train, test, ks=ks, user_batch=user_batch),
    }
