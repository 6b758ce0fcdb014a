"""XRec's explainer: a frozen LLM + two MoE adaptors fed by fixed LightGCN embeddings, injected at every layer.

Data flow of one batch (paper sec. 3.1-3.3):

    user, item (B,) --LightGCN table (buffer, not trained)--> (B, d) each                 collaborative tokenizer
    --user_adaptor / item_adaptor (MoEAdaptor)--> u, i (B, H)                               collaborative adaptor
    input_ids (B, T): the <|user_emb|>/<|item_emb|> embeddings are replaced by u, i, and inside every decoder
    layer u, i are added to the attention input at those positions (q/k/v all receive them)   injection
    loss = NLL of the explanation tokens (labels are -100 elsewhere)                          instruction tuning

Only the adaptors train by default (XRec freezes LLaMA-2). The LightGCN tables are buffers: saved with the model,
never updated. ``<EXPLAIN_POS>`` of XRec's release is not used: it only marked where the loss starts, and the
labels built by :func:`explainrec.data.collate.encode_pair` already restrict the loss to the explanation.

Cold start: ids that are negative, out of range, or had no train interaction (``user_known``/``item_known``)
read an extra fallback row -- the mean of the known embeddings (``cold_start="mean"``, a "typical" user/item) or
zeros (``"zero"``) -- so any pair gets vectors and never an index error; the profiles in the prompt still carry
what is known about such a user or item.

Saving: ``state_dict()`` holds the LLM, the adaptors and the LightGCN tables; the hooks hold no state. To load,
build the model with tables of the same shapes (e.g. zeros) and call ``load_state_dict``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from explainrec.llm.loss import soft_prompt_forward
from explainrec.llm.soft_tokens import ITEM_TOKEN, USER_TOKEN, add_placeholder_tokens, splice
from explainrec.modules.moe_adaptor import MoEAdaptor
from explainrec.methods.xrec.injection import XRecInjection

COLD_START = ("mean", "zero")


@dataclass
class XRecOutput:
    """The training loss (None without labels), its parts for logging (detached) and the LLM's logits."""

    loss: Tensor | None
    parts: dict[str, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None


def _table(emb: Tensor, known: Tensor | None, cold_start: str) -> tuple[Tensor, Tensor]:
    """``(n + 1, d)`` table whose last row is the cold-start fallback, and the ``(n,)`` known mask."""
    emb = emb.detach().float()
    known = torch.ones(emb.shape[0], dtype=torch.bool) if known is None else known.detach().to(torch.bool).cpu()
    if known.shape != (emb.shape[0],):
        raise ValueError(f"known mask must have shape ({emb.shape[0]},); got {tuple(known.shape)}")
    if cold_start == "mean" and bool(known.any()):
        fallback = emb[known.to(emb.device)].mean(dim=0, keepdim=True)
    else:
        fallback = emb.new_zeros(1, emb.shape[1])
    return torch.cat([emb, fallback]), known


def _checkpointing(llm: nn.Module) -> bool:
    """Whether HF gradient (activation) checkpointing is on in any submodule (also under peft wrappers)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in llm.modules())


class XRecModel(nn.Module):
    """XRec around any LLaMA-family causal LM.

    Args:
        llm: the causal LM, with the placeholder tokens already added (:meth:`prepare_tokenizer`).
        user_emb, item_emb: ``(n_users, d)``, ``(n_items, d)`` LightGCN embeddings (rows = contiguous ids).
        user_token_id, item_token_id: placeholder ids in the tokenizer.
        user_known, item_known: optional ``(n,)`` bool masks of ids with train interactions (others = cold start).
        cold_start: fallback vector for unknown ids: ``"mean"`` of the known rows or ``"zero"``.
        n_experts, dropout, noisy_gating: :class:`MoEAdaptor` settings (XRec: 8, 0.2, True).
        inject_every_layer: False keeps only the input splice (ablation "w/o injection").
        freeze_llm: True (XRec) sets ``requires_grad=False`` on every LLM parameter.
    """

    def __init__(
        self,
        llm: nn.Module,
        user_emb: Tensor,
        item_emb: Tensor,
        *,
        user_token_id: int,
        item_token_id: int,
        user_known: Tensor | None = None,
        item_known: Tensor | None = None,
        cold_start: str = "mean",
        n_experts: int = 8,
        dropout: float = 0.2,
        noisy_gating: bool = True,
        inject_every_layer: bool = True,
        freeze_llm: bool = True,
    ) -> None:
        super().__init__()
        if cold_start not in COLD_START:
            raise ValueError(f"cold_start must be one of {COLD_START}; got {cold_start!r}")
        if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
            raise ValueError(f"user_emb and item_emb must be (n, d) with the same d; got {tuple(user_emb.shape)}, "
                             f"{tuple(item_emb.shape)}")
        self.llm = llm
        self.user_token_id, self.item_token_id = int(user_token_id), int(item_token_id)
        self.n_users, self.n_items = int(user_emb.shape[0]), int(item_emb.shape[0])
        self.cold_start, self.inject_every_layer = cold_start, inject_every_layer
        u_table, u_known = _table(user_emb, user_known, cold_start)
        i_table, i_known = _table(item_emb, item_known, cold_start)
        self.register_buffer("user_table", u_table)  # (n_users + 1, d); last row = cold start
        self.register_buffer("item_table", i_table)  # (n_items + 1, d)
        self.register_buffer("user_known", u_known)  # (n_users,) bool
        self.register_buffer("item_known", i_known)  # (n_items,) bool
        hidden = llm.get_input_embeddings().weight.shape[1]
        width = user_emb.shape[1]
        self.user_adaptor = MoEAdaptor(width, hidden, n_experts, dropout, noisy_gating)
        self.item_adaptor = MoEAdaptor(width, hidden, n_experts, dropout, noisy_gating)
        if freeze_llm:
            for p in llm.parameters():
                p.requires_grad_(False)
        self.injection = XRecInjection(llm, every_layer=inject_every_layer)
        self.targets_only = True  # the output head on the explanation tokens only (explainrec.llm.loss)

    @classmethod
    def from_lightgcn(cls, llm: nn.Module, result, **kwargs) -> "XRecModel":
        """Build from a :class:`~explainrec.modules.lightgcn.LightGCNResult` (embeddings + known masks)."""
        return cls(llm, result.user_emb, result.item_emb, user_known=result.user_known, item_known=result.item_known,
                   **kwargs)

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def _map(ids: Tensor, known: Tensor) -> Tensor:
        """Row of each id: itself when known, else the fallback row ``n``. ``(B,) -> (B,)``."""
        n = known.shape[0]
        ids = ids.to(device=known.device, dtype=torch.long)
        in_range = (ids >= 0) & (ids < n)
        safe = ids.clamp(0, max(n - 1, 0))
        ok = in_range & known[safe] if n else torch.zeros_like(in_range)
        return torch.where(ok, safe, torch.full_like(safe, n))

    def map_ids(self, user: Tensor, item: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows of ``(B,)`` user and item ids; unseen / invalid ids -> the cold-start row."""
        return self._map(user, self.user_known), self._map(item, self.item_known)

    def soft_vectors(self, user: Tensor, item: Tensor) -> tuple[Tensor, Tensor]:
        """Adapted user and item vectors, ``(B, H)`` each."""
        u, i = self.map_ids(user, item)
        return self.user_adaptor(self.user_table[u]), self.item_adaptor(self.item_table[i])

    def _splice(self, input_ids: Tensor, u: Tensor, i: Tensor) -> Tensor:
        emb = self.llm.get_input_embeddings()(input_ids)
        return splice(splice(emb, input_ids, self.user_token_id, u), input_ids, self.item_token_id, i)

    def embed(self, input_ids: Tensor, user: Tensor, item: Tensor) -> Tensor:
        """``(B, T)`` ids -> ``(B, T, H)`` input embeddings with the adapted vectors at the placeholders.

        Only the input half of the injection: a forward on these embeddings outside :meth:`injected` skips the
        per-layer additions (use :meth:`forward` / :meth:`generate`, which do both).
        """
        u, i = self.soft_vectors(user, item)
        return self._splice(input_ids, u, i)

    def injected(self, input_ids: Tensor, u: Tensor, i: Tensor):
        """Context manager: LLM calls inside it are injected with ``u``, ``i`` (``(B, H)``) at ``input_ids``'s
        placeholders (input splice + every layer). For callers that drive the LLM themselves."""
        return self.injection.inject(input_ids, {self.user_token_id: u, self.item_token_id: i})

    # ------------------------------------------------------------------ training / inference

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        user: Tensor | None = None,
        item: Tensor | None = None,
        **_: object,
    ) -> XRecOutput:
        """NLL of the explanation tokens (``labels`` -100 elsewhere); extra batch keys (``target`` ...) are ignored."""
        if user is None or item is None:
            raise ValueError("XRecModel.forward needs the batch's user and item ids")
        if _checkpointing(self.llm):
            raise ValueError("XRec's per-layer injection does not support gradient checkpointing: the recomputation "
                             "during backward runs outside the injection scope")
        u, i = self.soft_vectors(user, item)
        embeds = self._splice(input_ids, u, i)
        with self.injected(input_ids, u, i):
            loss, logits = soft_prompt_forward(self.llm, embeds, attention_mask, labels, targets_only=self.targets_only)
        return XRecOutput(loss=loss, parts={} if loss is None else {"nll": loss.detach()}, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, user: Tensor, item: Tensor,
                 **generate_kwargs) -> Tensor:
        """``llm.generate`` with the injection open; returns prompt + continuation ids like HF does.

        Prompts must be left-padded. Call in eval mode (adaptor dropout and gate noise are training-only).
        """
        with self.generation_context(input_ids, user, item):
            return self.llm.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)

    def generation_context(self, input_ids: Tensor, user: Tensor, item: Tensor):
        """The injection scope for one generation batch, for loops that call ``self.llm.generate`` themselves.

        The hooks splice the input embeddings too, so ``llm.generate(input_ids=..., attention_mask=...)`` inside
        the block needs no ``inputs_embeds``; ``input_ids`` must be the (left-padded) ids passed to ``generate``.
        """
        with torch.no_grad():
            u, i = self.soft_vectors(user, item)
        return self.injected(input_ids, u, i)

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def prepare_tokenizer(llm: nn.Module, tokenizer) -> tuple[int, int]:
        """Add the placeholder tokens (once, resizing the embeddings) and return ``(user_token_id, item_token_id)``."""
        ids = add_placeholder_tokens(llm, tokenizer, (USER_TOKEN, ITEM_TOKEN))
        return ids[USER_TOKEN], ids[ITEM_TOKEN]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with ``requires_grad`` (the two adaptors when the LLM is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]
