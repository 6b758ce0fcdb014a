"""The interface every recommender RecExplainer explains implements (:class:`Recommender`), and the users' train
histories it keeps (see the package docstring for what each member returns)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from explainrec.data.schema import Dataset

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
