"""Pair streams (explainrec.data.pair_stream): records expand to pairs in order, chunks cut anywhere (inside a
top-k list too), Parquet reads the same pairs as JSON lines, bad records are named by file, line and field, and a
chunk is read without parsing the records before it."""
from __future__ import annotations

import json

import pytest

from explainrec.data import make_synthetic
from explainrec.data.pair_stream import DatasetText, PairStream
from explainrec.data.schema import DataError, Pair

RECORDS = [
    {"user": "u1", "item": "i1", "title": "Cafe", "features": ["coffee"], "rating": 4, "explanation": "ref one"},
    {"user": "u2", "items": ["i3", "i4", "i5", "i6"], "scores": [0.9, 0.8, 0.5, 0.1], "user_profile": "likes tea"},
    {"user": 7, "item": 8},
    {"user": "u3", "items": ["i1", "i2"]},
]
PAIRS = [("u1", "i1"), ("u2", "i3"), ("u2", "i4"), ("u2", "i5"), ("u2", "i6"), ("7", "8"), ("u3", "i1"), ("u3", "i2")]


def _jsonl(path, records, blank_after: int | None = None):
    lines = [json.dumps(r) for r in records]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(stream, chunk_size, ks=None):
    index = stream.scan(chunk_size)
    ks = range(index.n_chunks) if ks is None else ks
    return {k: [(sp.pair.user, sp.pair.item, sp.extra) for sp in pairs] for k, pairs in stream.chunks(index, ks)}


def test_records_expand_to_pairs_in_order_and_chunks_may_start_inside_a_list(tmp_path):
    stream = PairStream(_jsonl(tmp_path / "p.jsonl", RECORDS, blank_after=2))
    index = stream.scan(3)
    assert (index.pairs, index.records, index.n_chunks) == (8, 4, 3)
    chunks = _read(stream, 3)
    assert [(u, i) for k in range(3) for u, i, _ in chunks[k]] == PAIRS
    assert [len(chunks[k]) for k in range(3)] == [3, 3, 2]
    # chunk 1 starts at the third item of u2's list: its rank and score travel with it
    assert chunks[1][0] == ("u2", "i5", {"rank": 3, "score": 0.5})
    assert chunks[2][1] == ("u3", "i2", {"rank": 2})
    # one chunk alone (what one process of a launch reads) is the same as in the full pass
    assert _read(stream, 3, [2]) == {2: chunks[2]}
    first = next(stream.chunks(index, [0]))[1][0].pair
    assert first == Pair("u1", "i1", title="Cafe", features=("coffee",), rating=4.0, explanation="ref one")
    assert next(stream.chunks(index, [0]))[1][1].pair.user_profile == "likes tea"


def test_limit_cuts_the_stream_inside_a_list(tmp_path):
    stream = PairStream(_jsonl(tmp_path / "p.jsonl", RECORDS), limit=4)
    chunks = _read(stream, 3)
    assert [(u, i) for k in sorted(chunks) for u, i, _ in chunks[k]] == PAIRS[:4]


def test_parquet_holds_the_same_pairs_as_json_lines(tmp_path):
    pa = pytest.importorskip("pyarrow")  # the optional `parquet` extra (installed with `dev`)
    import pyarrow.parquet as pq

    rows = [{"user": "u%d" % n, "item": None, "items": ["i%d" % (n + j) for j in range(n % 3 + 1)], "title": None}
            for n in range(9)]
    rows[4] = {"user": "u4", "items": None, "item": "solo", "title": "A title"}
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=2)  # small row groups: reading skips whole ones
    _jsonl(tmp_path / "p.jsonl", [{k: v for k, v in r.items() if v is not None} for r in rows])
    from_jsonl, from_parquet = _read(PairStream(tmp_path / "p.jsonl"), 4), _read(PairStream(tmp_path / "p.parquet"), 4)
    assert from_parquet == from_jsonl and len(from_jsonl) == 5
    assert _read(PairStream(tmp_path / "p.parquet"), 4, [3, 4]) == {k: from_jsonl[k] for k in (3, 4)}


