"""Retrieval paths: subgraph cut and pruning, the cost rule, the fast search against networkx, selection, storage."""
from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from explainrec.methods.mmp_refer.config import PathConfig
from explainrec.methods.mmp_refer.paths import (
    PathSet, TrainGraph, canonical_order, core_mask, extract_subgraph, find_paths, networkx_paths, node_costs,
    pair_paths, path_cost, select_paths, shortest_paths, to_networkx, unit_rows,
)


def edges_of(sub, graph=None):
    """Undirected edges of a subgraph as a set of global-id pairs (min, max)."""
    src, dst = sub.edges()
    return {tuple(sorted((int(sub.nodes[a]), int(sub.nodes[b])))) for a, b in zip(src, dst)}


def reference_core(adj: dict[int, set[int]], k: int, keep: set[int]) -> set[int]:
    """Alg. 1 one node at a time with a queue, never removing ``keep``."""
    adj = {n: set(nb) for n, nb in adj.items()}
    queue = [n for n in adj if len(adj[n]) < k and n not in keep]
    alive = set(adj)
    while queue:
        n = queue.pop()
        if n not in alive:
            continue
        alive.discard(n)
        for m in adj[n]:
            adj[m].discard(n)
            if m in alive and len(adj[m]) < k and m not in keep:
                queue.append(m)
        adj[n] = set()
    return alive


# ---------------------------------------------------------------------------------------------------- pruning


def test_two_core_keeps_both_ends_and_drops_dangling_nodes():
    # users 0..3, items 0..3 (nodes 4..7). Target pair (user 0, item 0). After the target edge goes, user 0 and
    # item 0 have one edge each; the 2-core without protection would peel everything but the 4-cycle.
    users = [0, 1, 1, 2, 2, 3, 1]
    items = [0, 1, 2, 1, 2, 3, 0]  # user 3 - item 3 is a dangling edge; 0-1? no: user 0 -> item 1 below
    users.append(0)
    items.append(1)
    g = TrainGraph(np.array(users), np.array(items), 4, 4)
    sub = extract_subgraph(g, 0, 0, hops=3, max_degree=None, core=2)
    kept = set(sub.nodes.tolist())
    assert 0 in kept and 4 in kept, "the pair's user and item must survive the 2-core"
    assert sub.nodes[sub.source] == 0 and sub.nodes[sub.target] == 4
    assert (0, 4) not in edges_of(sub), "the target edge must be removed"
    # user 3 / item 3 are outside the 3-hop balls; the 2-core keeps user 1, user 2, items 1, 2
    assert kept == {0, 1, 2, 4, 5, 6}
    assert all(sub.degree[i] >= 2 for i in range(sub.n_nodes) if i not in (sub.source, sub.target))


@pytest.mark.parametrize("seed", range(6))
def test_core_mask_matches_the_queue_algorithm(seed):
    rng = np.random.default_rng(seed)
    n = 40
    a, b = rng.integers(0, n, 70), rng.integers(0, n, 70)
    pairs = {(min(x, y), max(x, y)) for x, y in zip(a, b) if x != y}
    src = np.array([p[0] for p in pairs] + [p[1] for p in pairs])
    dst = np.array([p[1] for p in pairs] + [p[0] for p in pairs])
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    keep = {0, 1}
    adj = {i: set() for i in range(n)}
    for x, y in pairs:
        adj[x].add(y)
        adj[y].add(x)
    for k in (1, 2, 3):
        mask = core_mask(indptr, dst.astype(np.int32), k, keep=sorted(keep))
        assert set(np.flatnonzero(mask).tolist()) == reference_core(adj, k, keep), k


def test_degree_cap_removes_hub_edges_but_never_the_pair():
    # item 0 (node 6) is a hub bought by all 6 users; user 0 also buys items 1..4, so it is a hub too.
    users = [0, 1, 2, 3, 4, 5] + [0, 0, 0, 0] + [1, 2]
    items = [0, 0, 0, 0, 0, 0] + [1, 2, 3, 4] + [1, 1]
    g = TrainGraph(np.array(users), np.array(items), 6, 5)
    capped = extract_subgraph(g, 0, 1, hops=3, max_degree=3, core=0)
    hub = g.item_node(0)
    assert hub not in {n for e in edges_of(capped) for n in e}, "a node above the cap loses all its edges"
    assert 0 in capped.nodes and capped.degree[capped.source] == 3  # user 0 keeps items 2, 3, 4 (1 is the target)
    uncapped = extract_subgraph(g, 0, 1, hops=3, max_degree=None, core=0)
    assert any(hub in e for e in edges_of(uncapped))


