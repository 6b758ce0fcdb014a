"""explain_pairs: a stream of pairs explained chunk by chunk into one ordered file, resumed after a stop with only
the missing chunks generated, refused over a changed file, and merged only from chunks that hold their pairs; the
launch's main process hands its refusals to every process."""
from __future__ import annotations

import json

import pytest

from explainrec.data.pair_stream import PairStream
from explainrec.data.schema import DataError, Pair
from explainrec.folders import FolderBusy, FolderError
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods.base import Explainer
from explainrec.methods.explain import chunk_file, explain_pairs, parts_folder
from explainrec.methods.sharding import Launch

GREEDY = GenerationConfig(batch_size=1, max_new_tokens=6)  # one prompt per batch: no padding, so any grouping agrees
IDENTITY = {"model": {"method": "zero-shot", "llm": "tiny"}}


class Counting:
    """The explainer, counting the pairs it is asked for; raises KeyboardInterrupt on call ``stop_at``."""

    def __init__(self, explainer, stop_at: int | None = None) -> None:
        self.explainer, self.stop_at, self.calls, self.pairs = explainer, stop_at, 0, 0
        self.method = explainer.method

    def explain(self, pairs, generation=None, **kwargs):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.pairs += len(pairs)
        return self.explainer.explain(pairs, generation, **kwargs)


@pytest.fixture
def explainer(tiny_llm):
    from explainrec.data.prompts import build_messages

    model, tok = tiny_llm
    return Explainer(method="zero-shot", llm=model, tokenizer=tok, model=model, prompt=build_messages)


def _pairs_file(path, n_users: int = 5):
    records = []
    for u in range(n_users):
        records.append({"user": f"u{u}", "item": f"i{u}", "title": f"Cafe {u}", "explanation": f"ref {u}"})
        records.append({"user": f"u{u}", "items": [f"i{u + 1}", f"i{u + 2}"], "scores": [0.7, 0.2]})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _run(explainer, pairs, out, **kwargs):
    return explain_pairs(explainer, PairStream(pairs), out, chunk_size=4, generation=GREEDY, identity=IDENTITY,
                         echo=lambda *_: None, **kwargs)


def test_a_stream_is_explained_into_one_ordered_file_each_pair_once_with_its_fields(explainer, tmp_path):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    wrote, stats = _run(explainer, pairs, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = [(f"u{u}", i) for u in range(5) for i in (f"i{u}", f"i{u + 1}", f"i{u + 2}")]
    assert wrote and stats.explanations == 15 and [(r["user"], r["item"]) for r in rows] == expected
    assert rows[0]["reference"] == "ref 0" and "rank" not in rows[0]
    assert (rows[1]["rank"], rows[1]["score"], rows[2]["rank"]) == (1, 0.7, 2)
    direct = explainer.explain([Pair("u0", "i0", title="Cafe 0", explanation="ref 0"), Pair("u4", "i6")], GREEDY)
    assert [rows[0]["prediction"], rows[-1]["prediction"]] == [d["prediction"] for d in direct]
    assert not parts_folder(tmp_path / "out.jsonl").exists()


def test_a_stopped_stream_resumes_with_only_the_missing_chunks_and_equals_an_uninterrupted_run(explainer, tmp_path):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    _run(explainer, pairs, tmp_path / "full.jsonl")
    out = tmp_path / "cut.jsonl"
    with pytest.raises(KeyboardInterrupt, match="2 of 4 chunks"):
        _run(Counting(explainer, stop_at=3), pairs, out)
    assert not out.exists() and chunk_file(parts_folder(out), 1).is_file()
    with pytest.raises(FolderError, match="pass --resume to continue it"):
        _run(explainer, pairs, out)
    again = Counting(explainer)
    _run(again, pairs, out, resume=True)
    assert again.pairs == 15 - 8  # chunks 3 and 4 only
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()


def test_a_resume_over_a_changed_pairs_file_is_refused(explainer, tmp_path):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "cut.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(Counting(explainer, stop_at=2), pairs, out)
    pairs.write_text(pairs.read_text().replace("Cafe 3", "Cafe 9"))  # same pairs, another prompt
    with pytest.raises(FolderError, match="pairs_file_sha256: was"):
        _run(explainer, pairs, out, resume=True)


def test_the_merge_refuses_a_chunk_that_holds_other_pairs(explainer, tmp_path):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "cut.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(Counting(explainer, stop_at=2), pairs, out)
    first = chunk_file(parts_folder(out), 0)
    first.write_text(first.read_text().replace('"item": "i1"', '"item": "i7"', 1))
    with pytest.raises(DataError, match="chunk-000000.jsonl: does not hold the pairs of chunk 1"):
        _run(explainer, pairs, out, resume=True)
    assert not out.exists()


class _Relay(Launch):
    """A launch whose broadcast is recorded (main) or replayed (the others), within one test process."""

    sent: list = []

    def _broadcast(self, value):
        if self.is_main:
            _Relay.sent.append(value)
            return value
        return _Relay.sent[-1]


def test_the_main_process_decides_once_and_its_refusal_stops_every_process():
    calls = []
    assert _Relay(0, 2).main_decides(lambda: calls.append("main") or [1, 3]) == [1, 3]
    assert _Relay(1, 2).main_decides(lambda: calls.append("other")) == [1, 3] and calls == ["main"]
    busy = FolderBusy("OUT.parts: pid 7 (`explainrec explain`) is writing this folder")

    def refuse():
        raise busy

    with pytest.raises(FolderBusy, match="pid 7"):
        _Relay(0, 2).main_decides(refuse)
    with pytest.raises(FolderBusy, match="pid 7"):  # the same class, so the same message and exit code
        _Relay(1, 2).main_decides(refuse)


def test_the_missing_chunks_are_shared_out_each_to_one_process():
    todo = [0, 2, 3, 7, 8, 9, 11]
    for world in (1, 2, 3, 8):
        shares = [Launch(rank, world).share(todo) for rank in range(world)]
        assert sorted(k for share in shares for k in share) == todo
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
