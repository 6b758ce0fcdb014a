"""Retrieval paths: for a (user, item) pair, the k cheapest loopless paths between them in the TRAIN graph.

Per pair (paper sec. 3.3 and Alg. 1; G-Refer's release where the paper is silent):

    ball      union of the ``hops``-hop neighbourhoods of u and v, with every train edge among those nodes
    target    the edge (u, v) removed (else the 1-hop path always wins; G-Refer removes explained pairs' edges)
    cap       a node with more than ``max_degree`` edges in that subgraph loses them all (G-Refer/PaGE-Link,
              ``remove_edges_of_high_degree_nodes``, cap 200); u and v are exempt
    core      ``core``-core: repeatedly drop nodes with fewer than ``core`` edges; u and v are never dropped
    costs     edges go both ways; an edge's cost depends only on the node it enters (eq. 7):
                into the target item v       1
                into another item n          log((2 - sim(n, u)) * deg(n))
                into a user m                log((2 - sim(m, v)) * deg(m))     (our choice; option: sim(m, u))
              sim = cosine of the step-3 vectors (items: E_V, users: H_U), clipped to [-1, 1]; deg = degree in
              the pruned subgraph (G-Refer) or in the train graph. ``cost="degree"``: log(deg) only (G-Refer
              without its learned mask, the ablation). The constant into v is paid by every path, so it changes
              no ranking; the cost into u is never paid (paths start there).
    search    loopless u -> v paths in cost order (Yen); the first ``max_candidates`` are examined, those with
              more than ``max_hops`` edges dropped, the first k kept (G-Refer's k_shortest_paths_with_max_length)

Why users are scored against the target item: the step-3 space is trained to score user-item pairs (dot
products), so a user-item similarity is the one it measures directly; it makes an intermediate user explanatory
when their taste matches the item being explained, as an intermediate item is when it matches the user.

Ties: a path's cost is ``sum(cost[n] for n in path[1:])`` in float64, in path order, for every search. Paths are
ranked by cost, and paths whose costs differ by at most ``1e-9 * max(1, |cost|)`` by their node-id sequence
(lexicographic). A search consumes paths until the last tie group is complete, so the result does not depend on
the order in which a search meets equal-cost paths (networkx and ours differ there).

Speed (``benchmarks/bench_paths.py``): the subgraph is cut and pruned with vectorised numpy on int32 CSR arrays.
The search is Yen's algorithm with three changes that leave its output unchanged: (1) one reverse Dijkstra
(scipy's C code) gives every node's exact cost-to-target h(x) and the tree of shortest paths to v; (2) a spur
search first tries the best allowed first step x (min cost[x] + h(x)) and, when x's tree path to v avoids the
blocked nodes, that path is optimal (h is a lower bound in the blocked graph and it is met); otherwise an A*
guided by h (consistent, so no node is reopened) expands only a handful of nodes; (3) Lawler's rule: a path
found as a spur at index d only spawns spurs at indices >= d.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from explainrec.data.schema import Dataset
from explainrec.methods.mmp_refer.config import PathConfig

TIE_TOL = 1e-9
INF = math.inf

Path = tuple[int, ...]


# ---------------------------------------------------------------------------------------------------- graph


class TrainGraph:
    """The train interactions as an undirected bipartite graph in CSR form: users ``0..U-1``, items ``U..U+I-1``.

    Neighbour lists are sorted (so everything built on them is deterministic); ``indptr`` is int64, ``indices``
    int32. Duplicate edges are kept once.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> None:
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        if users.shape != items.shape:
            raise ValueError(f"users and items must have the same shape; got {users.shape} and {items.shape}")
        if len(users) and (users.min() < 0 or users.max() >= n_users or items.min() < 0 or items.max() >= n_items):
            raise ValueError("edge ids out of range of n_users / n_items")
        keys = np.unique(users * n_items + items)
        users, items = keys // n_items, keys % n_items
        self.n_users, self.n_items = int(n_users), int(n_items)
        n = self.n_users + self.n_items
        rows = np.concatenate([users, items + n_users])
        cols = np.concatenate([items + n_users, users])
        order = np.lexsort((cols, rows))
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=self.indptr[1:])
        self.indices = cols[order].astype(np.int32)
        self.n_edges = int(len(keys))
        self._matrix = None

    @classmethod
    def from_dataset(cls, dataset: Dataset, split: str = "train") -> "TrainGraph":
        inter = dataset.interactions.of_split(split)
        return cls(inter.user, inter.item, dataset.n_users, dataset.n_items)

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def matrix(self):
        """The adjacency as a scipy CSR matrix (int8 ones), built once."""
        if self._matrix is None:
            from scipy.sparse import csr_matrix

            self._matrix = csr_matrix((np.ones(len(self.indices), dtype=np.int8), self.indices, self.indptr),
                                      shape=(self.n_nodes, self.n_nodes))
        return self._matrix

    def neighbours(self, node: int) -> np.ndarray:
        return self.indices[self.indptr[node]: self.indptr[node + 1]]

    def item_node(self, item: int) -> int:
        return self.n_users + int(item)