def test_ball_is_the_union_of_both_neighbourhoods():
    # a chain user0 - item0 - user1 - item1 - user2 - item2 - user3 - item3
    users = [0, 1, 1, 2, 2, 3, 3]
    items = [0, 0, 1, 1, 2, 2, 3]
    g = TrainGraph(np.array(users), np.array(items), 4, 4)
    sub = extract_subgraph(g, 0, 3, hops=1, max_degree=None, core=0)
    # 1 hop of user 0: item 0; 1 hop of item 3: user 3
    assert set(sub.nodes.tolist()) == {0, g.item_node(0), 3, g.item_node(3)}
    sub2 = extract_subgraph(g, 0, 3, hops=2, max_degree=None, core=0)
    # 2 hops of user 0: item 0, user 1; 2 hops of item 3: user 3, item 2 (user 2 is 3 hops from both)
    assert set(sub2.nodes.tolist()) == {0, g.item_node(0), 1, 3, g.item_node(3), g.item_node(2)}


# ---------------------------------------------------------------------------------------------------- costs


@pytest.fixture()
def hand_graph():
    """Two 3-hop routes from user 0 to item 2: via item 0 / user 1 and via item 1 / user 2."""
    users = [0, 0, 1, 2, 1, 2, 3, 3]
    items = [0, 1, 0, 1, 2, 2, 0, 1]
    g = TrainGraph(np.array(users), np.array(items), 4, 3)
    rng = np.random.default_rng(0)
    user_vec = rng.standard_normal((4, 5))
    item_vec = rng.standard_normal((3, 5))
    item_vec[0] = user_vec[0]  # item 0 is exactly the user's taste: sim 1
    item_vec[1] = -user_vec[0]  # item 1 the opposite: sim -1
    return g, user_vec, item_vec


def test_costs_follow_the_rule(hand_graph):
    g, user_vec, item_vec = hand_graph
    uu, iu = unit_rows(user_vec), unit_rows(item_vec)
    sub = extract_subgraph(g, 0, 2, hops=3, max_degree=None, core=2)
    cost = node_costs(sub, g.n_users, 0, 2, user_unit=uu, item_unit=iu)
    deg = sub.degree
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    for local, node in enumerate(sub.nodes.tolist()):
        if local in (sub.source, sub.target):
            assert cost[local] == 1.0
        elif node < g.n_users:  # a user: similarity to the target item
            expect = math.log((2 - cos(user_vec[node], item_vec[2])) * deg[local])
            assert cost[local] == pytest.approx(expect, abs=1e-12), node
        else:  # an item: similarity to the target user
            expect = math.log((2 - cos(item_vec[node - 4], user_vec[0])) * deg[local])
            assert cost[local] == pytest.approx(expect, abs=1e-12), node
    item0 = int(np.searchsorted(sub.nodes, g.item_node(0)))
    item1 = int(np.searchsorted(sub.nodes, g.item_node(1)))
    assert cost[item0] == pytest.approx(math.log(1 * deg[item0]))  # sim 1
    assert cost[item1] == pytest.approx(math.log(3 * deg[item1]))  # sim -1
    # user anchor: intermediate users scored against the target user instead
    alt = node_costs(sub, g.n_users, 0, 2, user_unit=uu, item_unit=iu, user_anchor="user")
    u1 = int(np.searchsorted(sub.nodes, 1))
    assert alt[u1] == pytest.approx(math.log((2 - cos(user_vec[1], user_vec[0])) * deg[u1]))
    # G-Refer-style: degree only
    plain = node_costs(sub, g.n_users, 0, 2, cost="degree")
    assert plain[item0] == pytest.approx(math.log(deg[item0])) and plain[sub.target] == 1.0
    # degree in the train graph instead of the pruned subgraph
    full = node_costs(sub, g.n_users, 0, 2, cost="degree", degree="graph", graph_degree=g.degree)
    assert full[item0] == pytest.approx(math.log(g.degree[g.item_node(0)]))


def test_similar_items_win_and_degree_only_ignores_similarity(hand_graph):
    g, user_vec, item_vec = hand_graph
    cfg = PathConfig(k=1, max_degree=None)
    best, _ = pair_paths(g, 0, 2, cfg, user_unit=unit_rows(user_vec), item_unit=unit_rows(item_vec))
    assert best[0][1][1] == g.item_node(0), "the route through the item matching the user's taste is cheapest"
    # flip the similarities: the other route wins
    flipped = item_vec.copy()
    flipped[[0, 1]] = flipped[[1, 0]]
    best, _ = pair_paths(g, 0, 2, cfg, user_unit=unit_rows(user_vec), item_unit=unit_rows(flipped))
    assert best[0][1][1] == g.item_node(1)
    # degree-only: both routes cost the same (symmetric degrees), ties go to the smaller node ids
    two, _ = pair_paths(g, 0, 2, PathConfig(k=2, max_degree=None, cost="degree"))
    assert two[0][0] == pytest.approx(two[1][0]) and two[0][1] < two[1][1]


