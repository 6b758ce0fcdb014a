"""A loaded MMP-Refer as an :class:`~explainrec.methods.base.Explainer`: every explanation comes with the retrieval
paths it rests on (as the prompt wrote them, and as raw ids), so a reader sees what the text was given."""
from __future__ import annotations

from explainrec.llm.hooks import GenerationHooks
from explainrec.methods.base import Explainer, Prepared


def mmp_explainer(model, tokenizer, stage, texts, users, items, *, cfg, method: str, info: dict) -> Explainer:
    """Wrap a model, the stage (vectors, paths, train graph), the node texts and the id maps.

    A known pair the stage has no paths for (a pair outside the data's explained pairs) gets them computed now; a
    user or item the graph never saw has none (cold start: the prompt says no path was found).
    """
    from explainrec.methods.llm_method import pair_ids
    from explainrec.methods.mmp_refer.batching import pair_graph, stack_graphs
    from explainrec.methods.mmp_refer.paths import pair_paths, unit_rows
    from explainrec.methods.mmp_refer.prompting import path_text, prompt_fn

    model.eval()
    make_prompt = prompt_fn(cfg, texts)
    width = stage.config.paths.max_hops + 1
    units = {}

    def paths_of(u: int, i: int) -> list:
        if u < 0 or i < 0:
            return []
        if (u, i) not in stage.paths.paths:  # computed once, then kept with the others
            if not units:
                units.update(user=unit_rows(stage.vectors.user), item=unit_rows(stage.vectors.item))
            found, _ = pair_paths(stage.graph, u, i, stage.config.paths, user_unit=units["user"],
                                  item_unit=units["item"])
            stage.paths.paths[(u, i)] = found
        return stage.paths.get(u, i)[: cfg.k]

    def ids(pair) -> tuple[int, int]:
        u, i = pair_ids(model, [pair], users, items)
        return int(u[0]), int(i[0])

    def prompt(pair) -> list[dict]:
        return make_prompt(pair, paths_of(*ids(pair)))

    def node_id(node: int) -> str:
        n_users = stage.graph.n_users
        return f"user {users.decode(node)}" if node < n_users else f"item {items.decode(node - n_users)}"

    def prepare(pairs) -> Prepared:
        u, i = pair_ids(model, pairs, users, items)
        found = [paths_of(a, b) for a, b in zip(u.tolist(), i.tolist())]
        graphs = [dict(zip(("path_nodes", "path_nbrs"), pair_graph(
            stage.graph, p, max(a, 0), max(b, 0), k=cfg.k, width=width, max_neighbours=cfg.graph.max_neighbours,
            seed=cfg.graph.sample_seed))) for p, a, b in zip(found, u.tolist(), i.tolist())]

        def extras(n: int, _text: str) -> dict:
            return {"paths": [path_text(p, texts, kind=cfg.item_kind, max_words=cfg.graph.max_profile_words)
                              for p in found[n]],
                    "path_nodes": [[node_id(x) for x in p] for p in found[n]]}

        return Prepared(cold_start=[bool(a < 0 or b < 0) for a, b in zip(u.tolist(), i.tolist())],
                        hooks=GenerationHooks(embed_fn=model.embed_fn(stack_graphs(graphs))), extras=extras)

    return Explainer(method=method, llm=model.llm, tokenizer=tokenizer, prompt=prompt, prepare=prepare, model=model,
                     info={**info, "k": cfg.k}, known_users=users, known_items=items)
