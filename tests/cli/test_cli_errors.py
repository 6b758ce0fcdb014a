"""Every class of bad input the command line meets ends in one line naming what is wrong, with exit code 2 for a
usage error and 1 for a failure -- never a traceback, never a silent success, never lost work.

The same classes, run as real subprocesses, make docs/reliability.md (scripts/hostile_cli.py)."""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from explainrec.cli import app

DATA = "synthetic:users=30,items=25,types=2"
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, code: int, expected: str) -> None:
    """One ``error: ...`` line (ours), or for options the parser itself rejects, its one ``Error`` box."""
    text = result.output
    assert result.exit_code == code, f"exit {result.exit_code} != {code}: {text}"
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    if not errors and "Try 'root" in text:  # typer/click's own usage error: one box, "Invalid value ..."
        errors = [" ".join(text.split())]
    assert len(errors) == 1 and expected in errors[0], text


def build_fixtures(root, train) -> None:
    """The scratch folder every bad-input class runs against (here and in scripts/hostile_cli.py): a finished tiny
    GaVaMoE run (with its checkpoint), a vae-gmm stage run, a copy of the GaVaMoE run where the demo would put its
    own, a data file, a plain file, predictions, a folder of the user's notes, a pair file and a bench config.
    ``train(*args)`` runs a command and returns its exit code."""
    import shutil

    assert train("train", "gavamoe", "--data", DATA, "--out", root / "g", "--config", "tiny") == 0
    assert train("train", "vae-gmm", "--data", DATA, "--out", root / "v", "--config", "tiny") == 0
    shutil.copytree(root / "g", root / "myruns" / "gavamoe")
    (root / "data.jsonl").write_text("".join(json.dumps({"user": f"u{i % 5}", "item": f"i{i % 7}", "split": s,
                                                         "explanation": "Nice."}) + "\n"
                                             for i, s in enumerate(["train"] * 20 + ["valid"] * 5 + ["test"] * 5)))
    (root / "file.txt").write_text("not a folder\n")
    (root / "preds").mkdir()
    (root / "preds" / "p.jsonl").write_text(json.dumps({"prediction": "a", "reference": "b"}) + "\n")
    (root / "preds" / "metrics.json").write_text(json.dumps({"prediction": "a", "reference": "b"}) + "\n")
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("mine\n")
    (root / "notes" / "config.yaml").touch()
    (root / "pair.json").write_text(json.dumps({"user": "u1", "item": "i1", "features": "collar"}))
    (root / "bad-split.yaml").write_text(json.dumps({"out": str(root / "bench-out"), "split": "dev",
                                                     "datasets": {"s": DATA}, "runs": {"z": {"method": "zero-shot"}}}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    build_fixtures(root, lambda *args: _run(*args).exit_code)
    return root


TRAIN = ("train", "gavamoe", "--data", DATA, "--config", "tiny")
USAGE = [  # (name, arguments after the fixture folder is known, expected text); exit code 2
    ("clusters 0", TRAIN + ("--out", "{new}", "clusters=0"), "clusters: must be >= 1, got 0"),
    ("experts 0", TRAIN + ("--out", "{new}", "moe.n_experts=0"), "moe.n_experts: must be >= 1"),
    ("top-k > experts", TRAIN + ("--out", "{new}", "moe.top_k=9"), "top_k: 9 active experts cannot exceed n_experts (4)"),
    ("batch size 0", TRAIN + ("--out", "{new}", "batch_size=0"), "batch_size: must be >= 1"),
    ("negative lr", TRAIN + ("--out", "{new}", "lr=-1"), "lr: must be > 0"),
    ("bad variant", TRAIN + ("--out", "{new}", "moe.variant=bogus"), "'bogus' is not one of"),
    ("zero minutes", TRAIN + ("--out", "{new}", "max_minutes=0"), "max_minutes: must be > 0"),
    ("zero steps", TRAIN + ("--out", "{new}", "max_steps=0"), "max_steps: must be >= 1"),
    ("zero epochs", TRAIN + ("--out", "{new}", "epochs=0"), "epochs: must be >= 1"),
    ("text for a number", TRAIN + ("--out", "{new}", "lr=fast"), "lr: expected a number, got 'fast'"),
    ("NaN for a number", TRAIN + ("--out", "{new}", "lr=nan"), "lr: must be a number, got nan"),
    ("unknown key", TRAIN + ("--out", "{new}", "lerning_rate=1"), "unknown key(s) ['lerning_rate']; allowed:"),
    ("unknown method", ("train", "pepler", "--data", DATA, "--out", "{new}"), "unknown method 'pepler'"),
    ("unknown preset", ("train", "gavamoe", "--data", DATA, "--out", "{new}", "--config", "huge"),
     "neither a preset of gavamoe"),
    ("missing --data", ("train", "gavamoe", "--out", "{new}"), "--data and --out are required"),
    ("run folder in use", TRAIN + ("--out", "{root}/g"), "already holds a run"),
    ("resume nothing", TRAIN + ("--out", "{new}", "--resume"), "no run to continue"),
    ("resume + overwrite", TRAIN + ("--out", "{root}/g", "--resume", "--overwrite"), "contradict"),
    ("resume, other K", TRAIN + ("--out", "{root}/g", "--resume", "clusters=3"), "clusters: was 2, now 3"),
    ("out replaces the data", ("train", "vae-gmm", "--data", "{root}/data.jsonl", "--out", "{root}/data.jsonl"),
     "is a file; --out takes a folder"),
    ("out holds the data", ("train", "vae-gmm", "--data", "{root}/data.jsonl", "--out", "{root}"),
     "would hold or replace the input"),
    ("out is the current folder", TRAIN + ("--out", ""), "is the current folder"),
    ("out is the root folder", TRAIN + ("--out", "/"), "is the root folder"),
    ("overwrite beside other files", TRAIN + ("--out", "{root}/notes", "--overwrite"), "did not write (notes.txt)"),
    ("resume on other data", ("train", "gavamoe", "--data", DATA + ",seed=7", "--config", "tiny", "--out",
                              "{root}/g", "--resume"), "--resume on other data"),
    ("too many clusters", TRAIN + ("--out", "{new}", "clusters=500"), "cannot fill 500 clusters"),
    ("nothing trainable", TRAIN + ("--out", "{new}", "trainable=,"), "trainable: name at least one"),
    ("seed too large", TRAIN + ("--out", "{new}", "seed=1180591620717411303424"), "seed: must be <= 4294967295"),
    ("limit 0", ("explain", "--model", "{root}/g", "--data", DATA, "--limit", "0"), "should be greater than or equal to 1"),
    ("unknown split", ("explain", "--model", "{root}/g", "--data", DATA, "--split", "dev"), "unknown split 'dev'"),
    ("out = the data file", ("explain", "--method", "zero-shot", "--model", "tiny", "--data", "{root}/data.jsonl",
                             "--out", "{root}/data.jsonl"), "would overwrite the input"),
    ("out under a file", ("explain", "--method", "zero-shot", "--model", "tiny", "--data", DATA, "--out",
                          "{root}/file.txt/p.jsonl"), "cannot write to"),
    ("out is a folder", ("explain", "--method", "zero-shot", "--model", "tiny", "--data", DATA, "--out", "{root}"),
     "is a folder; give a file name"),
    ("out replaces a result", ("explain", "--method", "zero-shot", "--model", "tiny", "--data", DATA, "--out",
                               "{root}/preds/p.jsonl"), "already exists"),
    ("out into the run's model", ("explain", "--model", "{root}/g", "--data", DATA, "--out", "{root}/g/model/p.jsonl"),
     "would write into the run"),
    ("resume with nothing to resume", ("explain", "--model", "{root}/g", "--data", DATA, "--out", "{new}.jsonl",
                                       "--resume"), "no interrupted explain"),
    ("pair file: features as text", ("explain", "--model", "{root}/g", "--pair-file", "{root}/pair.json"),
     "field 'features' must be a list of words"),
    ("tune-decoding out = the data", ("tune-decoding", "{root}/g", "--data", "{root}/data.jsonl", "--out",
                                      "{root}/data.jsonl"), "would overwrite the input"),
    ("evaluate replaces its input", ("evaluate", "{root}/preds/metrics.json", "--no-bertscore"),
     "would overwrite the input"),
    ("user without item", ("explain", "--model", "{root}/g", "--user", "u1"), "needs both --user and --item"),
    ("bad precision", ("explain", "--model", "{root}/g", "--user", "u1", "--item", "i1", "--precision", "int4"),
     "--precision 'int4'"),
    ("trained method without run", ("explain", "--method", "gavamoe", "--data", DATA), "needs a trained run folder"),
    ("evaluate a folder", ("evaluate", "{root}/preds"), "is a folder; give a file"),
    ("evaluate missing", ("evaluate", "{root}/nope.jsonl"), "no such file"),
    ("evaluate --out a file", ("evaluate", "{root}/preds/p.jsonl", "--no-bertscore", "--out", "{root}/file.txt"),
     "is a file; this option takes a folder"),
    ("compare labels", ("compare", "{root}/preds/p.jsonl", "{root}/preds/p.jsonl", "--names", "onlyone"),
     "--names takes two labels"),
    ("bench config missing", ("bench", "{root}/none.yaml"), "no such config file"),
    ("bench: unknown split", ("bench", "{root}/bad-split.yaml"), "split: unknown split 'dev'"),
    ("demo adopts a train run", ("demo", "--model", "tiny", "--no-bertscore", "--out", "{root}/myruns"),
     "not a run of the bench or the demo"),
    ("demo --fresh deletes a train run", ("demo", "--model", "tiny", "--no-bertscore", "--fresh", "--out",
                                          "{root}/myruns"), "not a run of the bench or the demo"),
]
FAILURES = [  # exit code 1
    ("missing model folder", ("explain", "--model", "{root}/missing", "--user", "u", "--item", "i"), "no such folder"),
    ("a stage is not an explainer", ("explain", "--model", "{root}/v", "--user", "u", "--item", "i"),
     "does not explain pairs"),
    ("broken data file", ("data", "stats", "--data", "{root}/broken.jsonl"), "broken.jsonl:2"),
    ("pickle refused", ("data", "stats", "--data", "{root}/peter"), "--trust-pickle"),
]


def _args(args, root, tmp_path):
    return [a.format(root=root, new=tmp_path / "new") for a in args]


def contents(folder) -> dict:
    """Every path under ``folder`` with the hash of its bytes: "untouched" means the same contents, not names."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if p.name != "p.jsonl.parts"}


@pytest.mark.parametrize("name, args, expected", USAGE, ids=[c[0] for c in USAGE])
def test_usage_errors(runs, tmp_path, name, args, expected, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = contents(runs)
    _one_line_error(_run(*_args(args, runs, tmp_path)), 2, expected)
    assert not (tmp_path / "new").exists()  # checked before any work started
    assert contents(runs) == before  # every existing file untouched, byte for byte


@pytest.mark.parametrize("name, args, expected", FAILURES, ids=[c[0] for c in FAILURES])
def test_failures(runs, tmp_path, name, args, expected):
    (runs / "broken.jsonl").write_text('{"user": 1, "item": 2}\n{broken\n')
    (runs / "peter" / "1").mkdir(parents=True, exist_ok=True)
    (runs / "peter" / "reviews.pickle").write_bytes(b"\x80\x04N.")
    _one_line_error(_run(*_args(args, runs, tmp_path)), 1, expected)


def test_damaged_checkpoint_is_reported_and_kept(runs, tmp_path):
    run = tmp_path / "g"
    shutil.copytree(runs / "g", run)
    weights = run / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # one float becomes NaN: still a readable file
    weights.write_bytes(bytes(data))
    result = _run(*TRAIN, "--out", run, "--resume", "max_steps=4")
    _one_line_error(result, 1, "contents changed since the checkpoint was written")
    assert weights.read_bytes() == bytes(data)  # not replaced by a fresh start
    (run / "checkpoint" / "COMPLETE").unlink()
    _one_line_error(_run(*TRAIN, "--out", run, "--resume", "max_steps=4"), 1, "missing completion marker")
    assert weights.exists()


def test_damaged_model_is_reported(runs, tmp_path):
    run = tmp_path / "g"
    shutil.copytree(runs / "g", run)
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\x00" * 16)
    _one_line_error(_run("explain", "--model", run, "--user", "u1", "--item", "i1"), 1, "contents changed")


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(runs, tmp_path, monkeypatch):
    """A loss that becomes NaN (e.g. a too large learning rate) must not be trained on, saved as a model and
    reported as success: the command fails, and the checkpoint on disk is the last good step."""
    from explainrec.methods.gavamoe.modeling import GaVaMoE

    real = GaVaMoE.forward
    calls = {"n": 0}

    def diverging(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if self.training and calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(GaVaMoE, "forward", diverging)
    run = tmp_path / "g"
    result = _run(*TRAIN, "--out", run, "max_steps=5", "checkpoint_every=1")
    _one_line_error(result, 1, "the loss became nan at step 3")
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and not (run / "model").exists()
