"""MMP-Refer's explainer: any LLaMA-family causal LM with the graph soft prompt spliced into its input embeddings.

Data flow of one batch (paper sec. 3.4):

    path_nodes (B, k, P), path_nbrs (B, k, P, S) --GraphPrompt (GAT/GCN + MoE)--> s (B, n, H)     soft prompt
    input_ids (B, T): the embeddings at the n ``<|graph_emb|>`` positions of each row are replaced by s[b]
    loss = NLL of the explanation tokens (labels are -100 elsewhere)                                eq. 12

Trained: the graph encoder and the adapter here; the LLM through LoRA, which the caller adds with peft (on
``model.llm`` before or after building this module: only ``get_input_embeddings()`` and ``forward(inputs_embeds=...)``
are used, which peft models pass through). ``freeze_llm=True`` freezes the base weights; LoRA weights added later
stay trainable. The node vectors are a buffer (saved in ``state_dict``, never updated). Nothing about a batch is
stored on the module, so generation calls can overlap and the module stays stateless between batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from torch import Tensor, nn

from explainrec.llm.loss import soft_prompt_forward
from explainrec.llm.soft_tokens import add_placeholder_tokens
from explainrec.methods.mmp_refer.batching import select_graphs
from explainrec.methods.mmp_refer.config import GraphPromptConfig
from explainrec.methods.mmp_refer.graph_prompt import GraphPrompt
from explainrec.methods.mmp_refer.prompting import GRAPH_TOKEN


@dataclass
class MMPReferOutput:
    """The training loss (None without labels), its parts for logging (detached) and the LLM's logits."""

    loss: Tensor | None
    parts: dict[str, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None


def splice_tokens(embeds: Tensor, input_ids: Tensor, token_id: int, vectors: Tensor) -> Tensor:
    """Replace the n occurrences of ``token_id`` in row b, in order, by ``vectors[b, 0..n-1]``.

    ``embeds (B, T, H)``, ``input_ids (B, T)``, ``vectors (B, n, H)``; every row must hold exactly n placeholders
    (else ValueError: e.g. a prompt cut by ``max_prompt_tokens``). Differentiable in ``vectors``.
    """
    mask = input_ids == token_id  # (B, T)
    counts = mask.sum(1)
    n = vectors.shape[1]
    if not bool((counts == n).all()):
        raise ValueError(f"every prompt must hold exactly {n} {GRAPH_TOKEN} token(s); found {counts.tolist()}")
    return embeds.masked_scatter(mask.unsqueeze(-1), vectors.to(embeds.dtype))


class MMPReferModel(nn.Module):
    """MMP-Refer around any LLaMA-family causal LM.

    Args:
        llm: the causal LM (or a peft model around it), with ``<|graph_emb|>`` added (:meth:`prepare_tokenizer`).
        node_vectors: ``(U + I, d)`` step-3 vectors, users then items
            (:meth:`~explainrec.methods.mmp_refer.sequence.UserItemVectors.node_table`).
        n_users: U.
        graph_token_id: the placeholder's id.
        k: paths per pair.
        cfg: :class:`GraphPromptConfig` (GNN, adapter, soft-token count).
        freeze_llm: set ``requires_grad=False`` on every LLM parameter present now.
    """

    def __init__(self, llm: nn.Module, node_vectors: Tensor, n_users: int, *, graph_token_id: int, k: int = 3,
                 cfg: GraphPromptConfig | None = None, freeze_llm: bool = True) -> None:
        super().__init__()
        self.llm = llm
        self.cfg = cfg or GraphPromptConfig()
        self.graph_token_id = int(graph_token_id)
        hidden = llm.get_input_embeddings().weight.shape[1]
        if freeze_llm:
            for p in llm.parameters():
                p.requires_grad_(False)
        self.graph_prompt = GraphPrompt(node_vectors, n_users, hidden, k, self.cfg)
        self.use_graph = True  # False: ablation w/o graph-level (the prompts then hold no graph token)
        self.targets_only = True  # the output head on the explanation tokens only (explainrec.llm.loss)

    @classmethod
    def from_vectors(cls, llm: nn.Module, vectors, **kwargs) -> "MMPReferModel":
        """Build from :class:`~explainrec.methods.mmp_refer.sequence.UserItemVectors`."""
        return cls(llm, vectors.node_table(), int(vectors.user.shape[0]), **kwargs)

    @staticmethod
    def prepare_tokenizer(llm: nn.Module, tokenizer) -> int:
        """Add ``<|graph_emb|>`` (once, resizing the embeddings) and return its id."""
        return add_placeholder_tokens(llm, tokenizer, (GRAPH_TOKEN,))[GRAPH_TOKEN]

    # ------------------------------------------------------------------ inputs

    def soft_tokens(self, path_nodes: Tensor, path_nbrs: Tensor) -> Tensor:
        """``(B, soft_tokens, H)`` graph soft prompt of a batch."""
        device = self.graph_prompt.node_table.device
        return self.graph_prompt(path_nodes.to(device), path_nbrs.to(device))

    def embed(self, input_ids: Tensor, graph: Mapping[str, Tensor]) -> Tensor:
        """``(B, T)`` ids + the batch's ``path_nodes``/``path_nbrs`` -> ``(B, T, H)`` input embeddings."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        if not self.use_graph:
            return embeds
        soft = self.soft_tokens(graph["path_nodes"], graph["path_nbrs"])
        return splice_tokens(embeds, input_ids, self.graph_token_id, soft)

    def embed_fn(self, graphs: Mapping[str, Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        """``embed_fn(input_ids, index)`` for :func:`explainrec.llm.generate.generate_texts`: ``graphs`` are the
        stacked graph arrays of all prompts (:func:`~explainrec.methods.mmp_refer.batching.stack_graphs`), in
        prompt order; ``index`` picks the batch's rows."""
        return lambda input_ids, index: self.embed(input_ids, select_graphs(graphs, index))

    # ------------------------------------------------------------------ training

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                path_nodes: Tensor | None = None, path_nbrs: Tensor | None = None, **_: object) -> MMPReferOutput:
        """NLL of the explanation tokens; extra batch keys (``user``, ``item`` ...) are ignored."""
        if self.use_graph and (path_nodes is None or path_nbrs is None):
            raise ValueError("MMPReferModel.forward needs the batch's path_nodes and path_nbrs "
                             "(batching.make_collate puts them there)")
        embeds = self.embed(input_ids, {"path_nodes": path_nodes, "path_nbrs": path_nbrs})
        loss, logits = soft_prompt_forward(self.llm, embeds, attention_mask, labels, targets_only=self.targets_only)
        return MMPReferOutput(loss=loss, parts={} if loss is None else {"nll": loss.detach()}, logits=logits)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with ``requires_grad`` (graph encoder + adapter, plus LoRA when added)."""
        return [p for p in self.parameters() if p.requires_grad]
