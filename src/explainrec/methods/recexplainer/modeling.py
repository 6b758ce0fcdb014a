"""RecExplainer's model: any LLaMA-family causal LM plus two projectors that read the frozen recommender's vectors.

Data flow of one batch (paper sec. 2.3; release src/models/LLM4Exp.py):

    input_ids (B, T) with <|user_emb|> / <|item_emb|> placeholder tokens (intention / hybrid prompts)
    soft_ids  (B, S) one id per placeholder, in order of appearance in the row, -1 padded: a user id at a
              <|user_emb|>, an item id at an <|item_emb|> (Task 2 prompts hold 5 item placeholders + 1 user)
    user_table (U, d), item_table (I, d): the recommender's vectors (buffers, frozen; SASRec's user vector is its
              output over the user's last N train items)
    e_tok + user_proj(user_table[id]) at every <|user_emb|>, e_tok + item_proj(item_table[id]) at every
              <|item_emb|> (ADDED to the placeholder's own token embedding, at the input layer only)
    loss = NLL of the answer tokens (labels -100 on the prompt and padding)

Projectors: ``Linear(d, H/2) -> GELU -> Linear(H/2, H)``, one for users, one for items (the paper's
GELU(eW1 + b)W2). Both tables are divided by their own RMS (a constant, stored) so the projectors see unit-scale
inputs whatever the recommender (MF vectors are ~0.1, SASRec's LayerNorm outputs ~1). The second Linear's bias is a
learned offset at every placeholder of its kind, i.e. it plays the part of training the new token rows (which the
release does by un-freezing ``embed_tokens``); the token embedding itself can stay frozen under LoRA.

Behaviour prompts carry no placeholders (``soft_ids`` empty): the projectors are then simply unused. Ids travel in
the batch, never in module state, so a batch of mixed tasks and variants needs nothing else. The same
:meth:`RecExplainerModel.embed` serves training, scoring and generation
(:meth:`RecExplainerModel.embed_fn` plugs it into :func:`explainrec.llm.generate.generate_texts`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from explainrec.data.collate import IGNORE_INDEX, Encoded, encode_pair
from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN, render_prompt
from explainrec.llm.loss import soft_prompt_forward
from explainrec.llm.soft_tokens import add_placeholder_tokens

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
TRAIN_MODES = ("lora", "full", "projectors")


class Projector(nn.Module):
    """``(..., d) -> (..., H)``: Linear(d, H/2) -> GELU -> Linear(H/2, H)."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden // 2), nn.GELU(), nn.Linear(hidden // 2, hidden))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class RecExplainerOutput:
    """The training loss (None without labels), its parts for logging (detached) and the LLM's logits."""

    loss: Tensor | None
    parts: dict[str, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None


def _rms(table: Tensor) -> Tensor:
    value = table.detach().float().pow(2).mean().sqrt()
    return torch.where(value > 0, value, torch.ones_like(value))


class RecExplainerModel(nn.Module):
    """RecExplainer around any LLaMA-family causal LM (module docstring).

    Args:
        llm: the causal LM with the placeholder tokens already added (:meth:`prepare_tokenizer`); may be a peft
            model (:func:`apply_lora`).
        user_table, item_table: ``(n_users, d_u)``, ``(n_items, d_i)`` the recommender's vectors.
        user_token_id, item_token_id: the placeholders' ids in the tokenizer.
    """

    def __init__(self, llm: nn.Module, user_table: Tensor, item_table: Tensor, *, user_token_id: int,
                 item_token_id: int) -> None:
        super().__init__()
        if user_table.dim() != 2 or item_table.dim() != 2:
            raise ValueError(f"tables must be 2-D; got {tuple(user_table.shape)}, {tuple(item_table.shape)}")
        self.llm = llm
        self.user_token_id, self.item_token_id = int(user_token_id), int(item_token_id)
        hidden = llm.get_input_embeddings().weight.shape[1]
        self.register_buffer("user_table", user_table.detach().float().clone())  # (U, d_u)
        self.register_buffer("item_table", item_table.detach().float().clone())  # (I, d_i)
        self.register_buffer("user_scale", _rms(user_table))  # () 1 / scale on the projector's input
        self.register_buffer("item_scale", _rms(item_table))
        self.user_proj = Projector(user_table.shape[1], hidden)
        self.item_proj = Projector(item_table.shape[1], hidden)
        self.targets_only = True  # the output head on the answer tokens only (explainrec.llm.loss)

    @classmethod
    def from_recommender(cls, llm: nn.Module, rec, *, user_token_id: int, item_token_id: int) -> RecExplainerModel:
        """Tables from a :class:`~explainrec.methods.recexplainer.recommenders.Recommender` (all users, all items)."""
        return cls(llm, rec.user_vectors().float().cpu(), rec.item_vectors().float().cpu(),
                   user_token_id=user_token_id, item_token_id=item_token_id)

    @staticmethod
    def prepare_tokenizer(llm: nn.Module, tokenizer) -> tuple[int, int]:
        """Add ``<|user_emb|>``/``<|item_emb|>`` (once, resizing the embeddings); return ``(user_id, item_id)``."""
        ids = add_placeholder_tokens(llm, tokenizer, (USER_TOKEN, ITEM_TOKEN))
        return ids[USER_TOKEN], ids[ITEM_TOKEN]

    # ------------------------------------------------------------------ inputs

    def soft_vectors(self, input_ids: Tensor, soft_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projected vectors of every placeholder: ``(rows (P,), positions (P,), vectors (P, H))``.

        ``soft_ids (B, S)`` holds each row's ids in placeholder order (-1 padded); a row whose number of
        placeholders differs from its number of ids raises ValueError (ids would land on the wrong items).
        """
        is_user = input_ids == self.user_token_id  # (B, T)
        is_ph = is_user | (input_ids == self.item_token_id)
        n_ph = is_ph.sum(1)
        n_ids = (soft_ids >= 0).sum(1) if soft_ids.numel() else torch.zeros_like(n_ph)
        if not torch.equal(n_ph, n_ids.to(n_ph.device)):
            bad = int((n_ph != n_ids.to(n_ph.device)).nonzero()[0, 0])
            raise ValueError(f"row {bad}: {int(n_ph[bad])} placeholder token(s) but {int(n_ids[bad])} soft id(s)")
        rows, pos = is_ph.nonzero(as_tuple=True)  # (P,), (P,) in row-major order = placeholder order per row
        hidden = self.user_proj.net[-1].out_features
        if rows.numel() == 0:
            return rows, pos, self.item_table.new_zeros(0, hidden)
        slot = (is_ph.long().cumsum(1) - 1)[rows, pos]  # index of each placeholder in its row's soft ids
        ids = soft_ids.to(input_ids.device)[rows, slot]  # (P,)
        user_at = is_user[rows, pos]
        vectors = self.item_table.new_zeros(len(rows), hidden)
        if bool(user_at.any()):
            vectors[user_at] = self.user_proj(self.user_table[ids[user_at]] / self.user_scale)
        if bool((~user_at).any()):
            vectors[~user_at] = self.item_proj(self.item_table[ids[~user_at]] / self.item_scale)
        return rows, pos, vectors

    def embed(self, input_ids: Tensor, soft_ids: Tensor | None = None) -> Tensor:
        """``(B, T)`` ids + ``(B, S)`` soft ids -> ``(B, T, H)`` input embeddings, projections added at placeholders."""
        emb = self.llm.get_input_embeddings()(input_ids)
        if soft_ids is None:
            soft_ids = torch.full((input_ids.shape[0], 0), -1, dtype=torch.long, device=input_ids.device)
        rows, pos, vectors = self.soft_vectors(input_ids, soft_ids)
        if rows.numel() == 0:
            return emb
        return emb.index_put((rows, pos), vectors.to(emb.dtype), accumulate=True)

    def embed_fn(self, soft_ids: Sequence[Sequence[int]]):
        """An ``embed_fn(input_ids, index)`` for :func:`~explainrec.llm.generate.generate_texts`: ``soft_ids[n]``
        are the ids of prompt n (the same prompts list, in the same order)."""

        def fn(input_ids: Tensor, index: Tensor) -> Tensor:
            return self.embed(input_ids, pad_soft_ids([soft_ids[int(i)] for i in index]).to(input_ids.device))

        return fn

    # ------------------------------------------------------------------ training / scoring

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                soft_ids: Tensor | None = None, **_: object) -> RecExplainerOutput:
        """NLL of the answer tokens (``labels`` -100 elsewhere); extra batch keys (``task`` ...) are ignored."""
        embeds = self.embed(input_ids, soft_ids)
        loss, logits = soft_prompt_forward(self.llm, embeds, attention_mask, labels, targets_only=self.targets_only)
        return RecExplainerOutput(loss=loss, parts={} if loss is None else {"nll": loss.detach()}, logits=logits)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------------- training set-up


def apply_lora(llm: nn.Module, *, r: int = 16, alpha: int = 32, dropout: float = 0.05,
               targets: Sequence[str] = LORA_TARGETS) -> nn.Module:
    """Wrap ``llm`` with LoRA adapters on ``targets`` (the v2 release: r16 / alpha 32 / dropout 0.05 on q,k,v,o)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(llm, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets)))