def gather(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All neighbours of ``nodes`` at once: ``(position in nodes, neighbour)`` per stored edge, both ``(E,)``."""
    starts = indptr[nodes]
    lens = indptr[nodes + 1] - starts
    total = int(lens.sum())
    offsets = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
    return np.repeat(np.arange(len(nodes)), lens), indices[offsets]


# ---------------------------------------------------------------------------------------------------- subgraph


@dataclass
class Subgraph:
    """The pruned subgraph of one pair, with local ids ``0..m-1`` (in the order of the global ids).

    ``indptr``/``indices`` are int32 CSR (both directions of every edge, neighbour lists sorted), the format
    scipy's csgraph takes without a copy.
    """

    nodes: np.ndarray  # (m,) int64 global ids, ascending
    indptr: np.ndarray  # (m + 1,) int32
    indices: np.ndarray  # (2E,) int32 local ids
    source: int  # local id of the user
    target: int  # local id of the item

    @property
    def n_nodes(self) -> int:
        return int(len(self.nodes))

    @property
    def n_edges(self) -> int:
        return int(len(self.indices) // 2)

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Directed edge list ``(src, dst)``, both directions, local ids."""
        return np.repeat(np.arange(self.n_nodes, dtype=np.int32), np.diff(self.indptr)), self.indices


def _ball(graph: TrainGraph, start: int, hops: int) -> np.ndarray:
    """Bool mask of the nodes within ``hops`` edges of ``start``."""
    seen = np.zeros(graph.n_nodes, dtype=bool)
    seen[start] = True
    front = np.array([start], dtype=np.int64)
    for _ in range(hops):
        _, nb = gather(graph.indptr, graph.indices, front)
        new = np.zeros(graph.n_nodes, dtype=bool)  # a scatter into a mask: cheaper than np.unique on nb
        new[nb] = True
        new &= ~seen
        front = np.flatnonzero(new)
        if not len(front):
            break
        seen |= new
    return seen


def core_mask(indptr: np.ndarray, indices: np.ndarray, core: int, keep: Sequence[int] = ()) -> np.ndarray:
    """Nodes of the ``core``-core of an undirected CSR graph (both directions stored), as an ``(n,)`` bool mask.

    Alg. 1, peeling every node with fewer than ``core`` live edges at once per round (the k-core is unique, so
    the order of removals does not matter) and never the nodes in ``keep``. A round touches only the edges of the
    nodes it removes: each removed node takes one edge from each neighbour (dead neighbours' counts are unused).
    """
    n = len(indptr) - 1
    alive = np.ones(n, dtype=bool)
    if core <= 0:
        return alive
    deg = np.diff(indptr).astype(np.int64)
    protected = np.zeros(n, dtype=bool)
    protected[list(keep)] = True
    kill = (deg < core) & ~protected
    while kill.any():
        alive &= ~kill
        _, nb = gather(indptr, indices, np.flatnonzero(kill))
        deg -= np.bincount(nb, minlength=n)
        kill = alive & (deg < core) & ~protected
    return alive


def _csr(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 CSR of an edge list already sorted by ``src``."""
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst.astype(np.int32, copy=False)


def extract_subgraph(graph: TrainGraph, user: int, item: int, *, hops: int = 3, max_degree: int | None = 200,
                     core: int = 2) -> Subgraph:
    """The pruned subgraph of pair ``(user, item)`` (see the module docstring: ball, target edge, cap, core)."""
    s, t = int(user), graph.item_node(item)
    ball = _ball(graph, s, hops) | _ball(graph, t, hops)
    nodes = np.flatnonzero(ball)  # (m,) ascending global ids
    m = len(nodes)
    induced = graph.matrix[nodes][:, nodes]  # scipy's C row/column selection: the fastest induced subgraph
    induced.sort_indices()
    src = np.repeat(np.arange(m, dtype=np.int32), np.diff(induced.indptr))
    dst = induced.indices
    ls, lt = int(np.searchsorted(nodes, s)), int(np.searchsorted(nodes, t))
    keep = ~(((src == ls) & (dst == lt)) | ((src == lt) & (dst == ls)))
    if max_degree is not None:
        deg = np.bincount(src[keep], minlength=m)
        hub = deg > max_degree
        hub[[ls, lt]] = False
        keep &= ~(hub[src] | hub[dst])
    src, dst = src[keep], dst[keep]
    alive = core_mask(*_csr(src, dst, m), core, keep=(ls, lt))
    live = alive[src] & alive[dst]
    new_id = (np.cumsum(alive) - 1).astype(np.int32)  # (m,) local id after removing dead nodes
    n_alive = int(alive.sum())
    indptr, indices = _csr(new_id[src[live]], new_id[dst[live]], n_alive)
    return Subgraph(nodes=nodes[alive], indptr=indptr, indices=indices, source=int(new_id[ls]),
                    target=int(new_id[lt]))


# ---------------------------------------------------------------------------------------------------- costs


def unit_rows(x) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), float64 -- cosine similarity becomes a dot product."""
    x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def node_costs(sub: Subgraph, n_users: int, user: int, item: int, *, user_unit: np.ndarray | None = None,
               item_unit: np.ndarray | None = None, cost: str = "mmp", user_anchor: str = "item",
               degree: str = "subgraph", graph_degree: np.ndarray | None = None) -> np.ndarray:
    """``(m,)`` float64 cost of entering each node of ``sub`` (eq. 7; see the module docstring).

    ``user_unit``/``item_unit`` are the unit-length step-3 vectors (``(U, d)``, ``(I, d)``, see :func:`unit_rows`);
    required for ``cost="mmp"``. ``graph_degree`` is the train graph's degree (``degree="graph"``).
    """
    if degree == "graph":
        if graph_degree is None:
            raise ValueError("degree='graph' needs graph_degree")
        deg = graph_degree[sub.nodes].astype(np.float64)
    else:
        deg = sub.degree.astype(np.float64)
    deg = np.maximum(deg, 1.0)
    if cost == "degree":
        out = np.log(deg)
    elif cost == "mmp":
        if user_unit is None or item_unit is None:
            raise ValueError("cost='mmp' needs the user and item vectors")
        # one mat-vec per node type over the whole graph, then a lookup: cheaper than gathering the rows
        anchor = item_unit[item] if user_anchor == "item" else user_unit[user]
        sim = np.concatenate([user_unit @ anchor, item_unit @ user_unit[user]])[sub.nodes]
        out = np.log((2.0 - np.clip(sim, -1.0, 1.0)) * deg)
    else:
        raise ValueError(f"unknown cost {cost!r}; expected 'mmp' or 'degree'")
    out[sub.target] = 1.0
    out[sub.source] = 1.0
    return out


def path_cost(cost: Sequence[float] | np.ndarray, path: Sequence[int]) -> float:
    """The one definition of a path's cost: float64 sum of ``cost[n]`` over the nodes after the first, in order."""
    total = 0.0
    for n in path[1:]:
        total += float(cost[n])
    return total


# ---------------------------------------------------------------------------------------------------- search


def _tie_tol(cost: float) -> float:
    return TIE_TOL * max(1.0, abs(cost))


def canonical_order(found: Iterable[tuple[float, Path]]) -> list[tuple[float, Path]]:
    """Sort by cost; within a group of equal costs (up to the tie tolerance) by node-id sequence."""
    by_cost = sorted(found, key=lambda cp: cp[0])
    out: list[tuple[float, Path]] = []
    i = 0
    while i < len(by_cost):
        j = i + 1
        while j < len(by_cost) and by_cost[j][0] - by_cost[i][0] <= _tie_tol(by_cost[i][0]):
            j += 1
        out.extend(sorted(by_cost[i:j], key=lambda cp: cp[1]))
        i = j
    return out


def select_paths(stream: Iterable[tuple[float, Sequence[int]]], *, k: int, max_hops: int,
                 max_candidates: int) -> list[tuple[float, Path]]:
    """G-Refer's rule on a stream of loopless paths in nondecreasing cost: of the first ``max_candidates`` paths
    (in :func:`canonical_order`), keep those with at most ``max_hops`` edges, return the first ``k``.

    Pulls paths only until the answer is fixed: the paths read form a complete prefix of the canonical order
    (the last tie group is closed by a strictly costlier path or the end of the stream) and hold either
    ``max_candidates`` paths or ``k`` short enough ones.
    """
    got: list[tuple[float, Path]] = []
    short = 0
    for cost, path in stream:
        if got and cost > got[-1][0] + _tie_tol(got[-1][0]) and (len(got) >= max_candidates or short >= k):
            break
        got.append((cost, tuple(int(n) for n in path)))
        short += len(path) - 1 <= max_hops
    ordered = canonical_order(got)[:max_candidates]
    return [cp for cp in ordered if len(cp[1]) - 1 <= max_hops][:k]


def distances_to(indptr: np.ndarray, indices: np.ndarray, cost: np.ndarray, target: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact cost-to-``target`` of every node and its next node on a cheapest path (-9999 where none).

    One scipy Dijkstra from ``target`` on the reversed graph: its edge b -> a (for the original a -> b) costs
    ``cost[b]``, so row b of the matrix holds ``cost[b]`` for every neighbour -- the same CSR structure.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    m = len(cost)
    data = np.repeat(np.asarray(cost, dtype=np.float64), np.diff(indptr))
    mat = csr_matrix((data, indices, indptr), shape=(m, m))
    dist, pred = dijkstra(mat, directed=True, indices=int(target), return_predecessors=True)
    return dist, pred


class _Yen:
    """Yen's k shortest loopless paths on one graph whose edge costs are the costs of the entered nodes.

    Spur searches use the exact cost-to-target ``h`` of the unblocked graph: first the tree shortcut, then A*.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, cost: np.ndarray, source: int, target: int,
                 lawler: bool = True) -> None:
        self.indptr, self.indices = indptr, indices
        self.cost = np.asarray(cost, dtype=np.float64)
        self.cost_list = self.cost.tolist()
        self.source, self.target, self.lawler = int(source), int(target), lawler
        self.h, pred = distances_to(indptr, indices, self.cost, target)
        self.h_list = self.h.tolist()
        self.succ = pred.tolist()
        self.blocked = np.zeros(len(cost), dtype=bool)
        self._nb_cache: dict[int, list[int]] = {}
        self.spur_calls = self.astar_calls = 0

    # -------------------------------------------------------------- spur search

    def _neighbours(self, x: int) -> list[int]:
        """Neighbour list of x as Python ints, cached (A* touches few nodes; converting all would cost more)."""
        nb = self._nb_cache.get(x)
        if nb is None:
            nb = self._nb_cache[x] = self.indices[self.indptr[x]: self.indptr[x + 1]].tolist()
        return nb

    def spur(self, sp: int, banned: set[int]) -> tuple[float, list[int]] | None:
        """Cheapest ``sp -> target`` path avoiding blocked nodes and the first steps in ``banned``.

        ``self.blocked`` must hold the root nodes before ``sp`` and ``sp`` itself.
        """
        self.spur_calls += 1
        nb = self.indices[self.indptr[sp]: self.indptr[sp + 1]]
        ok = ~self.blocked[nb]
        for b in banned:  # a handful of nodes: cheaper than np.isin
            ok &= nb != b
        nb = nb[ok]
        if not len(nb):
            return None
        vals = self.cost[nb] + self.h[nb]
        j = int(np.argmin(vals))
        if vals[j] == INF:
            return None
        x = int(nb[j])
        path = [sp, x]
        y, succ, blocked, t = x, self.succ, self.blocked, self.target
        while y != t:
            y = succ[y]
            if blocked[y]:
                return self._astar(sp, banned)
            path.append(y)
        return float(vals[j]), path

    def _astar(self, sp: int, banned: set[int]) -> tuple[float, list[int]] | None:
        """A* from ``sp`` with heuristic h, in plain Python (the graphs are sparse and few nodes are expanded);
        ``self.blocked`` holds ``sp`` (the start, never re-entered)."""
        self.astar_calls += 1
        h, cost, t, blocked = self.h_list, self.cost_list, self.target, self.blocked
        g = {sp: 0.0}
        parent: dict[int, int] = {}
        heap = [(h[sp], 0.0, sp)]
        while heap:
            _, gx, x = heapq.heappop(heap)
            if x == t:
                path = [t]
                while path[-1] != sp:
                    path.append(parent[path[-1]])
                return gx, path[::-1]
            if gx > g[x]:  # a stale entry; with a consistent h a node is final when first popped
                continue
            first = x == sp
            for y in self._neighbours(x):
                if blocked[y] or (first and y in banned):
                    continue
                gy = gx + cost[y]
                if gy < g.get(y, INF) and h[y] < INF:
                    g[y] = gy
                    parent[y] = x
                    heapq.heappush(heap, (gy + h[y], gy, y))
        return None

    # -------------------------------------------------------------- enumeration

    def paths(self) -> Iterator[tuple[float, list[int]]]:
        s, t = self.source, self.target
        if s == t or self.h_list[s] == INF:
            return
        first = [s]
        while first[-1] != t:
            first.append(self.succ[first[-1]])
        accepted: list[list[int]] = []
        deviation: list[int] = []
        seen: set[Path] = {tuple(first)}
        heap: list[tuple[float, Path, int]] = [(self.h_list[s], tuple(first), 0)]
        while heap:
            _, path_t, dev = heapq.heappop(heap)
            path = list(path_t)
            yield path_cost(self.cost_list, path), path
            accepted.append(path)
            deviation.append(dev)
            start = dev if self.lawler else 0
            blocked = self.blocked
            blocked[path[:start]] = True
            root_cost = path_cost(self.cost_list, path[: start + 1])
            for i in range(start, len(path) - 1):
                sp = path[i]
                if i > start:
                    root_cost += self.cost_list[sp]
                blocked[sp] = True
                banned = {q[i + 1] for q in accepted if len(q) > i + 1 and q[: i + 1] == path[: i + 1]}
                found = self.spur(sp, banned)
                if found is None:
                    continue
                spur_cost, spur_path = found
                cand = tuple(path[:i] + spur_path)
                if cand not in seen:
                    seen.add(cand)
                    heapq.heappush(heap, (root_cost + spur_cost, cand, i))
            blocked[path] = False


def shortest_paths(indptr: np.ndarray, indices: np.ndarray, cost: np.ndarray, source: int, target: int, *,
                   lawler: bool = True) -> Iterator[tuple[float, list[int]]]:
    """Ours: loopless ``source -> target`` paths in nondecreasing cost, each with :func:`path_cost`.

    ``indptr``/``indices``: a symmetric CSR graph (int32, as :class:`Subgraph`); entering node n costs
    ``cost[n] >= 0``. Lazy: each path costs only the spur searches needed to find it.
    """
    return _Yen(indptr, indices, cost, source, target, lawler=lawler).paths()


def to_networkx(indptr: np.ndarray, indices: np.ndarray, cost: np.ndarray):
    """The same graph as a networkx DiGraph, edge ``a -> b`` weighted ``cost[b]`` (the baseline's input)."""
    import networkx as nx

    m = len(indptr) - 1
    src = np.repeat(np.arange(m), np.diff(indptr))
    g = nx.DiGraph()
    g.add_nodes_from(range(m))
    g.add_weighted_edges_from(zip(src.tolist(), indices.tolist(), np.asarray(cost, dtype=np.float64)[indices].tolist()))
    return g


def networkx_paths(g, cost: np.ndarray, source: int, target: int) -> Iterator[tuple[float, list[int]]]:
    """The baseline: networkx's ``shortest_simple_paths`` (Yen + bidirectional Dijkstra) on :func:`to_networkx`."""
    import networkx as nx

    cost_list = np.asarray(cost, dtype=np.float64).tolist()
    try:
        for path in nx.shortest_simple_paths(g, source, target, weight="weight"):
            yield path_cost(cost_list, path), path
    except nx.NetworkXNoPath:
        return


# ---------------------------------------------------------------------------------------------------- all pairs


@dataclass
class PathSet:
    """The paths of many pairs, in global node ids (users ``0..U-1``, items ``U..``), and how they were found.

    ``paths[(user, item)]`` is a list of ``(cost, node ids)`` best first (possibly fewer than k, or empty when
    the pruned subgraph does not connect the pair). ``sizes[(user, item)]`` = (nodes, edges) after pruning.
    """

    n_users: int
    n_items: int
    config: dict
    paths: dict[tuple[int, int], list[tuple[float, Path]]] = field(default_factory=dict)
    sizes: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def get(self, user: int, item: int) -> list[Path]:
        """Node-id paths of a pair (``[]`` when unknown or none was found)."""
        return [p for _, p in self.paths.get((int(user), int(item)), [])]

    def __len__(self) -> int:
        return len(self.paths)

    def stats(self) -> dict:
        counts = np.array([len(v) for v in self.paths.values()]) if self.paths else np.zeros(0)
        hops = [len(p) - 1 for v in self.paths.values() for _, p in v]
        nodes = [n for n, _ in self.sizes.values()]
        return {
            "pairs": len(self.paths),
            "mean_paths": float(counts.mean()) if len(counts) else 0.0,
            "pairs_without_paths": int((counts == 0).sum()),
            "mean_hops": float(np.mean(hops)) if hops else 0.0,
            "mean_subgraph_nodes": float(np.mean(nodes)) if nodes else 0.0,
            "seconds": round(self.seconds, 3),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """``pairs (n, 2)``, ``nodes (n, k, max_hops + 1)`` (-1 padded), ``costs (n, k)`` (nan padded), ``sizes``."""
        k = int(self.config.get("k", 1))
        width = int(self.config.get("max_hops", 5)) + 1
        keys = sorted(self.paths)
        nodes = np.full((len(keys), k, width), -1, dtype=np.int32)
        costs = np.full((len(keys), k), np.nan)
        for r, key in enumerate(keys):
            for j, (c, p) in enumerate(self.paths[key][:k]):
                nodes[r, j, : len(p)] = p
                costs[r, j] = c
        sizes = np.array([self.sizes.get(key, (0, 0)) for key in keys], dtype=np.int64).reshape(-1, 2)
        return {"pairs": np.array(keys, dtype=np.int64).reshape(-1, 2), "nodes": nodes, "costs": costs, "sizes": sizes}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_users: int, n_items: int, config: dict) -> "PathSet":
        out = cls(n_users=n_users, n_items=n_items, config=dict(config))
        for (u, i), row, crow, size in zip(arrays["pairs"], arrays["nodes"], arrays["costs"], arrays["sizes"]):
            found = []
            for p, c in zip(row, crow):
                if p[0] >= 0:
                    found.append((float(c), tuple(int(n) for n in p if n >= 0)))
            out.paths[(int(u), int(i))] = found
            out.sizes[(int(u), int(i))] = (int(size[0]), int(size[1]))
        return out


def pair_paths(graph: TrainGraph, user: int, item: int, cfg: PathConfig, *, user_unit: np.ndarray | None = None,
               item_unit: np.ndarray | None = None) -> tuple[list[tuple[float, Path]], Subgraph]:
    """The paths of one pair in global node ids, and its pruned subgraph."""
    sub = extract_subgraph(graph, user, item, hops=cfg.hops, max_degree=cfg.max_degree, core=cfg.core)
    cost = node_costs(sub, graph.n_users, user, item, user_unit=user_unit, item_unit=item_unit, cost=cfg.cost,
                      user_anchor=cfg.user_anchor, degree=cfg.degree, graph_degree=graph.degree)
    found = select_paths(shortest_paths(sub.indptr, sub.indices, cost, sub.source, sub.target),
                         k=cfg.k, max_hops=cfg.max_hops, max_candidates=cfg.max_candidates)
    return [(c, tuple(int(sub.nodes[n]) for n in p)) for c, p in found], sub


def find_paths(graph: TrainGraph, pairs: Iterable[tuple[int, int]], cfg: PathConfig | None = None, *,
               user_vectors=None, item_vectors=None, progress: bool = False) -> PathSet:
    """The paths of every ``(user, item)`` pair (contiguous ids); repeated pairs are computed once, ids outside
    the graph (cold start) get none.

    ``user_vectors``/``item_vectors`` (``(U, d)``, ``(I, d)``; tensors or arrays) are the step-3 vectors
    (:class:`~explainrec.methods.mmp_refer.sequence.UserItemVectors`); ``cost="degree"`` does not need them.
    """
    cfg = cfg or PathConfig()
    user_unit = unit_rows(user_vectors) if user_vectors is not None else None
    item_unit = unit_rows(item_vectors) if item_vectors is not None else None
    if cfg.cost == "mmp" and (user_unit is None or item_unit is None):
        raise ValueError("cost='mmp' needs user_vectors and item_vectors (or use cost='degree')")
    out = PathSet(n_users=graph.n_users, n_items=graph.n_items, config=cfg.to_dict())
    todo = list(dict.fromkeys((int(u), int(i)) for u, i in pairs))
    from explainrec.training.loop_utils import progress as bar

    start = time.perf_counter()
    for u, i in bar(todo, enabled=progress, desc="paths", total=len(todo)):
        if not (0 <= u < graph.n_users and 0 <= i < graph.n_items):  # an id the graph never saw: no path
            out.paths[(u, i)], out.sizes[(u, i)] = [], (0, 0)
            continue
        found, sub = pair_paths(graph, u, i, cfg, user_unit=user_unit, item_unit=item_unit)
        out.paths[(u, i)] = found
        out.sizes[(u, i)] = (sub.n_nodes, sub.n_edges)
    out.seconds = time.perf_counter() - start
    return out