@pytest.mark.parametrize("line, expected", [
    ('{"user": "u1", "item": "i1"', "p.jsonl:2: broken JSON line"),
    ('["u1", "i1"]', "p.jsonl:2: expected a JSON object"),
    ('{"item": "i1"}', "p.jsonl:2 field 'user': missing"),
    ('{"user": "u1", "item": "i1", "items": ["i2"]}', "p.jsonl:2 field 'item': give either 'item'"),
    ('{"user": "u1"}', "p.jsonl:2 field 'item': give either 'item'"),
    ('{"user": "u1", "item": "i1", "features": "zipper"}', "p.jsonl:2 field 'features': must be a list of words"),
    ('{"user": "u1", "item": "i1", "rating": NaN}', "p.jsonl:2 field 'rating': must be a number"),
    ('{"user": "u1", "item": "i1", "titel": "x"}', "p.jsonl:2 field 'titel': unknown field"),
    ('{"user": "u1", "items": ["a", "b"], "scores": [1]}', "p.jsonl:2 field 'scores': must be a list of 2 numbers"),
    ('{"user": "u1", "items": []}', "p.jsonl:2 field 'items': must be a non-empty list"),
    ('{"user": "u1", "items": ["a", true]}', "p.jsonl:2 field 'items[1]': must be an id"),
    ('{"user": "", "item": "i1"}', "p.jsonl:2 field 'user': must be an id"),
    ('{"user": "u1", "item": "i1", "title": 3}', "p.jsonl:2 field 'title': must be text"),
], ids=["broken", "not-object", "no-user", "item-and-items", "no-item", "features-text", "rating-nan", "unknown",
        "scores-length", "empty-list", "bool-id", "empty-user", "title-number"])
def test_a_bad_record_is_named_by_file_line_and_field_at_the_scan(tmp_path, line, expected):
    path = tmp_path / "p.jsonl"
    path.write_text('{"user": "u0", "item": "i0"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        PairStream(path).scan(4)
    assert expected in str(err.value)


def test_files_that_are_not_pair_streams_are_refused(tmp_path):
    (tmp_path / "p.csv").write_text("user,item\n")
    with pytest.raises(DataError, match="unknown pair file format"):
        PairStream(tmp_path / "p.csv")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="holds no pairs"):
        PairStream(tmp_path / "e.jsonl").scan(4)


def test_a_chunk_is_read_without_parsing_the_records_before_it(tmp_path):
    """Why it matters: each process of a launch reads only its own chunks (a seek, not a parse of the others')."""
    path = _jsonl(tmp_path / "p.jsonl", [{"user": f"u{n}", "item": f"i{n}"} for n in range(10)])
    stream = PairStream(path)
    index = stream.scan(2)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'{"user": "u0"', b'#!garbage!###', 1))  # same length; line 1 is broken now
    assert [(sp.pair.user, sp.pair.item) for _, pairs in stream.chunks(index, [3]) for sp in pairs] == [
        ("u6", "i6"), ("u7", "i7")]
    with pytest.raises(DataError, match="p.jsonl:1: broken JSON"):
        list(stream.chunks(index, [0]))


def test_dataset_text_fills_a_pair_as_dataset_pair_does():
    data = make_synthetic(n_users=20, n_items=15, seed=3)
    text = DatasetText(data)
    ex = data.examples[5]
    own = (data.users.decode(ex.user), data.items.decode(ex.item))
    unknown_user = ("nobody", data.items.decode(data.examples[7].item))
    strangers = ("nobody", "nothing")
    for user, item in (own, unknown_user, strangers):
        assert text.fill(Pair(user, item)) == data.pair(user, item)[0]
    given = text.fill(Pair(*own, title="my own title"))
    assert given.title == "my own title" and given.item_profile == data.pair(*own)[0].item_profile
