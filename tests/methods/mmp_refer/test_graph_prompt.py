"""Graph soft prompt: per-path graphs (dedup, edges), GAT/GCN shapes, neighbour sampling cap, missing paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explainrec.methods.mmp_refer.batching import pair_graph
from explainrec.methods.mmp_refer.config import GraphPromptConfig
from explainrec.methods.mmp_refer.graph_prompt import DenseGATLayer, GraphPrompt, path_graphs
from explainrec.methods.mmp_refer.paths import TrainGraph


def star_graph() -> TrainGraph:
    """User 0 buys items 0..5; users 1..7 buy item 0; user 1 also buys item 1."""
    users = [0] * 6 + list(range(1, 8)) + [1]
    items = list(range(6)) + [0] * 7 + [1]
    return TrainGraph(np.array(users), np.array(items), 8, 6)


def test_neighbour_sampling_is_capped_seeded_and_leaves_out_the_path_and_the_pair():
    g = star_graph()
    item0, item1, item3 = g.item_node(0), g.item_node(1), g.item_node(3)
    path = [0, item1, 1, item0]  # user 0 -> item 1 -> user 1 -> item 0 (the pair is user 0, item 0)
    nodes, nbrs = pair_graph(g, [path], 0, 0, k=3, width=6, max_neighbours=3, seed=7)
    assert nodes.shape == (3, 6) and nbrs.shape == (3, 6, 3)
    assert nodes[0, :4].tolist() == path and (nodes[0, 4:] == -1).all() and (nodes[1:] == -1).all()
    assert (nbrs[1:] == -1).all()
    real = nbrs[0][nbrs[0] >= 0]
    assert not set(real.tolist()) & set(path), "path nodes are never drawn as neighbours"
    # user 0 has items 0..5; minus the path (items 1, 0) -> items 2..5, capped to 3; item 0 (the pair's item) excluded
    assert len(nbrs[0, 0][nbrs[0, 0] >= 0]) == 3 and set(nbrs[0, 0].tolist()) <= {g.item_node(i) for i in (2, 3, 4, 5)}
    # item 0 (the target) is bought by users 0..7: user 0 (the pair's user) and user 1 (on the path) are left out
    assert set(nbrs[0, 3][nbrs[0, 3] >= 0].tolist()) <= set(range(2, 8)) and (nbrs[0, 3] >= 0).sum() == 3
    again = pair_graph(g, [path], 0, 0, k=3, width=6, max_neighbours=3, seed=7)[1]
    other = pair_graph(g, [path], 0, 0, k=3, width=6, max_neighbours=3, seed=8)[1]
    assert np.array_equal(nbrs, again) and not np.array_equal(nbrs, other)
    none = pair_graph(g, [path], 0, 0, k=1, width=6, max_neighbours=0)[1]
    assert none.shape == (1, 6, 0)
    with pytest.raises(ValueError, match="does not fit"):
        pair_graph(g, [path + [5, 9, 10]], 0, 0, k=1, width=6, max_neighbours=2)
    assert item3 in g.neighbours(0)


def test_path_graphs_merge_duplicates_and_link_path_and_neighbours():
    # one path 10 -> 20 -> 30; neighbours: of 10: [40, 50], of 20: [40, -1], of 30: [-1, -1]
    nodes = torch.tensor([[[10, 20, 30]]])
    nbrs = torch.tensor([[[[40, 50], [40, -1], [-1, -1]]]])
    ids, adj, keep = path_graphs(nodes, nbrs)
    assert ids.shape == (1, 9) and adj.shape == (1, 9, 9)
    # slots: 0..2 path, 3,4 = nbrs of 10, 5,6 = nbrs of 20, 7,8 = nbrs of 30
    assert keep[0].tolist() == [True, True, True, True, True, False, False, False, False]
    a = adj[0]
    assert a[0, 1] and a[1, 0] and a[1, 2] and not a[0, 2]  # the chain
    assert a[0, 3] and a[3, 0] and a[0, 4]  # star of node 10
    assert a[1, 3] and a[3, 1], "node 40 is a neighbour of both 10 and 20: its kept copy links to both"
    assert not a[1, 5], "a duplicate copy is never attended to"
    assert not a[2, 3] and not a[0, 7]
    assert all(a[i, i] for i in range(9))


def test_gat_attends_only_along_edges():
    torch.manual_seed(0)
    layer = DenseGATLayer(4, 8, heads=2)
    x = torch.randn(1, 3, 4)
    adj = torch.tensor([[[True, True, False], [True, True, True], [False, True, True]]])
    out = layer(x, adj)
    x2 = x.clone()
    x2[0, 2] = torch.randn(4)
    out2 = layer(x2, adj)
    assert torch.allclose(out[0, 0], out2[0, 0]) and not torch.allclose(out[0, 1], out2[0, 1])


@pytest.mark.parametrize("gnn", ["gat", "gcn"])
@pytest.mark.parametrize("tokens", [1, 3])
def test_graph_prompt_shapes_and_missing_paths(gnn, tokens):
    torch.manual_seed(0)
    n_users, n_items, d = 5, 7, 6
    table = torch.randn(n_users + n_items, d)
    cfg = GraphPromptConfig(gnn=gnn, soft_tokens=tokens, hidden=8, heads=2, layers=2, dropout=0.0)
    gp = GraphPrompt(table, n_users, out_dim=12, k=2, cfg=cfg).eval()
    with torch.no_grad():
        gp.no_path.fill_(0.5)  # trained away from its zero start (an empty pool is zero too)
    nodes = torch.full((3, 2, 4), -1)
    nodes[0, 0, :4] = torch.tensor([0, 5, 1, 6])
    nodes[0, 1, :2] = torch.tensor([0, 7])
    nodes[1, 0, :4] = torch.tensor([2, 8, 3, 9])  # row 1: one path; row 2: none
    nbrs = torch.full((3, 2, 4, 3), -1)
    nbrs[0, 0, 0, :2] = torch.tensor([10, 11])
    out = gp(nodes, nbrs)
    assert out.shape == (3, tokens, 12) and torch.isfinite(out).all()
    pv = gp.path_vectors(nodes, nbrs)
    assert pv.shape == (3, 2, 8)
    assert torch.equal(pv[1, 1], gp.no_path.detach()) and torch.equal(pv[2, 0], gp.no_path.detach())
    assert not torch.equal(pv[0, 0], pv[0, 1])
    # the node vectors matter: another table gives another prompt
    gp2 = GraphPrompt(torch.randn(n_users + n_items, d), n_users, out_dim=12, k=2, cfg=cfg).eval()
    gp2.load_state_dict({k: v for k, v in gp.state_dict().items() if k != "node_table"}, strict=False)
    assert not torch.allclose(gp2(nodes, nbrs)[0], out[0])
    with pytest.raises(ValueError, match="expected path_nodes"):
        gp(nodes[:, :1], nbrs[:, :1])
    loss = out.pow(2).sum()
    loss.backward()
    assert gp.adapter.weight.grad is not None and gp.encoder.layers[0].lin.weight.grad is not None
    assert gp.node_table.grad is None  # a buffer: the step-3 vectors stay fixed
