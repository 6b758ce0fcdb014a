"""Graph soft prompt (step 5): encode each retrieval path with its 1-hop neighbours, map the k paths to soft tokens.

Per pair, from the batch (shapes per example; ``B`` examples, ``k`` paths, ``P`` node slots per path, ``S``
sampled neighbours per path node; ids are global node ids, -1 = padding):

    path_nodes (B, k, P)      the path's nodes in order (a missing path is all -1)
    path_nbrs  (B, k, P, S)   up to S sampled 1-hop train neighbours of each path node (see batching.py)

    G_p        nodes: the path nodes and their sampled neighbours, a node seen twice counted once;
               edges: consecutive path nodes, each path node to its sampled neighbours, self loops
               (edges between two sampled neighbours are not looked up)
    h_n        the step-3 vector of node n (H_U for users, E_V for items; a fixed buffer) + a learned type embedding
    h_Gp       mean over G_p's nodes of GNN(h)       GAT (default) or GCN (ablation), ``layers`` layers   eq. 9
    h_(u,v)    concat over the k paths of h_Gp (a missing path: a learned "no path" vector)              eq. 10
    s_(u,v)    MoE adapter: sum_e softmax(x W_g)_e W_e(dropout(x) - b_e), reshaped to ``soft_tokens`` tokens of the
               LLM's width                                                                               eq. 11

The graphs are built densely per path (``N = P * (1 + S)`` slots, 66 with the defaults): duplicates are merged by
connecting each slot to everything its copies connect to and letting only the first copy be attended to and
pooled, which gives exactly the deduplicated graph with fixed shapes and no Python loop. The adapter is XRec's
:class:`~explainrec.modules.moe_adaptor.MoEAdaptor` without gate noise: experts are linear layers on
``dropout(x) - b_e`` (the paper writes ``+ b_e``; b_e is learned, so the two are the same family), the gate a softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainrec.methods.mmp_refer.config import GraphPromptConfig
from explainrec.modules.moe_adaptor import MoEAdaptor


def path_graphs(path_nodes: Tensor, path_nbrs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Dense per-path graphs: ``ids (G, N)``, ``adj (G, N, N)`` bool, ``keep (G, N)`` bool with ``G = B * k``.

    Slot ``p`` is path node ``p``; slot ``P + p * S + s`` its neighbour ``s``. ``keep`` marks the first copy of
    every real node (the ones attended to and pooled); ``adj[g, i, j]`` says i receives from j (only kept j, plus
    every slot from itself).
    """
    b, k, p = path_nodes.shape
    s = path_nbrs.shape[-1]
    g, n = b * k, p * (1 + s)
    ids = torch.cat([path_nodes.reshape(g, p), path_nbrs.reshape(g, p * s)], 1)  # (G, N)
    valid = ids >= 0
    dev = ids.device
    # fixed pattern of the slots: path chain + star of each path node's neighbours
    base = torch.zeros(n, n, dtype=torch.bool, device=dev)
    chain = torch.arange(p - 1, device=dev)
    base[chain, chain + 1] = base[chain + 1, chain] = True
    if s:
        owner = torch.arange(p, device=dev).repeat_interleave(s)  # (P * S,) path slot of each neighbour slot
        nb = torch.arange(p, n, device=dev)
        base[owner, nb] = base[nb, owner] = True
    eye = torch.eye(n, dtype=torch.bool, device=dev)
    base |= eye
    pair_valid = valid.unsqueeze(2) & valid.unsqueeze(1)  # (G, N, N)
    adj = base.unsqueeze(0) & pair_valid
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)) & pair_valid  # (G, N, N), symmetric, reflexive on valid slots
    merged = torch.bmm(torch.bmm(same.float(), adj.float()), same.float()) > 0  # a copy inherits its twins' edges
    earlier = torch.tril(torch.ones(n, n, dtype=torch.bool, device=dev), -1)  # j < i
    keep = valid & ~(same & earlier).any(-1)
    adj = (merged & keep.unsqueeze(1)) | eye
    return ids, adj, keep


class DenseGATLayer(nn.Module):
    """Multi-head graph attention (Velickovic et al. 2018) on dense masked adjacency; heads concatenated."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if out_dim % heads:
            raise ValueError(f"heads ({heads}) must divide out_dim ({out_dim})")
        self.heads, self.head_dim = heads, out_dim // heads
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, self.head_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        """``x (G, N, in)``, ``adj (G, N, N)`` (every row has at least its self loop) -> ``(G, N, out)``."""
        g, n, _ = x.shape
        h = self.lin(x).view(g, n, self.heads, self.head_dim)
        a_src = (h * self.att_src).sum(-1)  # (G, N, heads)
        a_dst = (h * self.att_dst).sum(-1)
        e = F.leaky_relu(a_dst.unsqueeze(2) + a_src.unsqueeze(1), 0.2)  # (G, N_i, N_j, heads)
        e = e.masked_fill(~adj.unsqueeze(-1), float("-inf"))
        alpha = self.dropout(e.softmax(dim=2))
        out = torch.einsum("gijh,gjhd->gihd", alpha, h).reshape(g, n, -1)
        return out + self.bias


class DenseGCNLayer(nn.Module):
    """Graph convolution (Kipf & Welling 2017): ``D^-1/2 A D^-1/2 X W`` with the self loops already in ``adj``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        a = adj.to(x.dtype)
        # in-degree of the receiving side; adj is symmetric on kept slots, so this is the usual symmetric norm
        norm = a.sum(-1).clamp(min=1.0).rsqrt()  # (G, N)
        a = norm.unsqueeze(2) * a * norm.unsqueeze(1)
        return a @ self.lin(x)


