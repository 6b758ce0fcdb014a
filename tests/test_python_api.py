"""The public Python API (explainrec.train / load / Model.explain / evaluate): the documented example runs as
written, every documented form of pairs gives the same rows, mistakes are clear errors before any work, and the
command line goes through it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import explainrec
from explainrec.config import ConfigError
from explainrec.data.schema import Pair

REPO = Path(__file__).resolve().parents[1]
DATA = "synthetic:users=30,items=25,types=2"
GEN = {"max_new_tokens": 6}


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


# the API's page, and the README's Python example when it has one
EXAMPLES = [(f"{p.name}#{i}", code) for p in (REPO / "docs" / "python-api.md", REPO / "README.md")
            for i, code in enumerate(_python_blocks(p)) if "import explainrec" in code]


@pytest.mark.parametrize("code", [c for _, c in EXAMPLES], ids=[n for n, _ in EXAMPLES])
def test_the_documented_example_runs_as_written(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "example", "exec"), {"__name__": "example"})


def test_the_api_page_has_its_example():
    assert any(name.startswith("python-api.md") for name, _ in EXAMPLES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return explainrec.train("gavamoe", data=DATA, out=out, preset="tiny", progress=False, echo=lambda *_: None)


def test_train_returns_the_model_and_load_opens_the_same_one(trained):
    assert trained.method == "gavamoe" and trained.summary.steps > 0 and (trained.run / "model").is_dir()
    again = explainrec.load(trained.run, data=DATA, precision="fp32")
    pair = trained.data.pair_of(trained.data.split_examples("test")[0])
    assert again.explain(user=pair.user, item=pair.item, generation=GEN)["prediction"] == \
        trained.explain(user=pair.user, item=pair.item, generation=GEN)["prediction"]


def test_every_form_of_pairs_gives_the_same_rows(trained):
    import pandas as pd

    data = trained.data
    examples = data.split_examples("test")[:2]
    pairs = [data.pair_of(e) for e in examples]
    ids = [(p.user, p.item) for p in pairs]
    rows = trained.explain(pairs, generation=GEN)
    assert [(r["user"], r["item"]) for r in rows] == ids and all("cluster" in r for r in rows)
    same = [trained.explain(ids, generation=GEN),  # tuples: the text comes from the model's data
            trained.explain([{"user": u, "item": i} for u, i in ids], generation=GEN),
            trained.explain(examples, generation=GEN),
            trained.explain(pd.DataFrame({"user": [u for u, _ in ids], "item": [i for _, i in ids]}),
                            generation=GEN).to_dict("records")]
    for other in same:
        assert [r["prediction"] for r in other] == [r["prediction"] for r in rows]
    one = trained.explain(user=ids[0][0], item=ids[0][1], generation=GEN)
    assert one == rows[0]
    # text given with a pair replaces what the data knows, the rest is kept; without data a pair has what it is given
    retitled = trained._pair({"user": ids[0][0], "item": ids[0][1], "title": "A Plain Box", "features": ["lid"]})
    assert (retitled.title, retitled.features, retitled.user_profile) == ("A Plain Box", ("lid",), pairs[0].user_profile)
    bare = explainrec.load(trained.run)
    assert bare._pair(ids[0]) == Pair(*ids[0])
    assert bare.explain([Pair(*ids[0])], generation=GEN)[0]["user"] == ids[0][0]


def test_mistakes_are_clear_errors(trained, tmp_path):
    with pytest.raises(ConfigError, match="gavamoe needs training"):
        explainrec.load("gavamoe")
    with pytest.raises(ConfigError, match="neither a run folder nor a registered method"):
        explainrec.load(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="a run folder brings its own settings"):
        explainrec.load(trained.run, model="tiny")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['nope'\]"):
        explainrec.load("zero-shot", nope=1)
    with pytest.raises(ConfigError, match="give user= and item="):
        trained.explain(user="u1")
    with pytest.raises(ConfigError, match=r"unknown pair field\(s\) \['colour'\]"):
        trained.explain([{"user": "u1", "item": "i1", "colour": "red"}])
    with pytest.raises(ConfigError, match="either pairs or one pair"):
        trained.explain([("u1", "i1")], user="u1")
    with pytest.raises(ConfigError, match=r"clusters: must be >= 1"):
        explainrec.train("gavamoe", data=DATA, out=tmp_path / "bad", preset="tiny", clusters=0)
    assert not (tmp_path / "bad").exists()  # refused before any work
    with pytest.raises(ConfigError, match="already holds a run"):
        explainrec.train("gavamoe", data=DATA, out=trained.run, preset="tiny", progress=False)
    with pytest.raises(ConfigError, match=r"belong to an evaluation a method declares"):
        explainrec.evaluate([{"prediction": "a", "reference": "b"}], limit=3)
    with pytest.raises(ConfigError, match="needs data="):
        explainrec.evaluate(trained.run, extra="alignment")
    with pytest.raises(ConfigError, match="gavamoe has no evaluation 'alignment'"):
        explainrec.evaluate(trained.run, extra="alignment", data=DATA)


def test_evaluate_scores_rows_and_writes_only_when_asked(tmp_path):
    rows = [{"prediction": "a warm red coat", "reference": "a warm red coat"},
            {"prediction": "nice", "reference": "a sturdy box for tools"}]
    result = explainrec.evaluate(rows, bertscore=False, specificity=False)
    assert result["n"] == 2 and 0 < result["metrics"]["rougeL"] < 100
    explainrec.evaluate(rows, bertscore=False, specificity=False, out=tmp_path / "scores")
    assert json.loads((tmp_path / "scores" / "metrics.json").read_text())["metrics"] == result["metrics"]
    with pytest.raises(ConfigError, match="metrics.json there already exists"):
        explainrec.evaluate(rows, bertscore=False, specificity=False, out=tmp_path / "scores")


def test_the_train_command_is_a_layer_over_the_api(monkeypatch, tmp_path):
    from explainrec import api
    from explainrec.cli import app

    seen = {}

    def fake_train(method, data, **kw):
        seen.update(method=method, data=data, **kw)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(api, "train", fake_train)
    result = CliRunner().invoke(app, ["train", "gavamoe", "--data", DATA, "--out", str(tmp_path / "r"), "--config",
                                      "tiny", "clusters=3", "stage1.beta=0.5"])
    assert result.exit_code == 2 and "stopped by the test" in result.output
    assert seen["method"] == "gavamoe" and seen["data"] == DATA and seen["preset"] == "tiny"
    assert seen["clusters"] == 3 and seen["stage1"] == {"beta": 0.5}


def test_importing_the_package_stays_light():
    """``import explainrec`` (every command's start) loads neither torch nor the API until a name is used."""
    code = ("import sys, explainrec; assert 'torch' not in sys.modules and 'explainrec.api' not in sys.modules; "
            "explainrec.load; assert 'explainrec.api' in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