# ---------------------------------------------------------------------------------------------------- search


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    n_u, n_i = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    n_e = int(rng.integers(n_u + n_i, n_u * n_i // 2 + n_u + 1))
    g = TrainGraph(rng.integers(0, n_u, n_e), rng.integers(0, n_i, n_e), n_u, n_i)
    sub = extract_subgraph(g, int(rng.integers(n_u)), int(rng.integers(n_i)), hops=3,
                           max_degree=None if seed % 2 else 5, core=2)
    if seed % 3 == 0:  # small integer costs: many exact ties
        cost = rng.integers(1, 4, sub.n_nodes).astype(float)
    else:
        cost = rng.random(sub.n_nodes) + 0.05
    return sub, cost


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("lawler", [True, False])
def test_fast_search_returns_networkx_paths(seed, lawler):
    sub, cost = random_case(seed)
    g = to_networkx(sub.indptr, sub.indices, cost)
    for k, max_hops, cands in ((3, 5, 10), (4, 9, 25), (1, 3, 2)):
        ours = select_paths(shortest_paths(sub.indptr, sub.indices, cost, sub.source, sub.target, lawler=lawler),
                            k=k, max_hops=max_hops, max_candidates=cands)
        base = select_paths(networkx_paths(g, cost, sub.source, sub.target), k=k, max_hops=max_hops,
                            max_candidates=cands)
        assert ours == base, (seed, k)


@pytest.mark.parametrize("seed", range(0, 40, 3))
@pytest.mark.parametrize("lawler", [True, False])
def test_fast_search_enumerates_every_loopless_path_once_in_cost_order(seed, lawler):
    # (plain Yen meets some paths twice as spur candidates; Lawler's rule keeps the spur sets disjoint)
    sub, cost = random_case(seed)
    ours = list(shortest_paths(sub.indptr, sub.indices, cost, sub.source, sub.target, lawler=lawler))
    g = to_networkx(sub.indptr, sub.indices, cost)
    every = {tuple(p) for p in nx.all_simple_paths(g, sub.source, sub.target)} if sub.source != sub.target else set()
    assert {tuple(p) for _, p in ours} == every and len(ours) == len(every)
    costs = [c for c, _ in ours]
    assert all(b >= a - 1e-9 for a, b in zip(costs, costs[1:])), "paths must come in nondecreasing cost"
    assert all(c == path_cost(cost, p) for c, p in ours)


def test_selection_is_independent_of_the_order_of_equal_cost_paths():
    paths = [(1.0, (0, 5, 9)), (1.0, (0, 3, 9)), (1.0 + 1e-14, (0, 4, 9)), (2.0, (0, 1, 2, 9)), (3.0, (0, 2, 9))]
    forward = select_paths(iter(paths), k=2, max_hops=5, max_candidates=10)
    backward = select_paths(iter(paths[2::-1] + paths[3:]), k=2, max_hops=5, max_candidates=10)
    assert forward == backward == [(1.0, (0, 3, 9)), (1.0 + 1e-14, (0, 4, 9))]
    # the hop filter acts after the candidate cut: with 4 candidates the 3-hop path is examined and dropped
    assert select_paths(iter(paths), k=5, max_hops=2, max_candidates=4) == canonical_order(paths[:3])
    assert select_paths(iter(paths), k=5, max_hops=2, max_candidates=5)[-1] == (3.0, (0, 2, 9))


def test_select_paths_stops_reading_once_the_answer_is_fixed():
    pulled = []

    def stream():
        for c in range(100):
            pulled.append(c)
            yield float(c), (0, c + 1, 999)

    assert len(select_paths(stream(), k=3, max_hops=5, max_candidates=10)) == 3
    assert len(pulled) == 4  # three paths plus the one that closes the last tie group


# ---------------------------------------------------------------------------------------------------- all pairs


def test_find_paths_and_storage_round_trip(hand_graph):
    g, user_vec, item_vec = hand_graph
    cfg = PathConfig(k=2, max_degree=None)
    ps = find_paths(g, [(0, 2), (0, 2), (3, 2)], cfg, user_vectors=user_vec, item_vectors=item_vec)
    assert len(ps) == 2 and len(ps.get(0, 2)) == 2
    for cost, path in ps.paths[(0, 2)]:
        assert path[0] == 0 and path[-1] == g.item_node(2) and len(set(path)) == len(path)
    back = PathSet.from_arrays(ps.to_arrays(), g.n_users, g.n_items, ps.config)
    assert back.paths == ps.paths and back.sizes == ps.sizes
    with pytest.raises(ValueError, match="needs user_vectors"):
        find_paths(g, [(0, 2)], cfg)


def test_a_user_without_train_items_gets_no_path():
    g = TrainGraph(np.array([0, 1]), np.array([0, 0]), 3, 2)  # user 2 has no edge
    ps = find_paths(g, [(2, 0), (7, 0), (0, -1)], PathConfig(cost="degree"))  # 7 and -1: ids the graph never saw
    assert ps.get(2, 0) == [] and ps.get(7, 0) == [] and ps.get(0, -1) == []
    assert ps.stats()["pairs_without_paths"] == 3
