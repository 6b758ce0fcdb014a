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

from explainrec.llm.soft_tokens import ITEM_TOKEN, USER_TOKEN, add_placeholder_tokens, splice
from explainrec.methods.gavamoe.routing import routing
from explainrec.methods.gavamoe.vae_gmm import VaeGmm

VARIANTS = ("full", "single-gate", "coarse", "base")


@dataclass
class MoEConfig:
    """Surgery settings. Default for SmolLM2-135M: 8 experts of 1536/4 = 384 neurons, 4 active per token.

    Why top-4 and not the paper's top-2: with 8 upcycled experts of a quarter FFN each, 4 active experts run the same
    compute as the dense FFN and keep far more of the pretrained model at step one (explanation NLL at init on 32
    amazon test pairs: dense 3.74, top-4 3.75 with the mirrored router init of ``MultiGatedMoE.from_dense``
    (7.33 without it), top-2 13.97, random experts 25.7; `benchmarks/bench_moe_layer.py
    --upcycle-nll`). The paper's 8B setting is ``n_experts=12, top_k=2`` with 1280-neuron experts.

    ``paired_router`` (on by default) ties the router rows of each doubly covered expert pair (``j`` and
    ``j + E/2``) for good, so that every token keeps one copy of each neuron group however far training moves the
    gates. It applies to upcycled layouts where every neuron sits in exactly two experts and ``top_k = E/2`` (the
    default 8 x 384 top-4 and the coarse 2 x 1536 top-1); other layouts keep free routers. Why on: with free
    (mirrored-init) routers the pairs drift apart and up to 18% of routings drop a quarter of the FFN; on XRec's
    data the paired router's validation NLL stays within 0.03 nats of the dense model's (free: 0.15 above) and
    its test scores are higher than the free router's (docs/results.md).
    """

    variant: str = "full"
    n_experts: int = 8
    top_k: int = 4
    granularity: int = 4
    init: str = "upcycle"
    load_balance_coef: float = 0.01
    router_z_coef: float = 0.001
    paired_router: bool = True  # tie the router rows of each doubly covered expert pair (see above)

    def surgery_kwargs(self, n_clusters: int) -> dict | None:
        """Arguments of :func:`explainrec.llm.surgery.moe_upcycle`, or None for the dense ``base`` variant."""
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
        if self.variant == "base":
            return None
        if self.variant == "coarse":  # same total parameters as the default, full-size experts
            kwargs = dict(n_clusters=n_clusters, n_experts=2, top_k=1, granularity=1, init=self.init)
        else:
            gates = 1 if self.variant == "single-gate" else n_clusters
            kwargs = dict(n_clusters=gates, n_experts=self.n_experts, top_k=self.top_k,
                          granularity=self.granularity, init=self.init)
        doubly_covered = kwargs["n_experts"] == 2 * kwargs["granularity"] == 2 * kwargs["top_k"]
        if self.paired_router and self.init == "upcycle" and doubly_covered:
            kwargs["paired_router"] = True  # absent otherwise: models saved before the option load unchanged
        return kwargs


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
            out = self.llm(inputs_embeds=self.embed(input_ids, user, item), attention_mask=attention_mask, labels=labels)
            aux = ctx.aux_parts()
        parts = {"nll": out.loss}
        loss = (1.0 - self.alpha) * out.loss
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