class PathEncoder(nn.Module):
    """A GAT or GCN stack; ``(G, N, d)`` node inputs -> ``(G, hidden)`` mean over the kept nodes."""

    def __init__(self, in_dim: int, cfg: GraphPromptConfig) -> None:
        super().__init__()
        dims = [in_dim] + [cfg.hidden] * cfg.layers
        if cfg.gnn == "gat":
            self.layers = nn.ModuleList(DenseGATLayer(a, b, cfg.heads, cfg.dropout) for a, b in zip(dims, dims[1:]))
        elif cfg.gnn == "gcn":
            self.layers = nn.ModuleList(DenseGCNLayer(a, b) for a, b in zip(dims, dims[1:]))
        else:
            raise ValueError(f"unknown gnn {cfg.gnn!r}; expected 'gat' or 'gcn'")
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, adj: Tensor, keep: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, adj)
            if i + 1 < len(self.layers):
                x = self.dropout(F.elu(x))
        w = keep.to(x.dtype).unsqueeze(-1)  # (G, N, 1)
        return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class GraphPrompt(nn.Module):
    """Paths of a batch -> ``(B, soft_tokens, out_dim)`` soft-token embeddings.

    Args:
        node_vectors: ``(U + I, d)`` step-3 vectors, users then items (a buffer, not trained).
        n_users: U (ids below it are users).
        out_dim: the LLM's hidden size.
        k: paths per pair (the adapter's input is ``k * hidden``).
        cfg: :class:`GraphPromptConfig`.
    """

    def __init__(self, node_vectors: Tensor, n_users: int, out_dim: int, k: int,
                 cfg: GraphPromptConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or GraphPromptConfig()
        self.cfg, self.k, self.n_users, self.out_dim = cfg, int(k), int(n_users), int(out_dim)
        d = node_vectors.shape[1]
        table = torch.cat([node_vectors.detach().float(), torch.zeros(1, d)])  # last row: padding
        self.register_buffer("node_table", table)  # (U + I + 1, d)
        self.type_emb = nn.Embedding(2, d)  # user / item
        nn.init.normal_(self.type_emb.weight, std=0.02)
        self.encoder = PathEncoder(d, cfg)
        self.no_path = nn.Parameter(torch.zeros(cfg.hidden))
        self.adapter = MoEAdaptor(self.k * cfg.hidden, cfg.soft_tokens * out_dim, cfg.n_experts, cfg.dropout,
                                  noisy_gating=False)

    @property
    def n_nodes(self) -> int:
        return int(self.node_table.shape[0] - 1)

    def node_inputs(self, ids: Tensor) -> Tensor:
        """``(...)`` global ids (-1 = padding) -> ``(..., d)`` vectors + type embeddings (zeros at padding)."""
        safe = torch.where((ids >= 0) & (ids < self.n_nodes), ids, torch.full_like(ids, self.n_nodes))
        x = self.node_table[safe] + self.type_emb((safe >= self.n_users).long())
        return x * (ids >= 0).unsqueeze(-1).to(x.dtype)

    def path_vectors(self, path_nodes: Tensor, path_nbrs: Tensor) -> Tensor:
        """``(B, k, hidden)``: the pooled GNN output of every path (the "no path" vector where a path is missing)."""
        b, k, _ = path_nodes.shape
        ids, adj, keep = path_graphs(path_nodes.long(), path_nbrs.long())
        pooled = self.encoder(self.node_inputs(ids), adj, keep).view(b, k, -1)
        has = (path_nodes[..., 0] >= 0).unsqueeze(-1)  # (B, k, 1)
        return torch.where(has, pooled, self.no_path.to(pooled.dtype))

    def forward(self, path_nodes: Tensor, path_nbrs: Tensor) -> Tensor:
        if path_nodes.dim() != 3 or path_nodes.shape[1] != self.k or path_nbrs.shape[:3] != path_nodes.shape:
            raise ValueError(f"expected path_nodes (B, {self.k}, P) and path_nbrs (B, {self.k}, P, S); got "
                             f"{tuple(path_nodes.shape)} and {tuple(path_nbrs.shape)}")
        h = self.path_vectors(path_nodes, path_nbrs).flatten(1)  # (B, k * hidden)
        return self.adapter(h).view(len(h), self.cfg.soft_tokens, self.out_dim)
