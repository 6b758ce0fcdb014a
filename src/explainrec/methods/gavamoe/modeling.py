"""GaVaMoE stage 2: the LLM with multi-gated MoE feed-forward blocks, soft user/item tokens and the VAE-GMM router.

Data flow of one batch (paper sec. 3.3-3.4, eq. 9-13):

    user, item (B,) --VAE-GMM--> cluster c (B,)            eq. 8-9, deterministic (mean of q(z|x))
    user, item --stage-1 embeddings--> user_proj/item_proj --> soft token vectors (B, H)
    input_ids (B, T) --embed--> (B, T, H); the <|user_emb|>/<|item_emb|> positions get the soft vectors
    LLM forward inside routing(c): every MoE layer uses gate c of each sample, top-k experts   eq. 10-11
    loss = alpha * ELBO(user, item, rating) + (1 - alpha) * NLL(explanation) + router aux      eq. 13

Variants (the paper's ablation, Figure 3): ``full``; ``single-gate`` (one shared router, "w/o multi-gating");
``coarse`` (two full-size experts, top-1, "w/o fine-grained experts"); ``base`` (the dense LLM, no surgery).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from explainrec.llm.loss import causal_lm_nll
from explainrec.llm.soft_tokens import ITEM_TOKEN, USER_TOKEN, add_placeholder_tokens, splice
from explainrec.methods.gavamoe.routing import routing
from explainrec.methods.gavamoe.vae_gmm import VaeGmm


@dataclass
class GaVaMoEOutput:
    """Total loss plus its unweighted parts (for logging)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    clusters: torch.Tensor | None = None


class GaVaMoE(nn.Module):
    """Wraps a (surgered) causal LM and a stage-1 :class:`VaeGmm`.

    Args:
        llm: a LLaMA-family ``*ForCausalLM`` whose MLPs are already MoE blocks (or dense for ``base``).
        vae: the stage-1 model; its embeddings feed the soft tokens and its clusters pick the gates.
        user_token_id, item_token_id: ids of the placeholder tokens in the tokenizer.
        alpha: weight of the ELBO in eq. 13; the paper leaves it open, 0.1 keeps the NLL in charge while the
            VAE-GMM keeps fitting the ratings.
        beta: KL weight inside the ELBO (paper: 0.1).
        multi_gate: False routes every sample to gate 0 (the single-gate ablation and ``base``).
        load_balance_coef, router_z_coef: weights of the MoE auxiliary losses (0 disables them).
    """

    def __init__(
        self,
        llm: nn.Module,
        vae: VaeGmm,
        *,
        user_token_id: int,
        item_token_id: int,
        alpha: float = 0.1,
        beta: float = 0.1,
        multi_gate: bool = True,
        load_balance_coef: float = 0.01,
        router_z_coef: float = 0.001,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1); got {alpha}")
        self.llm, self.vae = llm, vae
        self.user_token_id, self.item_token_id = int(user_token_id), int(item_token_id)
        self.alpha, self.beta, self.multi_gate = float(alpha), float(beta), multi_gate
        self.load_balance_coef, self.router_z_coef = float(load_balance_coef), float(router_z_coef)
        self.targets_only = True  # the output head on the explanation tokens only (explainrec.llm.loss)
        hidden = llm.get_input_embeddings().weight.shape[1]
        width = vae.user_emb.embedding_dim
        self.user_proj = nn.Linear(width, hidden)
        self.item_proj = nn.Linear(width, hidden)
        # Soft tokens start at the scale of ordinary token embeddings, so the first steps do not see outliers.
        scale = llm.get_input_embeddings().weight.detach().float().std().item() / max(vae.user_emb.weight.detach().float().std().item(), 1e-6)
        for proj in (self.user_proj, self.item_proj):
            nn.init.normal_(proj.weight, std=scale / width**0.5)
            nn.init.zeros_(proj.bias)

    # ------------------------------------------------------------------ inputs

    def clusters(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Gate of each pair ``(B,)``: the VAE-GMM cluster (eq. 9), or 0 without multi-gating."""
        if not self.multi_gate:
            return torch.zeros_like(user, dtype=torch.long)
        return self.vae.assign(user, item)

    def soft_vectors(self, user: torch.Tensor, item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-1 user/item embeddings projected to the LLM width, ``(B, H)`` each (unseen ids use the unknown row)."""
        u, i = self.vae.map_ids(user, item)
        return self.user_proj(self.vae.user_emb(u)), self.item_proj(self.vae.item_emb(i))

    def embed(self, input_ids: torch.Tensor, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` ids -> ``(B, T, H)`` embeddings with the soft tokens spliced in."""
        emb = self.llm.get_input_embeddings()(input_ids)
        u, i = self.soft_vectors(user, item)
        emb = splice(emb, input_ids, self.user_token_id, u)
        return splice(emb, input_ids, self.item_token_id, i)

    # ------------------------------------------------------------------ training

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        user: torch.Tensor,
        item: torch.Tensor,
        target: torch.Tensor | None = None,
        context_items: torch.Tensor | None = None,
        negative_items: torch.Tensor | None = None,
    ) -> GaVaMoEOutput:
        """Eq. 13. ``target`` is the rating (ignored for implicit feedback); ``context_items`` (B,) and
        ``negative_items`` (B, N), drawn by the caller with :class:`~explainrec.methods.gavamoe.vae_gmm.InteractionSampler`,
        add the interaction-vector term of eq. 7 that stage 1 also trains on."""
        clusters = self.clusters(user, item)
        with routing(clusters, token_mask=attention_mask, collect_aux=True) as ctx:
            nll = causal_lm_nll(self.llm, inputs_embeds=self.embed(input_ids, user, item), attention_mask=attention_mask,
                                labels=labels, targets_only=self.targets_only)
            aux = ctx.aux_parts()
        parts = {"nll": nll}
        loss = (1.0 - self.alpha) * nll
        if self.alpha > 0:
            rating = None if self.vae.likelihood == "bernoulli" or target is None or target.isnan().any() else target.float()
            elbo = self.vae.elbo(user, item, rating, self.beta, context_items=context_items, negative_items=negative_items)
            parts.update(elbo=elbo.loss, recon=elbo.recon, kl=elbo.kl)
            loss = loss + self.alpha * elbo.loss
        for name, coef in (("load_balance", self.load_balance_coef), ("router_z", self.router_z_coef)):
            if name in aux:
                parts[name] = aux[name]
                if coef > 0:
                    loss = loss + coef * aux[name]
        return GaVaMoEOutput(loss=loss, parts={k: v.detach() for k, v in parts.items()}, clusters=clusters)

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def prepare_tokenizer(llm: nn.Module, tokenizer) -> tuple[int, int]:
        """Add the placeholder tokens (once) and return their ids."""
        ids = add_placeholder_tokens(llm, tokenizer, (USER_TOKEN, ITEM_TOKEN))
        return ids[USER_TOKEN], ids[ITEM_TOKEN]
