"""MMP-Refer (Pan & Wei, arXiv 2604.03666): explain a (user, item) pair with the few most explanatory paths between
them in the interaction graph, given to the LLM twice -- as text and as a graph soft prompt.

The library core, one module per stage (each stage's output can be computed once and shared between runs):

    content        item content in several views: two MiniLM text views (title, profile) by default, or a file of
                   per-item vectors (any number of modalities)
    rqvae          one residual-quantised VAE per view, aligned by a cross-view InfoNCE: semantic IDs and
                   quantised vectors
    sequence       user and item vectors in one 64-d space: item tower (MLP(raw) + quantised) and SASRec or a mean
                   over the user's items, trained with InfoNCE on the train split
    paths          per pair: 3-hop subgraph, degree cap, 2-core, similarity/degree edge costs, top-k loopless paths
    graph_prompt   GAT/GCN over each path and its sampled 1-hop neighbours, mean-pooled, MoE adapter -> soft tokens
    prompting      the path hard prompt (profiles joined by "buys" / "bought by") and the chat messages
    batching       token rows + each pair's path/neighbour ids, the collate function
    modeling       the LLM wrapper: soft tokens spliced at ``<|graph_emb|>``, NLL of the explanation
    config         every setting, with its help line

Node ids in the graph stages: users ``0..U-1`` then items ``U..U+I-1`` (as LightGCN), ``-1`` for padding.
"""