def configure_trainable(model: RecExplainerModel, mode: str = "lora") -> int:
    """Set ``requires_grad``: ``lora`` = LoRA adapters + projectors (the LLM must be wrapped by :func:`apply_lora`),
    ``full`` = the whole LLM + projectors (affordable at 135M), ``projectors`` = projectors only. Returns the
    number of trainable parameters. The tables are buffers and never train."""
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {mode!r}; expected one of {TRAIN_MODES}")
    for name, p in model.llm.named_parameters():
        p.requires_grad_(mode == "full" or (mode == "lora" and "lora_" in name))
    if mode == "lora" and not any(p.requires_grad for p in model.llm.parameters()):
        raise ValueError("mode 'lora' but the LLM has no LoRA parameters; wrap it with apply_lora first")
    for p in [*model.user_proj.parameters(), *model.item_proj.parameters()]:
        p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------- batches


def pad_soft_ids(rows: Sequence[Sequence[int]]) -> Tensor:
    """``(B, S)`` long, -1 padded on the right (S = the longest row, at least 0)."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            out[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


def placeholder_ids(tokenizer) -> tuple[int, ...]:
    """Ids of the placeholder tokens the tokenizer knows (none before :meth:`RecExplainerModel.prepare_tokenizer`)."""
    vocab = tokenizer.get_vocab()
    return tuple(vocab[t] for t in (USER_TOKEN, ITEM_TOKEN) if t in vocab)


def encode_row(tokenizer, row: dict, *, max_prompt_tokens: int = 512, max_target_tokens: int = 160,
               ph_ids: Sequence[int] | None = None) -> dict:
    """One alignment row -> ``{"enc": Encoded, "soft_ids": [...], "task": str}`` (loss on the target only).

    The prompt (chat messages) goes through the chat template; a prompt longer than ``max_prompt_tokens`` loses
    its oldest tokens (:func:`~explainrec.data.collate.encode_pair`), and with them the ids of any placeholder
    it loses, so ids and placeholders stay paired.
    """
    ph = placeholder_ids(tokenizer) if ph_ids is None else tuple(ph_ids)
    prompt = row["prompt"] if isinstance(row["prompt"], str) else render_prompt(tokenizer, row["prompt"])
    enc = encode_pair(tokenizer, prompt, row["target"], max_prompt_tokens=max_prompt_tokens,
                      max_target_tokens=max_target_tokens)
    n_ph = sum(1 for t, lab in zip(enc.input_ids, enc.labels) if lab == IGNORE_INDEX and t in ph)
    soft = list(row.get("soft_ids") or [])
    if n_ph > len(soft):
        raise ValueError(f"row {row.get('task')!r}: the prompt holds {n_ph} placeholders but {len(soft)} soft ids")
    return {"enc": enc, "soft_ids": soft[len(soft) - n_ph:], "task": row.get("task", "")}


def encode_rows(tokenizer, rows: Sequence[dict], **kwargs) -> list[dict]:
    """:func:`encode_row` for many rows (the placeholder ids looked up once)."""
    ph = placeholder_ids(tokenizer)
    return [encode_row(tokenizer, r, ph_ids=ph, **kwargs) for r in rows]


def make_collate(pad_id: int, tasks: Sequence[str] | None = None):
    """Collate for rows of :func:`encode_rows`: right-padded ``input_ids``/``attention_mask``/``labels`` ``(B, T)``,
    ``soft_ids (B, S)`` (-1 padded) and ``task (B,)`` (index into ``tasks``, default the alignment task names)."""
    from explainrec.methods.recexplainer.alignment_data import TASK_NUMBER

    names = list(tasks) if tasks is not None else sorted(TASK_NUMBER)

    def fn(rows: list[dict]) -> dict[str, Tensor]:
        batch = collate_encoded([r["enc"] for r in rows], pad_id)
        batch["soft_ids"] = pad_soft_ids([r["soft_ids"] for r in rows])
        batch["task"] = torch.tensor([names.index(r["task"]) if r["task"] in names else -1 for r in rows],
                                     dtype=torch.long)
        return batch

    return fn


def collate_encoded(encoded: Sequence[Encoded], pad_id: int) -> dict[str, Tensor]:
    """Right-pad encoded pairs (:func:`explainrec.data.collate.collate`)."""
    from explainrec.data.collate import collate

    return collate(list(encoded), pad_id)
