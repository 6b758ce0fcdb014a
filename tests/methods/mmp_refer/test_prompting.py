"""The path hard prompt: relations, endpoints, profile cut, fallbacks, fields and the graph token."""
from __future__ import annotations

from explainrec.data.schema import Example
from explainrec.methods.mmp_refer.prompting import GRAPH_TOKEN, NO_PATHS, NodeTexts, cut_words, mmp_prompt, path_text


def texts() -> NodeTexts:
    # users 0..2, items 0..2 (nodes 3..5)
    return NodeTexts(n_users=3,
                     user_profiles=["Target user profile.", "Likes quiet cafes with good coffee and cake.", None],
                     item_profiles=["Fans of espresso will enjoy this cafe.", None, None],
                     titles=["Bean There", "Corner Bakery", None])


def test_path_text_alternates_buys_and_bought_by_and_cuts_profiles():
    t = texts()
    # user 0 -> item 0 -> user 1 -> item 1 -> user 2 -> item 2 (the pair's item)
    line = path_text([0, 3, 1, 4, 2, 5], t, kind="business", max_words=4)
    assert line == ("the user -> buys -> business (Fans of espresso will ...) -> bought by -> "
                    "user (Likes quiet cafes with ...) -> buys -> business (Corner Bakery) -> bought by -> "
                    "another user -> buys -> this business")
    assert cut_words("one two three", 3) == "one two three" and cut_words("one two three", 2) == "one two ..."
    assert path_text([0, 5], t) == "the user -> buys -> this item"


def test_prompt_holds_fields_paths_and_the_graph_tokens():
    t = texts()
    ex = Example(user=0, item=2, title="Cafe X", item_profile="A cafe.", user_profile="Loves cafes.")
    msgs = mmp_prompt(ex, [[0, 3, 1, 5], [0, 4, 2, 5]], t, item_kind="business", soft_tokens=2)
    assert msgs[0] == {"role": "system", "content": "Explain why the user would enjoy the business within 50 words."}
    body = msgs[1]["content"]
    assert "Business title: Cafe X. Business profile: A cafe. User profile: Loves cafes." in body
    assert "Path 1: the user -> buys -> business (Fans of espresso will enjoy this cafe.)" in body
    assert "Path 2: the user -> buys -> business (Corner Bakery) -> bought by -> another user" in body
    assert body.count(GRAPH_TOKEN) == 2 and body.endswith(f"Path graph: {GRAPH_TOKEN * 2}\nExplanations:")
    assert "retrieval paths" in body.splitlines()[0]
    bare = mmp_prompt(Example(user=0, item=2), [], t, graph_token=False)[1]["content"]
    assert NO_PATHS in bare and GRAPH_TOKEN not in bare and "title:" not in bare and "Path 1" not in bare
