"""RecExplainer through the method contract: the run folder, named-items-only questions, the explainer's verdict
fields, and its declared evaluation through `explainrec evaluate RUN --extra alignment` (the cross-method checks are in
tests/methods/test_contract.py)."""
from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from explainrec.cli import app
from explainrec.data.schema import Pair
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods import registry
from explainrec.methods.recexplainer.alignment_data import query_recommender
from explainrec.methods.runs import train_run

DATA = "synthetic:users=30,items=25,types=2"


def test_questions_about_named_items_only(small_ds, small_mf):
    """With an ``allowed`` catalogue every answer of the recommender is an allowed item (as if it ranked only them)."""
    allowed = np.zeros(small_ds.n_items, dtype=bool)
    allowed[::3] = True
    q = query_recommender(small_mf, small_ds, seed=0, allowed=allowed)
    for name in ("top", "candidates", "pos", "neg", "test_item", "test_partner"):
        got = np.asarray(getattr(q, name)).ravel()
        got = got[got >= 0]
        assert len(got) and allowed[got].all(), name
    assert allowed[q.nearest[q.nearest >= 0]].all() and (q.nearest[~allowed] == -1).all()
    free = query_recommender(small_mf, small_ds, seed=0)
    assert not allowed[free.top.ravel()].all()  # without the mask the top items are not all allowed


def test_run_explains_with_the_recommenders_verdict(tmp_path):
    from explainrec.data import load_dataset

    ds = load_dataset(DATA)
    method = registry.get("recexplainer")
    trained = train_run(method, ds, tmp_path / "run", method.make_config("tiny"), progress=False,
                        echo=lambda *_: None)
    for name in ("recommender/model/recommender.safetensors", "recommender/metrics.json", "alignment/hybrid.train.jsonl",
                 "alignment/hybrid.test.jsonl", "alignment/manifest.json", "model/item_names.json",
                 "model/recommender.safetensors"):
        assert (tmp_path / "run" / name).exists(), name
    train_rows = [json.loads(x) for x in (tmp_path / "run" / "alignment" / "hybrid.train.jsonl").read_text().splitlines()]
    assert {"next_item", "ranking", "interest", "history"} <= {r["task"] for r in train_rows}
    ex = ds.split_examples("test")[0]
    pair = ds.pair_of(ex)
    row = trained.explainer.explain([pair], GenerationConfig(max_new_tokens=6))[0]
    assert row["recommender_decision"] in ("yes", "no", "undecided") and 0 <= row["recommender_top_fraction"] <= 1
    assert row["history"] and row["cold_start"] is False and "decision" in row
    cold = trained.explainer.explain([Pair("nobody", pair.item, title="A Thing")], GenerationConfig(max_new_tokens=4))[0]
    assert cold["cold_start"] is True and cold["recommender_score"] is None


def test_evaluate_alignment_command(tmp_path):
    runner = CliRunner()
    run = tmp_path / "r"
    assert runner.invoke(app, ["train", "recexplainer", "--data", DATA, "--out", str(run), "--config", "tiny"]).exit_code == 0
    result = runner.invoke(app, ["evaluate", str(run), "--extra", "alignment", "--data", DATA, "limit=3",
                                 "explanations=4", "zero_shot=false"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "alignment.json").read_text())
    assert {"hybrid", "random", "popularity"} <= set(report["alignment"])
    assert report["alignment"]["hybrid"]["interest"]["n"] <= 3
    assert {"decision", "probe", "grounding", "attribution", "counterfactual"} <= set(report["explanations"])
    assert "| hybrid |" in (run / "alignment.md").read_text()
    again = runner.invoke(app, ["evaluate", str(run), "--extra", "alignment", "--data", DATA])
    assert again.exit_code == 2 and "alignment.json there already exists" in again.output  # an earlier result kept
    wrong = runner.invoke(app, ["evaluate", str(run), "--extra", "alignment", "--data",
                                "synthetic:users=31,items=25,types=2", "--overwrite"])
    assert wrong.exit_code == 2 and "trained on other data" in wrong.output
    bad = runner.invoke(app, ["evaluate", str(run), "--extra", "alignment", "--data", DATA, "--overwrite", "limit=0"])
    assert bad.exit_code == 2 and "limit: must be >= 1" in bad.output
    other = tmp_path / "v"
    assert runner.invoke(app, ["train", "vae-gmm", "--data", DATA, "--out", str(other), "--config", "tiny"]).exit_code == 0
    refused = runner.invoke(app, ["evaluate", str(other), "--extra", "alignment", "--data", DATA])
    assert refused.exit_code == 2 and "vae-gmm has no evaluation 'alignment' (its evaluations: none)" in refused.output
    # the command it replaces says so
    old = runner.invoke(app, ["evaluate-alignment", str(run), "--data", DATA])
    assert old.exit_code == 2 and "explainrec evaluate RUN --extra alignment" in old.output


def test_zero_shot_table_is_scored_once_for_the_variants_of_one_recommender(tmp_path, monkeypatch):
    """Intention asks the untrained LLM the titles-only form of behaviour's questions: the second report reuses the
    first's zero-shot table (cached by content), and a change of the questions misses the cache."""
    monkeypatch.setenv("EXPLAINREC_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    tables, outputs = [], []
    for variant in ("behaviour", "intention"):
        run = tmp_path / variant
        trained = runner.invoke(app, ["train", "recexplainer", "--data", DATA, "--out", str(run), "--config", "tiny",
                                      f"variant={variant}"])
        assert trained.exit_code == 0, trained.output
        result = runner.invoke(app, ["evaluate", str(run), "--extra", "alignment", "--data", DATA, "limit=3",
                                     "explanations=0"])
        assert result.exit_code == 0, result.output
        tables.append(json.loads((run / "alignment.json").read_text())["alignment"]["zero-shot"])
        outputs.append(result.output)
    assert "reusing" not in outputs[0] and "reusing" in outputs[1]
    assert tables[0] == tables[1]
    assert len(list((tmp_path / "cache" / "alignment-zero-shot").glob("*.json"))) == 1
    again = runner.invoke(app, ["evaluate", str(tmp_path / "intention"), "--extra", "alignment", "--data", DATA,
                                "limit=2", "explanations=0", "--overwrite"])
    assert again.exit_code == 0 and "reusing" not in again.output  # other questions: scored anew
