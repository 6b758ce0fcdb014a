"""`explainrec rate` end to end: make a study, judge it, report it; refusals; and a real server killed with
SIGKILL between two ratings, then restarted, has lost nothing."""
from __future__ import annotations

import json
import signal

from rate_helpers import SYNTHETIC, call, rating_server
from typer.testing import CliRunner

from explainrec.cli import app
from explainrec.rate import create_study
from explainrec.rate.ratings import read_ratings

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_make_judge_and_report_a_study(tmp_path, files):
    study = tmp_path / "study"
    make = ["rate", "--study", study, "--predictions", f"ref={files['reference']}",
            "--predictions", f"rev={files['reversed']}", "--pairs", 3, "--data", SYNTHETIC]
    result = run(*make, "--judge", "tiny")
    assert result.exit_code == 0, result.output
    assert "judge:tiny scored 3 pair(s)" in result.output
    again = run(*make, "--judge", "tiny")  # the same design: resumed, nothing left to score
    assert again.exit_code == 0 and "judge:tiny scored 0 pair(s)" in again.output, again.output
    other = run(*make[:-4], "--pairs", 4)
    assert other.exit_code == 1 and "already holds study" in other.output
    report = run("rate", "report", study, "--resamples", 200, "--weights", "P=0.5,Q=0.25,U=0.25")
    assert report.exit_code == 0, report.output
    assert "LLM judge `judge:tiny`: 3 pairs rated" in report.output and "0.5 P + 0.25 Q + 0.25 U" in report.output
    assert {p.name for p in study.iterdir()} >= {"study.json", "ratings.jsonl", "report.md", "report.json", "report.png"}


def test_refusals_are_one_line(tmp_path, files):
    cases = [
        (["rate"], 2, "rate needs --study"),
        (["rate", "--study", tmp_path / "s", "--predictions", files["reference"]], 2, "two or more methods"),
        (["rate", "--study", tmp_path / "s", "--predictions", f"a={files['reference']}",
          "--predictions", f"a={files['reversed']}"], 2, "given twice"),
        (["rate", "--study", tmp_path / "s", "--predictions", f"a={tmp_path / 'missing.jsonl'}",
          "--predictions", f"b={files['reversed']}"], 2, "no such file"),
        (["rate", "--study", tmp_path / "nothing"], 1, "no study here"),
        (["rate", "report", tmp_path / "nothing"], 1, "no study here"),
    ]
    create_study(tmp_path / "made", files, n_pairs=2)
    cases += [(["rate", "--study", tmp_path / "made", "--host", "0.0.0.0"], 2, "--tokens"),
              (["rate", "report", tmp_path / "made", "--weights", "1,1,1"], 2, "must sum to 1")]
    for args, code, expected in cases:
        result = run(*args)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == code and len(errors) == 1 and expected in errors[0], (args, result.output)


def test_a_killed_server_loses_no_saved_rating(tmp_path, files):
    """SIGKILL right after the second rating was answered: both are on disk. A line torn by a kill mid-write (the
    rating in flight) is reported by number at the next start, and rating goes on after it."""
    study = create_study(tmp_path / "study", files, n_pairs=4, seed=0)
    scores = [{"P": 4.5, "Q": 4, "U": 3.5}] * 3
    with rating_server(study.folder) as (base, process):
        assert call(base, "/api/sign-in", {"as": "alice"})[1]["next"] == 0
        for k in (0, 1):
            status, answer = call(base, "/api/rate", {"pair": k, "scores": scores}, rater="alice")
            assert status == 200 and answer["done"] == k + 1
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert [r["pair"] for r in read_ratings(study).records] == [0, 1]
    line = json.dumps({**read_ratings(study).records[0], "pair": 2})
    with open(study.ratings_path, "a") as f:
        f.write(line[:40])  # what a kill in the middle of the third write would leave
    with rating_server(study.folder) as (base, process):
        status, progress = call(base, "/api/sign-in", {"as": "alice"})
        assert (status, progress["done"], progress["next"]) == (200, 2, 2)  # resumes at the third pair
        assert call(base, "/api/rate", {"pair": 2, "scores": scores}, rater="alice")[0] == 200
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert "ratings.jsonl line 3: broken JSON" in output
    ratings = read_ratings(study)
    assert [r["pair"] for r in ratings.records] == [0, 1, 2] and len(ratings.problems) == 1
